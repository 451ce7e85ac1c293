"""A progress line on stderr: count/total, percent, rate. Redrawn in place on a terminal, a plain line
every few seconds otherwise (logs, CI), and always a final line."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int | None = None, stream=None, interval_s: float | None = None,
                 clock=time.monotonic):
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = interval_s if interval_s is not None else (0.1 if self.tty else 5.0)
        self._clock = clock
        self.started = clock()
        self._last_draw = -1e9
        self._drawn: int | None = None
        self.count = 0

    def rate(self) -> float:
        elapsed = self._clock() - self.started
        return self.count / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        done = f"{self.count:,}"
        if self.total:
            done += f"/{self.total:,} ({min(100.0, 100.0 * self.count / self.total):5.1f}%)"
        return f"{self.label}: {done}  {self.rate():,.0f}/s  {self._clock() - self.started:.1f}s"

    def update(self, count: int) -> None:
        self.count = count
        now = self._clock()
        if now - self._last_draw < self.interval_s:
            return
        self._last_draw = now
        self._draw()

    def _draw(self, end: str = "") -> None:
        self._drawn = self.count
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line() + end)
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def finish(self, count: int | None = None) -> None:
        if count is not None:
            self.count = count
        if self.tty:
            self._draw("\n")
        elif self._drawn != self.count:  # a plain line with this count is there already otherwise
            self._draw()
