"""``loqi reproduce table2 | table3 | table4 | fig5``: the paper's experiments under the paper protocol, one run
directory per method (and degradation), resumable, and one results.md with the published numbers beside loqi's.

    runs = plan_table2(methods=["mixvpr"], tests=["nordland"], out=Path("runs/table2"))
    print(describe_plan("table2", runs, overrides))     # --dry-run
    run_plan("table2", runs, overrides, out)            # runs what is not done yet, then writes results.md

Table II: ``run_experiment`` (teacher clean and degraded, finetune baseline where the paper has one, the student of
the method's best loss). Table III: ``run_eval`` of the pretrained models, clean and JPEG-10 (the paper distils
nothing there). Table IV and Fig. 5: ``run_sweep`` of NetVLAD trained on Pitts250k at reduced resolution with the
paper's losses, on the outdoor sets (Table IV) or on the 360° video set at each resolution and QP (Fig. 5, a plot).
A finished run (metrics.json) is skipped, an unfinished one resumes its training and takes its evaluations from the
descriptor cache. The published values are in ``paper_results.json``, with the paper's citation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from loqi_core.config import RunConfig, dump_config, resolve_run_config
from loqi_core.errors import ConfigError, LoqiError
from loqi_core.hooks.manager import Plugins, get_plugins
from loqi_core.protocol import PAPER_VALIDATION
from loqi_core.report.names import slug

PAPER_FILE = Path(__file__).with_name("paper_results.json")
TABLES = ("table2", "table3", "table4", "fig5")
ROWS = ("pretrained_clean", "pretrained_degraded", "finetuned", "distilled")
ABSOLUTE = ("pretrained_clean", "pretrained_degraded")
"""Rows the paper gives as absolute recall; finetuned and distilled are differences to pretrained_degraded."""
TRAIN_SETS = {"jpeg": "gsv-cities", "other": "pitts250k"}
"""The paper's training sets: GSV-Cities for JPEG (Table II), Pitts250k for resolution and video (Sec. VI-D)."""
LOW_RESOLUTION = "res180p"
"""Where Table IV and Fig. 5 train (and Table IV tests): the authors' Pitts250k trainer trains at 180p
(VPR4LQQ ``configs/trainer_pitts250.yaml``); the paper's text gives neither resolution."""
FIG5_RESOLUTIONS = (135, 270)
"""Two of the three resolutions of the authors' video pipeline (135p, 270p, 540p); the text does not say which two."""
FINETUNE_NOTE = (
    "the authors' finetune code is unpublished (the paper: each method's unmodified training code); loqi's finetune "
    "baseline trains with each method's own published loss: multi-similarity for MixVPR, SALAD and CricaVPR "
    "(trained on GSV-Cities), NetVLAD's triplet as in pytorch-NetVlad"
)
GPU_RATES = {"mixvpr": 1073, "cricavpr": 350, "salad": 648, "netvlad": 563, "lite0-gem": 1151, "anyloc": 156, "boq": 751}
"""Images/s of a whole distillation step (teacher forward + student forward/backward) on one H100 in bf16, from
docs/performance.md ("full img/s"): the basis of the --dry-run GPU-hours estimate."""

Echo = Callable[[str], None]
Kind = Literal["run", "eval", "sweep"]


def paper_table() -> dict[str, Any]:
    """The paper's published numbers (Tables I-IV, what Fig. 5 shows) and its citation, from ``paper_results.json``."""
    return json.loads(PAPER_FILE.read_text())


