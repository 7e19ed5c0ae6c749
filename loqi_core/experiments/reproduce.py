"""``loqi reproduce table2``: the paper's Table II grid under the paper protocol, one ``loqi run`` per method and
degradation, resumable, and one results.md with the published numbers (``paper_results.json``) beside loqi's.

    runs = plan_table2(methods=["mixvpr"], degrades=["jpeg10"], tests=["nordland"], out=Path("runs/table2"))
    print(describe_plan(runs, overrides))          # --dry-run
    run_table2(runs, overrides)                    # runs what is not done yet, then writes results.md

Each run is ``run_experiment`` (teacher clean and degraded, finetune baseline where the paper has one, distil
with the method's best loss) in ``OUT/<method>__<degrade>``; a finished run (metrics.json) is skipped, an
unfinished one resumes its training and takes its evaluations from the descriptor cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from loqi_core.config import RunConfig, dump_config, resolve_run_config
from loqi_core.errors import ConfigError, LoqiError
from loqi_core.hooks.manager import Plugins, get_plugins
from loqi_core.report.names import slug

PAPER_FILE = Path(__file__).with_name("paper_results.json")
ROWS = ("pretrained_clean", "pretrained_degraded", "finetuned", "distilled")
ABSOLUTE = ("pretrained_clean", "pretrained_degraded")
"""Rows the paper gives as absolute recall; finetuned and distilled are differences to pretrained_degraded."""
TRAIN_SETS = {"jpeg": "gsv-cities", "other": "pitts250k"}
"""The paper's training sets: GSV-Cities for JPEG (Table II), Pitts250k for resolution and video (Sec. VI-D)."""

Echo = Callable[[str], None]


def paper_table() -> dict[str, Any]:
    """The published Table II (with its citation), as transcribed in ``paper_results.json``."""
    return json.loads(PAPER_FILE.read_text())


@dataclass
class PlannedRun:
    """One ``loqi run`` of the grid."""

    method: str
    degrade: str
    tests: list[str]
    train: str
    loss: str
    finetune: bool
    out: Path

    @property
    def done(self) -> bool:
        return (self.out / "metrics.json").exists()

    def overrides(self, protocol: str) -> dict[str, Any]:
        return {"model.method": self.method, "degrade": self.degrade, "protocol": protocol, "distill.train": self.train,
                "eval.test": list(self.tests), "distill.loss": self.loss, "out": str(self.out)}  # fmt: skip


def train_set_for(degrade: str) -> str:
    return TRAIN_SETS["jpeg"] if all(t.strip().startswith("jpeg") for t in degrade.split("+")) else TRAIN_SETS["other"]


def plan_table2(
    methods: Sequence[str] | None = None,
    degrades: Sequence[str] | None = None,
    tests: Sequence[str] | None = None,
    *,
    out: Path,
    train: str | None = None,
    plugins: Plugins | None = None,
) -> list[PlannedRun]:
    """The grid: the paper's five methods × JPEG-10 × its three test sets unless subset or extended."""
    plugins = plugins or get_plugins()
    paper = paper_table()
    runs = []
    for method in methods or list(paper["methods"]):
        spec = plugins.method(method)[0]
        facts = paper["methods"].get(method, {})
        for degrade in degrades or [paper["degrade"]]:
            runs.append(PlannedRun(
                method, degrade, list(tests or paper["tests"]), train or train_set_for(degrade),
                facts.get("loss", spec.default_loss), facts.get("finetune", True), out / f"{slug(method)}__{slug(degrade)}",
            ))  # fmt: skip
    return runs


def run_config(run: PlannedRun, base: dict[str, Any], config_file: str | Path | None = None, protocol: str = "paper") -> RunConfig:
    """The resolved config of one run: the grid's fields over the command's flags (``base``)."""
    return resolve_run_config(config_file, {**base, **run.overrides(protocol)})


# ---- --dry-run ------------------------------------------------------------------------------------


def _dataset_status(name: str, kind: str, root: Path | None, plugins: Plugins) -> str:
    from loqi_core.data.datasets import load_dataset

    try:
        data = load_dataset(name, kind, root=root, plugins=plugins)  # type: ignore[arg-type]
    except LoqiError as exc:
        source = plugins.dataset(name.partition(":")[0]).source if name.partition(":")[0] in plugins.datasets else ""
        return f"MISSING: {exc}" + (f"\n      get it: {source}" if source else "")
    if kind == "test":
        return f"found ({len(data.database)} database, {len(data.queries)} queries)"  # type: ignore[union-attr]
    return f"found ({len(data.images)} images)"  # type: ignore[union-attr]


