"""Modules whose public names import on first use (PEP 562): ``loqi_core`` and ``loqi_core.plugin`` re-export
names from heavy modules (torch, numpy) without importing them, so ``loqi --help`` and a plugin's import stay fast."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(module_name: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of module ``module_name``: ``exports`` maps each public name to the module
    that defines it, imported when the name is first used (and then cached in the module)."""
    module = sys.modules[module_name]

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module '{module_name}' has no attribute '{name}'")
        value = getattr(importlib.import_module(exports[name]), name)
        setattr(module, name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(module.__all__)

    return __getattr__, __dir__