@dataclass
class PlannedRun:
    """One run of a reproduction: a ``loqi run`` (Table II), ``eval`` (Table III) or ``sweep`` (Table IV, Fig. 5)."""

    table: str
    kind: Kind
    method: str
    degrade: str
    tests: list[str]
    train: str | None
    losses: list[str]
    finetune: bool
    out: Path
    levels: list[str] = field(default_factory=list)
    """``eval.degrade``: each row evaluated at each of these degradations (Table III: clean and JPEG-10; Fig. 5)."""

    @property
    def done(self) -> bool:
        return (self.out / "metrics.json").exists()

    def overrides(self, protocol: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model.method": self.method, "degrade": self.degrade, "protocol": protocol,
                               "eval.test": list(self.tests), "out": str(self.out)}  # fmt: skip
        if self.train is not None:
            out["distill.train"] = self.train
        if self.kind == "run":
            out["distill.loss"] = self.losses[0]
        if self.levels:
            out["eval.degrade"] = list(self.levels)
        return out


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
    """Table II: the paper's five methods × JPEG-10 × its three test sets unless subset or extended."""
    plugins = plugins or get_plugins()
    paper = paper_table()["table2"]
    runs = []
    for method in methods or list(paper["methods"]):
        spec = plugins.method(method)[0]
        facts = paper["methods"].get(method, {})
        for degrade in degrades or [paper["degrade"]]:
            runs.append(PlannedRun(
                "table2", "run", method, degrade, list(tests or paper["tests"]), train or train_set_for(degrade),
                [facts.get("loss", spec.default_loss)], facts.get("finetune", True), out / f"{slug(method)}__{slug(degrade)}",
            ))  # fmt: skip
    return runs


def plan_table3(methods: Sequence[str] | None = None, tests: Sequence[str] | None = None, *, out: Path,
                plugins: Plugins | None = None) -> list[PlannedRun]:  # fmt: skip
    """Table III: each pretrained method on the three indoor sets, clean and JPEG-10 (no training in the paper)."""
    plugins = plugins or get_plugins()
    paper = paper_table()["table3"]
    runs = []
    for method in methods or list(paper["methods"]):
        plugins.method(method)  # an unknown name fails here, with a suggestion
        runs.append(PlannedRun("table3", "eval", method, paper["degrade"], list(tests or paper["tests"]), None, [], False,
                               out / slug(method), ["none", paper["degrade"]]))  # fmt: skip
    return runs


def plan_table4(degrade: str | None = None, tests: Sequence[str] | None = None, *, out: Path, train: str | None = None,
                losses: Sequence[str] | None = None) -> list[PlannedRun]:  # fmt: skip
    """Table IV: NetVLAD distilled on Pitts250k at reduced resolution with each test set's best loss (MSE; ICKD + MSE
    on Tokyo 24/7), tested at that resolution on the outdoor sets; no finetune row in the paper."""
    paper = paper_table()["table4"]
    degrade = degrade or LOW_RESOLUTION
    best = list(losses or dict.fromkeys(paper["best_loss"].values()))
    return [PlannedRun("table4", "sweep", paper["method"], degrade, list(tests or paper["tests"]), train or paper["train"],
                       best, False, out / f"{paper['method']}__{slug(degrade)}")]  # fmt: skip


def plan_fig5(resolutions: Sequence[int] | None = None, qps: Sequence[int] | None = None, tests: Sequence[str] | None = None,
              *, out: Path, train: str | None = None, degrade: str | None = None) -> list[PlannedRun]:  # fmt: skip
    """Fig. 5: NetVLAD distilled on Pitts250k at reduced resolution (ICKD, MSE, ICKD + MSE), against the pretrained
    model, on the 360° video set at each resolution and QP (``res{R}p+qp{Q}``, HEVC at constant QP)."""
    paper = paper_table()["fig5"]
    levels = [f"res{r}p+qp{q}" for r in (resolutions or FIG5_RESOLUTIONS) for q in (qps or paper["qps"])]
    degrade = degrade or LOW_RESOLUTION
    return [PlannedRun("fig5", "sweep", paper["method"], degrade, list(tests or ["video360"]), train or paper["train"],
                       list(paper["losses"]), False, out / f"{paper['method']}__{slug(degrade)}", levels)]  # fmt: skip


def run_config(run: PlannedRun, base: dict[str, Any], config_file: str | Path | None = None, protocol: str = "paper") -> RunConfig:
    """The resolved config of one run: the plan's fields over the command's flags (``base``)."""
    return resolve_run_config(config_file, {**base, **run.overrides(protocol)})


# ---- --dry-run ------------------------------------------------------------------------------------


