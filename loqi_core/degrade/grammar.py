"""The degradation spec grammar: ``res360p+qp40`` (a chain of registered tokens), ranges ``jpeg[5:50]`` and
choices ``any(jpeg10,0.5*qp40)``, parsed into the degradation they name.

Every token must match exactly one registered grammar (a plugin's ``DegradationSpec.pattern``); the core parses
ranges and choices around every one, so any numeric parameter of any plugin takes a range without the plugin
knowing. Fixed specs become a ``Degradation`` (or a ``Chain``); sampled ones a ``Sampled`` that draws per call.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Sequence

from pydantic import ValidationError

from loqi_core.degrade.base import BRACKET, CHOICE, CLEAN_SPECS, WEIGHTED, Chain, Degradation, Identity, split_top
from loqi_core.degrade.sampled import Axis, ChainNode, Choice, Fixed, Node, Range, Sampled
from loqi_core.errors import ConfigError, LoqiError, UnknownNameError
from loqi_core.hooks.manager import Plugins, get_plugins

if TYPE_CHECKING:  # pragma: no cover
    from loqi_core.hooks.specs import DegradationSpec

NUMBER = re.compile(r"\d+(?:\.\d+)?")
GRAMMAR = "a range NAME[LOW:HIGH] (jpeg[5:50], res[270:720]p) or a choice any(A,B,...) / any(0.7*A,0.3*B)"
MAX_SPEC_CHARS = 1000
"""The longest spec read: the longest sensible one (a choice among a dozen chains) is far shorter."""
MAX_NESTING = 8
"""The deepest nesting of choices and ranges read (any(any(jpeg[5:50])) is 3)."""


def _nesting(spec: str) -> int:
    depth = deepest = 0
    for c in spec:
        depth += (c in "([") - (c in ")]")
        deepest = max(deepest, depth)
    return deepest


def parse_degradation(spec: str, plugins: "Plugins | None" = None) -> Degradation:
    """Build the degradation a spec string names; every token must match exactly one registered grammar."""
    if not isinstance(spec, str):
        raise ConfigError(f'degradation: give a spec such as "jpeg10", "res360p+qp40" or "none", not {type(spec).__name__}')
    plugins = plugins or get_plugins()
    spec = spec.strip()
    if not spec:
        raise ConfigError('degradation: the spec is empty; write "none" for the images as they are, or a spec such as jpeg10')
    if len(spec) > MAX_SPEC_CHARS:
        raise ConfigError(f'degradation "{spec[:40]}...": {len(spec)} characters, more than the {MAX_SPEC_CHARS} a spec may have')
    if _nesting(spec) > MAX_NESTING:
        raise ConfigError(f'degradation "{spec[:40]}...": choices and ranges nested {_nesting(spec)} deep, more than the '
                          f"{MAX_NESTING} a spec may have")  # fmt: skip
    if spec.lower() in CLEAN_SPECS:
        return Identity()
    tokens = [token.strip() for token in spec.split("+")]
    if "" in tokens:
        i = tokens.index("")
        where = "at the start" if i == 0 else "at the end" if i == len(tokens) - 1 else f'after "{tokens[i - 1]}"'
        raise ConfigError(f'degradation "{spec}": empty term {where} (term {i + 1}); chain terms with a single +')
    if any(c in spec for c in "[]()"):
        parser = Parser(spec, plugins)
        return Sampled(spec, parser.expression(spec), parser.axes, parse_degradation, plugins)
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
        if not math.isfinite(sum(weights)):
            raise ConfigError(f'degradation "{self.spec[:60]}...": the weights of a choice must be finite numbers (their sum is {sum(weights)})')
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
            if not all(math.isfinite(float(e)) for e in ends):
                raise ConfigError(f'bad degradation range "{token[:60]}": an end is too large to be a number')
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


