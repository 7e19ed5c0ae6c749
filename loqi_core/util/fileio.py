"""Writing files so that a failure (full disk, no permission) leaves no partial file and says which path and why.

Every file loqi writes whole goes through ``partial_file`` (a temporary sibling renamed into place on success,
removed on failure); ``loqi_core.errors.describe_os_error`` turns an ``OSError`` into the one line the CLI prints.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from loqi_core.errors import as_os_error
from loqi_core.util.rundir import writer_tag


@contextmanager
def partial_file(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (named after its writer: a killed one's is removed by
    ``rundir.remove_abandoned``); on success it replaces ``path``, on any failure it is removed."""
    tmp = path.with_name(f"{path.name}.{writer_tag()}{suffix}")
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
    write_bytes(path, text.encode(errors="surrogateescape"))  # a file name that is not UTF-8 keeps its bytes


def save_safetensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` atomically; its I/O failures come out as the ``OSError`` they are."""
    from safetensors.torch import save_file

    with partial_file(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except Exception as exc:
            raise as_os_error(exc, path) or exc from None
