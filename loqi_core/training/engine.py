"""The distillation engine: a frozen teacher sees the clean image, a student of the same method the degraded one.

    final = distill(config, Path("runs/x"))                 # teacher → student (the paper's method)
    final = distill(config, Path("runs/y"), mode="finetune")  # the baseline: no teacher, metric-learning loss
    final = distill(config, Path("runs/x"), resume=True)    # continue exactly where a killed run stopped

One code path for CPU (fp32) and CUDA (bf16 autocast, channels_last for CNNs, pinned memory), alone or under
``torchrun --nproc-per-node N`` (DDP; rank 0 writes). The run directory receives ``config.json``,
``plugins.json``, ``train_log.csv`` (every loss term of every step), ``summary.json``, ``run.log`` and ``checkpoints/``.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loqi_core.config import RunConfig, dump_config
from loqi_core.data.datasets import load_dataset
from loqi_core.data.sets import TrainSet, skipped_path, write_skipped
from loqi_core.errors import ConfigError, LoqiError
from loqi_core.evaluation.cache import model_fingerprint
from loqi_core.hooks.manager import Plugins, get_plugins
from loqi_core.losses.expression import CompositeLoss
from loqi_core.models.checkpoint import LINEAGE, save_checkpoint, verify, write_digests
from loqi_core.models.model import VPRModel, build_model
from loqi_core.training import state as ckpt
from loqi_core.training.dist import DistEnv, setup
from loqi_core.training.mining import Mined, describe, mine
from loqi_core.training.recipe import (
    Mode,
    build_training_data,
    check_batch,
    encoder_spec,
    make_scheduler,
    mines,
    preprocess_of,
    select_trainable,
    set_train_modes,
    training_loss,
)
from loqi_core.training.validation import (
    HELDOUT,
    Curve,
    TestSetValidation,
    build_validation,
    check_validation,
    split_heldout,
    validation_steps,
)
from loqi_core.util.cpus import loader_workers, torch_threads
from loqi_core.util.devices import tf32
from loqi_core.util.fileio import located, write_text
from loqi_core.util.logs import RunLog, command_of
from loqi_core.util.progress import progress
from loqi_core.util.rundir import locked
from loqi_core.util.tensorboard import summary_writer

log = logging.getLogger("loqi.distill")

# Settings a resumed run may change: they do not alter what is computed at a given step.
RESUMABLE = (
    "device", "threads", "out", "data_root", "eval", "distill.max_steps", "distill.epochs", "distill.checkpoint_every",
    "distill.keep_checkpoints", "distill.log_every", "distill.num_workers", "distill.tensorboard",
)  # fmt: skip


class TrainingError(LoqiError):
    """Training cannot go on (a non-finite loss, a run directory that does not match)."""


def distill(
    config: RunConfig,
    out_dir: Path,
    *,
    mode: Mode = "distill",
    resume: bool = False,
    plugins: Plugins | None = None,
    train: TrainSet | None = None,
) -> Path:
    """Train a student and return the directory of its final checkpoint (``out_dir/checkpoints/final``).

    ``mode="distill"``: the student (degraded images) learns the frozen teacher's outputs (clean images)
    with ``config.distill.loss`` (default: the method's best loss in the paper). ``mode="finetune"``: the
    paper's baseline, the student alone on degraded images with ``config.distill.finetune_loss``.
    ``resume=True`` continues from the newest checkpoint in ``out_dir`` with identical results. ``train``: the
    training set ``config.distill.train`` names, when the caller has already loaded it.
    """
    if mode not in ("distill", "finetune"):
        raise ConfigError(f'mode must be "distill" or "finetune", not "{mode}"')
    env, device = setup(config.device)
    trainer = _Trainer(config, Path(out_dir), mode, resume, plugins or get_plugins(), env, device, train)
    previous = torch.get_num_threads()
    torch.set_num_threads(trainer.threads)  # workers + threads fit the CPUs (loqi_core/util/cpus.py)
    try:
        with trainer.runlog, locked(Path(out_dir), enabled=env.is_main), tf32(config.distill.tf32):  # one writer per run directory (rank 0 writes)
            try:
                return trainer.run()
            except OSError as exc:  # a failed write that names no file (a full disk): reported against the run directory
                raise (located(exc, out_dir) if trainer.runlog.path else exc) from None
    finally:
        torch.set_num_threads(previous)
        env.close()


class _Ema:
    """An exponential moving average of a model's floating-point weights (``distill.ema``), swapped in to be used."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    def update(self, model: nn.Module) -> None:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if k in self.shadow:
                    self.shadow[k].lerp_(v.detach(), 1 - self.decay)

    def swap(self, model: nn.Module) -> None:
        """Exchange the model's weights and the average (twice: back as they were)."""
        with torch.no_grad():
            state = model.state_dict()
            for k, avg in self.shadow.items():
                current = state[k].detach().clone()
                state[k].copy_(avg)
                avg.copy_(current)


class _CsvLog:
    """``train_log.csv``: one row per step (step, epoch, lr, loss, every term); a resume drops rows past the checkpoint."""

    def __init__(self, path: Path, terms: list[str], resume_step: int | None) -> None:
        self.path = path
        header = ["step", "epoch", "lr", "loss", *terms]
        rows: list[list[str]] = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                old = list(csv.reader(f))
            if old and old[0] == header:
                rows = [r for r in old[1:] if r and int(r[0]) <= resume_step]
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        tmp.replace(path)
        self.file = path.open("a", newline="")
        self.writer = csv.writer(self.file)

    def write(self, rows: list[list[Any]]) -> None:
        self.writer.writerows(rows)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _config_differences(saved: RunConfig, given: RunConfig) -> list[str]:
    a, b = _flatten(saved.model_dump(mode="json")), _flatten(given.model_dump(mode="json"))
    keys = sorted(set(a) | set(b))
    skip = lambda k: any(k == r or k.startswith(r + ".") for r in RESUMABLE)  # noqa: E731
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in keys if not skip(k) and a.get(k) != b.get(k)]


