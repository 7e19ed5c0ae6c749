"""The authors' training tuples, mined once before training: for every image, the image within 20 m that the
pretrained teacher finds most similar (its positive) and 5 random images of its group farther than 30 m (its
negatives).

As ``gsv_cities_data.find_neighbors`` of LoQI-VPR does it: city by city (``TrainSet.groups``), with the pretrained
teacher's descriptors of the raw images, the image's own similarity set to 0 (so it is its own positive only when
nothing else within 20 m is more similar), negatives drawn uniformly among the group's images beyond 30 m (they
draw 100 and use the first 5, which is the same draw), never re-mined. The teacher's descriptors go through the
evaluation cache in chunks (a killed extraction resumes at its chunk); the tuples are cached beside them, keyed by
the images, their positions and groups, the teacher, the rule and the seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from loqi_core.data.sets import ImageList, TrainSet
from loqi_core.degrade.base import Identity
from loqi_core.errors import ConfigError
from loqi_core.evaluation.cache import EvalCache, check, image_list_fingerprint, seal
from loqi_core.evaluation.engine import descriptor_key, dist_rank_world, extract
from loqi_core.hooks.manager import Plugins
from loqi_core.util.progress import progress

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.models.model import VPRModel

MINING_VERSION = 1
"""Bump when the rule or the stored format changes meaning (cached tuples of another version are not reused)."""
CHUNK = 8192
"""Images per cached descriptor entry: a killed extraction resumes at its chunk."""


@dataclass(frozen=True)
class MiningRule:
    """The authors' values (``configs/trainer.yaml``, ``triplet_loss``)."""

    positive_radius_m: float = 20.0  # nonTrivPosDistSqThr, used as a plain radius
    negative_radius_m: float = 30.0  # posDistThr
    negatives: int = 5  # nNegSample


RULE = MiningRule()


@dataclass
class Mined:
    """Per image: the index of its positive, and of its negatives (-1 where its group has too few)."""

    positives: np.ndarray
    negatives: np.ndarray

    @property
    def usable(self) -> np.ndarray:
        """Images that can be anchors: a full set of negatives (the authors drop the others)."""
        return (self.negatives >= 0).all(axis=1)

    def tuple_of(self, index: int) -> list[int]:
        """``[anchor, positive, negative, ...]``: the images one anchor brings into a step."""
        return [index, int(self.positives[index]), *map(int, self.negatives[index])]


def pairs_within(positions: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Every (i, j) with ‖p_i − p_j‖ ≤ ``radius`` (i == j included), sorted by i then j, through a grid of cells
    ``radius`` wide: only the 3×3 cells around a point are compared, so the cost follows the pairs, not N²."""
    n = len(positions)
    cells = np.floor((positions - positions.min(axis=0)) / radius).astype(np.int64)
    width = int(cells[:, 1].max()) + 3
    key = (cells[:, 0] + 1) * width + cells[:, 1] + 1
    order = np.argsort(key, kind="stable")
    sorted_keys = key[order]
    rows, cols = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            target = key + dx * width + dy
            lo = np.searchsorted(sorted_keys, target, "left")
            counts = np.searchsorted(sorted_keys, target, "right") - lo
            i = np.repeat(np.arange(n), counts)
            within = np.arange(len(i)) - np.repeat(np.cumsum(counts) - counts, counts)
            j = order[np.repeat(lo, counts) + within]
            close = ((positions[i] - positions[j]) ** 2).sum(axis=1) <= radius**2
            rows.append(i[close])
            cols.append(j[close])
    i, j = np.concatenate(rows), np.concatenate(cols)
    order = np.lexsort((j, i))
    return i[order], j[order]


class _Rows:
    """Descriptor rows of a group by local index, read from its chunks' memory maps."""

    def __init__(self, chunks: list[np.ndarray]) -> None:
        self.chunks = chunks

    def __call__(self, local: np.ndarray) -> np.ndarray:
        out = np.empty((len(local), self.chunks[0].shape[1]), dtype=np.float32)
        which = local // CHUNK
        for c in np.unique(which):
            sel = which == c
            out[sel] = self.chunks[int(c)][local[sel] % CHUNK]
        return out


def mine_group(rows: _Rows, positions: np.ndarray, rng: np.random.Generator, rule: MiningRule = RULE) -> Mined:
    """The tuples of one group (local indices): positive by teacher similarity within the positive radius (the
    image's own similarity counted as 0), negatives uniformly among the images beyond the negative radius."""
    n = len(positions)
    i, j = pairs_within(positions, rule.positive_radius_m)
    sims = np.empty(len(i), dtype=np.float64)
    for start in range(0, len(i), 1024):  # bounded memory: 1024 pairs of descriptors at a time
        a, b = i[start : start + 1024], j[start : start + 1024]
        sims[start : start + 1024] = (rows(a).astype(np.float64) * rows(b)).sum(axis=1)
    sims[i == j] = 0.0  # find_neighbors: sim_batch[i, i] = 0
    best = np.lexsort((j, -sims, i))  # per anchor: the most similar first, the lower index on a tie
    first = np.r_[True, i[best][1:] != i[best][:-1]]
    positives = np.empty(n, dtype=np.int64)
    positives[i[best][first]] = j[best][first]
    near_i, near_j = pairs_within(positions, rule.negative_radius_m)
    starts = np.searchsorted(near_i, np.arange(n + 1))
    negatives = np.full((n, rule.negatives), -1, dtype=np.int64)
    for a in progress(range(n), desc="mining negatives", unit="img", leave=False, disable=n < 10_000):
        near = near_j[starts[a] : starts[a + 1]]
        if n - len(near) < rule.negatives:
            continue
        draw = rng.choice(n, size=min(n, rule.negatives + len(near)), replace=False)
        negatives[a] = draw[~np.isin(draw, near)][: rule.negatives]
    return Mined(positives, negatives)


def _key(teacher: "VPRModel", train: TrainSet, precision: str, device: "torch.device", seed: int, plugins: Plugins) -> dict[str, Any]:
    def array_digest(a: np.ndarray | None) -> str | None:
        return None if a is None else hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:24]

    return {
        "images": image_list_fingerprint(train.images), "positions": array_digest(train.images.positions),
        "groups": array_digest(train.groups), "teacher": descriptor_key(teacher, precision, device, plugins),
        "rule": asdict(RULE), "seed": seed, "mining_version": MINING_VERSION,
    }  # fmt: skip