def _dataset_status(name: str, kind: str, root: Path | None, plugins: Plugins) -> tuple[str, int | None]:
    """A line on one dataset (found with its size, or missing with where to get it) and its number of images (when
    missing: the published size, Table I's or the dataset's expected counts, if any)."""
    import warnings

    from loqi_core.data.datasets import load_dataset

    try:
        with warnings.catch_warnings():  # a protocol mismatch is reported in the line, not as a warning
            warnings.simplefilter("ignore")
            data = load_dataset(name, kind, root=root, plugins=plugins)  # type: ignore[arg-type]
    except LoqiError as exc:
        base = name.partition(":")[0].partition("?")[0]
        spec = plugins.dataset(base) if base in plugins.datasets else None
        published = paper_table()["table1"]["sizes"].get(base) or (spec.expected_counts if spec and kind == "test" else None)
        whole = published is not None and {"database", "queries"} <= set(published)
        source = f"\n      get it: {spec.source}" if spec and spec.source else ""
        return f"MISSING: {exc}{source}", sum(published.values()) if whole else None  # type: ignore[union-attr]
    if kind == "test":
        n_db, n_q = len(data.database), len(data.queries)  # type: ignore[union-attr]
        notes = [n for n in data.notes if n.startswith("PROTOCOL MISMATCH")]
        return f"found ({n_db} database, {n_q} queries)" + (f"; {notes[0]}" if notes else ""), n_db + n_q
    return f"found ({len(data.images)} images)", len(data.images)  # type: ignore[union-attr]


def _weights_status(config: RunConfig, plugins: Plugins) -> list[str]:
    """The method's weights and the other files its protocol reads: found, or where to get them."""
    from loqi_core.models.weights import local_weights, weights_path

    spec = plugins.method(config.model.method)[0]  # type: ignore[arg-type]
    name = config.model.weights
    lines = []
    variant = spec.weights[0] if name == "default" and spec.weights else next((w for w in spec.weights if w.name == name), None)
    if name == "random":
        lines.append("random initialisation (smoke run: the numbers measure the pipeline only)")
    elif variant is None:
        lines.append(f"{name}: " + ("found" if Path(name).exists() else "MISSING (no such file)"))
    elif variant.locate is not None:
        lines.append(f"{variant.name} ({variant.filename}): shipped in a Python package")
    else:
        found = local_weights(variant)
        lines.append(f"{variant.name} ({variant.filename}): found at {found}" if found is not None else
                     f"{variant.name} ({variant.filename}): MISSING; get it from {variant.url or variant.manual} and put "
                     f"it at {weights_path(variant)}")  # fmt: skip
    protocol = spec.protocols.get(config.protocol)
    for file in protocol.files if protocol is not None else ():
        found = local_weights(file)
        lines.append(f"{file.name} ({file.filename}): found at {found}" if found is not None else
                     f"{file.name} ({file.filename}): MISSING; get it from {file.url or file.manual} and put it at "
                     f"{weights_path(file)}")  # fmt: skip
    return lines


def _values(values: list[float] | None, signed: bool = False) -> str:
    if values is None:
        return "—"
    return "/".join(f"{v:+.2f}" if signed else f"{v:.2f}" for v in values)


def published_lines(run: PlannedRun, paper: dict[str, Any]) -> list[str]:
    """Every published row of the run's cell (clean included), R@N per test set; or why there is none."""
    table = paper[run.table]
    ns = "/".join(f"R@{n}" for n in table.get("recall_at", []))
    if run.table == "table2":
        facts = table["methods"].get(run.method)
        if facts is None or run.degrade != table["degrade"]:
            return ["paper: no published numbers for this cell (loqi's numbers are reported alone)"]
        lines = []
        for row in ROWS:
            if row not in facts:
                continue
            label = {"distilled": f"distilled ({facts['loss']}) Δ", "finetuned": "finetuned Δ"}.get(row, row.replace("_", " "))
            cells = [f"{t} {_values(facts[row].get(t), row not in ABSOLUTE)}" for t in run.tests if t in facts[row]]
            lines.append(f"paper {label} ({ns}): " + ("; ".join(cells) or "none of these test sets"))
        return lines
    if run.table == "table3":
        facts = table["methods"].get(run.method)
        if facts is None:
            return ["paper: no published numbers for this method (loqi's numbers are reported alone)"]
        return [f"paper pretrained {q} ({ns}): " + "; ".join(f"{t} {_values(facts[q][t])}" for t in run.tests if t in facts[q])
                for q in ("clean", "degraded")]  # fmt: skip
    if run.table == "table4":
        return [f"paper pretrained ({ns}): " + "; ".join(f"{t} {_values(table['pretrained'].get(t))}" for t in run.tests),
                f"paper distilled Δ, best loss per set ({ns}): " + "; ".join(
                    f"{t} ({table['best_loss'].get(t, '?')}) {_values(table['distilled'].get(t), True)}" for t in run.tests),
                f"not in the paper's text: {table['missing']}"]  # fmt: skip
    return [f"paper: no published numbers ({table['missing']})"]


