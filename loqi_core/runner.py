"""Whole experiments: evaluate the teacher, distil, evaluate the student, optionally the finetune baseline; report.

    run_dir = run_experiment(config)                       # loqi run
    run_dir = run_sweep(config, expand_losses("all"))      # loqi sweep: the paper's Fig. 3
    run_dir = run_eval(config)                             # loqi eval

Every run directory holds config.json (resolved), plugins.json (versions), run.log, metrics.json, results.md, recall.png,
predictions/, grids/, activations/ (run and sweep) and the training runs under distill*/ and finetune/.
Evaluations go through the shared descriptor cache, so the teacher is encoded once per dataset and degradation,
and a killed run, started again with the same --out, resumes its training and re-evaluates from the cache.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from loqi_core.cache import EvalCache
from loqi_core.config import RunConfig, dump_config
from loqi_core.data import TestSet
from loqi_core.datasets import load_dataset
from loqi_core.degradation import parse_degradation
from loqi_core.errors import ConfigError
from loqi_core.evaluate import EvalResult, describe_protocol, evaluate, resolve_device
from loqi_core.plugins import Plugins, get_plugins
from loqi_core.report import UNTRAINED, Report, results_markdown, slug, write_activation_maps

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.model import VPRModel

Echo = Callable[[str], None]

PAPER_LOSSES = ("ickd+mse+triplet", "ickd+mse", "ickd+triplet", "ickd", "mse+triplet", "mse", "triplet")
"""The seven non-empty combinations of ICKD, MSE and triplet, in the reference code's ``-l 1..7`` order."""


def expand_losses(text: str | Sequence[str]) -> list[str]:
    """``"all"`` → the paper's seven combinations; otherwise a comma-separated list (or a list) of expressions."""
    items = [text] if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if part == "all":
                out.extend(PAPER_LOSSES)
            elif part:
                out.append(part)
    if not out:
        raise ConfigError("--losses: give loss expressions (comma-separated) or all")
    return list(dict.fromkeys(out))


def default_run_dir(kind: str, config: RunConfig) -> Path:
    name = config.model.method or config.model.encoder or "model"
    return Path("runs") / f"{kind}-{slug(name)}-{slug(config.degrade)}-{time.strftime('%Y%m%d-%H%M%S')}"


def _method_default_loss(config: RunConfig, plugins: Plugins) -> str:
    from loqi_core.distill import encoder_spec

    return config.distill.loss or encoder_spec(config, plugins).default_loss


