"""Sampled degradations' draws: a parsed range or choice as a tree of nodes, and ``Sampled``, which draws one
concrete spec (``jpeg23``) per call from its seed and applies it. The grammar (``loqi_core.degrade.grammar``)
builds the tree; this module only draws from it.

Each call draws per image, or once per call (one sequence, one stream) when the spec can include a temporal codec.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from loqi_core.degrade.base import CLEAN_SPECS, Degradation, Degraded

if TYPE_CHECKING:  # pragma: no cover
    import torch

MAX_BUILT = 512
"""Concrete degradations kept built (``jpeg23``, ...); a float range can name more, which are rebuilt."""


@dataclass
class Axis:
    """One thing a sampled spec draws: a range (``low``..``high`` of ``param``) or a choice among ``options``."""

    key: str
    param: str = ""
    low: float = 0
    high: float = 0
    integer: bool = True
    options: tuple[str, ...] = ()


class Node(abc.ABC):
    """A parsed piece of a sampled spec: ``draw`` writes a concrete spec and records what it drew in ``draws``."""

    temporal = False

    @abc.abstractmethod
    def draw(self, rng: random.Random, draws: dict[str, Any]) -> str:
        """One concrete spec (``jpeg23``) drawn with ``rng``."""


class Fixed(Node):
    """A token without ranges (``jpeg10``, ``none``): always itself."""

    def __init__(self, text: str, temporal: bool) -> None:
        self.text, self.temporal = text, temporal

    def draw(self, rng: random.Random, draws: dict[str, Any]) -> str:
        return self.text


class Range(Node):
    """A token with ``[LOW:HIGH]`` in place of one or more numeric parameters; each is drawn uniformly."""

    def __init__(self, pieces: list[str], axes: list[Axis], decimals: list[int], temporal: bool) -> None:
        self.pieces, self.axes, self.decimals, self.temporal = pieces, axes, decimals, temporal

    def draw(self, rng: random.Random, draws: dict[str, Any]) -> str:
        text = self.pieces[0]
        for axis, decimals, piece in zip(self.axes, self.decimals, self.pieces[1:]):
            if axis.integer:
                value: int | float = rng.randint(int(axis.low), int(axis.high))
                written = str(value)
            else:
                written = f"{rng.uniform(axis.low, axis.high):.{decimals}f}".rstrip("0").rstrip(".")
                value = float(written)
            draws[axis.key] = value
            text += written + piece
        return text


class Choice(Node):
    """``any(A,B,...)``: one option, drawn with the given weights, then drawn from in turn."""

    def __init__(self, axis: Axis, options: list[Node], weights: list[float]) -> None:
        self.axis, self.options, self.weights = axis, options, weights
        self.temporal = any(o.temporal for o in options)

    def draw(self, rng: random.Random, draws: dict[str, Any]) -> str:
        i = rng.choices(range(len(self.options)), weights=self.weights)[0]
        draws[self.axis.key] = self.axis.options[i]
        return self.options[i].draw(rng, draws)


class ChainNode(Node):
    """``A+B``: each term drawn in order; clean (``none``) terms drop out of the chain."""

    def __init__(self, terms: list[Node]) -> None:
        self.terms = terms
        self.temporal = any(t.temporal for t in terms)

    def draw(self, rng: random.Random, draws: dict[str, Any]) -> str:
        texts = [t.draw(rng, draws) for t in self.terms]
        return "+".join(t for t in texts if t.lower() not in CLEAN_SPECS) or "none"


class Sampled(Degradation):
    """A spec with ranges or choices: each call draws a concrete spec from the seed and applies it.

    Not temporal: every image of a call draws its own (from the seed and its place in the call; loqi passes one
    image per call, so each image draws from its own per-sample seed). Temporal (a video codec may be drawn):
    one draw for the whole call, so a sequence is one stream at one setting.
    """

    def __init__(
        self, spec: str, root: Node, axes: list[Axis], build: Callable[[str, Any], Degradation], plugins: Any
    ) -> None:
        self.spec, self.root, self.axes = spec, root, axes
        self.build = build
        """``build(concrete_spec, plugins)``: the grammar's parser, handed down so that the draws need not import it."""
        self.temporal = root.temporal
        self.plugins = plugins
        """The plugin set the grammar parsed with (None in a spawned loader worker: ``build`` then loads its own)."""
        self._built: dict[str, Degradation] = {}

    def draw(self, seed: int, index: int = 0) -> tuple[str, dict[str, Any]]:
        """The concrete spec drawn for image ``index`` of a call with ``seed``, and what was drawn."""
        draws: dict[str, Any] = {}
        text = self.root.draw(random.Random(f"loqi-sample:{seed}:{index}"), draws)
        return text, draws

    def concrete(self, text: str) -> Degradation:
        if text not in self._built:
            if len(self._built) >= MAX_BUILT:
                self._built.clear()
            self._built[text] = self.build(text, self.plugins)
        return self._built[text]

    def __call__(self, images: Sequence["torch.Tensor"], *, seed: int = 0) -> Degraded:
        n = len(images)
        groups = [(list(range(n)), self.draw(seed))] if self.temporal else [([i], self.draw(seed, i)) for i in range(n)]
        out: list[Any] = [None] * n
        nbytes: list[int | None] = [None] * n
        draws: list[dict[str, Any]] = [{}] * n
        for indices, (text, drawn) in groups:
            result = self.concrete(text)([images[i] for i in indices], seed=seed)
            for j, i in enumerate(indices):
                out[i] = result.images[j]
                nbytes[i] = result.nbytes[j] if result.nbytes is not None else None
                draws[i] = {**drawn, "spec": text}
        return Degraded(out, None if all(b is None for b in nbytes) else nbytes, draws)

    def __getstate__(self) -> dict[str, Any]:  # loader workers started by spawn re-load the plugins themselves
        return {**self.__dict__, "plugins": None, "_built": {}}


def bin_labels(axis: Axis, bins: int = 5) -> list[str]:
    """How a report groups what ``axis`` drew: each option, each value of a short integer range, else ``bins`` bins."""
    if axis.options:
        return list(axis.options)
    lo, hi = axis.low, axis.high
    if axis.integer and hi - lo < 10:
        return [str(v) for v in range(int(lo), int(hi) + 1)]
    if axis.integer:
        edges = [round(lo + (hi + 1 - lo) * k / bins) for k in range(bins + 1)]
        return [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:])]
    return [f"{lo + (hi - lo) * k / bins:g}-{lo + (hi - lo) * (k + 1) / bins:g}" for k in range(bins)]


def bin_label(axis: Axis, value: Any, bins: int = 5) -> str:
    """The label of ``bin_labels`` that a drawn ``value`` falls in."""
    labels = bin_labels(axis, bins)
    if axis.options or (axis.integer and axis.high - axis.low < 10):
        return str(value)
    if axis.integer:
        return next(lbl for lbl in labels if int(lbl.split("-")[0]) <= value <= int(lbl.split("-")[1]))
    width = (axis.high - axis.low) / bins
    return labels[min(bins - 1, int((value - axis.low) / width)) if width else 0]
