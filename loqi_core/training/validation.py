"""Validation inside a training run: one number about the student every few steps, its curve, and the best so far.

``distill.val="heldout"`` is label-free: the run's distillation loss of the student (degraded view) against the
teacher (clean view) on training images held out of training, each view centred and unaugmented, each degradation
seeded per image, so that every validation sees the same bytes (lower is better). Any other value names a test set
(as ``--test`` takes it): R@1 of the student's queries, degraded with the run's degradation, against a database
encoded by the student (degraded) or by the frozen teacher (clean, ``distill.val_database="teacher"``), at
``eval.positive_radius`` (higher is better).
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from loqi_core.config import DistillConfig, RunConfig
from loqi_core.data.sets import TrainSet
from loqi_core.degrade.base import sample_seed
from loqi_core.errors import ConfigError
from loqi_core.evaluation.cache import EvalCache, digest
from loqi_core.training.data import ViewConfig, clean_view, load_image

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.degrade.base import Degradation
    from loqi_core.hooks.manager import Plugins
    from loqi_core.losses.expression import CompositeLoss
    from loqi_core.models.model import VPRModel

log = logging.getLogger("loqi.distill")
HELDOUT = "heldout"


@dataclass
class Curve:
    """Validation values by step and the best one so far (ties go to the later step, as the authors keep R@1 ≥ best)."""

    metric: str
    higher_is_better: bool
    points: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    best: float | None = None

    def add(self, step: int, value: float) -> bool:
        """Record a validation; True when it is the best so far."""
        self.points.append((step, value))
        better = self.best is None or (value >= self.best if self.higher_is_better else value <= self.best)
        if better:
            self.best_step, self.best = step, value
        return better

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "higher_is_better": self.higher_is_better, "points": [list(p) for p in self.points],
                "best_step": self.best_step, "best": self.best}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Curve":
        points = [(int(s), float(v)) for s, v in data["points"]]
        return cls(data["metric"], bool(data["higher_is_better"]), points, data["best_step"], data["best"])


def validation_steps(d: DistillConfig, steps_per_epoch: int, total_steps: int) -> list[int]:
    """The steps after which the student is validated: every ``val_every`` steps, or ``val_parts`` (default 6)
    evenly spaced points of each epoch; always the last step."""
    if d.val is None:
        return []
    if d.val_every is not None:
        steps = set(range(d.val_every, total_steps + 1, d.val_every))
    else:
        parts = d.val_parts or 6
        epochs = math.ceil(total_steps / steps_per_epoch)
        steps = {e * steps_per_epoch + max(1, round(k * steps_per_epoch / parts)) for e in range(epochs) for k in range(1, parts + 1)}
    return sorted({s for s in steps if s <= total_steps} | {total_steps})


def split_heldout(train: TrainSet, n: int) -> tuple[TrainSet, list[Path]]:
    """(the training set less a held-out slice, the slice's image paths): ``n`` images evenly spaced over the list,
    or, when the set has places, whole places evenly spaced until ``n`` images are out (no place on both sides)."""
    total = len(train.images)
    if n >= total:
        raise ConfigError(f'distill.heldout: {n} images held out of the {total} of training set "{train.name}" '
                          "leave none to train on; hold out fewer (-s distill.heldout=N)")  # fmt: skip
    if train.place_ids is None:
        out = set(np.unique(np.linspace(0, total - 1, n).round().astype(int)).tolist())
    else:
        groups = train.places()
        ids = sorted(groups)
        if len(ids) < 3:
            raise ConfigError(f'training set "{train.name}" has {len(ids)} places: too few to hold whole places out')
        count = min(len(ids) - 2, max(1, math.ceil(n * len(ids) / total)))  # places of about n images in all
        picked = np.unique(np.linspace(0, len(ids) - 1, count).round().astype(int))
        out = {i for k in picked for i in groups[ids[int(k)]]}
    held = {train.images.paths[i] for i in out}
    images, kept = train.images.without(held)
    place_ids = train.place_ids[kept] if train.place_ids is not None else None
    rest = TrainSet(train.name, images, place_ids, list(train.notes), list(train.skipped), train.skip_bad)
    return rest, sorted(held)


class HeldoutValidation:
    """The distillation loss on held-out training images (their views are decoded and degraded once)."""

    metric = "heldout loss"
    higher_is_better = False

    def __init__(self, paths: list[Path], views: ViewConfig, degradation: "Degradation", seed: int, batch_size: int) -> None:
        import torch

        fixed = ViewConfig(views.size, augment=False, min_crop=views.min_crop)
        rng = np.random.default_rng(0)  # unused without augmentation; clean_view takes one
        clean = [clean_view(load_image(p), fixed, rng) for p in paths]
        degraded = [degradation([v], seed=sample_seed(seed, f"heldout:{p.name}")).images[0] for v, p in zip(clean, paths)]
        self.batches = [(torch.stack(clean[i : i + batch_size]), torch.stack(degraded[i : i + batch_size]))
                        for i in range(0, len(clean), batch_size)]  # fmt: skip

    def __call__(self, student: "VPRModel", teacher: "VPRModel | None", loss: "CompositeLoss", forward: Callable) -> float:
        """The mean loss per image; ``forward(model, uint8 batch)`` runs a model as training does (device, autocast)."""
        import torch

        from loqi_core.losses.terms import DistillBatch

        total, count = 0.0, 0
        with torch.inference_mode():
            for clean, degraded in self.batches:
                t_lat, t_desc = forward(teacher, clean)
                s_lat, s_desc = forward(student, degraded)
                value, _ = loss(DistillBatch(s_lat.float(), t_lat.float(), s_desc.float(), t_desc.float(), None, None))
                total += float(value) * len(clean)
                count += len(clean)
        return total / count


class _ValidationCache(EvalCache):
    """The run's evaluation cache for degraded images and the frozen teacher's descriptors; the student's, new at
    every validation, go to a scratch folder emptied after each one, so the cache does not fill up with them."""

    def __init__(self, shared: EvalCache, scratch: Path, keep_model: str) -> None:
        self.enabled, self.root, self.stats = shared.enabled, shared.root, shared.stats
        self.scratch, self.keep_model = scratch, keep_model

    def entry(self, kind: str, key: dict[str, Any]) -> Path:
        if kind == "descriptors" and key.get("model") != self.keep_model:
            folder = self.scratch / digest(key)
            folder.mkdir(parents=True, exist_ok=True)
            return folder
        return super().entry(kind, key)


class TestSetValidation:
    """R@1 of the student's degraded queries on a labelled test set, against the student's or the teacher's database."""

    metric = "R@1"
    higher_is_better = True

    def __init__(self, config: RunConfig, degradation: "Degradation", plugins: "Plugins", scratch: Path) -> None:
        from loqi_core.data.datasets import load_dataset

        d = config.distill
        self.test = load_dataset(d.val, "test", root=config.data_root, plugins=plugins)  # type: ignore[arg-type]
        if not self.test.labelled:
            raise ConfigError(f'distill.val "{d.val}": the test set carries no positions, so it gives no R@1; use a '
                              'labelled set or "heldout" (label-free)')  # fmt: skip
        self.eval = config.eval.model_copy(update={"recall": [1], "clean_database": d.val_database == "teacher"})
        self.teacher_database = d.val_database == "teacher"
        self.degradation, self.plugins, self.seed, self.scratch = degradation, plugins, config.seed, scratch
        self.metric = f"R@1 ({self.test.name}, {'teacher' if self.teacher_database else 'student'} database)"

    def __call__(self, student: "VPRModel", teacher: "VPRModel | None", device: "torch.device") -> float | None:
        """R@1 on rank 0; None on the other ranks of a torchrun job (they encode their share)."""
        from loqi_core.evaluation.cache import model_fingerprint
        from loqi_core.evaluation.engine import barrier, dist_rank_world, evaluate

        database = teacher if self.teacher_database else None
        keep = model_fingerprint(database) if database is not None else ""
        cache = _ValidationCache(EvalCache(self.eval.cache_dir, enabled=self.eval.cache), self.scratch, keep)
        try:
            result = evaluate(student, self.test, self.degradation, config=self.eval, seed=self.seed, device=device,
                              cache=cache, plugins=self.plugins, database_model=database)  # fmt: skip
            barrier()  # under torchrun, every rank has read the merged descriptors before rank 0 empties the folder
        finally:
            if dist_rank_world()[0] == 0:
                shutil.rmtree(self.scratch, ignore_errors=True)
        return None if result is None else float(result.recalls["R@1"])


def check_validation(d: DistillConfig, mode: str, loss: "CompositeLoss") -> None:
    """Refuse a validation the run cannot measure, before anything is split or loaded."""
    if d.val is None:
        return
    if mode != "distill" and d.val == HELDOUT:
        raise ConfigError('distill.val="heldout" (the distillation loss on held-out images) needs the teacher, which '
                          "finetune has none of: validate a finetune on a labelled test set (--val NAME)")  # fmt: skip
    if d.val == HELDOUT and loss.needs_places:
        raise ConfigError(f'distill.val="heldout" measures the loss on held-out images without places, but "{loss.expression}" '
                          "needs places: validate on a labelled test set (--val NAME) instead")  # fmt: skip


def build_validation(
    config: RunConfig, held: list[Path], views: ViewConfig, degradation: "Degradation", plugins: "Plugins", scratch: Path,
    mode: str = "distill",
) -> HeldoutValidation | TestSetValidation | None:
    """The run's validation (None without one); ``held``: the images ``split_heldout`` kept out of training. A
    finetune has no teacher to encode the database (``--protocol paper`` asks for one): it encodes its own."""
    d = config.distill
    if d.val is None:
        return None
    if d.val == HELDOUT:
        return HeldoutValidation(held, views, degradation, config.seed, d.batch_size)
    if mode != "distill" and d.val_database == "teacher":
        log.info('%s validates on %s against its own database (val_database="student"): it has no teacher', mode, d.val)
        config = config.model_copy(update={"distill": d.model_copy(update={"val_database": "student"})})
    return TestSetValidation(config, degradation, plugins, scratch)