def recipe_lines(config: RunConfig, run: PlannedRun) -> list[str]:
    """The training recipe a run uses, as resolved (images, batch, mining, parts and validation, selection, finetune)."""
    if run.kind == "eval":
        return ["training: none (the paper evaluates the pretrained models only)"]
    d = config.distill
    if d.view_size == "native":
        views = "native size, no crop or resize"
    else:
        size = "x".join(map(str, d.view_size)) if d.view_size else "test-set size"
        views = f"{size} views, augment {'on' if d.augment else 'off'}"
    anchors = d.places_per_batch * d.images_per_place
    if d.mine:
        batch = (f"{d.places_per_batch} places × {d.images_per_place} anchors, each with its mined positive and 5 negatives "
                 f"= {anchors * 7} images per step")  # fmt: skip
        mining = ("mining: once before training, with the pretrained teacher's descriptors of the raw images: positive = "
                  "the most similar image within 20 m, negatives = 5 random images of the anchor's group (city) beyond 30 m; "
                  "cached, never re-mined")  # fmt: skip
    else:
        batch = f"{d.places_per_batch} places × {d.images_per_place} images = {anchors} images per step"
        mining = "mining: none"
    length = f"{d.max_steps} steps" if d.max_steps else f"{d.epochs} epoch(s)"
    fields = d.model_dump()
    if "val" not in fields:
        val = (f"validation: NOT APPLIED, this loqi has no distill.val (the paper protocol asks for {PAPER_VALIDATION}); "
               "selection: the last checkpoint")  # fmt: skip
    elif not fields["val"]:
        val = "validation: none; selection: the last checkpoint"
    else:
        when = (f"after each of {fields['val_parts']} parts of the epoch" if fields.get("val_parts")
                else f"every {fields.get('val_every')} steps")  # fmt: skip
        val = (f"validation: {fields['val']} {when}, queries {config.degrade} through the student against the database "
               f"encoded by the {fields.get('val_database')}; selection: the {fields.get('select')} checkpoint")  # fmt: skip
    bn = "frozen" if d.freeze_bn else "drifting in " + ("every layer" if d.bn_scope == "all" else "trainable layers")
    lines = [
        f"training images: {run.train or d.train}, {views}; the teacher sees the clean image, the student {config.degrade}",
        f"batch: {batch}; {length}",
        mining,
        val,
        f"optimiser: Adam lr {d.lr:g}, ExponentialLR {d.gamma:g} per step, gradient clip {d.clip_grad_norm}; precision "
        f"{d.precision}{', TF32' if d.tf32 else ''}; batch norm {bn}, dropout {'on' if d.dropout else 'off'}",
        "distilled with: " + ", ".join(run.losses),
    ]  # fmt: skip
    if run.finetune:
        params = {k: v for k, v in {**d.loss_params, **d.finetune_loss_params}.items() if k in d.finetune_loss}
        shown = "; ".join(f"{term}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items())
                          for term, p in params.items())  # fmt: skip
        lines.append(f"finetune: {d.finetune_loss}{f' ({shown})' if shown else ''} on place batches; {FINETUNE_NOTE}")
    return lines


def _images_per_pass(config: RunConfig, n_train: int) -> int:
    """Images a distillation passes through teacher and student: epochs over the images (7 per anchor when mined)."""
    d = config.distill
    per_anchor = 7 if d.mine else 1
    if d.max_steps:
        return d.max_steps * d.places_per_batch * d.images_per_place * per_anchor
    return d.epochs * n_train * per_anchor


