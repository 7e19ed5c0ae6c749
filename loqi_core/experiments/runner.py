"""Whole experiments: evaluate the teacher, distil, evaluate the student, optionally the finetune baseline; report.

    run_dir = run_experiment(config)                       # loqi run
    run_dir = run_sweep(config, expand_losses("all"))      # loqi sweep: the paper's Fig. 3
    run_dir = run_eval(config)                             # loqi eval

Every run directory holds config.json (resolved), plugins.json (versions), run.log (loqi_core.util.logs: argv, config
digest, stage timings, warnings, the error), metrics.json (with the stages' seconds), results.md, recall.png,
predictions/, grids/, activations/ (run and sweep), descriptors/ and pairs/ when asked for (eval.save_descriptors,
eval.pairs) and the training runs under distill*/ and finetune/.
Evaluations go through the shared descriptor cache, so the teacher is encoded once per dataset and degradation,
and a killed run, started again with the same --out, resumes its training and re-evaluates from the cache.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from loqi_core.config import RunConfig, dump_config
from loqi_core.data.datasets import load_dataset
from loqi_core.data.folders import read_folder_pair
from loqi_core.data.sets import TestSet, TrainSet, write_skipped
from loqi_core.degrade.grammar import parse_degradation
from loqi_core.errors import ConfigError
from loqi_core.evaluation.cache import EvalCache
from loqi_core.evaluation.engine import LABEL_FREE, apply_threads, describe_protocol, evaluate
from loqi_core.evaluation.outputs import check_line_names
from loqi_core.evaluation.results import EvalResult
from loqi_core.evaluation.sequence import traverses_of
from loqi_core.hooks.manager import Plugins, get_plugins
from loqi_core.report.names import name_test_sets, slug
from loqi_core.report.results import UNTRAINED, Report, results_markdown
from loqi_core.report.tensorboard import log_recalls
from loqi_core.report.validation import training_curves
from loqi_core.util.fileio import located, write_text
from loqi_core.util.logs import RunLog, log
from loqi_core.util.rundir import locked

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.models.model import VPRModel
    from loqi_core.training.data import ViewConfig

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
    from loqi_core.losses.expression import parse_loss_expression
    from loqi_core.training.recipe import encoder_spec

    expr = config.distill.loss if config.distill.loss is not None else encoder_spec(config, plugins).default_loss
    parse_loss_expression(expr)  # a malformed loss fails now, not after the teacher's evaluation
    return expr


class Experiment:
    """Shared state of one command: run directory, plugins, device, evaluation cache, test sets, report.

    Every input (device, degradation, cache, test and training sets, losses, the model and its weights) is resolved
    before the run directory is made, so a bad one costs no work and leaves nothing behind. ``losses``: the
    ``(mode, expression)`` pairs the command will train; ``weights``: those of ``self.model`` (default: the config's).
    """

    def __init__(
        self, config: RunConfig, kind: str, plugins: Plugins | None = None, echo: Echo = print,
        losses: Sequence[tuple[str, str]] = (), weights: str | None = None,
    ) -> None:  # fmt: skip
        self.runlog = RunLog(kind)  # collects from now: warnings about the inputs reach run.log too
        self.runlog.start()
        self._lock = contextlib.ExitStack()  # one writer per run directory (rank 0 writes), released by close()
        try:
            self._setup(config, kind, plugins, echo, losses, weights)
        except BaseException:
            self.close()
            raise

    def _setup(
        self, config: RunConfig, kind: str, plugins: Plugins | None, echo: Echo, losses: Sequence[tuple[str, str]],
        weights: str | None,
    ) -> None:  # fmt: skip
        from loqi_core.training.dist import setup

        started = time.perf_counter()
        self.plugins = plugins or get_plugins()
        self.kind = kind
        self.env, self.device = setup(config.device)  # under torchrun: join the job; rank 0 alone writes and reports
        if self.env.initialized_here:
            atexit.register(self.env.close)
        self.out = Path(_from_rank0(str(config.out if config.out is not None else default_run_dir(kind, config))))
        threads = apply_threads(config.threads)  # evaluation's; training fits workers and threads to the CPUs itself
        self.requested_threads = config.threads
        self.untrained = config.model.weights == "random"
        ev = config.eval
        self.cache = EvalCache(ev.cache_dir, enabled=ev.cache)
        if ev.cache:
            self.cache.check_writable()
        self.degradation = parse_degradation(config.degrade, self.plugins)
        self.levels = {level: parse_degradation(level, self.plugins) for level in ev.degrade}  # bad specs fail here
        self.tests: list[TestSet] = [
            load_dataset(t, "test", root=config.data_root, plugins=self.plugins)  # type: ignore[misc]
            for t in ev.test
        ]
        texts = list(ev.test)
        if ev.database is not None and ev.queries is not None:  # gmberton's evaluator's convention
            self.tests.append(read_folder_pair(ev.database, ev.queries))
            texts.append(f"--database {ev.database} --queries {ev.queries}")
        name_test_sets(self.tests, texts)  # two test sets called "good" get two keys, not one overwritten
        if ev.save_descriptors or ev.pairs:  # name lists must stay aligned with the rows: refused before any work
            for test in self.tests:
                check_line_names([*test.database.paths, *test.queries.paths], test.name)
        if ev.sequence:
            for test in self.tests:
                traverses_of(test)  # a test set without capture order is refused before any work
        self.train_set = self._check_training(config, losses) if losses else None
        if kind != "eval":
            _check_rerun(self.out, config)
        self.config = config.model_copy(update={"out": self.out, "threads": threads})
        self.view_note = "distill.view_size"
        if kind != "eval" and config.distill.view_size is None:  # the student meets the degradation at test scale
            self.config = self.config.model_copy(
                update={"distill": config.distill.model_copy(update={"view_size": test_scale(self.tests)})}
            )
            self.view_note = "the test sets' typical image size"
        self.views = None
        if losses:  # run and sweep train: one batch decoded now
            with self.runlog.stage("preflight"):
                self.views = self._check_inputs()
        self.model = self.build(weights)  # last: the costliest check (weights found, read and fitting)
        # the model that encodes the database of asymmetric rows (--database-weights), checked before the directory
        self.database = None if ev.database_weights is None else self.build(ev.database_weights)
        self.runlog.add("setup", time.perf_counter() - started - self.runlog.stages.get("preflight", 0.0))
        if self.env.is_main:
            self._lock.enter_context(locked(self.out))
        self._open(kind, echo)

    @property
    def eval_seed(self) -> int:
        """The seed of the test images' degradation: ``eval.seed``, else the run's."""
        return self.config.seed if self.config.eval.seed is None else self.config.eval.seed

    def __enter__(self) -> "Experiment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._lock.close()
        self.runlog.close()

    def _open(self, kind: str, echo: Echo) -> None:
        """Make the run directory and its log, write the resolved config, start the report."""
        config = self.config
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.runlog.open(self.out, dump_config(self.config))

        def echo_and_log(text: str) -> None:  # everything printed also goes to run.log
            if not self.env.is_main:
                return
            echo(text)
            log.info(text)

        self.echo = echo_and_log
        if self.env.is_main:
            echo(f"== loqi {kind} {time.strftime('%Y-%m-%d %H:%M:%S')}")  # run.log has its own header (loqi_core.util.logs)
            log.info(f"device: {self.device}")
        if self.views is not None:
            if self.views.size is None:
                self.echo("training views at their native size, no augmentation (distill.view_size native); inputs checked")
            else:
                (h, w), augment = self.views.size, "on" if self.views.augment else "off"
                self.echo(f"training views {h}x{w} ({self.view_note}), augment {augment}; inputs checked")
        if self.env.is_main:
            with self.logged():
                write_text(self.out / "config.json", dump_config(self.config))
                write_text(self.out / "plugins.json", json.dumps(self.plugins.versions(), indent=2, sort_keys=True))
            for test in self.tests:
                listed = write_skipped(test, self.out)
                if listed is not None:
                    self.echo(f"test set {test.name}: {len(test.skipped)} unreadable file(s) left out (skip_bad), listed in {listed}")
        run = {"kind": kind, "method": config.model.method or f"{config.model.encoder}+{config.model.aggregator}",
               "degrade": config.degrade, "protocol": config.protocol, "weights": config.model.weights, "untrained": self.untrained,
               "seed": config.seed, "train": config.distill.train if kind != "eval" else None,
               "max_steps": config.distill.max_steps if kind != "eval" else None,
               "citations": self.plugins.citations({"encoder": [self.model.info["encoder"]],
                                                    "aggregator": [self.model.info["aggregator"]]})}  # fmt: skip
        if self.levels:
            run["eval_degrade"] = list(self.levels)
            if kind == "eval":  # nothing is evaluated at --degrade then
                run["degrade"] = ",".join(self.levels)
        self.report = Report(run, config.eval.recall)
        if self.untrained:
            self.echo(f"!! {UNTRAINED}")
        if config.protocol != "upstream":  # what the protocol changes, and a method the paper never ran says so
            from loqi_core.protocol import protocol_notes
            from loqi_core.training.recipe import encoder_spec

            run["protocol_notes"] = protocol_notes(config.protocol, encoder_spec(config, self.plugins))
            for note in run["protocol_notes"]:
                self.echo(note)

    def _check_training(self, config: RunConfig, losses: Sequence[tuple[str, str]]) -> TrainSet:
        """Load the training set and check each ``(mode, loss)``: ``run`` builds it (params, places needed);
        ``sweep`` only parses it, since it skips with a note the losses its training set cannot feed."""
        from loqi_core.losses.expression import parse_loss_expression
        from loqi_core.training.recipe import check_places, encoder_spec, training_loss

        train = load_dataset(config.distill.train, "train", root=config.data_root, plugins=self.plugins)
        assert isinstance(train, TrainSet)
        spec = encoder_spec(config, self.plugins)
        for mode, expr in losses:
            if self.kind == "sweep":
                for _, name in parse_loss_expression(expr):
                    self.plugins.loss(name)
                continue
            field = "finetune_loss" if mode == "finetune" else "loss"
            cfg = config.model_copy(update={"distill": config.distill.model_copy(update={field: expr})})
            loss = training_loss(cfg, mode, spec, self.plugins)  # type: ignore[arg-type]
            check_places(loss, train, config.distill.train, self.plugins)
        return train

    @contextmanager
    def logged(self) -> Iterator[None]:
        """Log any error that ends the command into run.log (the terminal gets it from the CLI); an OS error
        that names no file (a failed write on a full disk) is reported against the run directory."""
        try:
            yield
        except OSError as exc:
            exc = located(exc, self.out)
            self.runlog.error(exc)
            raise exc from None
        except BaseException as exc:
            self.runlog.error(exc)
            raise

    def _check_inputs(self) -> "ViewConfig":
        """Before the run directory and any evaluation: one image of each test set and one whole training batch go
        through their real path (decode → view → degradation → the method's preprocessing); a broken input fails
        here, in seconds. Returns the training views."""
        from loqi_core.errors import LoqiError
        from loqi_core.models.preprocess import preprocess_images
        from loqi_core.training.data import load_image
        from loqi_core.training.recipe import encoder_spec, preflight, preprocess_of

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
        return preflight(self.config, "distill", self.plugins)

    def build(self, weights: str | None = None) -> "VPRModel":
        """The configured model; random initialisation is seeded as in the distillation engine (same teacher)."""
        from loqi_core.models.model import build_model

        m = self.config.model
        return build_model(
            m.method, encoder=m.encoder, aggregator=m.aggregator, encoder_params=m.encoder_params,
            aggregator_params=m.aggregator_params, weights=weights or m.weights, image_size=m.image_size,
            protocol=self.config.protocol, seed=self.config.seed, plugins=self.plugins,
        )  # fmt: skip

    def evaluate(
        self, row: str, model: "VPRModel", degrade: str | None = None, database_model: "VPRModel | None" = None, **meta: Any
    ) -> dict[str, EvalResult]:
        """Evaluate ``model`` on every test set under ``degrade`` (default: the run's) and add the row; the database
        is encoded by ``database_model`` when given (asymmetric evaluation)."""
        deg = self.degradation if degrade is None else self.levels.get(degrade) or parse_degradation(degrade, self.plugins)
        out = {}
        for test in self.tests:
            result = evaluate(model, test, deg, config=self.config.eval, seed=self.eval_seed, device=self.device,
                              cache=self.cache, plugins=self.plugins, untrained=self.untrained,
                              database_model=database_model)  # fmt: skip
            if result is None:  # another rank of a torchrun job: it only encoded its share
                continue
            write_skipped(test, self.out)  # again: images that failed only when decoded are listed too
            self.report.add(row, result, **meta)
            self.report.note(test.name, test.notes)
            cached = " (descriptors from cache)" if all(result.cache["descriptors_cached"]) else ""
            recalls = "  ".join(f"{k} {v:6.2f}" for k, v in result.recalls.items())
            if result.ground_truth is None:
                recalls = f"no recall: {LABEL_FREE}"
            self.echo(f"{test.name:<16} {self.report.rows[row]['label']:<36} {recalls}{cached}")
            if result.sequence is not None and result.ground_truth is not None:
                recalls = "  ".join(f"{k} {v:6.2f}" for k, v in result.sequence.recalls.items())
                self.echo(f"{'':<16} {'  sequence L=' + str(result.sequence.params.length):<36} {recalls}")
            self.write_outputs(row, result)
            out[test.name] = result
        return out

    def write_outputs(self, row: str, result: EvalResult) -> None:
        """``eval.save_descriptors`` and ``eval.pairs``: descriptors/<set>__<row>/ and pairs/<set>__<row>.txt."""
        from loqi_core.evaluation.outputs import write_descriptors, write_pairs

        ev, name = self.config.eval, f"{slug(result.dataset)}__{slug(row)}"
        if ev.save_descriptors:
            write_descriptors(self.out / "descriptors" / name, result)
        if ev.pairs:
            spaced = write_pairs(self.out / "pairs" / f"{name}.txt", result, ev.pairs)
            if spaced:
                self.echo(f"note: {spaced} image name(s) of {result.dataset} hold whitespace; hloc splits pairs lines on it")

    def evaluate_levels(self, row: str, model: "VPRModel", database_model: "VPRModel | None" = None, **meta: Any) -> None:
        """``row`` under the run's degradation, or ``row@LEVEL`` under each of ``eval.degrade`` (--eval-degrade)."""
        if not self.levels:
            self.evaluate(row, model, database_model=database_model, **meta)
        for level in self.levels:
            self.evaluate(f"{row}@{level}", model, level, database_model=database_model, **meta)

    def database_model(self, teacher: "VPRModel") -> "VPRModel":
        """The model that encodes the database of an asymmetric row: ``eval.database_weights``, else the teacher."""
        return teacher if self.database is None else self.database

    def evaluate_against_database(self, row: str, student: "VPRModel", database: "VPRModel", **meta: Any) -> None:
        """``row``'s student encodes the queries, ``database`` the database: the map a deployment indexed once. The
        row names ``database_weights`` only when they are not the teacher's (``--database-weights``)."""
        other = {} if self.database is None else {"database_weights": database.info["weights"]}
        self.evaluate_levels(row.replace("distilled", "distilled_queries", 1), student, database, **other, **meta)

    def print_protocols(self) -> None:
        for name, rows in self.report.results.items():
            first = rows.get("pretrained_degraded") or next(iter(rows.values()))
            self.echo(f"\nprotocol ({name}):\n  " + describe_protocol(first.protocol).replace("\n", "\n  "))

    def train(self, folder: str, mode: str, config: RunConfig | None = None) -> Path:
        """Distil (or finetune) into ``out/<folder>``, resuming a run that a previous invocation left there."""
        from loqi_core.training.engine import distill

        target = self.out / folder
        resume = _from_rank0((target / "config.json").exists())  # decided once: rank 0 may already be writing it
        self.echo(f"{'resuming' if resume else 'training'} {mode} in {target} ...")
        config = (config or self.config).model_copy(update={"threads": self.requested_threads})  # training fits its own
        return distill(config, target, mode=mode, resume=resume, plugins=self.plugins,  # type: ignore[arg-type]
                       train=self.train_set)

    def activations(
        self, teacher: "VPRModel", student: "VPRModel", row: str = "distilled", tag: str = "", label: str = "student"
    ) -> None:
        """Teacher and student activation maps for the queries of the student's row's comparison grid."""
        from loqi_core.report.grids import figure_selection, write_activation_maps

        ev = self.config.eval
        if not ev.grid_queries or not self.env.is_main:
            return
        for test in self.tests:
            name = slug(test.name) + (f"__{slug(tag)}" if tag else "")
            selection = figure_selection(self.report.results[test.name], row, ev.grid_select, ev.grid_queries)
            write_activation_maps(
                self.out / "activations" / f"{name}.png", teacher, student, test.queries.paths, self.degradation,
                selection, seed=self.eval_seed, device=self.device, banner=UNTRAINED if self.untrained else None,
                student_label=label,
            )  # fmt: skip

    def finish(self) -> Path:
        if not self.env.is_main:
            return self.out
        ev = self.config.eval
        self.report.validation = training_curves(self.out)
        with self.runlog.stage("writing"):
            metrics = self.report.write(self.out, grid_queries=ev.grid_queries, grid_k=ev.grid_k, grid_select=ev.grid_select,
                                        timings=lambda: self.runlog.timings(self.device))  # fmt: skip
        tensorboard = self.config.distill.tensorboard
        if self.kind != "eval" and tensorboard is not False and log_recalls(self.out / "tensorboard", metrics, tensorboard is True):
            self.echo(f"recalls logged to TensorBoard: {self.out / 'tensorboard'}")
        self.print_protocols()
        self.echo("\n" + results_markdown(metrics, f"{self.kind}: {self.report.run['method']} / {self.report.run['degrade']}"))
        self.echo(f"run directory: {self.out}")
        return self.out


def _check_rerun(out: Path, config: RunConfig) -> None:
    """A `loqi run`/`sweep` started again on its --out continues that run: it may train longer, never shorter
    (its student would be the old, longer-trained one under the new step count)."""
    previous = out / "config.json"
    if not previous.exists():
        return
    try:
        old = RunConfig.model_validate_json(previous.read_text()).distill
    except ValueError as exc:
        raise ConfigError(f"{previous}: unreadable ({type(exc).__name__}); choose another --out") from None
    new = config.distill
    if (old.max_steps, old.epochs) == (new.max_steps, new.epochs):
        return
    if old.max_steps and new.max_steps:
        longer = new.max_steps > old.max_steps
    else:  # epochs against epochs; a switch between steps and epochs cannot be compared, so it is refused
        longer = old.max_steps is None and new.max_steps is None and new.epochs > old.epochs
    if not longer:
        was = f"distill.max_steps={old.max_steps}" if old.max_steps else f"distill.epochs={old.epochs}"
        now = f"distill.max_steps={new.max_steps}" if new.max_steps else f"distill.epochs={new.epochs}"
        raise ConfigError(
            f"{out} was trained with {was}; started again on the same --out, a run continues and cannot be cut "
            f"short ({now}): choose another --out"
        )


def _from_rank0(value: Any) -> Any:
    """Under torchrun, rank 0's value on every rank (a run directory named after the time, a resume decision)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def test_scale(tests: Sequence[TestSet]) -> tuple[int, int]:
    """The scale at which test images meet the degradation: the median (height, width) of the test sets' images
    (each set weighs the same), so the student trains on corruption at that scale."""
    import numpy as np

    from loqi_core.training.data import typical_size

    sizes = np.array([typical_size([*t.database.paths, *t.queries.paths]) for t in tests])
    return int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1]))


def _teacher_rows(exp: Experiment) -> "VPRModel":
    teacher = exp.model
    with exp.runlog.stage("teacher clean eval"):
        exp.evaluate("pretrained_clean", teacher, "none", weights=teacher.info["weights"])
    with exp.runlog.stage("teacher degraded eval"):
        exp.evaluate_levels("pretrained_degraded", teacher, weights=teacher.info["weights"])
    return teacher


def run_experiment(
    config: RunConfig, *, baseline: str | None = None, plugins: Plugins | None = None, echo: Echo = print
) -> Path:
    """``loqi run``: teacher on clean and degraded images, distil, student, optional finetune baseline, report."""
    if baseline not in (None, "finetune"):
        raise ConfigError(f'--baseline: unknown baseline "{baseline}" (finetune)')
    loss = _method_default_loss(config, plugins or get_plugins())
    losses = [("distill", loss)] + ([("finetune", config.distill.finetune_loss)] if baseline == "finetune" else [])
    with Experiment(config, "run", plugins, echo, losses=losses) as exp, exp.logged():
        exp.report.run["loss"] = loss
        teacher = _teacher_rows(exp)
        with exp.runlog.stage("distillation"):
            student = exp.build(str(exp.train("distill", "distill")))
        with exp.runlog.stage("student eval"):
            exp.evaluate_levels("distilled", student, loss=loss, weights=str(exp.out / "distill"))
        with exp.runlog.stage("student vs pretrained database"):
            exp.evaluate_against_database("distilled", student, exp.database_model(teacher), loss=loss,
                                          weights=str(exp.out / "distill"))
        with exp.runlog.stage("activation maps"):
            exp.activations(teacher, student)
        if baseline == "finetune":
            with exp.runlog.stage("finetune"):
                tuned = exp.build(str(exp.train("finetune", "finetune")))
            with exp.runlog.stage("finetuned eval"):
                exp.evaluate_levels("finetuned", tuned, loss=exp.config.distill.finetune_loss, weights=str(exp.out / "finetune"))
        return exp.finish()


def run_sweep(config: RunConfig, losses: Sequence[str], *, plugins: Plugins | None = None, echo: Echo = print) -> Path:
    """``loqi sweep``: one distillation per loss expression, all evaluated against one (cached) teacher evaluation."""
    losses_to_check = [("distill", expr) for expr in losses]
    with Experiment(config, "sweep", plugins, echo, losses=losses_to_check) as exp, exp.logged():
        exp.report.run["losses"] = list(losses)
        teacher = _teacher_rows(exp)
        skipped = []
        for expr in losses:
            cfg = exp.config.model_copy(update={"distill": exp.config.distill.model_copy(update={"loss": expr})})
            try:
                with exp.runlog.stage(f"distillation {expr}"):
                    final = exp.train(f"distill-{slug(expr)}", "distill", cfg)
            except ConfigError as exc:  # e.g. triplet on a label-free training set: the other losses still run
                exp.echo(f"skipping loss {expr}: {exc}")
                skipped.append(f"loss {expr} skipped: {exc}")
                continue
            student = exp.build(str(final))
            with exp.runlog.stage(f"student eval {expr}"):
                exp.evaluate_levels(f"distilled:{expr}", student, loss=expr, weights=str(final))
            if exp.config.eval.database_weights is not None:
                with exp.runlog.stage(f"student vs database {expr}"):
                    exp.evaluate_against_database(f"distilled:{expr}", student, exp.database_model(teacher), loss=expr,
                                                  weights=str(final))
            with exp.runlog.stage(f"activation maps {expr}"):
                exp.activations(teacher, student, row=f"distilled:{expr}", tag=expr, label=f"student {expr}")
        for test in exp.tests:
            exp.report.note(test.name, skipped)
        return exp.finish()


def run_eval(config: RunConfig, *, row: str | None = None, plugins: Plugins | None = None, echo: Echo = print) -> Path:
    """``loqi eval``: one model (pretrained weights, a checkpoint or a run directory) on the test sets."""
    weights = config.model.weights  # a file, checkpoint or run directory resolves as in build_model (checkpoint_file)
    with Experiment(config, "eval", plugins, echo) as exp, exp.logged():
        model = exp.model
        if row is None:
            pretrained = model.info["weights"] != "random" and not Path(str(weights)).exists()
            clean = exp.degradation.spec in ("", "none") and not exp.levels
            row = ("pretrained_clean" if clean else "pretrained_degraded") if pretrained or exp.untrained else "model"
        database = exp.database
        meta = {} if database is None else {"database_weights": database.info["weights"]}
        with exp.runlog.stage("eval"):
            exp.evaluate_levels(row, model, database, weights=model.info["weights"], **meta)
        return exp.finish()


