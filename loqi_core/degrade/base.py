"""The degradation types: the ``Degradation`` base class, its output, the identity and chains of stages.

A degradation turns clean uint8 RGB images into degraded ones, deterministically given a seed. This is where one
is applied: ``degradation(images, seed=...)``; ``loqi_core.degrade.grammar.parse_degradation`` builds one from a spec,
whose surface syntax (choices, weights, ranges, splitting at the top level) is here, below the protocols that
rewrite specs.
"""

from __future__ import annotations

import abc
import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from loqi_core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.data.sets import ImageList


@dataclass
class Degraded:
    """Degraded images (uint8 3×H×W each, same order) and, for codecs, the bytes sent per image."""

    images: list["torch.Tensor"]
    nbytes: list[int | None] | None = None
    draws: list[dict[str, int | float | str]] | None = None
    """Sampled specs only: per image, what was drawn (``{"jpeg[5:50]": 23, "spec": "jpeg23"}``)."""


class Degradation(abc.ABC):
    """Base class: turn clean uint8 RGB images into degraded ones, deterministically given ``seed``.

    ``temporal`` degradations (video codecs) encode the images of one call as one ordered stream;
    callers pass a whole sequence in capture order, or one image per call when there is no order.
    """

    spec: str = ""
    temporal: bool = False

    @abc.abstractmethod
    def __call__(self, images: Sequence["torch.Tensor"], *, seed: int = 0) -> Degraded:
        """Degrade ``images`` (uint8 3×H×W each); the same images and seed give the same output."""


class Identity(Degradation):
    """The clean images, unchanged (spec ``none`` / ``clean``)."""

    spec = "none"

    def __call__(self, images: Sequence["torch.Tensor"], *, seed: int = 0) -> Degraded:
        return Degraded(list(images))


class Chain(Degradation):
    """Stages applied left to right; the byte count is the last stage's that reports one."""

    def __init__(self, stages: list[Degradation], spec: str) -> None:
        self.stages = stages
        self.spec = spec
        self.temporal = any(s.temporal for s in stages)

    def __call__(self, images: Sequence["torch.Tensor"], *, seed: int = 0) -> Degraded:
        out = Degraded(list(images))
        for i, stage in enumerate(self.stages):
            step = stage(out.images, seed=seed + i * 7919)
            out = Degraded(step.images, step.nbytes if step.nbytes is not None else out.nbytes)
        return out


CLEAN_SPECS = ("", "none", "clean")
CHOICE = re.compile(r"any\((.*)\)", re.S)
WEIGHTED = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*\*(.*)", re.S)
BRACKET = re.compile(r"\[([^\[\]]*)\]")
"""The surface of a spec's sampled forms: a choice ``any(...)``, a weighted option ``0.7*A``, a range ``[LOW:HIGH]``."""


def split_top(text: str, sep: str, spec: str) -> list[str]:
    """``text`` split at ``sep`` outside parentheses and brackets; unbalanced ones are an error naming ``spec``."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += (c in "([") - (c in ")]")
        if depth < 0:
            break
        if c == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    if depth != 0:
        raise ConfigError(f'degradation "{spec}": unbalanced brackets or parentheses in "{text}"')
    return parts + [text[start:].strip()]


def sample_seed(base_seed: int, key: str | int) -> int:
    """A stable per-sample seed from a run seed and a sample key (an index or a file path)."""
    return (base_seed * 1_000_003 + zlib.crc32(str(key).encode(errors="surrogateescape"))) & 0x7FFFFFFF


def degradation_units(images: ImageList, degradation: Degradation) -> list[list[int]]:
    """The groups of indices degraded by one call: capture-order sequences for temporal degradations, else singles."""
    if not degradation.temporal or images.sequences is None:
        return [[i] for i in range(len(images))]
    units = [list(s) for s in images.sequences if s]
    covered = {i for s in units for i in s}
    units += [[i] for i in range(len(images)) if i not in covered]
    return units


def temporal_note(images: ImageList, degradation: Degradation) -> str:
    """How a temporal degradation was fed (stated in the protocol)."""
    if not degradation.temporal:
        return "not temporal: each image degraded on its own"
    if images.sequences is None:
        return "temporal codec, but the images have no capture order: each image encoded as its own one-frame stream"
    return f"temporal codec: each of {len(images.sequences)} capture-order sequences encoded as one stream"
