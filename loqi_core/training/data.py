"""The training data pipeline: a deterministic batch plan indexed by step, loaded and degraded in workers.

Item ``s`` of :class:`StepDataset` is the batch that this rank trains on at global step ``s``. Which images
that is depends only on (seed, epoch, step, rank), so a resumed run reads exactly the batches it would have
read, and the data position in a checkpoint is just the step. Images travel as uint8 (clean view for the
teacher, degraded view for the student); normalisation happens on the device (``VPRModel.prepare``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from loqi_core.data.images import UnreadableImageError, read_image
from loqi_core.data.sets import TrainSet
from loqi_core.degrade.base import sample_seed
from loqi_core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.degrade.base import Degradation
    from loqi_core.training.mining import Mined


@dataclass(frozen=True)
class PlanConfig:
    """How batches are drawn: ``places`` × ``images_per_place`` (for losses that need places) or plain batches."""

    by_places: bool
    places_per_batch: int
    images_per_place: int
    batch_size: int
    seed: int
    world_size: int = 1
    rank: int = 0


class BatchPlan:
    """Per-epoch, seeded order of batches; each batch is a list of (image index, place id).

    With ``mined`` tuples (``loqi_core.training.mining``), the place batches pick anchors among the images that have
    a full tuple, and each anchor is followed in its batch by its mined positive and negatives (the authors' step:
    ``tuple_size`` = 7 images per anchor)."""

    def __init__(self, train: TrainSet, cfg: PlanConfig, mined: "Mined | None" = None) -> None:
        self.cfg = cfg
        self.n_images = len(train.images)
        self.mined = mined
        self.tuple_size = 1 if mined is None else 2 + mined.negatives.shape[1]
        self.place_ids = train.place_ids
        if cfg.by_places:
            places = train.places()
            if mined is not None:  # an image whose group has too few far images is no anchor (the authors drop it)
                usable = mined.usable
                places = {pid: [i for i in idx if usable[i]] for pid, idx in places.items()}
            self.places = [(pid, idx) for pid, idx in sorted(places.items()) if len(idx) >= 2]
            if len(self.places) < 2:
                raise DataError(
                    f'training set "{train.name}" has {len(self.places)} place(s) with at least 2 images; '
                    "a loss that needs places (triplet, multisimilarity) needs at least 2 such places"
                )
            self.dropped_places = len(places) - len(self.places)
            per_batch = min(cfg.places_per_batch, len(self.places))
            self.batches_per_epoch = len(self.places) // per_batch
            self._per_batch = per_batch
        else:
            self.places = []
            self.dropped_places = 0
            self.batches_per_epoch = math.ceil(self.n_images / cfg.batch_size)
        self.steps_per_epoch = self.batches_per_epoch // cfg.world_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f'training set "{train.name}" gives {self.batches_per_epoch} batch(es) per epoch, fewer than the '
                f"{cfg.world_size} processes; use a smaller batch or more images"
            )
        self._cache: dict[int, list[list[tuple[int, int]]]] = {}

    @property
    def images_per_step(self) -> int:
        """Images of one step on one rank (at most: a place with fewer images gives fewer anchors)."""
        if self.cfg.by_places:
            return self._per_batch * self.cfg.images_per_place * self.tuple_size
        return self.cfg.batch_size

    def epoch(self, epoch: int) -> list[list[tuple[int, int]]]:
        """All batches of one epoch, in training order (cached: a worker reuses it for every step)."""
        if epoch not in self._cache:
            rng = np.random.default_rng([self.cfg.seed, epoch])
            if self.cfg.by_places:
                order = rng.permutation(len(self.places))
                batches = []
                for b in range(self.batches_per_epoch):
                    batch = []
                    for p in order[b * self._per_batch : (b + 1) * self._per_batch]:
                        pid, idx = self.places[int(p)]
                        take = rng.choice(len(idx), size=min(len(idx), self.cfg.images_per_place), replace=False)
                        batch.extend((idx[int(t)], pid) for t in sorted(take))
                    batches.append(batch)
            else:
                order = rng.permutation(self.n_images)
                bs = self.cfg.batch_size
                batches = [[(int(i), -1) for i in order[b * bs : (b + 1) * bs]] for b in range(self.batches_per_epoch)]
            self._cache = {epoch: batches}
        return self._cache[epoch]

    def batch(self, step: int) -> tuple[int, list[tuple[int, int]]]:
        """(epoch, batch) this rank trains on at global ``step`` (batches are strided over ranks, like a
        DistributedSampler; the tail of an epoch that does not fill every rank is skipped). With mined tuples, each
        anchor is followed by its positive and negatives, ``tuple_size`` images per anchor."""
        epoch, within = divmod(step, self.steps_per_epoch)
        anchors = self.epoch(epoch)[within * self.cfg.world_size + self.cfg.rank]
        if self.mined is None:
            return epoch, anchors
        assert self.place_ids is not None  # mined plans are place plans
        return epoch, [(i, int(self.place_ids[i])) for index, _ in anchors for i in self.mined.tuple_of(index)]


@dataclass(frozen=True)
class ViewConfig:
    """The training view rule: every image becomes a ``size`` (height, width) view, optionally augmented; size None:
    every image as it is (native size, no crop, resize or flip)."""

    size: tuple[int, int] | None
    augment: bool = True
    min_crop: float = 0.7

    def describe(self) -> str:
        if self.size is None:
            return "native size (each image as it is)"
        return f"{self.size[0]}x{self.size[1]}, augment {'on' if self.augment else 'off'}"


def _resize_uint8(img: "torch.Tensor", size: tuple[int, int]) -> "torch.Tensor":
    import torch.nn.functional as F

    if tuple(img.shape[-2:]) == tuple(size):
        return img
    x = F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[0].round_().clamp_(0, 255).to(img.dtype)


def crop_window(h: int, w: int, views: ViewConfig, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the crop: the largest window of the view's aspect ratio, centred; with
    ``augment``, each side scaled by a random factor in [min_crop, 1] and placed at random."""
    assert views.size is not None, "native views are not cropped"
    vh, vw = views.size
    if w * vh > h * vw:  # the image is wider than the view
        ch, cw = h, max(1, min(w, round(h * vw / vh)))
    else:
        ch, cw = max(1, min(h, round(w * vh / vw))), w
    if not views.augment:
        return (h - ch) // 2, (w - cw) // 2, ch, cw
    f = rng.uniform(views.min_crop, 1.0)
    ch, cw = max(1, round(ch * f)), max(1, round(cw * f))
    return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw


