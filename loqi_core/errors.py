"""Errors loqi raises on purpose, each naming the file, field or plugin at fault, and the one line a user sees for
any error (an OS error included: the path, the cause and what to do)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another --out / --cache-dir",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another --out / --cache-dir",
    errno.EACCES: "check its permissions, or choose another --out / --cache-dir",
    errno.EPERM: "check its permissions, or choose another --out / --cache-dir",
    errno.EROFS: "the file system is read-only: choose another --out / --cache-dir",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "this path is a folder, not a file",
}


class LoqiError(Exception):
    """A user-facing error; the CLI prints its message without a traceback."""


class PluginLoadError(LoqiError):
    """A plugin failed to import, or declared a hook loqi does not know."""


class DuplicateNameError(LoqiError):
    """Two plugins registered the same name under one extension point."""


class UnknownNameError(LoqiError):
    """A name that no installed plugin registered."""


class ConfigError(LoqiError):
    """A config file or CLI override that does not validate."""


class DataError(LoqiError):
    """A dataset on disk that is missing, malformed or unreadable."""


class WeightsError(LoqiError):
    """Weights that cannot be found, downloaded, verified or loaded."""


class ModelOutputError(LoqiError):
    """A model whose output breaks the contract: descriptors that are not one finite row per image."""


def one_line(exc: BaseException) -> str | None:
    """The one line a user sees for a loqi error or an OS error (permission, full disk, missing file), with the
    traceback a DataLoader worker puts in the text stripped; None for any other exception (a bug: keep its traceback)."""
    if isinstance(exc, LoqiError):
        message = str(exc)
        if "\nOriginal Traceback" in message:  # re-raised by a DataLoader worker: keep the error's own last line
            head, sep, tail = message.rstrip().splitlines()[-1].partition(": ")
            message = tail if sep and head.endswith(("Error", "Exception")) else head + sep + tail
        return message
    os_error = as_os_error(exc)
    if os_error is None or os_error.errno == errno.EPIPE:
        return None
    return describe_os_error(os_error)


def as_os_error(exc: BaseException, path: str | Path | None = None) -> OSError | None:
    """The ``OSError`` behind ``exc``: itself, or one a library reported as text (safetensors: "(os error 28)");
    ``path`` names the file when the library's text names only its own temporary file."""
    if isinstance(exc, OSError):
        return exc if exc.errno is not None else _from_worker(exc)
    match = re.search(r"\(os error (\d+)\)", str(exc))
    if match is None:
        return None
    code = int(match.group(1))
    where = re.search(r'at path "([^"]+)"', str(exc))
    filename = str(path) if path is not None else where.group(1) if where else None
    return OSError(code, os.strerror(code), filename)


def _from_worker(exc: OSError) -> OSError:
    """A DataLoader worker's OSError comes back as text ending in "[Errno 28] No space left on device: 'path'"."""
    found = re.findall(r"\[Errno (\d+)\] ([^\n]+?)(?:: '([^'\n]*)')?$", str(exc), flags=re.MULTILINE)
    if not found:
        return exc
    code, cause, filename = found[-1]
    return OSError(int(code), cause, filename or None)


def describe_os_error(exc: OSError) -> str:
    """One line: the path(s), the cause and what to do, e.g. ``/runs/x: No space left on device (the disk is full: ...)``."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p is not None)
    cause = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno or 0)
    text = f"{paths}: {cause}" if paths else cause
    return f"{text} ({hint})" if hint else text
