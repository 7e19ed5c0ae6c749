"""loqi: knowledge distillation that makes visual place recognition work on low-quality images.

The Python API (docs/python-api.md) is imported on first use, so ``import loqi_core`` and ``loqi --help`` stay
free of torch::

    from loqi_core import build_model, load_dataset, parse_degradation, encode, evaluate, distill, wrap_model
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from loqi_core.hooks.hookspecs import hookimpl
from loqi_core.version import __version__

_API = {
    "build_model": "loqi_core.models.model",
    "wrap_model": "loqi_core.models.model",
    "load_dataset": "loqi_core.data.datasets",
    "parse_degradation": "loqi_core.degrade.grammar",
    "encode": "loqi_core.api",
    "evaluate": "loqi_core.api",
    "distill": "loqi_core.api",
}
"""Public name → the module that defines it (imported when the name is first used)."""

__all__ = ["hookimpl", "__version__", *_API]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from loqi_core.api import distill, encode, evaluate
    from loqi_core.data.datasets import load_dataset
    from loqi_core.degrade.grammar import parse_degradation
    from loqi_core.models.model import build_model, wrap_model


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'loqi_core' has no attribute '{name}'")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