def mine(
    teacher: "VPRModel",
    train: TrainSet,
    *,
    cache: EvalCache,
    plugins: Plugins,
    device: "torch.device",
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int = 0,
    precision: str = "fp32",
) -> Mined:
    """The tuples of every image of ``train``: cached, else mined with ``teacher`` group by group (under torchrun
    every rank encodes its share of each chunk; rank 0 mines and writes, the others read)."""
    if train.images.positions is None:
        raise ConfigError(
            f'distill.mine: training set "{train.name}" has no positions (a label-free folder); mining needs them '
            "(@east@north@ file names, or a dataset with coordinates), or set distill.mine=false"
        )
    key = _key(teacher, train, precision, device, seed, plugins)
    path = cache.entry("mining", key) / "mined.npz"
    if cache.lookup(path) is None:
        _mine_all(teacher, train, path, key["teacher"], cache=cache, plugins=plugins, device=device, seed=seed,
                  batch_size=batch_size, num_workers=num_workers, precision=precision)  # fmt: skip
    with np.load(path) as data:
        return Mined(data["positives"], data["negatives"])


def _mine_all(teacher: "VPRModel", train: TrainSet, path, descriptor_key_: dict[str, Any], *, cache: EvalCache,
              plugins: Plugins, device: "torch.device", seed: int, batch_size: int, num_workers: int, precision: str) -> None:  # fmt: skip
    import torch.distributed as dist

    n = len(train.images)
    groups = train.groups if train.groups is not None else np.zeros(n, dtype=np.int64)
    positions = np.asarray(train.images.positions, dtype=np.float64)
    mined = Mined(np.full(n, -1, dtype=np.int64), np.full((n, RULE.negatives), -1, dtype=np.int64))
    rng = np.random.default_rng([seed, 20])  # one stream, consumed group by group in index order
    labels = np.unique(groups)
    for g, label in enumerate(labels):
        members = np.flatnonzero(groups == label)
        chunks = []
        for c, start in enumerate(range(0, len(members), CHUNK)):
            part = members[start : start + CHUNK]
            images = ImageList([train.images.paths[i] for i in part], positions[part])
            chunks.append(extract(
                teacher, images, Identity(), cache=cache, key=descriptor_key_, seed=0, device=device,
                batch_size=batch_size, num_workers=num_workers, precision=precision, cache_images=False, plugins=plugins,
                label=f"mining: teacher descriptors, group {g + 1}/{len(labels)}, part {c + 1}",
            ))  # fmt: skip
        if dist_rank_world()[0] != 0:
            continue
        local = mine_group(_Rows(chunks), positions[members], rng)
        ok = local.negatives[:, 0] >= 0
        mined.positives[members] = members[local.positives]
        mined.negatives[members[ok]] = members[local.negatives[ok]]
    if dist_rank_world()[0] == 0:
        tmp = path.with_name("mined.partial.npz")
        with open(tmp, "wb") as f:
            np.savez(f, positives=mined.positives, negatives=mined.negatives)
        tmp.replace(path)
        seal(path, {"images": n, "usable": int(mined.usable.sum()), "rule": json.dumps(asdict(RULE))})
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if check(path) is None:
        raise RuntimeError(f"mined tuples missing after mining: {path}")


def describe(mined: Mined, train: TrainSet) -> str:
    """One line on what mining found (for run.log and the progress output)."""
    usable = int(mined.usable.sum())
    own = int((mined.positives == np.arange(len(mined.positives))).sum())
    return (
        f"mined {len(mined.positives)} images of {train.name} with the teacher: {usable} anchors with "
        f"{RULE.negatives} negatives beyond {RULE.negative_radius_m:g} m, {len(mined.positives) - usable} left out "
        f"(too few far images in their group), {own} without another image within {RULE.positive_radius_m:g} m "
        "(their own positive)"
    )

