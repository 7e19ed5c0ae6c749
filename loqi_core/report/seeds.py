"""The report of one experiment over several training seeds: each seed beside the mean and the spread, and paired
sign tests per seed and pooled over seeds (``loqi run --seeds``; the runs are ``<out>/seed-<S>/``).

``metrics.json`` keeps schema ``loqi.metrics/1`` (so ``loqi report`` reads it): ``rows`` hold the mean over seeds,
and each dataset adds ``sd`` (sample standard deviation per row and R@N), ``seeds`` (``{seed: rows}``) and
``paired`` (``{row: {seed: [only the row's model right, only the pretrained right, two-sided p], "pooled": [...]}}``,
at R@1 on the same degraded queries); ``run`` adds ``seeds``, ``eval_seed`` and ``runs`` (seed → run directory).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

from loqi_core.report.names import slug
from loqi_core.report.results import UNTRAINED, baseline_row, load_metrics, row_order, write_recall_plot
from loqi_core.util.fileio import write_text

TRAINED = ("finetuned", "distilled", "distilled_queries")


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, sd


def binomial_p(plus: int, minus: int) -> float:
    """Two-sided exact sign test of ``plus`` against ``minus`` discordant pairs."""
    n, k = plus + minus, min(plus, minus)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0


def sign_test(before: Sequence[int], after: Sequence[int]) -> tuple[int, int, float]:
    """(items only ``after`` gets right, only ``before`` gets right, two-sided exact p), paired item by item."""
    plus = sum(bool(a and not b) for b, a in zip(before, after))
    minus = sum(bool(b and not a) for b, a in zip(before, after))
    return plus, minus, binomial_p(plus, minus)


def top1_hits(predictions_csv: Path) -> list[int]:
    """Per query of a run's predictions CSV: 1 when its first-ranked database image is a positive."""
    with predictions_csv.open(newline="") as f:
        lines = [line for line in f if not line.startswith("#")]  # an untrained run's banner
    return [int(r["top_k_correct"][:1] == "1") for r in csv.DictReader(lines)]


def _is_trained(row: str) -> bool:
    return row.split("@", 1)[0].split(":", 1)[0] in TRAINED


def seeds_metrics(runs: dict[int, Path], eval_seed: int) -> dict[str, Any]:
    """The metrics over seeds of the run directories ``runs`` (seed → directory), whose test images were all
    degraded with ``eval_seed``."""
    per_seed = {seed: load_metrics(d) for seed, d in runs.items()}
    seeds = list(runs)
    first = per_seed[seeds[0]]
    datasets = {}
    for name, ds in first["datasets"].items():
        rows_by_seed = {s: m["datasets"].get(name, {}).get("rows", {}) for s, m in per_seed.items()}
        rows = sorted({r for rows in rows_by_seed.values() for r in rows}, key=row_order)
        mean: dict[str, dict[str, float]] = {}
        sd: dict[str, dict[str, float]] = {}
        paired: dict[str, dict[str, list[float]]] = {}
        for row in rows:
            keys = [k for k in ds["rows"].get(row, {}) if all(k in rows_by_seed[s].get(row, {}) for s in seeds)]
            stats = {k: mean_sd([rows_by_seed[s][row][k] for s in seeds]) for k in keys}
            mean[row] = {k: round(m, 4) for k, (m, _) in stats.items()}
            sd[row] = {k: round(v, 4) for k, (_, v) in stats.items()}
            base = baseline_row(row)
            if _is_trained(row) and base in rows and ds.get("labelled", True):
                tests, pooled = {}, [0, 0]
                for s in seeds:
                    folder = runs[s] / "predictions"
                    before = top1_hits(folder / f"{slug(name)}__{slug(base)}.csv")
                    plus, minus, p = sign_test(before, top1_hits(folder / f"{slug(name)}__{slug(row)}.csv"))
                    tests[str(s)] = [plus, minus, p]
                    pooled = [pooled[0] + plus, pooled[1] + minus]
                tests["pooled"] = [*pooled, binomial_p(*pooled)]
                paired[row] = tests
        datasets[name] = {**{k: v for k, v in ds.items() if k != "rows"}, "rows": mean, "sd": sd,
                          "seeds": {str(s): rows_by_seed[s] for s in seeds}, "paired": paired}  # fmt: skip
    run = {**first["run"], "seed": None, "seeds": seeds, "eval_seed": eval_seed, "runs": {str(s): str(d) for s, d in runs.items()}}
    return {**first, "run": run, "datasets": datasets}