class Experiment:
    """Shared state of one command: run directory, plugins, device, evaluation cache, test sets, report."""

    def __init__(self, config: RunConfig, kind: str, plugins: Plugins | None = None, echo: Echo = print) -> None:
        self.plugins = plugins or get_plugins()
        self.out = Path(config.out) if config.out is not None else default_run_dir(kind, config)
        self.out.mkdir(parents=True, exist_ok=True)
        log = self.out / "run.log"

        def echo_and_log(text: str) -> None:  # everything printed also goes to run.log
            echo(text)
            with open(log, "a") as f:
                f.write(text + "\n")

        self.echo = echo_and_log
        self.echo(f"== loqi {kind} {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self.config = config.model_copy(update={"out": self.out})
        self.kind = kind
        self.device = resolve_device(config.device)
        self.untrained = config.model.weights == "random"
        ev = config.eval
        self.cache = EvalCache(ev.cache_dir, enabled=ev.cache)
        self.degradation = parse_degradation(config.degrade, self.plugins)
        self.tests: list[TestSet] = [
            load_dataset(t, "test", root=config.data_root, plugins=self.plugins)  # type: ignore[misc]
            for t in ev.test
        ]
        self.view_note = "distill.view_size"
        if kind != "eval" and config.distill.view_size is None:
            self.config = self.config.model_copy(
                update={"distill": config.distill.model_copy(update={"view_size": test_scale(self.tests)})}
            )
            self.view_note = "the test sets' typical image size"
        (self.out / "config.json").write_text(dump_config(self.config))
        (self.out / "plugins.json").write_text(json.dumps(self.plugins.versions(), indent=2, sort_keys=True))
        run = {"kind": kind, "method": config.model.method or f"{config.model.encoder}+{config.model.aggregator}",
               "degrade": config.degrade, "weights": config.model.weights, "untrained": self.untrained,
               "seed": config.seed, "train": config.distill.train if kind != "eval" else None,
               "max_steps": config.distill.max_steps if kind != "eval" else None}  # fmt: skip
        self.report = Report(run, ev.recall)
        if self.untrained:
            self.echo(f"!! {UNTRAINED}")

    def check_inputs(self) -> None:
        """Before any evaluation: one image of each test set and one whole training batch go through their real
        path (decode → view → degradation → the method's preprocessing); a broken input fails here, in seconds."""
        from loqi_core.distill import encoder_spec, preflight, preprocess_of
        from loqi_core.errors import LoqiError
        from loqi_core.model import preprocess_images
        from loqi_core.training.data import load_image

        pp = preprocess_of(self.config, encoder_spec(self.config, self.plugins))
        for test in self.tests:
            for part in (test.database, test.queries):
                if not len(part.paths):
                    raise ConfigError(f'test set "{test.name}" has an empty database or query list')
                path = part.paths[0]
                try:
                    preprocess_images(self.degradation([load_image(path)], seed=0).images, pp)
                except LoqiError:
                    raise
                except Exception as exc:
                    raise ConfigError(f'test set "{test.name}": {path} through {self.config.degrade}: {exc}') from None
        views = preflight(self.config, "distill", self.plugins)
        h, w = views.size
        self.echo(f"training views {h}x{w} ({self.view_note}), augment {'on' if views.augment else 'off'}; "
                  "inputs checked")  # fmt: skip

    def build(self, weights: str | None = None) -> "VPRModel":
        """The configured model; random initialisation is seeded as in the distillation engine (same teacher)."""
        import torch

        from loqi_core.model import build_model

        m = self.config.model
        torch.manual_seed(self.config.seed)
        return build_model(
            m.method, encoder=m.encoder, aggregator=m.aggregator, encoder_params=m.encoder_params,
            aggregator_params=m.aggregator_params, weights=weights or m.weights, image_size=m.image_size,
            plugins=self.plugins,
        )  # fmt: skip

    def evaluate(self, row: str, model: "VPRModel", degrade: str | None = None, **meta: Any) -> dict[str, EvalResult]:
        """Evaluate ``model`` on every test set under ``degrade`` (default: the run's) and add the row."""
        deg = self.degradation if degrade is None else parse_degradation(degrade, self.plugins)
        out = {}
        for test in self.tests:
            result = evaluate(model, test, deg, config=self.config.eval, seed=self.config.seed, device=self.device,
                              cache=self.cache, plugins=self.plugins, untrained=self.untrained)  # fmt: skip
            self.report.add(row, result, **meta)
            self.report.note(test.name, test.notes)
            cached = " (descriptors from cache)" if all(result.cache["descriptors_cached"]) else ""
            recalls = "  ".join(f"{k} {v:6.2f}" for k, v in result.recalls.items())
            self.echo(f"{test.name:<16} {self.report.rows[row]['label']:<36} {recalls}{cached}")
            out[test.name] = result
        return out

    def print_protocols(self) -> None:
        for name, rows in self.report.results.items():
            first = rows.get("pretrained_degraded") or next(iter(rows.values()))
            self.echo(f"\nprotocol ({name}):\n  " + describe_protocol(first.protocol).replace("\n", "\n  "))

    def train(self, folder: str, mode: str, config: RunConfig | None = None) -> Path:
        """Distil (or finetune) into ``out/<folder>``, resuming a run that a previous invocation left there."""
        from loqi_core.distill import distill

        target = self.out / folder
        resume = (target / "config.json").exists()
        self.echo(f"{'resuming' if resume else 'training'} {mode} in {target} ...")
        return distill(config or self.config, target, mode=mode, resume=resume, plugins=self.plugins)  # type: ignore[arg-type]

    def activations(self, teacher: "VPRModel", student: "VPRModel", tag: str = "", label: str = "student") -> None:
        n = self.config.eval.grid_queries
        if not n:
            return
        for test in self.tests:
            name = slug(test.name) + (f"__{slug(tag)}" if tag else "")
            write_activation_maps(
                self.out / "activations" / f"{name}.png", teacher, student, test.queries.paths, self.degradation,
                n=min(n, 4), seed=self.config.seed, device=self.device, banner=UNTRAINED if self.untrained else None,
                student_label=label,
            )  # fmt: skip

    def finish(self) -> Path:
        metrics = self.report.write(self.out, grid_queries=self.config.eval.grid_queries)
        self.print_protocols()
        self.echo("\n" + results_markdown(metrics, f"{self.kind}: {self.report.run['method']} / {self.config.degrade}"))
        self.echo(f"run directory: {self.out}")
        return self.out


def test_scale(tests: Sequence[TestSet]) -> tuple[int, int]:
    """The scale at which test images meet the degradation: the median (height, width) of the test sets' images
    (each set weighs the same), so the student trains on corruption at that scale."""
    import numpy as np

    from loqi_core.training.data import typical_size

    sizes = np.array([typical_size([*t.database.paths, *t.queries.paths]) for t in tests])
    return int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1]))


