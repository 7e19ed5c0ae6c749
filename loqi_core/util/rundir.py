"""One writer per run directory: an advisory lock file (``.loqi.lock``) that names the process holding it.

The lock is a ``flock`` on the file, so the kernel releases it when its holder exits in any way (even
SIGKILL); a lock file left behind by a dead process is stale and is taken over with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Iterator

from loqi_core.errors import LoqiError

LOCK_FILE = ".loqi.lock"


class RunDirLockedError(LoqiError):
    """Another process is writing to the same run directory."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "a process that has not written its pid yet"


@contextlib.contextmanager
def locked(folder: Path, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of ``folder`` (created if needed) for the ``with`` block; refuse if another process holds it."""
    if not enabled:
        yield
        return
    import fcntl

    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunDirLockedError(
                    f"{folder} is in use by another loqi process ({_holder(path)}); wait for it to finish, "
                    "or choose another --out"
                ) from None
            raise LoqiError(f"cannot lock {path}: {exc.strerror or exc}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its previous holder unlinked while we waited: the lock is ours
            break
        os.close(fd)
    stale = os.read(fd, 4096).decode(errors="replace").strip()
    if stale:
        warnings.warn(f"{folder}: took over a stale lock ({stale}; that process is gone)", stacklevel=3)
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv[:3])}\n".encode())
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # closing releases the flock
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a run refused before writing anything leaves no folder
