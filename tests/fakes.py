"""Fakes for unit tests: a clock that moves only when told, a sleep that moves it, a terminal."""

from __future__ import annotations

import io


class FakeClock:
    """Seconds that move only by `advance()` (or by assigning `t`)."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class ClockSleep:
    """A sleep that records the pause and moves the fake clock forward by it."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(seconds)


class FakeTTY(io.StringIO):
    """A text stream that says it is a terminal (gateway/progress.py draws only on one)."""

    def isatty(self) -> bool:
        return True
