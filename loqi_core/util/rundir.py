"""One writer per run directory: an advisory lock file (``.loqi.lock``) that names the process holding it; and the
same rule for the partial files and folders a writer leaves when it is killed.

The lock is a ``flock`` on the file, so the kernel releases it when its holder exits in any way (even
SIGKILL); a lock file left behind by a dead process is stale and is taken over with a warning. A partial file or
folder carries its writer's tag (``writer_tag``: pid and host) in its name; once that process is gone from this
host, what it left is never read and is removed by the next writer of the same place (``remove_abandoned``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import sys
import warnings
from pathlib import Path
from typing import Iterable, Iterator

from loqi_core.errors import LoqiError

LOCK_FILE = ".loqi.lock"
TAG = re.compile(r"(\d+)@([\w-]+)")


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
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv[:3])}\n".encode(errors="surrogateescape"))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # closing releases the flock
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a run refused before writing anything leaves no folder


def _host() -> str:
    return re.sub(r"[^\w-]", "_", socket.gethostname())


def writer_tag() -> str:
    """``PID@HOST`` of this process, for the names of the partial files and folders it writes."""
    return f"{os.getpid()}@{_host()}"


def abandoned(name: str) -> bool:
    """Whether the writer tagged in ``name`` is a process of this host that no longer runs (a writer of another
    host, or a name without a tag, is never judged abandoned)."""
    found = TAG.findall(name)
    if not found:
        return False
    pid, host = int(found[-1][0]), found[-1][1]
    if host != _host() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        return False
    return False


def remove_abandoned(paths: Iterable[Path]) -> list[Path]:
    """Remove those of ``paths`` (partial files or folders) whose writer is gone; returns what was removed."""
    removed = []
    for path in paths:
        if abandoned(path.name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
