"""What the commands print while they work (stderr) and when they are done."""

from __future__ import annotations

import time
from typing import Any, Sequence, TextIO


class Progress:
    """A progress counter on `stream`: one line redrawn in place on a terminal; otherwise whole
    lines (at most one a second, and the last), so piped logs stay one event per line."""

    def __init__(
        self, stream: TextIO, label: str, total: int, unit: str, min_interval: float = 1.0
    ):
        self.stream, self.label, self.total, self.unit = stream, label, total, unit
        self.done = 0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.min_interval = min_interval
        self._start = self._last = time.perf_counter()
        self._drawn = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.done >= self.total or self.tty or now - self._last >= self.min_interval:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        text = f"{self.label}: {self.done}/{self.total} {self.unit}, {now - self._start:.1f} s"
        if self.tty:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def print_table(stream: TextIO, rows: Sequence[tuple[str, Any]]) -> None:
    """Two aligned columns: what, and how much."""
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}", file=stream)
    stream.flush()
