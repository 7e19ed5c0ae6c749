"""Degradations: parse a spec such as ``res360p+qp40`` into a chain and apply it to uint8 images.

This is where a degradation is applied: ``parse_degradation(spec)(images, seed=...)``. Specs with ranges or
choices (``jpeg[5:50]``, ``any(jpeg10,qp40)``) become a ``loqi_core.degrade.sampled.Sampled`` degradation.
"""

from __future__ import annotations

import abc

import re
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from pydantic import ValidationError

from loqi_core.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.hooks.manager import Plugins
    from loqi_core.hooks.specs import DegradationSpec


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


def parse_degradation(spec: str, plugins: "Plugins | None" = None) -> Degradation:
    """Build the degradation a spec string names; every token must match exactly one registered grammar."""
    from loqi_core.hooks.manager import get_plugins

    plugins = plugins or get_plugins()
    spec = spec.strip()
    if spec.lower() in CLEAN_SPECS:
        return Identity()
    tokens = [token.strip() for token in spec.split("+")]
    if "" in tokens:
        i = tokens.index("")
        where = "at the start" if i == 0 else "at the end" if i == len(tokens) - 1 else f'after "{tokens[i - 1]}"'
        raise ConfigError(f'degradation "{spec}": empty term {where} (term {i + 1}); chain terms with a single +')
    if any(c in spec for c in "[]()"):
        from loqi_core.degrade.sampled import Sampled

        return Sampled(spec, plugins)
    stages = [parse_token(token, plugins, spec) for token in tokens]
    return stages[0] if len(stages) == 1 else Chain(stages, spec)


def parse_token(token: str, plugins: "Plugins", spec: str | None = None) -> Degradation:
    """One ``+``-free token (``jpeg10``) as the degradation its plugin builds; ``spec`` is the whole spec, for errors."""
    if not token:
        raise ConfigError(f'degradation "{spec}" has an empty term: write one spec between each "+" (res360p+qp40)')
    dspec, m = match_token(token, plugins)
    return build_token(dspec, {k: v for k, v in m.groupdict().items() if v is not None}, token)


def match_token(token: str, plugins: "Plugins") -> tuple["DegradationSpec", re.Match]:
    """The one registered grammar that matches ``token``, and the match."""
    matches = []
    for name, dspec, _ in plugins.degradations.items():
        m = re.fullmatch(dspec.pattern, token)
        if m:
            matches.append((dspec, m))
    if not matches:
        examples = [e for _, d, _ in plugins.degradations.items() for e in (d.examples or (d.name,))]
        raise UnknownNameError(
            f'Unknown degradation "{token}". Known forms: {", ".join(examples) or "none"}. '
            "Chain them with + (res360p+qp40). To add one: pip install loqi-plugin-<name>" + plugins.broken_hint(token)
        )
    if len(matches) > 1:
        names = ", ".join(d.name for d, _ in matches)
        raise ConfigError(f'degradation "{token}" matches several grammars ({names}); a plugin pattern is too broad')
    return matches[0]


def build_token(dspec: "DegradationSpec", values: dict[str, str], name: str) -> Degradation:
    """``dspec``'s degradation for the pattern's group ``values``; a value out of range names ``name``."""
    try:
        params = dspec.params(**values)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f'bad degradation "{name}": {reasons}') from None
    degradation = dspec.factory(params)
    degradation.spec = name
    return degradation


def sample_seed(base_seed: int, key: str | int) -> int:
    """A stable per-sample seed from a run seed and a sample key (an index or a file path)."""
    return (base_seed * 1_000_003 + zlib.crc32(str(key).encode())) & 0x7FFFFFFF
