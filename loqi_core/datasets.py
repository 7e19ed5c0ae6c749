"""Resolve a dataset string (``demo``, ``nordland``, ``folder:PATH``, ``msls:PATH``) to a TestSet or TrainSet."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from loqi_core.data import TestSet, TrainSet
from loqi_core.errors import ConfigError, DataError
from loqi_core.plugins import Plugins, get_plugins


def data_root(explicit: str | Path | None = None) -> Path | None:
    """``--data-root``, else ``$LOQI_DATA``, else None."""
    value = explicit or os.environ.get("LOQI_DATA")
    return Path(value) if value else None


def load_dataset(
    text: str,
    kind: Literal["test", "train"],
    *,
    root: str | Path | None = None,
    params: dict[str, Any] | None = None,
    plugins: Plugins | None = None,
) -> TestSet | TrainSet:
    """``NAME`` reads ``<data root>/NAME`` (or the plugin's own default); ``NAME:PATH`` reads PATH."""
    plugins = plugins or get_plugins()
    name, _, path = text.partition(":")
    spec = plugins.dataset(name)
    loader = spec.test if kind == "test" else spec.train
    if loader is None:
        raise ConfigError(f'dataset "{name}" has no {kind} split (it provides {"train" if kind == "test" else "test"} only)')
    values = dict(params or {})
    fields = spec.params.model_fields
    if path:
        values["root"] = Path(path).expanduser()
    elif "root" in fields and fields["root"].default is None and data_root(root) is not None:
        values["root"] = data_root(root) / name  # type: ignore[operator]
    try:
        p = spec.params(**values)
    except ValidationError as exc:
        reasons = "; ".join(f"{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(reasons) from None
    dataset = loader(p)
    if kind == "test" and spec.expected_counts:
        check_counts(name, dataset, spec.expected_counts)  # type: ignore[arg-type]
    return dataset


def check_counts(name: str, test: TestSet, expected: dict[str, int]) -> None:
    """Warn loudly when the data on disk is not the published protocol (the commonest reproduction failure)."""
    found = {"database": len(test.database), "queries": len(test.queries)}
    diffs = [f"{k}: expected {v}, found {found[k]}" for k, v in expected.items() if k in found and found[k] != v]
    if diffs:
        message = f'dataset "{name}" differs from the paper\'s protocol ({"; ".join(diffs)}); results are not comparable'
        test.notes.append(message)
        warnings.warn(message, stacklevel=2)


__all__ = ["load_dataset", "data_root", "check_counts", "DataError"]
