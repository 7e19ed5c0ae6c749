"""Progress bars for every long loop in loqi and its plugins: ``progress(...)`` takes tqdm's arguments.

A tqdm bar (``tqdm.auto``: a widget in notebooks) on a terminal; when stderr is not a terminal (CI, ``2>log``),
plain lines (at most one per 10 % and 5 s, at least one per 30 s, one at the end), so logs hold no carriage
returns; ``LOQI_PROGRESS`` forces a mode (0, 1, lines).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

from loqi_core.errors import ConfigError

ENV = "LOQI_PROGRESS"
LINE_PERCENT = 10
"""Line mode: a line when the count crosses another multiple of this percentage of the total ..."""
LINE_GAP = 5.0
"""... and this many seconds have passed since the last line (a short loop prints only its closing line) ..."""
LINE_SECONDS = 30.0
"""... or when this long has passed since the last line (the only trigger when the total is unknown)."""

_MODES = {"0": "off", "off": "off", "false": "off", "no": "off", "1": "bar", "on": "bar", "true": "bar",
          "yes": "bar", "bar": "bar", "lines": "lines", "line": "lines", "auto": "auto", "": "auto"}  # fmt: skip


def progress_mode() -> str:
    """``off``, ``bar`` or ``lines``: ``LOQI_PROGRESS`` if set (0/off, 1/bar, lines, auto), else ``bar`` in a notebook
    or when stderr is a terminal and ``lines`` otherwise."""
    value = os.environ.get(ENV, "auto").strip().lower()
    if value not in _MODES:
        raise ConfigError(f'{ENV}="{value}": expected auto, 0 (no progress), 1 (bars) or lines')
    mode = _MODES[value]
    if mode != "auto":
        return mode
    from tqdm import autonotebook
    from tqdm.auto import tqdm as _auto  # noqa: F401  (imported first: it resolves autonotebook without its warning)
    from tqdm.std import tqdm as std

    if autonotebook.tqdm is not std:  # a Jupyter kernel with ipywidgets: its stderr is no terminal, yet widgets work
        return "bar"
    isatty = getattr(sys.stderr, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A progress bar with tqdm's interface (iterate it, or ``update``/``set_postfix``/``close`` it) in the current
    mode (``progress_mode``); ``disable=True`` (e.g. on ranks other than 0) gives none in every mode."""
    mode = "off" if kwargs.get("disable") else progress_mode()
    if mode == "lines":
        return LineProgress(iterable, **kwargs)
    if mode == "off":
        from tqdm.std import tqdm

        return tqdm(iterable, **{**kwargs, "disable": True})
    from tqdm.auto import tqdm

    return tqdm(iterable, **{**kwargs, "disable": False})


class LineProgress:
    """tqdm's interface printing whole lines (``desc:  40% 40/100 [00:12<00:18, 3.20img/s]``) to stderr: when the
    count crosses a ``LINE_PERCENT`` % step at least ``LINE_GAP`` s after the last line, every ``LINE_SECONDS`` s
    anyway, and when it closes."""

    def __init__(
        self, iterable: Iterable[Any] | None = None, desc: str | None = None, total: float | None = None,
        unit: str = "it", unit_scale: bool = False, initial: float = 0, postfix: Any = None, file: Any = None,
        **_ignored: Any,  # leave, mininterval, dynamic_ncols, ...: about redrawing a bar, which lines never do
    ) -> None:  # fmt: skip
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.desc, self.total, self.unit, self.unit_scale = iterable, desc or "", total, unit, unit_scale
        self.file, self.n, self.initial, self.postfix = file, initial, initial, ""
        if postfix:
            self.set_postfix(postfix)
        self.start = self.last_time = time.monotonic()  # the first line comes LINE_GAP s in at the earliest
        self.last_n: float | None = None
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def _step(self, n: float) -> int:
        return int(100 * n / self.total) // LINE_PERCENT if self.total else 0

    def update(self, n: float = 1) -> None:
        before, self.n = self.n, self.n + n
        now = time.monotonic()
        since = now - self.last_time
        if (self._step(self.n) > self._step(before) and since >= LINE_GAP) or since >= LINE_SECONDS:
            self._line(now)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw: a line is written when it is due."""

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.n != self.last_n:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        from tqdm.std import tqdm

        fmt = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]" if self.total else None
        text = tqdm.format_meter(
            self.n, self.total, now - self.start, prefix=self.desc, unit=self.unit, unit_scale=self.unit_scale,
            postfix=self.postfix or None, bar_format=fmt, initial=self.initial,
        )  # fmt: skip
        out = self.file or sys.stderr
        out.write(text + "\n")
        out.flush()
        self.last_time, self.last_n = now, self.n
