"""Progress of a long stage: a tqdm bar on a terminal, a plain line every so often in a log.

Under Slurm, nohup or a pipe, stderr is a file: a tqdm bar there is a stream of carriage returns that
shows nothing until the stage ends. So :func:`progress` gives a tqdm bar only when stderr is a
terminal, and otherwise writes one line at most every ``MEGAPHI_PROGRESS_INTERVAL`` seconds (default
30) and one at the end::

    [dedup] 12000/50000 docs (24%), 410.2 docs/s, 1m32s left

``MEGAPHI_PROGRESS=bar|lines|off`` forces the choice. Both kinds take the subset of tqdm's interface
the stages use: iterate over it, ``update(n)``, ``total``, use it as a context manager, ``close()``.
Torch-free, for the data tools as much as for megaphi.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sized
from typing import Any, Iterable, Iterator, TextIO

from megaphi.common.errors import UserError

DEFAULT_INTERVAL_S = 30.0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLines:
    """A tqdm stand-in for logs: one line per interval and one when it closes, nothing in between."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        interval_s: float = DEFAULT_INTERVAL_S,
        file: TextIO | None = None,
    ):
        self.iterable, self.desc, self.unit, self.interval_s = iterable, desc, unit.strip(), interval_s
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)
        self.total, self.n = total, 0
        self.file = file
        self.postfix = ""
        self.started = self.last_line = time.monotonic()
        self.closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()  # as tqdm does when its iterable runs out

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # the stage's own error says what happened; no "done" line before it
            self.closed = True

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last_line >= self.interval_s:
            self.last_line = now
            self._write(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write(time.monotonic(), done=True)

    def line(self, now: float, done: bool = False) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.n / elapsed
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        text = f"[{self.desc}] {count}, {rate:.1f} {self.unit}/s" + (f", {self.postfix}" if self.postfix else "")
        if done:
            return f"{text}, done in {_duration(elapsed)}"
        if self.total and rate > 0:
            text += f", {_duration((self.total - self.n) / rate)} left"
        return text

    def _write(self, now: float, done: bool = False) -> None:
        print(self.line(now, done), file=self.file or sys.stderr, flush=True)


class _Off(ProgressLines):
    def _write(self, now: float, done: bool = False) -> None:
        pass


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    unit_scale: bool = False,
) -> Any:
    """A progress display for a loop or a manual ``update(n)`` count: see the module docstring."""
    mode = os.environ.get("MEGAPHI_PROGRESS", "").strip().lower()
    if mode not in ("", "bar", "lines", "off"):
        raise UserError(f"MEGAPHI_PROGRESS={mode!r} is not one of bar, lines, off")
    if disable or mode == "off":
        return _Off(iterable, total=total, desc=desc, unit=unit)
    if mode == "bar" or (mode == "" and sys.stderr.isatty()):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale, dynamic_ncols=True)
    interval = os.environ.get("MEGAPHI_PROGRESS_INTERVAL", "")
    try:
        interval_s = float(interval) if interval else DEFAULT_INTERVAL_S
    except ValueError:
        raise UserError(f"MEGAPHI_PROGRESS_INTERVAL={interval!r} is not a number of seconds") from None
    return ProgressLines(iterable, total=total, desc=desc, unit=unit, interval_s=interval_s)
