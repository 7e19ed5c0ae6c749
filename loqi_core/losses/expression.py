"""Weighted sums of registered losses: ``"ickd+0.5*mse+triplet"`` → one callable with per-term values."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pydantic import ValidationError

from loqi_core.errors import ConfigError
from loqi_core.hooks.manager import Plugins, get_plugins

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from loqi_core.losses.terms import DistillBatch

TERM_RE = re.compile(r"^\s*(?:(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[a-z0-9][a-z0-9_.\-]*)\s*$")


def parse_loss_expression(expr: str) -> list[tuple[float, str]]:
    """``"ickd+0.5*mse"`` → ``[(1.0, "ickd"), (0.5, "mse")]``; a malformed term is a ConfigError."""
    if not expr.strip():
        raise ConfigError('loss: the expression is empty; give e.g. "ickd" or "ickd+0.5*mse+triplet" (or leave --loss out for the method\'s default)')
    terms = []
    for part in expr.split("+"):
        m = TERM_RE.match(part)
        if not m:
            raise ConfigError(f'loss: cannot parse term "{part.strip()}" in "{expr}" (expected e.g. "ickd+0.5*mse+triplet")')
        weight = float(m["weight"] or 1.0)
        if not 0 < weight < math.inf:
            raise ConfigError(f'loss: term "{part.strip()}" in "{expr}" has weight {weight:g}; a weight must be positive and finite (leave a term out instead of weighting it 0)')
        terms.append((weight, m["name"]))
    names = [n for _, n in terms]
    if len(set(names)) != len(names):
        raise ConfigError(f'loss: a term appears twice in "{expr}"')
    return terms


@dataclass
class CompositeLoss:
    """``loss(batch) -> (total, {term: unweighted value})``."""

    expression: str
    terms: list[tuple[float, str, Callable[[Any], Any]]]
    needs_places: bool

    def __call__(self, batch: "DistillBatch") -> tuple["torch.Tensor", dict[str, "torch.Tensor"]]:
        values = {name: fn(batch) for _, name, fn in self.terms}
        total = sum(weight * values[name] for weight, name, _ in self.terms)
        return total, values


def build_loss(expr: str, params: dict[str, dict[str, Any]] | None = None, plugins: Plugins | None = None) -> CompositeLoss:
    """Resolve each term through the loss registry (so third-party losses work unchanged)."""
    plugins = plugins or get_plugins()
    params = params or {}
    terms, needs_places = [], False
    parsed = parse_loss_expression(expr)
    for extra in set(params) - {n for _, n in parsed}:
        raise ConfigError(f'loss_params.{extra}: "{extra}" is not a term of the loss "{expr}"')
    for weight, name in parsed:
        spec = plugins.loss(name)
        try:
            p = spec.params(**params.get(name, {}))
        except ValidationError as exc:
            reasons = "; ".join(f"loss_params.{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(reasons) from None
        terms.append((weight, name, spec.factory(p)))
        needs_places |= spec.needs_places
    return CompositeLoss(expr, terms, needs_places)
