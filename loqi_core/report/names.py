"""How test sets and rows are named in files: a file-name-safe slug, and distinct names for test sets that
share one."""

from __future__ import annotations

import re
from typing import Any, Sequence

from loqi_core.errors import ConfigError


def slug(text: str) -> str:
    """A file-name-safe version of a dataset or row name."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "x"


def name_test_sets(tests: Sequence[Any], texts: Sequence[str]) -> None:
    """Test sets that share a name are renamed after what the user wrote (``good [folder:B/good]``), so each
    keeps its own key in metrics.json, results.md and predictions/; the same dataset twice is an error."""
    if len(set(texts)) < len(texts):
        twice = sorted({t for t in texts if list(texts).count(t) > 1})
        raise ConfigError(f"eval.test lists {', '.join(twice)} twice")
    names = [t.name for t in tests]
    for test, text in zip(tests, texts):
        if names.count(test.name) > 1:
            test.name = f"{test.name} [{text}]"
    if len({slug(t.name) for t in tests}) < len(tests):
        raise ConfigError("eval.test: two test sets would write the same files: " + ", ".join(t.name for t in tests))
