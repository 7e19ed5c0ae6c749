"""Sampled degradations: a range ``jpeg[5:50]``, a choice ``any(jpeg10,0.5*qp40)``, both inside ``+`` chains.

The core parses this grammar around every registered degradation, so any numeric parameter of any plugin takes a
range without the plugin knowing. Each call draws one concrete spec (``jpeg23``) from its seed: per image, or once
per call (one sequence, one stream) when the spec can include a temporal codec.
"""

from __future__ import annotations

import abc
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from loqi_core.degrade.grammar import CLEAN_SPECS, Degradation, Degraded, build_token, match_token, parse_degradation
from loqi_core.errors import ConfigError, LoqiError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.hooks.manager import Plugins
    from loqi_core.hooks.specs import DegradationSpec

BRACKET = re.compile(r"\[([^\[\]]*)\]")
NUMBER = re.compile(r"\d+(?:\.\d+)?")
WEIGHTED = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*\*(.*)", re.S)
CHOICE = re.compile(r"any\((.*)\)", re.S)
GRAMMAR = "a range NAME[LOW:HIGH] (jpeg[5:50], res[270:720]p) or a choice any(A,B,...) / any(0.7*A,0.3*B)"
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


class Parser:
    """Turns a sampled spec into a tree of nodes, checking every fixed token and both ends of every range."""

    def __init__(self, spec: str, plugins: "Plugins") -> None:
        self.spec, self.plugins = spec, plugins
        self.axes: list[Axis] = []

    def expression(self, text: str) -> Node:
        terms = split_top(text, "+", self.spec)
        if any(not t for t in terms):
            raise ConfigError(f'degradation "{self.spec}" has an empty term: write one spec between each "+" (res360p+qp40)')
        nodes = [self.term(t) for t in terms]
        return nodes[0] if len(nodes) == 1 else ChainNode(nodes)

    def term(self, text: str) -> Node:
        m = CHOICE.fullmatch(text)
        if m:
            return self.choice(text, m.group(1))
        if "[" in text or "]" in text:
            return self.range(text)
        if "(" in text or ")" in text:
            raise ConfigError(f'degradation "{self.spec}": cannot read "{text}"; the sampled forms are {GRAMMAR}')
        if text.lower() in CLEAN_SPECS:
            return Fixed("none", False)
        return Fixed(text, parse_degradation(text, self.plugins).temporal)

    def choice(self, text: str, inner: str) -> Node:
        items = split_top(inner, ",", self.spec)
        if not all(items):
            raise ConfigError(f'degradation "{self.spec}": "{text}" has an empty option; write any(jpeg10,qp40)')
        weighted = [WEIGHTED.fullmatch(item) for item in items]
        if any(weighted) and not all(weighted):
            raise ConfigError(f'degradation "{self.spec}": weigh every option of "{text}" or none (any(0.7*jpeg10,0.3*qp40))')
        weights = [float(w.group(1)) if w else 1.0 for w in weighted]
        if not sum(weights) > 0:
            raise ConfigError(f'degradation "{self.spec}": the weights of "{text}" must not all be 0')
        options = [w.group(2).strip() if w else item for w, item in zip(weighted, items)]
        axis = Axis(text, "option", options=tuple(options))
        self.axes.append(axis)
        return Choice(axis, [self.expression(o) for o in options], weights)

    def range(self, token: str) -> Node:
        brackets = list(BRACKET.finditer(token))
        outside = BRACKET.sub("", token)
        if not brackets or "[" in outside or "]" in outside:
            raise ConfigError(f'degradation "{self.spec}": cannot read "{token}"; write a range as [LOW:HIGH], e.g. jpeg[5:50]')
        bounds = []
        for b in brackets:
            ends = [e.strip() for e in b.group(1).split(":")]
            if len(ends) != 2 or not all(NUMBER.fullmatch(e) for e in ends):
                raise ConfigError(f'bad degradation range "{token}": write [LOW:HIGH] with two numbers, e.g. jpeg[5:50]')
            if float(ends[0]) > float(ends[1]):
                raise ConfigError(
                    f'bad degradation range "{token}": the low end {ends[0]} is above the high end {ends[1]} '
                    f"(write [{ends[1]}:{ends[0]}])"
                )
            bounds.append(ends)
        pieces = [token[: brackets[0].start()]] + [
            token[b.end() : (brackets[i + 1].start() if i + 1 < len(brackets) else len(token))] for i, b in enumerate(brackets)
        ]
        low_text = _fill(pieces, [lo for lo, _ in bounds])
        try:
            dspec, m = match_token(low_text, self.plugins)
        except LoqiError as exc:  # name the range the user wrote, not only the token made from its low end
            whole = _fill(pieces, [lo.partition(".")[0] for lo, _ in bounds])
            if whole != low_text and _matches(whole, self.plugins):
                raise ConfigError(f'bad degradation range "{token}": the parameter is a whole number; write whole ends, e.g. jpeg[5:50]') from None
            raise type(exc)(f'in the range "{token}": {exc}') from None
        groups = _groups_at(pieces, [lo for lo, _ in bounds], m)
        axes, decimals = [], []
        for (lo, hi), group in zip(bounds, groups):
            if group is None:
                raise ConfigError(f'bad degradation range "{token}": a range must stand for a whole parameter of "{dspec.name}"')
            kind = _numeric(dspec, group)
            if kind is None:
                raise ConfigError(f'bad degradation range "{token}": {group} of "{dspec.name}" is not a number, so it takes no range')
            if kind is int and ("." in lo or "." in hi):
                raise ConfigError(f'bad degradation range "{token}": {group} is a whole number; write whole ends, e.g. jpeg[5:50]')
            key = token if len(bounds) == 1 else f"{token} {group}"
            axes.append(Axis(key, group, float(lo), float(hi), integer=kind is int))
            decimals.append(max(3, *(len(e.partition(".")[2]) for e in (lo, hi))))
        temporal = False
        for ends in ([lo for lo, _ in bounds], [hi for _, hi in bounds]):  # both ends must be valid values
            d, mm = match_token(_fill(pieces, ends), self.plugins)
            if d is not dspec:
                raise ConfigError(f'bad degradation range "{token}": its two ends name different degradations')
            temporal = build_token(dspec, {k: v for k, v in mm.groupdict().items() if v is not None}, token).temporal
        self.axes += axes
        return Range(pieces, axes, decimals, temporal)


