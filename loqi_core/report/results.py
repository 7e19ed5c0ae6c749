"""Run reports: ``metrics.json`` (stable schema), ``results.md`` (the paper's Table II), plots, predictions, grids.

``metrics.json`` schema ``loqi.metrics/1`` (documented in docs/evaluation.md; fields are only ever added)::

    {"schema": "loqi.metrics/1", "loqi_version": "0.1.0", "created": "...",
     "run": {"kind": "run"|"sweep"|"eval", "method": ..., "degrade": ..., "protocol": "upstream"|"paper",
             "weights": ..., "untrained": bool, "seed": 0, "protocol_notes": [...] (not upstream),
             "citations": {"encoder": {"<name>": "<paper>"}, "aggregator": {"<name>": "<paper>"}}},
     "recall_at": [1, 2, 5, 10],
     "rows": {"<row>": {"label": "...", "weights": "...", "loss": "..."}},
     "datasets": {"<dataset>": {"n_database": ..., "n_queries": ..., "queries_without_positives": ..., "labelled": ...,
                                "rows": {"<row>": {"R@1": 57.8, "R@2": ..., ...}},
                                "protocol": {...}, "protocols": {"<row>": {...}}, "notes": [...]}}}

Rows: ``pretrained_clean``, ``pretrained_degraded``, ``finetuned``, ``distilled``; a sweep adds
``distilled:<loss expression>``; ``loqi eval`` of a checkpoint writes ``model``. With ``--eval-degrade`` every
row but ``pretrained_clean`` is one row per level, ``<row>@<level>`` (``distilled@jpeg5``), and ``run`` gets
``eval_degrade``. Recall values are percentages; a label-free test set (no positions) has ``"labelled": false``,
empty rows and ``queries_without_positives`` null. With ``eval.sequence`` a dataset adds ``"sequence": {"length",
"window", "v_min", "v_max", "v_step", "rate", "rows": {"<row>": {"R@1": ...}}}``: sequence matching's recall per row.
"""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from loqi_core.errors import DataError
from loqi_core.report.names import slug
from loqi_core.util.fileio import write_text
from loqi_core.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.evaluation.results import EvalResult

SCHEMA = "loqi.metrics/1"
ROWS = ("pretrained_clean", "pretrained_degraded", "finetuned", "distilled")
UNTRAINED = "UNTRAINED MODEL (--weights random): these numbers test the pipeline, not the method"


def row_label(row: str, degrade: str, untrained: bool = False) -> str:
    """Human label of a row, as in the paper's Table II; the teacher rows of an untrained model (``--weights
    random``) say "Random init", not "Pretrained"."""
    teacher = "Random init" if untrained else "Pretrained"
    base, at, level = row.partition("@")
    if at:  # one level of --eval-degrade: a trained model says what it was trained on
        level = "clean images" if level.lower() in ("none", "clean") else level
        if base in ("pretrained_degraded", "model"):
            return f"{teacher if base != 'model' else 'model'}, {level}"
        return f"{row_label(base, '').rstrip(', ')} on {degrade}, {level}"
    if row == "pretrained_clean":
        return f"{teacher}, clean images"
    if row == "pretrained_degraded":
        return f"{teacher}, {degrade}"
    if row == "finetuned":
        return f"Finetuned, {degrade}"
    if row == "distilled":
        return f"Distilled, {degrade}"
    if row.startswith("distilled:"):
        return f"Distilled {row.split(':', 1)[1]}, {degrade}"
    return f"{row}, {degrade}"


