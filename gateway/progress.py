"""Progress of a long command on a terminal: count, rate and time left on one rewritten line.

    replaying vnaccs: 1,200/5,000  310.2/s  12s left

Only when the stream is a terminal (`isatty()`): in a pipe, a file or CI output it writes
nothing at all, so logs and captured output stay exactly what they were. It writes to stderr
by default, keeping stdout for the command's result. Redraws are throttled to
`min_interval_s` (the last one always shows) and the line is finished with a newline on
`close()`, so what follows starts on a fresh line.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from gateway.timeutil import Clock

_ERASE_LINE = "\r\033[K"


class Progress:
    """One line of progress for `label`, out of `total` (None: unknown, then no time left).

    Parameters:
        label: what is counted, e.g. "replaying vnaccs".
        total: how many there will be, when known.
        stream: where to draw; sys.stderr by default. Nothing is drawn unless it is a TTY.
        clock: monotonic seconds; a fake in tests.
        min_interval_s: least time between two redraws (default 0.2 s).
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        clock: Clock = time.monotonic,
        min_interval_s: float = 0.2,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = sys.stderr if stream is None else stream
        self.enabled = _is_tty(self.stream)
        self._clock = clock
        self._interval = min_interval_s
        self._started = clock()
        self._drawn_at: float | None = None
        self.done = 0

    def update(self, done: int, total: int | None = None) -> None:
        """`done` so far (and the total, if it became known); redraws when due."""
        self.done = done
        if total is not None:
            self.total = total
        if not self.enabled:
            return
        now = self._clock()
        finished = self.total is not None and done >= self.total
        if self._drawn_at is not None and now - self._drawn_at < self._interval and not finished:
            return
        self._drawn_at = now
        self.stream.write(_ERASE_LINE + self.line(now))
        self.stream.flush()

    def line(self, now: float | None = None) -> str:
        """The text drawn: `label: done/total  rate/s  time left`."""
        elapsed = (self._clock() if now is None else now) - self._started
        count = f"{self.done:,}" if self.total is None else f"{self.done:,}/{self.total:,}"
        parts = [f"{self.label}: {count}"]
        if elapsed > 0 and self.done > 0:
            rate = self.done / elapsed
            parts.append(f"{rate:,.1f}/s")
            if self.total is not None:
                parts.append(f"{_duration((self.total - self.done) / rate)} left")
        return "  ".join(parts)

    def close(self) -> None:
        """End the line (only if anything was drawn)."""
        if self.enabled and self._drawn_at is not None:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn_at = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or stream-like object without a terminal
        return False


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