def _fill(pieces: list[str], values: Sequence[str]) -> str:
    return pieces[0] + "".join(v + p for v, p in zip(values, pieces[1:]))


def _matches(token: str, plugins: "Plugins") -> bool:
    try:
        match_token(token, plugins)
    except LoqiError:
        return False
    return True


def _groups_at(pieces: list[str], values: Sequence[str], m: re.Match) -> list[str | None]:
    """For each value put into the token, the named group of ``m`` that holds exactly it (None if none does)."""
    out, pos = [], len(pieces[0])
    spans = {m.span(g): g for g, v in m.groupdict().items() if v is not None}
    for value, piece in zip(values, pieces[1:]):
        out.append(spans.get((pos, pos + len(value))))
        pos += len(value) + len(piece)
    return out


def _numeric(dspec: "DegradationSpec", group: str) -> type | None:
    """``int`` or ``float`` when the params field a pattern group fills is a number, else None."""
    field = dspec.params.model_fields.get(group)
    return field.annotation if field is not None and field.annotation in (int, float) else None  # type: ignore[return-value]


def range_form(dspec: "DegradationSpec") -> str | None:
    """``jpeg[LOW:HIGH]`` for a family whose first example has numeric parameters (``loqi plugins`` lists it)."""
    if not dspec.examples:
        return None
    m = re.fullmatch(dspec.pattern, dspec.examples[0])
    if m is None:
        return None
    text = dspec.examples[0]
    spans = sorted((m.span(g) for g, v in m.groupdict().items() if v is not None and _numeric(dspec, g)), reverse=True)
    for a, b in spans:
        text = text[:a] + "[LOW:HIGH]" + text[b:]
    return text if spans else None


class Sampled(Degradation):
    """A spec with ranges or choices: each call draws a concrete spec from the seed and applies it.

    Not temporal: every image of a call draws its own (from the seed and its place in the call; loqi passes one
    image per call, so each image draws from its own per-sample seed). Temporal (a video codec may be drawn):
    one draw for the whole call, so a sequence is one stream at one setting.
    """

    def __init__(self, spec: str, plugins: "Plugins") -> None:
        parser = Parser(spec, plugins)
        self.root = parser.expression(spec)
        self.axes = parser.axes
        self.spec = spec
        self.temporal = self.root.temporal
        self.plugins: "Plugins | None" = plugins
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
            from loqi_core.hooks.manager import get_plugins

            self._built[text] = parse_degradation(text, self.plugins or get_plugins())
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