def _hours(hours: float) -> str:
    return f"{hours:.1f}" if hours >= 0.1 else "< 0.1"


def gpu_hours(runs: Sequence[PlannedRun], configs: Sequence[RunConfig], sizes: dict[tuple[str, str], int | None]) -> list[str]:
    """An estimate of the GPU hours of the plan from docs/performance.md's measured step rates (``GPU_RATES``)."""
    total, unknown, lines = 0.0, [], []
    for run, config in zip(runs, configs):
        rate = GPU_RATES.get(run.method)
        if rate is None:
            unknown.append(f"{run.method}: no measured rate")
            continue
        images, trained = 0, 0
        if run.kind != "eval":
            n_train = sizes.get((run.train or "", "train"))
            trained = len(run.losses) + (1 if run.finetune else 0)
            if n_train is None:
                unknown.append(f"training set {run.train}: not found, size unknown (its training is not counted)")
            else:
                images += trained * _images_per_pass(config, n_train) + (n_train if config.distill.mine else 0)
        # every model at every level; a training run also evaluates the pretrained model on clean images
        evaluations = (1 + trained) * max(1, len(run.levels)) + (1 if run.kind != "eval" else 0)
        for t in run.tests:
            n = sizes.get((t, "test"))
            if n is None:
                unknown.append(f"test set {t}: not found, size unknown")
                continue
            images += n * evaluations
        hours = images / rate / 3600
        total += 0.0 if run.done else hours
        lines.append(f"  {run.method} / {config.degrade}: {images:,} images at {rate} img/s ≈ {_hours(hours)} GPU-h"
                     + (" (done)" if run.done else ""))  # fmt: skip
    head = [f"GPU-hours to run (estimate): {_hours(total)}" + (" + unknown parts" if unknown else ""),
            "  basis: docs/performance.md's H100 bf16 rates of a whole distillation step (teacher forward + student "
            "forward/backward), applied to every image of training, mining and evaluation; the paper protocol runs "
            "fp32/TF32 (slower per step), evaluation and mining only encode (faster): an order of magnitude, not a quote"]  # fmt: skip
    return head + lines + [f"  unknown: {u}" for u in dict.fromkeys(unknown)]


def describe_plan(table: str, runs: Sequence[PlannedRun], base: dict[str, Any], config_file: str | Path | None = None,
                  protocol: str = "paper", plugins: Plugins | None = None) -> str:  # fmt: skip
    """The plan as text: each run with every published row it aims at and its training recipe, the datasets and
    files it needs (found, or where to get them), and an estimate of the GPU hours."""
    from loqi_core.protocol import protocol_notes

    plugins = plugins or get_plugins()
    paper = paper_table()
    todo = sum(not r.done for r in runs)
    lines = [f"loqi reproduce {table}: {len(runs)} runs ({len(runs) - todo} done, {todo} to run), protocol {protocol}",
             f"published numbers: {paper['citation']}; {paper[table]['caption']}", ""]  # fmt: skip
    datasets: dict[tuple[str, str], Path | None] = {}
    weights: dict[str, list[str]] = {}
    configs = []
    for i, run in enumerate(runs, 1):
        config = run_config(run, base, config_file, protocol)
        configs.append(config)
        rows = {"run": "pretrained clean, pretrained degraded, " + ("finetuned, " if run.finetune else "") + f"distilled ({', '.join(run.losses)})",
                "eval": "pretrained, clean and " + run.degrade,
                "sweep": "pretrained, distilled with each of " + ", ".join(run.losses)}[run.kind]  # fmt: skip
        where = f"test {', '.join(run.tests)}" + (f" at {len(run.levels)} levels ({run.levels[0]} … {run.levels[-1]})" if run.levels else "")
        lines += [f"[{i}/{len(runs)}] {run.method} / {config.degrade}  →  {run.out}  ({'done, skipped' if run.done else 'to run'})",
                  f"    rows: {rows}; {where}"]  # fmt: skip
        lines += [f"    {line}" for line in published_lines(run, paper)]
        lines += [f"    recipe: {line}" for line in recipe_lines(config, run)]
        lines += [f"    {n}" for n in protocol_notes(protocol, plugins.method(run.method)[0])]
        if run.kind != "eval":
            datasets[(run.train or config.distill.train, "train")] = config.data_root
            val = config.distill.model_dump().get("val")
            if val:
                datasets[(val, "test")] = config.data_root
        for t in run.tests:
            datasets[(t, "test")] = config.data_root
        weights.setdefault(run.method, _weights_status(config, plugins))
    sizes: dict[tuple[str, str], int | None] = {}
    lines += ["", "datasets:"]
    expected = paper["table1"]["sizes"]
    for (name, kind), root in datasets.items():
        status, sizes[(name, kind)] = _dataset_status(name, kind, root, plugins)
        table1 = f" [Table I: {expected[name]['database']} database, {expected[name]['queries']} queries]" if name in expected else ""
        lines.append(f"  {name} ({kind}): {status}{table1}")
    lines += ["", "weights and files:"]
    lines += [f"  {method}: {status}" for method, statuses in weights.items() for status in statuses]
    lines += ["", *gpu_hours(runs, configs, sizes)]
    return "\n".join(lines)


