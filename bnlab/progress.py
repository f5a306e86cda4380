"""Progress for every long command, wherever its output goes: a tqdm bar in a
terminal and in a notebook, and without either (nohup, a log file, Slurm) a plain
line at a steady interval that a log keeps (tqdm turns its bar off there, and a
run printed nothing for its whole length).

`BNLAB_PROGRESS` chooses: `bar`, `lines` or `off` (default: `bar` where stderr is
a terminal or the process is a notebook's kernel, `lines` otherwise);
`BNLAB_PROGRESS_SECONDS` the interval between lines (default 30).
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

MODES = ("bar", "lines", "off")
# Set in a sweep's worker processes (the sweep process's pid): `bnlab.sweep` sets it.
SWEEP_PARENT_ENV = "BNLAB_SWEEP_PID"


def mode() -> str:
    """How progress shows in this process (`BNLAB_PROGRESS`, or where stderr goes)."""
    chosen = os.environ.get("BNLAB_PROGRESS", "").strip().lower()
    if chosen in MODES:
        return chosen
    if "ipykernel" in sys.modules or sys.stderr.isatty():
        return "bar"
    return "lines"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Lines:
    """tqdm's `update`, `n`, `set_postfix` and `close`, printed as a line every
    `interval` seconds (and once at a whole end): description, count of the total,
    the postfix, the rate since the start and the time left at that rate."""

    def __init__(self, total: int, desc: str = "", unit: str = "it", initial: int = 0,
                 interval: float | None = None, stream: Any = None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval = (float(os.environ.get("BNLAB_PROGRESS_SECONDS", 30))
                         if interval is None else interval)
        self.stream = stream
        self.postfix: dict[str, Any] = {}
        self._start_n, self._start = initial, time.monotonic()
        self._last = self._start

    def update(self, count: int = 1) -> None:
        self.n += count
        self._maybe_print()

    def set_postfix(self, values: dict[str, Any] | None = None, refresh: bool = True,
                    **more: Any) -> None:
        self.postfix = {**(values or {}), **more}
        self._maybe_print()

    def line(self) -> str:
        elapsed = time.monotonic() - self._start
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else math.nan
        left = (self.total - self.n) / rate if rate and rate > 0 else math.nan
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        return (f"{self.desc + ': ' if self.desc else ''}{self.n}/{self.total} "
                f"{self.unit}s{share}{extra}, {rate:.3g} {self.unit}/s, "
                f"elapsed {_duration(elapsed)}, left {_duration(left)}")

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print()

    def _print(self) -> None:
        print(self.line(), file=self.stream or sys.stderr, flush=True)

    def close(self) -> None:
        """The last line, where the work ended whole: a run or sweep cut short ends in
        its one error line, not in a progress line beside it."""
        if self.n >= self.total:
            self._print()


class _Off:
    n = 0

    def update(self, count: int = 1) -> None:
        self.n += count

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str = "", unit: str = "it", initial: int = 0,
        enabled: bool = True, leave: bool = False) -> Any:
    """A progress display of `total` units in this process's `mode()`; nothing where
    not `enabled` (another process reports it)."""
    chosen = mode() if enabled else "off"
    if chosen == "off":
        shown = _Off()
        shown.n = initial
        return shown
    if chosen == "lines":
        return Lines(total, desc, unit, initial)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc or None, unit=unit, leave=leave,
                dynamic_ncols=True)