def _teacher_rows(exp: Experiment) -> "VPRModel":
    teacher = exp.build()
    exp.evaluate("pretrained_clean", teacher, "none", weights=teacher.info["weights"])
    exp.evaluate("pretrained_degraded", teacher, weights=teacher.info["weights"])
    return teacher


def run_experiment(
    config: RunConfig, *, baseline: str | None = None, plugins: Plugins | None = None, echo: Echo = print
) -> Path:
    """``loqi run``: teacher on clean and degraded images, distil, student, optional finetune baseline, report."""
    if baseline not in (None, "finetune"):
        raise ConfigError(f'--baseline: unknown baseline "{baseline}" (finetune)')
    exp = Experiment(config, "run", plugins, echo)
    loss = _method_default_loss(exp.config, exp.plugins)
    exp.report.run["loss"] = loss
    exp.check_inputs()
    teacher = _teacher_rows(exp)
    student = exp.build(str(exp.train("distill", "distill")))
    exp.evaluate("distilled", student, loss=loss, weights=str(exp.out / "distill"))
    exp.activations(teacher, student)
    if baseline == "finetune":
        tuned = exp.build(str(exp.train("finetune", "finetune")))
        exp.evaluate("finetuned", tuned, loss=exp.config.distill.finetune_loss, weights=str(exp.out / "finetune"))
    return exp.finish()


def run_sweep(config: RunConfig, losses: Sequence[str], *, plugins: Plugins | None = None, echo: Echo = print) -> Path:
    """``loqi sweep``: one distillation per loss expression, all evaluated against one (cached) teacher evaluation."""
    exp = Experiment(config, "sweep", plugins, echo)
    exp.report.run["losses"] = list(losses)
    exp.check_inputs()
    teacher = _teacher_rows(exp)
    skipped = []
    for expr in losses:
        cfg = exp.config.model_copy(update={"distill": exp.config.distill.model_copy(update={"loss": expr})})
        try:
            final = exp.train(f"distill-{slug(expr)}", "distill", cfg)
        except ConfigError as exc:  # e.g. triplet on a label-free training set: the other losses still run
            echo(f"skipping loss {expr}: {exc}")
            skipped.append(f"loss {expr} skipped: {exc}")
            continue
        student = exp.build(str(final))
        exp.evaluate(f"distilled:{expr}", student, loss=expr, weights=str(final))
        exp.activations(teacher, student, tag=expr, label=f"student {expr}")
    for test in exp.tests:
        exp.report.note(test.name, skipped)
    return exp.finish()


def run_eval(config: RunConfig, *, row: str | None = None, plugins: Plugins | None = None, echo: Echo = print) -> Path:
    """``loqi eval``: one model (pretrained weights, a checkpoint or a run directory) on the test sets."""
    weights = config.model.weights
    checkpoint = _checkpoint_of(weights)  # before the run directory is made: a bad --weights leaves nothing behind
    exp = Experiment(config, "eval", plugins, echo)
    model = exp.build(checkpoint)
    if row is None:
        pretrained = model.info["weights"] != "random" and not Path(str(weights)).exists()
        clean = exp.degradation.spec in ("", "none")
        row = ("pretrained_clean" if clean else "pretrained_degraded") if pretrained or exp.untrained else "model"
    exp.evaluate(row, model, weights=model.info["weights"])
    return exp.finish()


def _checkpoint_of(weights: str) -> str:
    """A run directory of ``loqi run`` holds its student under distill/: accept the run directory itself."""
    path = Path(weights)
    if not path.is_dir() or (path / "model.safetensors").exists():
        return weights
    if (path / "distill" / "checkpoints" / "final").exists():
        return str(path / "distill" / "checkpoints" / "final")
    students = sorted(p.name for p in path.glob("distill-*") if (p / "checkpoints" / "final").exists())
    if students:  # a sweep: one student per loss
        options = ", ".join(f"{path / s}" for s in students)
        raise ConfigError(f"{path} is a sweep with one student per loss; pass one of them as --weights: {options}")
    return weights
