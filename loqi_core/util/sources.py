"""Which code produced a result: a version plus a digest of the Python source files behind it, so a cached result
follows an edit to an editable or local install even when the version number stays the same."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Iterable

DIGEST_LENGTH = 16
"""Hex digits of the source digest kept in a code version (``0.1.0+src.<16 hex digits>``)."""


def source_files(module: str) -> list[tuple[str, Path]]:
    """``(relative name, path)`` of every ``.py`` file of the top-level package that holds ``module`` (the single file
    for a top-level module), sorted; empty when it has no source files on disk."""
    top = module.split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    files = []
    for root in spec.submodule_search_locations or []:
        base = Path(root)
        files += [(f"{top}/{p.relative_to(base).as_posix()}", p) for p in base.rglob("*.py") if "__pycache__" not in p.parts]
    if not files and spec.origin and spec.origin.endswith(".py"):
        files = [(Path(spec.origin).name, Path(spec.origin))]
    return sorted(files)


def source_digest(modules: Iterable[str]) -> str | None:
    """A digest of the names and contents of the source files of ``modules``' packages; None when there are none."""
    files = sorted({f for module in modules for f in source_files(module)})
    if not files:
        return None
    h = hashlib.sha256()
    for name, path in files:
        try:
            content = path.read_bytes()
        except OSError:
            content = b"<unreadable>"
        h.update(f"{name}\0{len(content)}\0".encode())
        h.update(content)
    return h.hexdigest()[:DIGEST_LENGTH]


def code_version(version: str, modules: Iterable[str]) -> str:
    """``version`` plus the source digest of ``modules``' packages (``0.1.0+src.1a2b...``); ``version`` alone when
    they have no source files to read."""
    digest = source_digest(modules)
    return f"{version}+src.{digest}" if digest else version