def _weights_status(config: RunConfig, plugins: Plugins) -> str:
    from loqi_core.models.weights import local_weights, weights_path

    spec = plugins.method(config.model.method)[0]  # type: ignore[arg-type]
    name = config.model.weights
    if name == "random":
        return "random initialisation (smoke run: the numbers measure the pipeline only)"
    variant = spec.weights[0] if name == "default" and spec.weights else next((w for w in spec.weights if w.name == name), None)
    if variant is None:
        return f"{name}: " + ("found" if Path(name).exists() else "MISSING (no such file)")
    if variant.locate is not None:
        return f"{variant.name} ({variant.filename}): shipped in a Python package"
    found = local_weights(variant)
    if found is not None:
        return f"{variant.name} ({variant.filename}): found at {found}"
    return f"{variant.name} ({variant.filename}): MISSING; get it from {variant.url or variant.manual} and put it at {weights_path(variant)}"


def _paper_line(run: PlannedRun, paper: dict[str, Any]) -> str:
    facts = paper["methods"].get(run.method)
    if facts is None or run.degrade != paper["degrade"]:
        return "paper: no published numbers for this cell (loqi's numbers are reported alone)"
    parts = []
    for t in run.tests:
        if t in facts["pretrained_degraded"]:
            parts.append(f"{t} {facts['pretrained_degraded'][t][0]:.2f} → Δ {facts['distilled'][t][0]:+.2f}")
    return "paper R@1, pretrained degraded → distilled: " + ("; ".join(parts) or "none of these test sets")


def describe_plan(runs: Sequence[PlannedRun], base: dict[str, Any], config_file: str | Path | None = None,
                  protocol: str = "paper", plugins: Plugins | None = None) -> str:  # fmt: skip
    """The plan as text: each run, what it needs, what is missing locally and where to get it."""
    from loqi_core.protocol import protocol_notes

    plugins = plugins or get_plugins()
    paper = paper_table()
    todo = sum(not r.done for r in runs)
    lines = [f"loqi reproduce table2: {len(runs)} runs ({len(runs) - todo} done, {todo} to run), protocol {protocol}",
             f"published numbers: {paper['citation']}", ""]  # fmt: skip
    datasets: dict[tuple[str, str], Path | None] = {}
    weights: dict[str, str] = {}
    for i, run in enumerate(runs, 1):
        config = run_config(run, base, config_file, protocol)
        steps = f"{config.distill.max_steps} steps" if config.distill.max_steps else f"{config.distill.epochs} epoch(s)"
        lines += [
            f"[{i}/{len(runs)}] {run.method} / {config.degrade}  →  {run.out}  ({'done, skipped' if run.done else 'to run'})",
            f"    rows: pretrained clean, pretrained degraded, {'finetuned (' + config.distill.finetune_loss + '), ' if run.finetune else ''}"
            f"distilled ({run.loss}); train {run.train} for {steps}; test {', '.join(run.tests)}",
            f"    {_paper_line(run, paper)}",
        ]  # fmt: skip
        lines += [f"    {n}" for n in protocol_notes(protocol, plugins.method(run.method)[0])]
        datasets[(run.train, "train")] = config.data_root
        for t in run.tests:
            datasets[(t, "test")] = config.data_root
        weights.setdefault(run.method, _weights_status(config, plugins))
    lines += ["", "datasets:"]
    lines += [f"  {name} ({kind}): {_dataset_status(name, kind, root, plugins)}" for (name, kind), root in datasets.items()]
    lines += ["", "weights:"]
    lines += [f"  {method}: {status}" for method, status in weights.items()]
    return "\n".join(lines)


# ---- running and the table ------------------------------------------------------------------------


def run_table2(runs: Sequence[PlannedRun], base: dict[str, Any], out: Path, config_file: str | Path | None = None,
               protocol: str = "paper", plugins: Plugins | None = None, echo: Echo = print) -> Path:  # fmt: skip
    """Run what is not done (resuming what was started), then write ``out/results.md``; returns its path."""
    from loqi_core.experiments.runner import run_experiment

    if int(os.environ.get("RANK", "0")) != 0:  # another rank of a torchrun job: it encodes its share, rank 0 reports
        echo = _silent
    for i, run in enumerate(runs, 1):
        config = run_config(run, base, config_file, protocol)
        if run.done:
            _check_same(run, config)
            echo(f"[{i}/{len(runs)}] {run.method} / {config.degrade}: done, skipped ({run.out})")
            continue
        echo(f"[{i}/{len(runs)}] {run.method} / {config.degrade}: running in {run.out}")
        run_experiment(config, baseline="finetune" if run.finetune else None, plugins=plugins, echo=echo)
    if echo is _silent:
        return out / "results.md"
    return write_results(runs, out, protocol)