def _cell(values: dict[str, float], base: dict[str, float] | None, key: str) -> str:
    if key not in values:
        return "–"
    if base is None or key not in base:
        return f"{values[key]:.2f}"
    return f"{values[key] - base[key]:+.2f} ({values[key]:.2f})"


def seeds_markdown(metrics: dict[str, Any]) -> str:
    """results.md over seeds: per dataset, R@N of every row for each seed and as mean ± sd (Δ against the pretrained
    row for trained rows, with the spread of Δ), then the paired sign tests."""
    run = metrics["run"]
    seeds = run["seeds"]
    lines = [f"# loqi {run.get('kind')} over {len(seeds)} seeds: {run.get('method')}, {run.get('degrade')}", ""]
    if run.get("untrained"):
        lines += [f"> **{UNTRAINED}**", ""]
    facts = [f"{k}: `{run[k]}`" for k in ("method", "degrade", "protocol", "loss", "weights") if run.get(k) is not None]
    lines += ["; ".join(facts) + f"; training seeds {', '.join(map(str, seeds))} (each run in `seed-<S>/`); the test "
              f"images are degraded with seed {run.get('eval_seed')} in every run, so each seed meets the same queries.", ""]
    first = f"R@{metrics['recall_at'][0]}"
    for name, ds in metrics["datasets"].items():
        lines += [f"## {name}", ""]
        if not ds.get("labelled", True):
            lines += ["label-free: no recall", ""]
            continue
        header = ["", *[f"seed {s} {first}" for s in seeds], *[f"mean ± sd R@{n}" for n in metrics["recall_at"]]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row, values in ds["rows"].items():
            label = metrics.get("rows", {}).get(row, {}).get("label", row)
            trained = _is_trained(row) and baseline_row(row) in ds["rows"]
            cells = [label + (" Δ" if trained else "")]
            for s in seeds:
                per = ds["seeds"][str(s)]
                cells.append(_cell(per.get(row, {}), per.get(baseline_row(row)) if trained else None, first))
            for n in metrics["recall_at"]:
                key = f"R@{n}"
                if key not in values:
                    cells.append("–")
                    continue
                if trained:
                    deltas = [ds["seeds"][str(s)][row][key] - ds["seeds"][str(s)][baseline_row(row)][key] for s in seeds]
                    m, sd = mean_sd(deltas)
                    cells.append(f"{m:+.2f} ± {sd:.2f} ({values[key]:.2f})")
                else:
                    cells.append(f"{values[key]:.2f} ± {ds['sd'][row][key]:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for row, tests in ds.get("paired", {}).items():
            label = metrics.get("rows", {}).get(row, {}).get("label", row)
            per = "; ".join(f"seed {s}: {t[0]}/{t[1]} (p {t[2]:.2g})" for s, t in tests.items() if s != "pooled")
            pooled = tests["pooled"]
            lines.append(f"- {label} against the pretrained row at {first}, the same degraded queries (only it right / only "
                         f"the pretrained right, two-sided sign test): {per}; pooled over seeds {pooled[0]}/{pooled[1]} "
                         f"(p {pooled[2]:.2g})")  # fmt: skip
        lines.append("")
    lines += ["Mean and sample standard deviation over the seeds; a Δ row gives the mean ± sd of its per-seed gain over "
              "the pretrained model on the same degraded images, then the mean absolute value in parentheses.", ""]
    return "\n".join(lines)


def write_seeds_report(out: Path, runs: dict[int, Path], eval_seed: int) -> dict[str, Any]:
    """metrics.json, results.md and recall.png over seeds into ``out`` (the seeds' run directories lie under it)."""
    metrics = seeds_metrics(runs, eval_seed)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "results.md", seeds_markdown(metrics))
    plotted = {**metrics, "rows": {}, "datasets": {}}
    for name, ds in metrics["datasets"].items():
        rows: dict[str, dict[str, float]] = {}
        for row, values in ds["rows"].items():
            label = metrics["rows"].get(row, {}).get("label", row)
            rows[f"{label} (mean of {len(runs)})"] = values
            if _is_trained(row):
                for s in runs:
                    rows[f"{label} (seed {s})"] = ds["seeds"][str(s)][row]
        plotted["datasets"][name] = {"rows": rows}
    if any(ds["rows"] for ds in plotted["datasets"].values()):
        write_recall_plot(out / "recall.png", [plotted])
    write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
    return metrics
