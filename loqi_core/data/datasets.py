"""Resolve a dataset string (``demo``, ``nordland``, ``folder:PATH``, ``msls:PATH``) to a TestSet or TrainSet."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from loqi_core.data.sets import TestSet, TrainSet
from loqi_core.errors import ConfigError, DataError
from loqi_core.hooks.manager import Plugins, get_plugins


def data_root(explicit: str | Path | None = None) -> Path | None:
    """``--data-root``, else ``$LOQI_DATA``, else None."""
    value = explicit or os.environ.get("LOQI_DATA")
    return Path(value) if value else None


def load_dataset(
    text: str,
    kind: Literal["test", "train"] = "test",
    *,
    root: str | Path | None = None,
    params: dict[str, Any] | None = None,
    plugins: Plugins | None = None,
) -> TestSet | TrainSet:
    """``NAME`` reads ``<data root>/NAME`` (or the plugin's own default); ``NAME:PATH`` reads PATH.

    Dataset parameters may follow a ``?``: ``folder:~/frames?skip_bad=true&check=full``, ``msls?split=val``
    (values parse as YAML scalars); ``params`` override them. A path holding ``?``, ``,`` or ``=`` goes in double
    quotes: ``folder:"/data/what?x=1"?skip_bad=true``.
    """
    if not isinstance(text, str):
        raise ConfigError(f'dataset: give a name such as "demo" or "folder:PATH", not {type(text).__name__}')
    if kind not in ("test", "train"):
        raise ConfigError(f'dataset kind: "test" or "train", not {kind!r}')
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ConfigError(f"root: give a folder path, not {type(root).__name__}")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"params: give a dict of dataset options, not {type(params).__name__}")
    plugins = plugins or get_plugins()
    text, options = split_options(text)
    name, _, path = text.partition(":")
    spec = plugins.dataset(name)
    loader = spec.test if kind == "test" else spec.train
    if loader is None:
        raise ConfigError(f'dataset "{name}" has no {kind} split (it provides {"train" if kind == "test" else "test"} only)')
    values = {**options, **(params or {})}
    fields = spec.params.model_fields
    if path:
        try:
            values["root"] = Path(path).expanduser()
        except RuntimeError:  # "~someone" with no such user
            raise DataError(f'dataset "{text}": cannot expand "{path.split("/")[0]}": no such user') from None
    elif "root" in fields and fields["root"].default is None and data_root(root) is not None:
        values["root"] = data_root(root) / name  # type: ignore[operator]
    try:
        p = spec.params(**values)
    except ValidationError as exc:
        reasons = "; ".join(f"{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        if options and any(e["type"] == "extra_forbidden" for e in exc.errors()):
            reasons += f' (if the "?" belongs to the path, quote the path: {name}:"PATH")'
        raise ConfigError(reasons) from None
    dataset = loader(p)
    if kind == "test":
        expected = dataset.expected_counts if dataset.expected_counts is not None else spec.expected_counts  # type: ignore[union-attr]
        if expected:
            check_counts(name, dataset, expected)  # type: ignore[arg-type]
    return dataset


def split_options(text: str) -> tuple[str, dict[str, Any]]:
    """``"folder:PATH?skip_bad=true&check=full"`` → ``("folder:PATH", {"skip_bad": True, "check": "full"})``.

    ``folder:"PATH"?...``: a double-quoted path is taken literally (it may hold ``?``, ``=`` or ``,``)."""
    name, colon, rest = text.partition(":")
    if colon and rest.startswith('"'):
        end = rest.find('"', 1)
        if end < 0:
            raise ConfigError(f'dataset "{text}": the quoted path has no closing "')
        path, tail = rest[1:end], rest[end + 1 :]
        if tail and not tail.startswith("?"):
            raise ConfigError(f'dataset "{text}": only ?key=value options may follow the closing quote, not "{tail}"')
        return f"{name}:{path}", _options(text, tail[1:]) if tail else {}
    head, sep, tail = text.rpartition("?")
    if not sep or "=" not in tail:
        return text, {}
    return head, _options(text, tail)


def _options(text: str, tail: str) -> dict[str, Any]:
    import yaml

    options: dict[str, Any] = {}
    for item in tail.split("&"):
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f'dataset "{text}": option "{item}" must look like key=value')
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            options[key.strip()] = raw
    return options


class ProtocolMismatchWarning(UserWarning):
    """The dataset on disk is not the published split: recall is not comparable with published numbers."""


def check_counts(name: str, test: TestSet, expected: dict[str, int]) -> bool:
    """Warn loudly when the data on disk is not the published protocol (the commonest reproduction failure).

    Returns True when the counts match. The message also goes into ``test.notes``, so runs report it.
    """
    found = {"database": len(test.database), "queries": len(test.queries)}
    diffs = [f"{k}: expected {v}, found {found[k]}" for k, v in expected.items() if k in found and found[k] != v]
    if diffs:
        message = (
            f'PROTOCOL MISMATCH: dataset "{name}" differs from the published split ({"; ".join(diffs)}). '
            "Recall on it is NOT comparable with published numbers; see `loqi datasets info "
            f'{name}` for the expected source and layout.'
        )
        test.notes.append(message)
        warnings.warn(message, ProtocolMismatchWarning, stacklevel=2)
    return not diffs


__all__ = ["load_dataset", "data_root", "check_counts", "ProtocolMismatchWarning", "DataError"]