# ---- running and the tables -----------------------------------------------------------------------


def run_plan(table: str, runs: Sequence[PlannedRun], base: dict[str, Any], out: Path, config_file: str | Path | None = None,
             protocol: str = "paper", plugins: Plugins | None = None, echo: Echo = print) -> Path:  # fmt: skip
    """Run what is not done (resuming what was started), then write ``out/results.md``; returns its path."""
    from loqi_core.experiments.runner import run_eval, run_experiment, run_sweep

    if int(os.environ.get("RANK", "0")) != 0:  # another rank of a torchrun job: it encodes its share, rank 0 reports
        echo = _silent
    for i, run in enumerate(runs, 1):
        config = run_config(run, base, config_file, protocol)
        if run.done:
            _check_same(run, config)
            echo(f"[{i}/{len(runs)}] {run.method} / {config.degrade}: done, skipped ({run.out})")
            continue
        echo(f"[{i}/{len(runs)}] {run.method} / {config.degrade}: running in {run.out}")
        if run.kind == "run":
            run_experiment(config, baseline="finetune" if run.finetune else None, plugins=plugins, echo=echo)
        elif run.kind == "sweep":
            run_sweep(config, run.losses, plugins=plugins, echo=echo)
        else:
            run_eval(config, plugins=plugins, echo=echo)
    if echo is _silent:
        return out / "results.md"
    return WRITERS[table](runs, out, protocol)


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


def _metrics(run: PlannedRun) -> dict[str, Any]:
    return json.loads((run.out / "metrics.json").read_text())


def _rows_of(metrics: dict[str, Any], test: str) -> dict[str, dict[str, float]] | None:
    return next((d["rows"] for name, d in metrics["datasets"].items() if name == test or name.startswith(test + ":")), None)


def _fmt(values: list[float] | None, signed: bool) -> list[str]:
    return [f"{v:+.2f}" if signed else f"{v:.2f}" for v in values] if values is not None else []


def _triple(method: str, label: str, ours: list[list[float] | None], theirs: list[list[float] | None], width: int,
            signed: bool) -> list[str]:  # fmt: skip
    """Three lines of a results table: loqi's values, the paper's, and loqi − paper, per test set."""
    diff = [[a - b for a, b in zip(o, p)] if o is not None and p is not None else None for o, p in zip(ours, theirs)]
    out = []
    for source, values, sign in (("loqi", ours, signed), ("paper", theirs, signed), ("loqi − paper", diff, True)):
        cells = [c for v in values for c in (_fmt(v, sign) or ["—"] * width)]
        out.append(f"| {method} | {label} | {source} | " + " | ".join(cells) + " |")
    return out


def _header(tests: Sequence[str], ns: Sequence[int]) -> list[str]:
    header = ["method", "row", ""] + [f"{t} R@{n}" if i == 0 else f"R@{n}" for t in tests for i, n in enumerate(ns)]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def _intro(title: str, protocol: str, paper: dict[str, Any], what: str, untrained: bool) -> list[str]:
    lines = [f"# {title} reproduced by loqi", "", f"Protocol `{protocol}`. {what}", "",
             f"Published numbers: {paper['citation']}.", ""]  # fmt: skip
    if untrained:
        lines += ["> **UNTRAINED MODELS (--weights random): these numbers test the pipeline, not the method.**", ""]
    return lines