def _row_order(row: str) -> tuple[Any, ...]:
    """Rows without a level first; then level by level (natural order: jpeg5 before jpeg10), pretrained first."""
    base, _, level = row.partition("@")
    kind = base.split(":", 1)[0]
    natural = [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", level)]
    return (bool(level), natural, ROWS.index(kind) if kind in ROWS else len(ROWS), row)


def _baseline(row: str) -> str:
    """The row a Δ is taken against: the pretrained model under the same degradation."""
    return "pretrained_degraded" + row[row.index("@") :] if "@" in row else "pretrained_degraded"


class Report:
    """Collects the evaluations of one run and writes every report file into its directory."""

    def __init__(self, run: dict[str, Any], recall_at: Sequence[int]) -> None:
        self.run = run
        self.recall_at = list(recall_at)
        self.rows: dict[str, dict[str, Any]] = {}
        self.results: dict[str, dict[str, EvalResult]] = {}
        self.notes: dict[str, list[str]] = {}

    @property
    def untrained(self) -> bool:
        return bool(self.run.get("untrained"))

    def add(self, row: str, result: "EvalResult", **meta: Any) -> None:
        if row in self.results.get(result.dataset, {}):
            raise ValueError(f'the report already holds row "{row}" of test set "{result.dataset}" (two test sets with one name?)')
        self.rows.setdefault(row, {"label": row_label(row, self.run.get("degrade", ""), self.untrained), **meta})
        self.results.setdefault(result.dataset, {})[row] = result

    def note(self, dataset: str, notes: Sequence[str]) -> None:
        self.notes.setdefault(dataset, []).extend(n for n in notes if n not in self.notes.get(dataset, []))

    def metrics(self) -> dict[str, Any]:
        datasets = {}
        for name, rows in self.results.items():
            ordered = sorted(rows, key=_row_order)
            main = rows.get("pretrained_degraded") or rows[ordered[-1]]
            datasets[name] = {
                "n_database": len(main.database_paths),
                "n_queries": len(main.query_paths),
                "queries_without_positives": main.queries_without_positives,
                "labelled": main.ground_truth is not None,
                "rows": {r: {k: round(v, 4) for k, v in rows[r].recalls.items()} for r in ordered},
                "protocol": main.protocol,
                "protocols": {r: rows[r].protocol for r in ordered},
                "notes": self.notes.get(name, []),
            }
            matched = {r: s for r, s in ((r, rows[r].sequence) for r in ordered) if s is not None}
            if matched:  # eval.sequence: sequence recall beside the rows' single-frame recall
                recalls = {r: {k: round(v, 4) for k, v in s.recalls.items()} for r, s in matched.items()}
                datasets[name]["sequence"] = {**next(iter(matched.values())).settings(), "rows": recalls}
        return {
            "schema": SCHEMA,
            "loqi_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "run": self.run,
            "recall_at": self.recall_at,
            "rows": {r: self.rows[r] for r in sorted(self.rows, key=_row_order)},
            "datasets": datasets,
        }

    def write(
        self, run_dir: Path, grid_queries: int = 6, grid_k: int = 5, grid_select: str = "spread",
        timings: Callable[[], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Write results.md, recall.png, predictions/*.csv, grids/*.png and, last, metrics.json; returns the metrics.
        ``timings()``: the run's stages in seconds, taken when metrics.json is written (key ``timings``)."""
        from loqi_core.report.grids import write_grids

        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.metrics()
        (run_dir / "results.md").write_text(results_markdown(metrics))
        if any(r for ds in metrics["datasets"].values() for r in ds["rows"].values()):  # label-free: no recall to plot
            write_recall_plot(run_dir / "recall.png", [metrics])
        for dataset, rows in self.results.items():
            for row, result in rows.items():
                name = f"{slug(dataset)}__{slug(row)}"
                write_predictions(run_dir / "predictions" / f"{name}.csv", result, self.untrained)
        if grid_queries:
            labels = {row: meta["label"] for row, meta in self.rows.items()}
            write_grids(run_dir / "grids", self.results, labels, grid_queries, grid_k, grid_select,
                        UNTRAINED if self.untrained else None)
        if timings is not None:
            metrics["timings"] = timings()
        write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, default=str))  # atomic: never half a file
        return metrics


# ---- results.md -----------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def results_markdown(metrics: dict[str, Any], title: str | None = None) -> str:
    """The paper's Table II: pretrained clean and degraded as absolute recall, finetuned/distilled as Δ (absolute)."""
    run = metrics.get("run", {})
    default = f"loqi {run.get('kind', '')}: {run.get('method')}, {run.get('degrade')}" if run.get("method") else "loqi results"
    lines = [f"# {title or default}", ""]
    if run.get("untrained"):
        lines += [f"> **{UNTRAINED}**", ""]
    facts = [f"{k}: `{run[k]}`" for k in ("method", "degrade", "protocol", "loss", "weights", "seed") if run.get(k) is not None]
    if facts:
        lines += ["; ".join(facts), ""]
    if run.get("protocol_notes"):
        lines += [f"- {note}" for note in run["protocol_notes"]] + [""]
    lines += table_markdown(metrics) + [""]
    if any("@" in r for ds in metrics["datasets"].values() for r in ds["rows"]):
        lines += ["## Per degradation level", ""] + levels_markdown(metrics) + [""]
    if any("sequence" in ds for ds in metrics["datasets"].values()):
        lines += ["## Sequence matching", ""] + sequence_markdown(metrics) + [""]
    lines += ["Recall@N in percent of all queries (a query without a positive counts as a miss). Δ rows are relative to",
              "the pretrained model on degraded images; the absolute value follows in parentheses.", "", "## Protocol", ""]
    for name, ds in metrics["datasets"].items():
        p = ds["protocol"]
        where = f"database {p['database']}, queries {p['queries']}"
        if any("@" in r for r in ds["rows"]):  # --eval-degrade: each row names its own level
            where = f"{'queries' if p.get('clean_database') else 'database and queries'} degraded at each row's level"
        lines.append(f"- **{name}** ({ds['n_database']} database, {ds['n_queries']} queries): {where}, "
                     f"{p['encoder']}; positives: {p['positives']}; queries without a positive: "
                     f"{p['queries_without_positives']}; search: {p['search']}; {p['temporal']}; precision {p['precision']}.")
        if p.get("sequence"):
            lines.append(f"  - sequence matching: {p['sequence']}")
        lines += [f"  - note: {n}" for n in ds.get("notes", [])]
        if ds.get("labelled") is False:
            lines.append(f"  - no recall: {p['positives'].removeprefix('unknown: ')}")
    return "\n".join(lines + citations_markdown(run.get("citations") or {})) + "\n"


def citations_markdown(citations: dict[str, dict[str, str]]) -> list[str]:
    """A "Cite" section: each paper once, after the parts (``salad`` encoder and aggregator) it is cited for."""
    papers: dict[str, list[str]] = {}
    for kind, parts in citations.items():
        for name, citation in parts.items():
            papers.setdefault(citation, []).append(f"{kind} `{name}`")
    if not papers:
        return []
    return ["", "## Cite", ""] + [f"- {' and '.join(parts)}: {citation}" for citation, parts in papers.items()]


def table_markdown(metrics: dict[str, Any], prefix: str = "") -> list[str]:
    """Markdown table lines: one column group (R@1, R@2, ...) per dataset, one line per row."""
    ns = metrics["recall_at"]
    names = list(metrics["datasets"])
    header = ["" if not prefix else "run"] + [f"{d} R@{n}" if i == 0 else f"R@{n}" for d in names for i, n in enumerate(ns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    all_rows = sorted({r for d in names for r in metrics["datasets"][d]["rows"]}, key=_row_order)
    for row in all_rows:
        label = metrics.get("rows", {}).get(row, {}).get("label", row)
        has_base = any(metrics["datasets"][d]["rows"].get(_baseline(row)) for d in names)  # {}: label-free
        delta = row.split("@", 1)[0].split(":", 1)[0] in ("finetuned", "distilled") and has_base
        cells = [f"{prefix}{label}" + (" Δ" if delta else "")]
        for d in names:
            rows = metrics["datasets"][d]["rows"]
            base = rows.get(_baseline(row))
            for n in ns:
                key = f"R@{n}"
                if key not in rows.get(row, {}):  # not evaluated, or label-free
                    cells.append("–")
                elif delta and base is not None and key in base:
                    cells.append(f"{rows[row][key] - base[key]:+.2f} ({_fmt(rows[row][key])})")
                else:
                    cells.append(_fmt(rows[row][key]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def levels_markdown(metrics: dict[str, Any]) -> list[str]:
    """One line per --eval-degrade level: each model's R@1 at that level side by side, Δ against the pretrained one."""
    first = f"R@{metrics['recall_at'][0]}"
    names = list(metrics["datasets"])
    level_rows = sorted({r for d in names for r in metrics["datasets"][d]["rows"] if "@" in r}, key=_row_order)
    levels = list(dict.fromkeys(r.split("@", 1)[1] for r in level_rows))
    bases = sorted({r.split("@", 1)[0] for r in level_rows}, key=_row_order)
    header, align = ["level"], ["---"]
    for d in names:
        for b in bases:
            teacher = "random init" if metrics.get("run", {}).get("untrained") else "pretrained"
            label = {"pretrained_degraded": teacher}.get(b, b.replace("distilled:", "distilled "))
            header.append(f"{d} {label} {first}" + (" (Δ)" if b not in ("pretrained_degraded", "model") else ""))
            align.append("---:")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for level in levels:
        cells = [f"`{level}`"]
        for d in names:
            rows = metrics["datasets"][d]["rows"]
            base = rows.get(f"pretrained_degraded@{level}")
            for b in bases:
                value = rows.get(f"{b}@{level}")
                if not value:  # not evaluated, or label-free
                    cells.append("–")
                elif base and b not in ("pretrained_degraded", "model"):
                    cells.append(f"{_fmt(value[first])} ({value[first] - base[first]:+.2f})")
                else:
                    cells.append(_fmt(value[first]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def sequence_markdown(metrics: dict[str, Any]) -> list[str]:
    """Per row and test set, each recall@N of the single-frame search → the same of sequence matching (eval.sequence)."""
    ns = metrics["recall_at"]
    names = [d for d, ds in metrics["datasets"].items() if "sequence" in ds]
    header = [""] + [f"{d} (L = {metrics['datasets'][d]['sequence']['length']}) R@{n}" if i == 0 else f"R@{n}"
                     for d in names for i, n in enumerate(ns)]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted({r for d in names for r in metrics["datasets"][d]["sequence"]["rows"]}, key=_row_order):
        cells = [metrics.get("rows", {}).get(row, {}).get("label", row)]
        for d in names:
            frame = metrics["datasets"][d]["rows"].get(row, {})
            sequence = metrics["datasets"][d]["sequence"]["rows"].get(row, {})
            for n in ns:
                key = f"R@{n}"
                cells.append(f"{_fmt(frame[key])} → {_fmt(sequence[key])}" if key in frame and key in sequence else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "Each cell: recall of the single-frame search → recall of sequence matching (SeqSLAM) over the "
                    "same descriptors; its settings are in the protocol below."]  # fmt: skip


# ---- plots, predictions --------------------------------------------------------------------------


def write_recall_plot(path: Path, all_metrics: Sequence[dict[str, Any]], labels: Sequence[str] | None = None) -> None:
    """recall@N against N: one panel per dataset, one line per row (of every run given)."""
    from loqi_core.report.plot import recall_chart

    panels: dict[str, dict[str, dict[str, float]]] = {}
    untrained = False
    for i, m in enumerate(all_metrics):
        untrained |= bool(m.get("run", {}).get("untrained"))
        prefix = f"{labels[i]}: " if labels else ""
        for d, ds in m["datasets"].items():
            for row, rec in ds["rows"].items():
                if not rec:  # label-free: no recall
                    continue
                panels.setdefault(d, {})[prefix + m.get("rows", {}).get(row, {}).get("label", row)] = rec
            sequence = ds.get("sequence", {})
            for row, rec in sequence.get("rows", {}).items():
                if rec:
                    label = m.get("rows", {}).get(row, {}).get("label", row)
                    panels.setdefault(d, {})[f"{prefix}{label}, sequence L={sequence['length']}"] = rec
    run = all_metrics[0].get("run", {}) if all_metrics else {}
    title = "recall@N" + (f" - {run.get('method')} / {run.get('degrade')}" if len(all_metrics) == 1 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    recall_chart(panels, title, UNTRAINED if untrained else None).save(path)


def write_predictions(path: Path, result: "EvalResult", untrained: bool = False) -> None:
    """One line per query: its positives, the rank of the first one, and the top-k database indices and scores."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:  # paths keep their own bytes
        if untrained:
            f.write(f"# {UNTRAINED}\n")
        w = csv.writer(f)
        w.writerow(["query", "query_path", "n_positives", "first_positive_rank", "top_k", "top_k_correct", "top_k_scores", "top1_path"])
        truth = result.ground_truth if result.ground_truth is not None else [None] * len(result.predictions)
        for q, (row, scores, gt) in enumerate(zip(result.predictions, result.scores, truth)):
            valid = row[row >= 0]
            correct = np.isin(valid, gt) if gt is not None else None  # label-free: right and wrong unknown
            first = int(np.argmax(correct)) + 1 if correct is not None and correct.any() else ""
            w.writerow([
                q, result.query_paths[q], len(gt) if gt is not None else "", first, " ".join(map(str, valid.tolist())),
                "".join("1" if c else "0" for c in correct) if correct is not None else "",
                " ".join(f"{s:.5f}" for s in scores[: len(valid)]),
                result.database_paths[valid[0]] if len(valid) else "",
            ])  # fmt: skip


# ---- loqi report ----------------------------------------------------------------------------------


def load_metrics(run_dir: Path) -> dict[str, Any]:
    """A run directory's metrics.json, checked for the schema."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise DataError(f"{run_dir}: no metrics.json (not a finished loqi run directory)")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not str(data.get("schema", "")).startswith("loqi.metrics/"):
        raise DataError(f"{path}: not a loqi metrics file (schema {data.get('schema')!r})")
    return data


def run_label(metrics: dict[str, Any], run_dir: Path) -> str:
    run = metrics.get("run", {})
    parts = [run.get("method"), run.get("degrade"), run.get("loss")]
    return " ".join(str(p) for p in parts if p) or Path(run_dir).name


def combined_table(all_metrics: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    """One Markdown table over several runs: a line per (run, row), a column group per dataset any run has."""
    names = list(dict.fromkeys(d for m in all_metrics for d in m["datasets"]))
    ns = sorted({n for m in all_metrics for n in m["recall_at"]})
    header = ["run", "model"] + [f"{d} R@{n}" if i == 0 else f"R@{n}" for d in names for i, n in enumerate(ns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m, label in zip(all_metrics, labels):
        for row in sorted({r for ds in m["datasets"].values() for r in ds["rows"]}, key=_row_order):
            cells = [label, m.get("rows", {}).get(row, {}).get("label", row)]
            for d in names:
                values = m["datasets"].get(d, {}).get("rows", {}).get(row, {})
                cells += [_fmt(values[f"R@{n}"]) if f"R@{n}" in values else "–" for n in ns]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def combine(run_dirs: Sequence[Path], out: Path) -> Path:
    """``loqi report``: one table (report.md, report.json) and one plot (recall.png) over several runs."""
    taken = [n for n in ("metrics.json", "config.json", "train_log.csv") if (out / n).exists()]
    if taken or (out.is_dir() and any(out.iterdir()) and not (out / "report.json").exists()):
        what = f"a run directory ({', '.join(taken)})" if taken else "not empty and holds no earlier report"
        raise DataError(f"--out {out} is {what}; the report would overwrite its files. Choose another --out")
    all_metrics = [load_metrics(Path(d)) for d in run_dirs]
    labels = [run_label(m, Path(d)) for m, d in zip(all_metrics, run_dirs)]
    if len(set(labels)) < len(labels):
        labels = [f"{lbl} [{Path(d).name}]" for lbl, d in zip(labels, run_dirs)]
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# loqi report", ""]
    if any(m.get("run", {}).get("untrained") for m in all_metrics):
        lines += [f"> **Some runs are untrained: {UNTRAINED}**", ""]
    lines += ["## All runs", "", "Recall@N in percent, absolute (each run's Δ rows are in its own table below).", ""]
    lines += combined_table(all_metrics, labels) + [""]
    for m, lbl, d in zip(all_metrics, labels, run_dirs):
        lines += [f"## {lbl}", "", f"run directory: `{d}`" + (" (**untrained**)" if m.get("run", {}).get("untrained") else ""), ""]
        lines += table_markdown(m) + [""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "report.json").write_text(json.dumps({"schema": "loqi.report/1", "runs": [
        {"label": lbl, "dir": str(d), "metrics": m} for m, lbl, d in zip(all_metrics, labels, run_dirs)]}, indent=2))
    write_recall_plot(out / "recall.png", all_metrics, labels)
    return out