def _scalar(value: Any) -> torch.Tensor:
    """A loss value as a detached fp32 0-d tensor (stays on the device: no host sync)."""
    return torch.as_tensor(value).detach().float().reshape(())


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Trainer:
    def __init__(
        self, config: RunConfig, out: Path, mode: Mode, resume: bool, plugins: Plugins, env: DistEnv, device: torch.device,
        train: TrainSet | None = None,
    ) -> None:
        self.config, self.out, self.mode, self.resume, self.train = config, out, mode, resume, train
        self.plugins, self.env, self.device = plugins, env, device
        self.d = config.distill
        self.workers = loader_workers(self.d.num_workers, device.type)
        self.threads = torch_threads(config.threads, self.workers, device.type)
        self.config = config.model_copy(update={"threads": self.threads})  # recorded resolved in config.json
        self.runlog = RunLog(mode)

    # ---- setup ---------------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        cfg_file = self.out / "config.json"
        if self.resume:
            if not cfg_file.exists():
                raise TrainingError(f"cannot resume: {cfg_file} not found (is {self.out} a loqi run directory?)")
            made_by = command_of(self.out)  # the first line of its run.log names the command
            if made_by in ("run", "eval", "sweep"):
                raise TrainingError(
                    f"cannot resume {self.out}: it is the directory of a `loqi {made_by}` (its run.log says so), not "
                    "of a training run; a `loqi run` keeps its student under distill/"
                )
            saved = RunConfig.model_validate_json(cfg_file.read_text())
            diffs = _config_differences(saved, self.config)
            if diffs:
                raise TrainingError(
                    f"cannot resume {self.out}: the config differs from the one it was started with:\n  "
                    + "\n  ".join(diffs)
                )
        elif ckpt.complete_checkpoints(self.out) or ckpt.final_dir(self.out).exists():
            raise TrainingError(f"{self.out} already holds a training run; resume it (--resume) or choose another --out")

    def _write_run_files(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        config = dump_config(self.config.model_copy(update={"out": self.out}))
        (self.out / "config.json").write_text(config)
        self.runlog.open(self.out, config)
        (self.out / "plugins.json").write_text(json.dumps(self.plugins.versions(), indent=2, sort_keys=True))

    def _build_models(self) -> None:
        m = self.config.model
        _seed_all(self.config.seed)  # identical random init on every rank
        built = build_model(
            m.method, encoder=m.encoder, aggregator=m.aggregator, encoder_params=m.encoder_params,
            aggregator_params=m.aggregator_params, weights=m.weights, image_size=m.image_size,
            protocol=self.config.protocol, seed=self.config.seed, plugins=self.plugins,
        )  # fmt: skip
        self.student: VPRModel = built
        self.teacher: VPRModel | None = None
        self.lineage: dict[str, Any] | None = None
        if self.mode == "distill":
            self.teacher = copy.deepcopy(built).eval().requires_grad_(False)
            self.lineage = {"fingerprint": model_fingerprint(built), "method": built.info["method"],
                            "weights": str(built.info["weights"])}  # fmt: skip
        self.prefixes = list(self.d.trainable if self.d.trainable is not None else self.spec.trainable)
        select_trainable(self.student, self.prefixes, built.info["method"])
        set_train_modes(self.student, self.prefixes, self.d.freeze_bn, self.d.dropout, self.d.bn_scope)
        self.student.to(self.device)
        if self.teacher is not None:
            self.teacher.to(self.device)
        cuda = self.device.type == "cuda"
        convs = sum(isinstance(mod, nn.Conv2d) for mod in built.encoder.modules())
        self.channels_last = self.d.channels_last == "on" or (self.d.channels_last == "auto" and cuda and convs > 3)
        if self.channels_last:
            for model in (self.student, self.teacher):
                if model is not None:
                    model.to(memory_format=torch.channels_last)
        bf16 = self.d.precision == "bf16" or (self.d.precision == "auto" and cuda)
        self.autocast_dtype = torch.bfloat16 if bf16 else None

    def _build_data(self, loss: CompositeLoss, mined: Mined | None = None) -> None:
        train = self.train or load_dataset(self.d.train, "train", root=self.config.data_root, plugins=self.plugins)
        assert isinstance(train, TrainSet)
        held: list = []
        if mined is None:  # the first build; mining rebuilds the plan over the same (held-out-less) images
            check_validation(self.d, self.mode, loss)
            if self.d.val == HELDOUT:  # never trained on: out of the batch plan
                train, held = split_heldout(train, self.d.heldout)
        train, self.plan, self.dataset = build_training_data(
            self.config, loss, self.spec, self.plugins, self.env.world_size, self.env.rank, train, mined, self.mode
        )
        if mined is None:
            self.validation = build_validation(self.config, held, self.dataset.views, self.dataset.degradation,
                                               self.plugins, self.out / ".validation-scratch", self.mode)  # fmt: skip
        if self.d.view_size is None:  # written resolved into config.json, so a resume checks it
            d = self.d.model_copy(update={"view_size": self.dataset.views.size})
            self.config, self.d = self.config.model_copy(update={"distill": d}), d
        if self.plan.dropped_places and self.env.is_main:
            warnings.warn(
                f'training set "{train.name}": {self.plan.dropped_places} place(s) with a single image left out '
                "(a place needs a second image to give a positive)",
                stacklevel=2,
            )
        check_batch(self.dataset, preprocess_of(self.config, self.spec))
        self.total_steps = self.d.max_steps or self.d.epochs * self.plan.steps_per_epoch
        self.val_steps = set(validation_steps(self.d, self.plan.steps_per_epoch, self.total_steps))
        self.train_name = train.name
        self.train_set = self.train = train

    def _mine(self) -> None:
        """The authors' tuples, mined once with the pretrained teacher (cached), then the plan of mined steps."""
        from loqi_core.evaluation.cache import EvalCache

        assert self.teacher is not None
        started, ev = time.perf_counter(), self.config.eval
        mined = mine(
            self.teacher, self.train_set, cache=EvalCache(ev.cache_dir, enabled=ev.cache), plugins=self.plugins,
            device=self.device, seed=self.config.seed, batch_size=ev.batch_size,
            num_workers=loader_workers(ev.num_workers, self.device.type), precision=self.d.precision,
        )  # fmt: skip
        log.info(describe(mined, self.train_set))
        self._build_data(self.loss, mined)
        self.runlog.add("mining", time.perf_counter() - started)

    def _loader(self, start: int) -> torch.utils.data.DataLoader:
        workers = self.workers
        return torch.utils.data.DataLoader(
            self.dataset,  # type: ignore[arg-type]
            batch_size=None,
            sampler=range(start, self.total_steps),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator(),  # keeps the global RNG untouched, so a resume replays it exactly
        )

    # ---- one step ------------------------------------------------------------------------------
    def _inputs(self, model: VPRModel, images: torch.Tensor) -> torch.Tensor:
        x = model.prepare(images, self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None)

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from loqi_core.losses.terms import DistillBatch

        t_lat = t_desc = None
        if self.teacher is not None:
            with torch.inference_mode(), self._autocast():
                t_lat, t_desc = self.teacher(self._inputs(self.teacher, batch["clean"]))
            t_lat, t_desc = t_lat.clone(), t_desc.clone()  # inference tensors → ordinary ones the loss may save
        with self._autocast():
            s_lat, s_desc = self.ddp(self._inputs(self.student, batch["degraded"]))
        ids, pos, tuples = batch.get("place_ids"), batch.get("positions"), batch.get("triplets")
        db = DistillBatch(
            s_lat, t_lat, s_desc, t_desc,  # type: ignore[arg-type]
            ids.to(self.device, non_blocking=True) if ids is not None else None,
            pos.to(self.device, non_blocking=True) if pos is not None else None,
            tuples.to(self.device, non_blocking=True) if tuples is not None else None,
        )  # fmt: skip
        try:
            total, terms = self.loss(db)
        except (AttributeError, TypeError) as exc:
            if self.teacher is None:
                raise ConfigError(
                    f'loss "{self.loss.expression}" needs the teacher\'s outputs, which `finetune` does not compute; '
                    f"use a metric-learning loss such as multisimilarity or triplet ({exc})"
                ) from None
            raise
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.d.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.d.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return _scalar(total), {k: _scalar(v) for k, v in terms.items()}

    # ---- logging and checkpoints -----------------------------------------------------------------
    def _flush(self, buffer: list[tuple[int, int, float, torch.Tensor]]) -> None:
        """One host sync for all buffered steps: CSV rows, TensorBoard, progress bar, non-finite check."""
        if not buffer:
            return
        values = torch.stack([v for *_, v in buffer]).float()
        if self.env.enabled:
            torch.distributed.all_reduce(values)
            values /= self.env.world_size
        values = values.cpu()
        rows = [[s, e, f"{lr:.8g}", *(f"{x:.8g}" for x in v.tolist())] for (s, e, lr, _), v in zip(buffer, values)]
        if self.env.is_main:
            self.csv.write(rows)
            if self.tb is not None:
                for (s, _, lr, _), v in zip(buffer, values):
                    self.tb.add_scalar("lr", lr, s)
                    for name, x in zip(self.columns, v.tolist()):
                        self.tb.add_scalar(f"loss/{name}", x, s)
        self.last_terms = dict(zip(self.columns, values[-1].tolist()))
        bad = (~torch.isfinite(values)).any(1).nonzero()
        if len(bad):
            i = int(bad[0])
            terms = ", ".join(f"{n}={x:.6g}" for n, x in zip(self.columns, values[i].tolist()))
            # the checkpoint of the step before holds the very weights that gave this loss: not a good one
            last = [c for c in ckpt.complete_checkpoints(self.out) if int(c.name[len(ckpt.STEP_PREFIX) :]) < buffer[i][0] - 1]
            where = str(last[-1]) if last else "none (no checkpoint before the weights that produced it)"
            raise TrainingError(
                f"loss is not finite at step {buffer[i][0]} ({terms}); training stopped. "
                f"Last good checkpoint: {where}. Try a lower distill.lr or distill.precision=fp32"
            )
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first, self.images_at_first = now, self.images
        elif self.env.is_main:
            rate = (self.images - self.images_at_first) / max(now - self.t_first, 1e-9)
            self.rate = rate
            self.pbar.set_postfix({"img/s": f"{rate:.1f}", **{k: f"{v:.4g}" for k, v in self.last_terms.items()}})
        buffer.clear()

    def _note_skipped(self, lines: list[str]) -> None:
        """Images that failed only when decoded (skip_bad): appended to the run's list, and said once each."""
        new = [line for line in lines if line not in self.skipped_seen]
        if not new:
            return
        self.skipped_seen.update(new)
        path = skipped_path(self.train_name, self.out)
        with open(path, "a") as f:  # every rank appends the images of its own batches
            f.write("".join(line + "\n" for line in new))
        warnings.warn(f"left out {len(new)} unreadable training image(s) (skip_bad), listed in {path}: {new[0]}", stacklevel=2)

    def _outputs_finite(self) -> bool:
        """Whether the student, as it would be saved, gives finite descriptors on the last batch (weights can be
        finite yet diverged). Eval-mode forward: no statistics updated, no random numbers drawn; all ranks agree."""
        with torch.inference_mode(), self._autocast():
            self.student.eval()
            _, desc = self.student(self._inputs(self.student, self.last_batch["degraded"]))
            set_train_modes(self.student, self.prefixes, self.d.freeze_bn, self.d.dropout, self.d.bn_scope)
            bad = (~torch.isfinite(desc)).any().float().reshape(1)
        if self.env.enabled:
            torch.distributed.all_reduce(bad)
        return not bool(bad.item())

    def _save(self, done: int, target: Path) -> Path:
        bad = ckpt.non_finite(self.student)  # every rank holds the same weights: all stop together
        why = f"its weights hold NaN/Inf ({len(bad)} tensor(s), e.g. {', '.join(bad[:3])})" if bad else None
        if why is None and not self._outputs_finite():
            why = "its weights have diverged: its descriptors of the last batch are NaN/Inf"
        if why is not None:
            last = ckpt.complete_checkpoints(self.out)
            where = str(last[-1]) if last else "none (the run stopped before its first checkpoint)"
            raise TrainingError(
                f"the student after step {done} is not saved: {why}. Last good checkpoint: {where}. Try a lower distill.lr"
            )
        tmp = ckpt.tmp_dir(target)
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        try:
            self.env.barrier()
            ckpt.write_rank_rng(tmp, self.env.rank)
            self.env.barrier()
            if self.env.is_main:
                state = {
                    "step": done, "mode": self.mode, "total_steps": self.total_steps,
                    "world_size": self.env.world_size, "loss": self.loss.expression, "last_terms": self.last_terms,
                    "validation": self.curve.to_json() if self.curve is not None else None,
                }  # fmt: skip
                ema = self.ema.shadow if self.ema is not None else None
                ckpt.write_checkpoint(tmp, target, self.student, self.optimizer, self.scheduler, state, ema=ema,
                                      lineage=self.lineage)  # fmt: skip
                ckpt.prune(self.out, self.d.keep_checkpoints)
        except BaseException:  # a full disk or Ctrl-C mid-write: the half-written one goes, the last good one stays
            if self.env.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.env.barrier()
        return target

    def _latest(self) -> Path | None:
        return ckpt.latest_intact(self.out)  # damaged newer checkpoints are skipped with a warning

    # ---- the run's student: validation, the best so far, the final one ---------------------------------------------
    def _forward(self, model: VPRModel, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A model's (latent, descriptor) of uint8 images, as a training step computes them."""
        with self._autocast():
            return model(self._inputs(model, images))

    def _validate(self, step: int) -> bool:
        """Validate the run's student (the moving average with distill.ema) after ``step``; True when it is the best
        so far. Torch's RNG is left as it was, so a validated run trains exactly as one that is not."""
        assert self.validation is not None and self.curve is not None
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.ema is not None:
                self.ema.swap(self.student)
            self.student.eval()
            try:
                if isinstance(self.validation, TestSetValidation):
                    value = self.validation(self.student, self.teacher, self.device)
                else:
                    value = self.validation(self.student, self.teacher, self.loss, self._forward)
            finally:
                if self.ema is not None:
                    self.ema.swap(self.student)
                set_train_modes(self.student, self.prefixes, self.d.freeze_bn, self.d.dropout)
        if self.env.enabled:  # rank 0 searched (a test set); every rank takes its value
            box = torch.tensor([value if value is not None else 0.0], dtype=torch.float64, device=self.device)
            torch.distributed.broadcast(box, 0)
            value = float(box.item())
        assert value is not None
        best = self.curve.add(step, value)
        note = "best so far" if best else f"best {self.curve.best:.4g} at step {self.curve.best_step}"
        log.info(f"validation after step {step}: {self.curve.metric} {value:.4g} ({note})")
        if self.env.is_main:
            if self.tb is not None:
                self.tb.add_scalar(f"val/{self.curve.metric}", value, step)
            rows = [f"{s},{v:.8g},{int(s == self.curve.best_step)}" for s, v in self.curve.points]
            write_text(self.out / "validation.csv", "\n".join(["step,value,best", *rows]) + "\n")
        return best

    def _write_student(self, target: Path, step: int, note: dict[str, Any]) -> Path:
        """The run's student (the moving average with distill.ema) as a model checkpoint with digests, written under
        a temporary name and renamed (rank 0; every rank waits)."""
        if self.env.is_main:
            tmp = ckpt.tmp_dir(target)
            shutil.rmtree(tmp, ignore_errors=True)
            if self.ema is not None:
                self.ema.swap(self.student)
            try:
                lineage = {} if self.lineage is None else {LINEAGE: self.lineage}
                save_checkpoint(self.student, tmp, extra={"train_step": step, **note, **lineage})
            finally:
                if self.ema is not None:
                    self.ema.swap(self.student)
            write_digests(tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.replace(target)
        self.env.barrier()
        return target

    def _write_best(self, step: int) -> None:
        assert self.curve is not None
        self._write_student(ckpt.best_dir(self.out), step, {"validation": {"metric": self.curve.metric, "value": self.curve.best}})

    def _restore_best(self, start: int) -> None:
        """On resume: the best student so far must be the one the checkpoint's curve names (written after it, it
        may be missing when a run was killed in between: the checkpoint itself then holds it)."""
        assert self.curve is not None
        if self.curve.best_step is None:
            return
        best = ckpt.best_dir(self.out)
        meta = best / "model.json"
        if meta.exists() and json.loads(meta.read_text()).get("train_step") == self.curve.best_step and verify(best) is None:
            return
        if self.curve.best_step == start:
            self._write_best(start)
            return
        warnings.warn(f"{best} does not hold the best student of the validations so far (step {self.curve.best_step}); "
                      "the best is chosen again from the validations to come", stacklevel=2)  # fmt: skip
        self.curve.best_step = self.curve.best = None

    def _finish(self, trained: bool) -> Path:
        """Write checkpoints/final: the last step's full state there, or, when the run's student is another (the best
        validated one, the moving average), the last step's state in a step checkpoint and that student in final/."""
        final = ckpt.final_dir(self.out)
        if self.d.select == "last" and self.ema is None:
            self._save(self.total_steps, final)
        elif trained:
            self._save(self.total_steps, ckpt.step_dir(self.out, self.total_steps))
        if self.best_pending:
            self._write_best(self.total_steps)
        if self.d.select == "best":
            assert self.curve is not None and self.curve.best_step is not None
            if self.env.is_main:
                tmp = ckpt.tmp_dir(final)
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(ckpt.best_dir(self.out), tmp)
                shutil.rmtree(final, ignore_errors=True)
                tmp.replace(final)
            self.env.barrier()
        elif self.ema is not None:
            self._write_student(final, self.total_steps, {"ema": self.d.ema})
        return final

    # ---- the run -------------------------------------------------------------------------------
    def run(self) -> Path:
        started = time.perf_counter()
        self.spec = encoder_spec(self.config, self.plugins)
        # cheap checks first: loss, data (one decoded batch), the run directory, then the models (maybe a download)
        self.loss = training_loss(self.config, self.mode, self.spec, self.plugins)
        self._build_data(self.loss)
        self._check_run_dir()
        self._build_models()
        if mines(self.config, self.mode):
            self._mine()
        latest = self._latest() if self.resume else None
        if latest is not None:  # checked before the run's files are rewritten
            peek = json.loads((latest / ckpt.STATE_FILE).read_text())  # every rank reads it: all stop together
            if peek.get("mode") != self.mode:
                raise TrainingError(f"{latest} was written by `loqi {peek.get('mode')}`, not `loqi {self.mode}`")
            if peek.get("world_size") != self.env.world_size:
                raise TrainingError(
                    f"{latest} was written by {peek.get('world_size')} process(es); resume it with the same number "
                    f"(now {self.env.world_size}) so that every rank continues its own data and RNG stream"
                )
            if int(peek["step"]) > self.total_steps:
                raise TrainingError(
                    f"{latest} was trained for {peek['step']} steps, but {self.total_steps} are asked for now; a finished "
                    "or longer run is not cut short (its student would not be the one asked for): choose another --out"
                )
        if self.env.is_main:
            self._write_run_files()
            listed = write_skipped(self.train_set, self.out)
            if listed is not None:
                warnings.warn(f'training set "{self.train_name}": {len(self.train_set.skipped)} bad file(s) left out (skip_bad), listed in {listed}', stacklevel=2)
        self.skipped_seen = set(self.train_set.skipped)
        self.env.barrier()

        self.params = [p for p in self.student.parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError(f"distill.trainable {self.prefixes} leaves no parameter to train")
        fused = self.device.type == "cuda"  # one kernel for all parameters on the GPU
        self.optimizer = torch.optim.Adam(self.params, lr=self.d.lr, weight_decay=self.d.weight_decay, fused=fused)
        self.scheduler = make_scheduler(self.optimizer, self.d, self.total_steps)
        self.ema = _Ema(self.student, self.d.ema) if self.d.ema is not None else None
        v = self.validation
        self.curve = Curve(v.metric, v.higher_is_better) if v is not None else None
        self.best_pending = False
        _seed_all(self.config.seed + self.env.rank)

        start = 0
        if latest is not None:
            saved = ckpt.read_checkpoint(latest, self.env.rank, self.student, self.optimizer, self.scheduler)
            start = int(saved["step"])
            if self.ema is not None:
                self.ema.shadow = {k: t.to(self.device) for k, t in ckpt.read_ema(latest).items()}
            if self.curve is not None and saved.get("validation"):
                self.curve = Curve.from_json(saved["validation"])
        final = ckpt.final_dir(self.out)
        if start >= self.total_steps and latest is not None and (latest == final or verify(final) is None):
            log.info(f"{final} is final: nothing left to train")
            return final
        self.runlog.add("training setup", time.perf_counter() - started)

        self.ddp: nn.Module = self.student
        if self.env.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.student, device_ids=ids, static_graph=True)

        self.columns = ["loss", *[n for _, n, _ in self.loss.terms]]
        self.csv = _CsvLog(self.out / "train_log.csv", self.columns[1:], start if latest is not None else None) if self.env.is_main else None
        wanted = self.env.is_main and self.d.tensorboard is not False
        self.tb = summary_writer(self.out / "tensorboard", asked=self.d.tensorboard is True) if wanted else None
        if self.curve is not None and latest is not None:
            self._restore_best(start)
        self.t_first: float | None = None
        self.images = self.images_at_first = 0
        self.rate = float("nan")
        self.last_terms: dict[str, float] = {}
        buffer: list[tuple[int, int, float, torch.Tensor]] = []
        desc = f"{self.mode} {self.student.info['method']} {self.config.degrade} on {self.train_name}"
        self.pbar = progress(total=self.total_steps, initial=start, desc=desc, unit="step", disable=not self.env.is_main, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            for batch in self._loader(start):
                if "error" in batch:  # an unreadable image without skip_bad (raised here, not in a worker)
                    raise batch["error"]
                if batch["skipped"]:
                    self._note_skipped(batch["skipped"])
                step = int(batch["step"])
                lr = self.scheduler.get_last_lr()[0]  # the rate this step trains with
                total, terms = self._step(batch)
                if self.ema is not None:
                    self.ema.update(self.student)
                self.last_batch = batch
                done = step + 1
                self.images += len(batch["clean"]) * self.env.world_size
                buffer.append((done, int(batch["epoch"]), lr, torch.stack([total, *(terms[c] for c in self.columns[1:])])))
                self.pbar.update(1)
                validate = done in self.val_steps
                if done % self.d.log_every == 0 or done % self.d.checkpoint_every == 0 or done == self.total_steps or validate:
                    self._flush(buffer)
                best = self._validate(done) if validate else False
                if (done % self.d.checkpoint_every == 0 or validate) and done < self.total_steps:
                    self._save(done, ckpt.step_dir(self.out, done))  # a validation's checkpoint holds its curve
                    if best:
                        self._write_best(done)
                self.best_pending = best and done == self.total_steps
            self._flush(buffer)
            final = self._finish(trained=start < self.total_steps)
        finally:
            self.pbar.close()
            if self.csv is not None:
                self.csv.close()
            if self.tb is not None:
                self.tb.close()
        if self.env.is_main:
            summary = {
                "mode": self.mode, "method": self.student.info["method"], "degrade": self.config.degrade,
                "loss": self.loss.expression, "train": self.d.train, "steps": self.total_steps, "resumed_from": start,
                "world_size": self.env.world_size, "device": str(self.device),
                "precision": "bf16" if self.autocast_dtype is not None else "fp32", "channels_last": self.channels_last,
                "view_size": list(self.dataset.views.size) if self.dataset.views.size else "native",
                "augment": self.dataset.views.augment, "images_per_step": self.plan.images_per_step,
                "mined": self.plan.mined is not None, "bn_scope": self.d.bn_scope, "tf32": self.d.tf32,
                "loader_workers": self.workers, "torch_threads": self.threads,
                "trainable_parameters": sum(p.numel() for p in self.params),
                "images_per_s": None if math.isnan(self.rate) else self.rate,
                "wall_s": time.perf_counter() - t0, "final_terms": self.last_terms, "final_checkpoint": str(final),
                "schedule": self.d.schedule, "warmup_steps": self.d.warmup_steps, "ema": self.d.ema, "select": self.d.select,
                "validation": self.curve.to_json() if self.curve is not None else None,
            }  # fmt: skip
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
            self.runlog.add("training", summary["wall_s"])
            log.info(summary_line(summary))
        return final


def summary_line(s: dict[str, Any]) -> str:
    """One line of a training run's summary.json: steps, speed, precision, device and the last step's loss terms."""
    terms = ", ".join(f"{k} {v:.4g}" for k, v in s["final_terms"].items())
    rate = f"{s['images_per_s']:.1f} img/s" if s["images_per_s"] else "rate n/a"
    line = f"{s['steps']} steps ({rate}, {s['precision']}, {s['device']}); last step: {terms}"
    val = s.get("validation")
    if val and val["best_step"] is not None:
        chosen = "the run's student" if s.get("select") == "best" else "kept in checkpoints/best"
        line += f"; best validation {val['metric']} {val['best']:.4g} at step {val['best_step']} ({chosen})"
    return line