def _recipe_section(runs: Sequence[PlannedRun], protocol: str) -> list[str]:
    """How each trained run trained, from its config.json (written resolved by the run)."""
    lines = ["## Training recipe", ""]
    for run in runs:
        if run.kind == "eval" or not run.done:
            continue
        config = RunConfig.model_validate_json((run.out / "config.json").read_text())
        lines += [f"- **{run.method} / {config.degrade}**:"] + [f"  - {line}" for line in recipe_lines(config, run)]
    return lines + [""] if len(lines) > 2 else []


def _write(out: Path, lines: list[str]) -> Path:
    path = out / "results.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_table2(runs: Sequence[PlannedRun], out: Path, protocol: str = "paper") -> Path:
    """results.md in Table II's layout: per method and row, loqi, the paper, and loqi − paper, per test set."""
    paper = paper_table()
    t2 = paper["table2"]
    ns = t2["recall_at"]
    done = [r for r in runs if r.done]
    lines = _intro("Table II", protocol, paper, "Pretrained rows are recall@N in %; finetuned and distilled rows are the "
                   "change against the pretrained model on the degraded images (as in the paper). For each row: loqi's "
                   "value, the published one and loqi − paper. `—`: no published value, or the run has no such row.",
                   any(_metrics(r)["run"].get("untrained") for r in done))  # fmt: skip
    if any(r.finetune for r in done):
        lines += [f"Finetuned rows: {FINETUNE_NOTE}.", ""]
    for degrade in dict.fromkeys(r.degrade for r in runs):
        group = [r for r in done if r.degrade == degrade]
        if not group:
            continue
        tests = list(dict.fromkeys(t for r in group for t in r.tests))
        lines += [f"## {degrade}", "", *_header(tests, ns)]
        for run in group:
            metrics = _metrics(run)
            facts = t2["methods"].get(run.method) if degrade == t2["degrade"] else None
            for row in ROWS:
                ours = [_ours(metrics, t, row, ns) for t in tests]
                theirs = [facts.get(row, {}).get(t) if facts else None for t in tests]
                if all(o is None for o in ours) and all(p is None for p in theirs):
                    continue
                label = f"distilled ({run.losses[0]})" if row == "distilled" else row.replace("_", " ")
                lines += _triple(run.method, label, ours, theirs, len(ns), row not in ABSOLUTE)
        lines.append("")
    return _write(out, lines + _recipe_section(done, protocol))


def _ours(metrics: dict[str, Any], test: str, row: str, ns: list[int], base: str = "pretrained_degraded") -> list[float] | None:
    """loqi's values of one row on one test set, as the paper states them (absolute, or Δ to ``base``)."""
    rows = _rows_of(metrics, test)
    if rows is None or not rows.get(row):
        return None
    values = [rows[row][f"R@{n}"] for n in ns]
    if row in ABSOLUTE or row.startswith("pretrained_degraded"):
        return values
    reference = rows.get(base)
    return [v - reference[f"R@{n}"] for v, n in zip(values, ns)] if reference else None


def write_table3(runs: Sequence[PlannedRun], out: Path, protocol: str = "paper") -> Path:
    """results.md in Table III's layout: per method, clean and JPEG-10 recall of the pretrained model, per test set."""
    paper = paper_table()
    t3 = paper["table3"]
    ns = t3["recall_at"]
    done = [r for r in runs if r.done]
    lines = _intro("Table III", protocol, paper, "Recall@N in % of the pretrained models, clean and with database and "
                   "queries at JPEG quality 10 (the paper's \"90%\"); loqi, the paper and loqi − paper.",
                   any(_metrics(r)["run"].get("untrained") for r in done))  # fmt: skip
    tests = list(dict.fromkeys(t for r in done for t in r.tests))
    lines += _header(tests, ns)
    for run in done:
        metrics = _metrics(run)
        facts = t3["methods"].get(run.method, {})
        for quality, level in (("clean", "none"), ("degraded", run.degrade)):
            ours = [_ours(metrics, t, f"pretrained_degraded@{level}", ns) for t in tests]
            theirs = [facts.get(quality, {}).get(t) for t in tests]
            lines += _triple(run.method, "clean" if quality == "clean" else run.degrade, ours, theirs, len(ns), False)
    return _write(out, lines + [""])