def clean_view(img: "torch.Tensor", views: ViewConfig, rng: np.random.Generator) -> "torch.Tensor":
    """The teacher's view: a crop of the view's aspect ratio resized to ``views.size`` (up or down), flipped at
    random with ``augment``. The student's view is its degradation, so both see the same crop and flip. Native
    views (size None) are the decoded file itself."""
    if views.size is None:
        return img.contiguous()
    top, left, ch, cw = crop_window(*img.shape[-2:], views, rng)
    img = _resize_uint8(img[:, top : top + ch, left : left + cw], views.size)
    if views.augment and rng.random() < 0.5:
        img = img.flip(-1)
    return img.contiguous()


def image_size_of(path: Any) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {exc} (corrupt or truncated?)") from None
    return h, w


def typical_size(paths: list[Any], limit: int = 200) -> tuple[int, int]:
    """Median (height, width) of up to ``limit`` images spread evenly over ``paths`` (headers only)."""
    if not paths:
        raise DataError("no images to take a typical size from")
    picked = [paths[int(i)] for i in np.unique(np.linspace(0, len(paths) - 1, min(limit, len(paths))).round())]
    sizes = np.array([image_size_of(p) for p in picked])
    return int(np.median(sizes[:, 0])), int(np.median(sizes[:, 1]))


