"""Progress output that suits where it goes.

In a terminal: one tqdm bar per level (run, expert, evaluation network...), each cleared
when done. Without a terminal (CI, nohup, a log file: stderr is not a tty) carriage-return
updates would fill the log with thousands of bar frames, so a level that `reports` prints
one short line when it ends and inner levels print nothing.

Every progress bar of the package goes through `bar()`; `note()` prints a line between bars.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


def interactive() -> bool:
    """True when bars can be drawn: stderr is a terminal."""
    return sys.stderr.isatty()


def bar(iterable=None, *, desc: str, total: int | None = None, enabled: bool = True,
        report: bool = False, unit: str = "it"):
    """A progress bar over `iterable` (or a manual one: `update(n)`, `close()`).

    enabled=False: silent. In a terminal: a bar that clears when done. Otherwise: one line
    when done if `report` (an outer level: a stage, an evaluation), else nothing."""
    if enabled and interactive():
        return tqdm(iterable, desc=desc, total=total, leave=False, unit=unit, dynamic_ncols=True)
    return LogProgress(iterable, desc, total, report and enabled, unit)


def note(message: str) -> None:
    """A line that does not break the bars being drawn."""
    tqdm.write(message, file=sys.stderr)


class LogProgress:
    """The bar's interface without drawing: counts, and reports one line on close."""

    def __init__(self, iterable, desc: str, total: int | None, report: bool, unit: str):
        self.iterable, self.desc, self.report, self.unit = iterable, desc, report, unit
        self.total = total if total is not None else _len(iterable)
        self.n, self.postfix, self.closed = 0, {}, False
        self.t0 = time.perf_counter()

    def __iter__(self):
        try:
            for item in self.iterable:
                self.n += 1  # counts the steps started: a step that raises is reported too
                yield item
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.report:
            count = f"{self.n}/{self.total}" if self.total not in (None, self.n) else f"{self.n}"
            extra = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
            print(f"{self.desc}: {count} {self.unit} in {time.perf_counter() - self.t0:.1f} s"
                  + (f" ({extra})" if extra else ""), file=sys.stderr, flush=True)


def _len(iterable) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None