def write_table4(runs: Sequence[PlannedRun], out: Path, protocol: str = "paper") -> Path:
    """results.md in Table IV's layout: per test set, the pretrained model and each loss's Δ (the paper's best marked)."""
    paper = paper_table()
    t4 = paper["table4"]
    ns = t4["recall_at"]
    done = [r for r in runs if r.done]
    lines = _intro("Table IV", protocol, paper, "NetVLAD distilled on Pitts250k at reduced resolution: the pretrained "
                   "model's recall@N in % and each loss's change against it; the paper publishes the best loss per test "
                   f"set. Not in the paper's text: {t4['missing']}.", any(_metrics(r)["run"].get("untrained") for r in done))  # fmt: skip
    for run in done:
        metrics = _metrics(run)
        lines += [f"## {run.method} / {run.degrade}", "", *_header(run.tests, ns)]
        lines += _triple(run.method, "pretrained", [_ours(metrics, t, "pretrained_degraded", ns) for t in run.tests],
                         [t4["pretrained"].get(t) for t in run.tests], len(ns), False)  # fmt: skip
        for loss in run.losses:
            ours = [_ours(metrics, t, f"distilled:{loss}", ns) for t in run.tests]
            theirs = [t4["distilled"].get(t) if t4["best_loss"].get(t) == loss else None for t in run.tests]
            lines += _triple(run.method, f"{loss} Δ", ours, theirs, len(ns), True)
        lines.append("")
    return _write(out, lines + _recipe_section(done, protocol))


def write_fig5(runs: Sequence[PlannedRun], out: Path, protocol: str = "paper") -> Path:
    """fig5.png (R@1 against QP, a panel per resolution, the pretrained model and each loss) and results.md."""
    from loqi_core.report.plot import line_chart
    from loqi_core.report.results import UNTRAINED

    paper = paper_table()
    done = [r for r in runs if r.done]
    untrained = any(_metrics(r)["run"].get("untrained") for r in done)
    lines = _intro("Fig. 5", protocol, paper, "NetVLAD's R@1 in % on the 360° video set at each resolution and QP: "
                   f"pretrained and distilled. The paper shows Fig. 5 as a plot only; {paper['fig5']['missing']}.", untrained)  # fmt: skip
    for run in done:
        metrics = _metrics(run)
        for test in run.tests:
            rows = _rows_of(metrics, test) or {}
            panels: dict[str, dict[str, dict[float, float]]] = {}
            lines += [f"## {test}", "", "| level | pretrained | " + " | ".join(run.losses) + " |", "|---|" + "---|" * (1 + len(run.losses))]
            for level in run.levels:
                res, _, qp = level.partition("+")
                cells = []
                for label, row in [("pretrained", "pretrained_degraded"), *((loss, f"distilled:{loss}") for loss in run.losses)]:
                    value = rows.get(f"{row}@{level}", {}).get("R@1")
                    cells.append("—" if value is None else f"{value:.2f}")
                    if value is not None:
                        panels.setdefault(res, {}).setdefault(label, {})[float(qp.removeprefix("qp"))] = value
                lines.append(f"| `{level}` | " + " | ".join(cells) + " |")
            lines.append("")
            chart = line_chart(panels, f"Fig. 5 by loqi: {run.method} on {test}", "QP", "R@1 (%)", UNTRAINED if untrained else None)
            name = "fig5.png" if len(run.tests) == 1 else f"fig5_{slug(test)}.png"
            out.mkdir(parents=True, exist_ok=True)
            chart.save(out / name)
            lines += [f"![Fig. 5]({name})", ""]
    return _write(out, lines + _recipe_section(done, protocol))


WRITERS: dict[str, Callable[[Sequence[PlannedRun], Path, str], Path]] = {
    "table2": write_table2, "table3": write_table3, "table4": write_table4, "fig5": write_fig5,
}

