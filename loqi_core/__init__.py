"""loqi: knowledge distillation that makes visual place recognition work on low-quality images.

The Python API (docs/python-api.md) is imported on first use, so ``import loqi_core`` and ``loqi --help`` stay
free of torch::

    from loqi_core import build_model, load_dataset, parse_degradation, encode, evaluate, distill, wrap_model

Plugin authors import from the front door, ``loqi_core.plugin``; the conformance kit is ``loqi_core.testing``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loqi_core.util.lazy import lazy_exports
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

__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from loqi_core.api import distill, encode, evaluate
    from loqi_core.data.datasets import load_dataset
    from loqi_core.degrade.grammar import parse_degradation
    from loqi_core.models.model import build_model, wrap_model

__getattr__, __dir__ = lazy_exports(__name__, _API)