def load_image(path: Any) -> "torch.Tensor":
    """Decode to uint8 RGB 3×H×W with torchvision.io (fast); anything it cannot read goes through PIL,
    which names a missing or corrupt file."""
    import warnings

    import torch
    import torchvision.io as tio

    try:
        with warnings.catch_warnings():  # torchvision >= 0.29 flags its decoders as deprecated in favour of torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            image = tio.decode_image(tio.read_file(str(path)), mode=tio.ImageReadMode.RGB)
    except Exception:
        return read_image(path)
    return image if image.dtype == torch.uint8 else read_image(path)  # 16-bit PNG: converted by value range


def _stack(images: list["torch.Tensor"], what: str) -> "torch.Tensor":
    import torch

    shapes = sorted({tuple(i.shape) for i in images})
    if len(shapes) > 1:  # every clean view has the view size; a degradation must not change it within a batch
        hint = " (native views: every image of a batch must have one size, as GSV-Cities' 300x400 cities do; or " \
               "give distill.view_size H W)" if what == "clean" else ""
        raise DataError(f"the {what} views of a training batch have different sizes {shapes[:4]}{hint}")
    return torch.stack(images)


class StepDataset:
    """``dataset[step]`` → {"clean", "degraded" (uint8 B×3×H×W), "place_ids", "positions", "step"}, and with mined
    tuples "triplets": A×7 positions in the batch of each anchor, its positive and its negatives."""

    def __init__(self, train: TrainSet, plan: BatchPlan, degradation: "Degradation", views: ViewConfig, seed: int) -> None:
        self.paths = [str(p) for p in train.images.paths]
        self.positions = train.images.positions
        self.plan = plan
        self.degradation = degradation
        self.views = views
        self.seed = seed
        self.skip_bad = train.skip_bad

    def __getitem__(self, step: int) -> dict[str, Any]:
        """The batch of ``step``; an unreadable image is left out and listed under "skipped" with skip_bad, else
        the batch is {"error": UnreadableImageError}, raised by the trainer (a worker's traceback never shows)."""
        import torch

        epoch, batch = self.plan.batch(step)
        clean, degraded, skipped, kept = [], [], [], []
        size = self.plan.tuple_size  # an anchor's tuple stays whole: one unreadable image leaves out the tuple
        for start in range(0, len(batch), size):
            views = []
            for index, pid in batch[start : start + size]:
                key = f"{epoch}:{index}"
                rng = np.random.default_rng(sample_seed(self.seed, "view:" + key))
                try:
                    image = load_image(self.paths[index])
                except UnreadableImageError as exc:
                    if not self.skip_bad:
                        hint = f"{exc}; add ?skip_bad=true to the training set to leave such files out"
                        return {"error": UnreadableImageError(hint, exc.path), "step": step}
                    skipped.append(f"{self.paths[index]}: {str(exc).removeprefix(f'cannot read image {self.paths[index]}: ')}")
                    break
                view = clean_view(image, self.views, rng)
                views.append((view, self.degradation([view], seed=sample_seed(self.seed, key)).images[0], (index, pid)))
            else:
                for view, low, item in views:
                    clean.append(view)
                    degraded.append(low)
                    kept.append(item)
        if not clean:
            return {"error": DataError(f"step {step}: every image of the batch is unreadable ({'; '.join(skipped)})"), "step": step}
        batch = kept
        out: dict[str, Any] = {"clean": _stack(clean, "clean"), "degraded": _stack(degraded, "degraded"), "step": step, "epoch": epoch, "skipped": skipped}
        if self.plan.cfg.by_places:
            out["place_ids"] = torch.tensor([pid for _, pid in batch], dtype=torch.long)
            if self.positions is not None:
                out["positions"] = torch.from_numpy(self.positions[[i for i, _ in batch]].astype(np.float64))
        if self.plan.mined is not None:
            out["triplets"] = torch.arange(len(batch), dtype=torch.long).view(-1, size)
        return out

    def __len__(self) -> int:  # only for DataLoader's bookkeeping; items are addressed by step
        return 2**62
