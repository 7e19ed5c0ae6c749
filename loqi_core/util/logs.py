"""run.log: what one command did, through stdlib ``logging`` (the ``loqi.*`` loggers) into its run directory.

The command line, the resolved config's sha256, each stage's seconds, what the command printed, every warning
(``warnings.warn`` ones too) and the error that ended it. The terminal shows what it showed before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from loqi_core.errors import one_line

LOG_FILE = "run.log"
FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
HEADER = "== loqi "
"""Each invocation's first line in run.log is ``== loqi KIND``: which command made the directory."""

ROOT = logging.getLogger("loqi")
log = logging.getLogger("loqi.run")  # what the command printed, its stages and its error: already on the terminal
WARNINGS = logging.getLogger("loqi.warnings")  # ``warnings.warn``: the terminal gets them from the warnings module


class RunLog:
    """One command's log: from ``start()`` it collects the ``loqi.*`` records; ``open(run_dir)`` (once the run
    directory exists) writes them, and every later one, to ``run_dir/run.log``. Also times the stages.

    As a context manager: started on entry; on exit the error that ended the command is logged, then it detaches.
    Only rank 0 of a torchrun job (``RANK``) writes a log.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.enabled = os.environ.get("RANK", "0") == "0"
        self.path: Path | None = None
        self.stages: dict[str, float] = {}
        self._running: dict[str, float] = {}
        self._handler: logging.Handler | None = None
        self._started = time.perf_counter()
        self._logged_error: BaseException | None = None

    def __enter__(self) -> "RunLog":
        self.start()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.error(exc)
        self.close()

    def start(self) -> None:
        """Collect from now (in memory until ``open``), under a header naming the command and its command line."""
        if not self.enabled or self._handler is not None:
            return
        self._started = time.perf_counter()
        self._handler = _Buffer()
        _attach(self._handler)
        self._own(f"{HEADER}{self.kind} {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})")
        self._own(f"argv: {shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")

    def open(self, run_dir: Path, config_json: str | None = None) -> None:
        """Write the records so far, and from now on every one, to ``run_dir/run.log`` (appended); note the digest
        of the resolved config (the text of ``run_dir/config.json``)."""
        if not self.enabled or self.path is not None:
            return
        self.start()
        self.path = Path(run_dir) / LOG_FILE
        handler = logging.FileHandler(self.path, mode="a", encoding="utf-8", delay=False)
        handler.setFormatter(logging.Formatter(FORMAT))
        buffered = self._handler
        assert isinstance(buffered, _Buffer)
        _detach(buffered)
        for record in buffered.records:
            handler.handle(record)
        self._handler = handler
        _attach(handler)
        if config_json is not None:
            digest = hashlib.sha256(config_json.encode()).hexdigest()
            self._own(f"config: sha256 {digest} ({Path(run_dir) / 'config.json'})")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name`` (repeated stages add up) and log its seconds."""
        t0 = time.perf_counter()
        self._running[name] = t0
        try:
            yield
        finally:
            del self._running[name]
        self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` for stage ``name`` and log them."""
        self.stages[name] = self.stages.get(name, 0.0) + seconds
        self._own(f"stage {name}: {seconds:.2f} s")

    def timings(self, device: Any = None) -> dict[str, Any]:
        """Seconds per stage (a stage still running counts up to now), the total since ``start`` and the device."""
        now = time.perf_counter()
        stages = dict(self.stages)
        for name, t0 in self._running.items():
            stages[name] = stages.get(name, 0.0) + now - t0
        return {"device": None if device is None else str(device), "stages_s": {k: round(v, 3) for k, v in stages.items()},
                "total_s": round(now - self._started, 3)}  # fmt: skip

    def error(self, exc: BaseException) -> None:
        """Log the error that ends the command: one line for loqi's and OS errors (as the terminal shows them), the
        traceback for anything else (a bug); once, however many ``with`` blocks it leaves."""
        if self._handler is None or exc is self._logged_error:
            return
        self._logged_error = exc
        message = one_line(exc)
        if message is not None:
            text = f"Error: {message}"
        elif isinstance(exc, KeyboardInterrupt):
            text = "Interrupted (Ctrl-C); start the same command again to resume"
        else:
            import traceback

            text = "".join(traceback.format_exception(exc)).rstrip()
        self._own(text, logging.ERROR)

    def close(self) -> None:
        """Detach from the ``loqi`` logger (records not yet written, of a command that made no run directory, go)."""
        if self._handler is None:
            return
        _detach(self._handler)
        self._handler.close()
        self._handler = None

    def _own(self, message: str, level: int = logging.INFO) -> None:
        """A record for this log alone: its header, stages and error (an enclosing run's log has its own)."""
        if self._handler is not None:
            self._handler.handle(log.makeRecord(log.name, level, __file__, 0, message, None, None))


def command_of(run_dir: Path) -> str | None:
    """The command that made ``run_dir`` (``run``, ``eval``, ``distill``, ...), from its run.log; None without one."""
    try:
        with open(Path(run_dir) / LOG_FILE, encoding="utf-8", errors="replace") as f:
            for line in f:
                _, found, rest = line.partition(HEADER)
                if found and rest.split():
                    return rest.split()[0]
    except OSError:
        return None
    return None


# ---- the handlers shared by every open RunLog ------------------------------------------------------------------


class _Buffer(logging.Handler):
    """Keeps the records of a command until its run directory exists."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Console(logging.Filter):
    """What the terminal would show without a run log: the warnings of ``loqi.*`` loggers (``logging``'s last resort
    prints those when no handler is configured), not what the command printed itself or the warnings module did."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name not in (log.name, WARNINGS.name)


_handlers: list[logging.Handler] = []
_saved: dict[str, Any] = {}
_shown_by = warnings.showwarning  # what shows a warning on the terminal, replaced by _showwarning while a log is open


def _attach(handler: logging.Handler) -> None:
    """The first handler also raises the ``loqi`` logger to INFO, copies warnings into it and, when the application
    configured no logging, prints ``loqi.*`` warnings on stderr as before; the last one detached undoes that."""
    global _shown_by
    if not _handlers:
        _saved["level"] = ROOT.level
        if ROOT.level == logging.NOTSET or ROOT.level > logging.INFO:
            ROOT.setLevel(logging.INFO)
        _shown_by = warnings.showwarning
        warnings.showwarning = _showwarning
        if not logging.getLogger().handlers:
            console = logging.StreamHandler(sys.stderr)
            console.setLevel(logging.WARNING)
            console.addFilter(_Console())
            ROOT.addHandler(console)
            _saved["console"] = console
    _handlers.append(handler)
    ROOT.addHandler(handler)


def _detach(handler: logging.Handler) -> None:
    if handler not in _handlers:
        return
    _handlers.remove(handler)
    ROOT.removeHandler(handler)
    if _handlers:
        return
    ROOT.setLevel(_saved.pop("level"))
    if warnings.showwarning is _showwarning:
        warnings.showwarning = _shown_by
    console = _saved.pop("console", None)
    if console is not None:
        ROOT.removeHandler(console)


def _showwarning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """``warnings.showwarning`` while a run log is open: into the log, then shown as it would have been."""
    WARNINGS.warning("%s: %s", category.__name__, message)
    _shown_by(message, category, filename, lineno, file, line)
