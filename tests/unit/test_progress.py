"""gateway/progress.py: count, rate and time left on a terminal, nothing in a pipe."""

from __future__ import annotations

import io

from gateway.progress import Progress
from tests.fakes import FakeClock, FakeTTY


def test_a_terminal_gets_count_rate_and_time_left_on_one_rewritten_line() -> None:
    clock, out = FakeClock(), FakeTTY()
    with Progress("replaying vnaccs", 1000, stream=out, clock=clock) as progress:
        clock.advance(2.0)
        progress.update(200)
        clock.advance(0.1)
        progress.update(210)  # throttled: within 0.2 s of the last redraw
        clock.advance(2.0)
        progress.update(400)
    frames = out.getvalue().split("\r\033[K")[1:]
    assert frames == [
        "replaying vnaccs: 200/1,000  100.0/s  8s left",
        "replaying vnaccs: 400/1,000  97.6/s  6s left\n",
    ]


def test_the_last_count_always_shows_and_an_unknown_total_has_no_time_left() -> None:
    clock, out = FakeClock(), FakeTTY()
    progress = Progress("reading", stream=out, clock=clock, min_interval_s=10)
    clock.advance(1.0)
    progress.update(50)
    progress.update(60, total=60)  # the total became known: finished, drawn despite the throttle
    progress.close()
    assert out.getvalue().endswith("\r\033[Kreading: 60/60  60.0/s  0s left\n")


def test_nothing_is_written_when_the_stream_is_not_a_terminal() -> None:
    clock, out = FakeClock(), io.StringIO()  # a pipe, a file, CI output
    with Progress("replaying", 10, stream=out, clock=clock) as progress:
        for n in range(1, 11):
            clock.advance(1.0)
            progress.update(n)
    assert out.getvalue() == ""
    assert progress.done == 10