def _silent(text: str) -> None:
    """The echo of ranks other than 0."""


def _check_same(run: PlannedRun, config: RunConfig) -> None:
    """A finished run made with other settings is not silently reported as this one."""
    done = json.loads((run.out / "config.json").read_text())
    now = json.loads(dump_config(config))
    if now.get("distill", {}).get("view_size") is None:  # resolved from the test sets when the run starts
        for cfg in (done, now):
            cfg.get("distill", {}).pop("view_size", None)
    same_results = ("device", "threads")  # where it ran and with how many threads do not make it another run
    diffs = sorted(k for k in set(done) | set(now) if k not in same_results and done.get(k) != now.get(k))
    if diffs:
        raise ConfigError(f"{run.out} holds a finished run with other settings ({', '.join(diffs)}); "
                          "delete it or give another --out")  # fmt: skip


def _cell(values: list[float] | None) -> list[str]:
    return [f"{v:.2f}" for v in values] if values is not None else ["—"] * 4


def _signed(values: list[float] | None) -> list[str]:
    return [f"{v:+.2f}" for v in values] if values is not None else ["—"] * 4


def write_results(runs: Sequence[PlannedRun], out: Path, protocol: str = "paper") -> Path:
    """results.md in Table II's layout: per method and row, loqi, the paper, and loqi − paper, per test set."""
    paper = paper_table()
    ns = paper["recall_at"]
    lines = ["# Table II reproduced by loqi", "",
             f"Protocol `{protocol}`. Pretrained rows are recall@N in %; finetuned and distilled rows are the change against",
             "the pretrained model on the degraded images (as in the paper). For each row: loqi's value, the published one",
             "and loqi − paper. `—`: no published value, or the run has no such row.", "",
             f"Published numbers: {paper['citation']}", ""]  # fmt: skip
    for degrade in dict.fromkeys(r.degrade for r in runs):
        group = [r for r in runs if r.degrade == degrade and r.done]
        if not group:
            continue
        tests = list(dict.fromkeys(t for r in group for t in r.tests))
        if any(json.loads((r.out / "metrics.json").read_text())["run"].get("untrained") for r in group):
            lines += ["> **UNTRAINED MODELS (--weights random): these numbers test the pipeline, not the method.**", ""]
        lines += [f"## {degrade}", ""]
        header = ["method", "row", ""] + [f"{t} R@{n}" if i == 0 else f"R@{n}" for t in tests for i, n in enumerate(ns)]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for run in group:
            metrics = json.loads((run.out / "metrics.json").read_text())
            facts = paper["methods"].get(run.method) if degrade == paper["degrade"] else None
            for row in ROWS:
                ours, theirs = [], []
                for t in tests:
                    ours.append(_ours(metrics, t, row, ns))
                    theirs.append(facts.get(row, {}).get(t) if facts else None)
                if all(o is None for o in ours) and all(p is None for p in theirs):
                    continue
                fmt = _cell if row in ABSOLUTE else _signed
                label = f"distilled ({run.loss})" if row == "distilled" else row.replace("_", " ")
                diff = [[a - b for a, b in zip(o, p)] if o is not None and p is not None else None for o, p in zip(ours, theirs)]
                for source, values, f in (("loqi", ours, fmt), ("paper", theirs, fmt), ("loqi − paper", diff, _signed)):
                    cells = [c for v in values for c in f(v)]
                    lines.append(f"| {run.method} | {label} | {source} | " + " | ".join(cells) + " |")
        lines.append("")
    path = out / "results.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _ours(metrics: dict[str, Any], test: str, row: str, ns: list[int]) -> list[float] | None:
    """loqi's values of one row on one test set, as the paper states them (absolute, or Δ to pretrained degraded)."""
    rows = next((d["rows"] for name, d in metrics["datasets"].items() if name == test or name.startswith(test + ":")), None)
    if rows is None or row not in rows:
        return None
    values = [rows[row][f"R@{n}"] for n in ns]
    if row in ABSOLUTE:
        return values
    base = rows.get("pretrained_degraded")
    return [v - base[f"R@{n}"] for v, n in zip(values, ns)] if base else None
