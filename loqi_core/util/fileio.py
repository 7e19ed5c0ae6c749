"""Writing files so that a failure (full disk, no permission) leaves no partial file and says which path and why.

Every file loqi writes whole goes through ``partial_file`` (a temporary sibling renamed into place on success,
removed on failure); ``describe_os_error`` turns an ``OSError`` into the one line the CLI prints.
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or choose another --out / --cache-dir",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another --out / --cache-dir",
    errno.EACCES: "check its permissions, or choose another --out / --cache-dir",
    errno.EPERM: "check its permissions, or choose another --out / --cache-dir",
    errno.EROFS: "the file system is read-only: choose another --out / --cache-dir",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "this path is a folder, not a file",
}


@contextmanager
def partial_file(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it replaces ``path``, on any failure it is removed."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write(f: Any, data: bytes) -> None:
    """The lowest write of every whole-file write (tests make it raise ENOSPC to simulate a full disk)."""
    f.write(data)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the whole new one, never a part."""
    try:
        with partial_file(path) as tmp, open(tmp, "wb") as f:
            _write(f, data)
    except OSError as exc:
        raise located(exc, path) from None


def located(exc: OSError, path: str | Path) -> OSError:
    """``exc``, or when it names no file (a failed ``write()`` on a full disk does not) a copy naming ``path``."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror, str(path))


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def save_safetensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` atomically; its I/O failures come out as the ``OSError`` they are."""
    from safetensors.torch import save_file

    with partial_file(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception as exc:
            raise as_os_error(exc, path) or exc from None


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
