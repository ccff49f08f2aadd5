"""Progress lines a step prints for the local console's bars: `progress: <what> <done>/<total> [<unit>]`."""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass

PREFIX = "progress:"
# A line at most this often, and only once the work moved on by this share of the total: a bar
# needs no more, and the step's log stays readable (at most ~100 lines a bar).
MIN_SECONDS = 0.5
MIN_SHARE = 0.01

_LINE = re.compile(r"^progress: (?P<what>\S+) (?P<done>\d+)/(?P<total>\d+)(?: (?P<unit>.*))?$")


@dataclass(frozen=True)
class Line:
    """One parsed progress line."""

    what: str  # what the work is: a step's name, mostly
    done: int
    total: int
    unit: str = ""  # what is counted, and any detail: "URLs", "batches, epoch 2/5"

    def __str__(self) -> str:
        return f"{PREFIX} {self.what} {self.done}/{self.total}" + (f" {self.unit}" if self.unit else "")


def parse(text: str) -> Line | None:
    """The progress line in text, or None when text is any other line."""
    if not text.startswith(PREFIX):
        return None
    m = _LINE.match(text.strip())
    if m is None:
        return None
    return Line(m["what"], int(m["done"]), int(m["total"]), (m["unit"] or "").strip())


class Progress:
    """Counts work done of a total and prints its progress line, rate-limited: the first line, then one when at
    least MIN_SECONDS passed and the work moved on by MIN_SHARE of the total since the last, and the last line.

    clock and write are for tests (time.monotonic, and print to stdout, flushed, by default).
    """

    def __init__(self, what: str, total: int, unit: str = "", *, min_seconds: float = MIN_SECONDS,
                 min_share: float = MIN_SHARE, clock=time.monotonic, write=None, done: int = 0):
        if not what or any(c.isspace() for c in what):
            raise ValueError(f"what is {what!r}; expected one word, e.g. the step's name")
        self.what, self.total, self.unit, self.done = what, max(0, int(total)), unit, int(done)
        self.min_seconds, self.min_step = float(min_seconds), max(1, int(self.total * float(min_share)))
        self._clock = clock
        self._write = write or _print
        self._last_time: float | None = None
        self._last_done = 0
        self._last_unit = unit
        self._closed = False
        self._emit()

    def update(self, n: int = 1, unit: str | None = None) -> None:
        """n more of the total are done (unit, given, replaces the unit and detail)."""
        self.set(self.done + int(n), unit)

    def set(self, done: int, unit: str | None = None) -> None:
        """done of the total are done (unit, given, replaces the unit and detail)."""
        self.done = int(done)
        if unit is not None:
            self.unit = unit
        if self._closed:
            return
        now = self._clock()
        moved = abs(self.done - self._last_done) >= self.min_step or (self.done >= self.total > self._last_done)
        if moved and now - self._last_time >= self.min_seconds:
            self._emit(now)

    def close(self) -> None:
        """Prints the last line (unless it was the last printed); later updates print nothing."""
        if not self._closed and (self.done != self._last_done or self.unit != self._last_unit):
            self._emit()
        self._closed = True

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _emit(self, now: float | None = None) -> None:
        self._last_time = self._clock() if now is None else now
        self._last_done, self._last_unit = self.done, self.unit
        self._write(str(Line(self.what, max(0, min(self.done, self.total)), self.total, self.unit)))


def _print(line: str) -> None:
    # stdout, flushed: the local runner reads each step's output line by line through a pipe.
    print(line, file=sys.stdout, flush=True)
