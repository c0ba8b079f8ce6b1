"""Giving freed memory back to the system after a load burst (issue 17: RSS under 200 MB, flat).

Where a burst's memory stays (one `swgw serve` process, 1,000 concurrent 8 KB CUSDEC
requests, 512 of them in flight): RSS 68 -> 130 MB, and 45 MB of that is memory the process
has already freed, inside glibc's main malloc arena. The bodies, the lxml/libxml2 trees and
aiohttp's objects of the requests in flight grew the heap; once freed, glibc only returns the
top of the heap to the system, and a few allocations still alive from the burst pin that top.
The worker threads' own arenas (SQLite store, executor) stayed under 1.5 MB, so limiting the
number of arenas would save nothing; Python's objects peaked at about 25 MB (tracemalloc).
`malloc_trim(0)` hands back the free pages anywhere in the heap (madvise): 130 -> 86 MB, in
2-9 ms on the event loop (under 1 ms when there is nothing to give back). What stays is mostly
Python's own object arenas, which only an empty arena returns.

`MemoryTrimmer.run` is a supervised loop: every `interval_s` it compares the RSS with the
bytes malloc has in use (`mallinfo2`). What is resident but not in use (Python's own arenas,
libraries, stacks, fragments no trim can free) is measured right after each trim; when the
resident-but-unused memory has grown by `min_growth_mb` beyond that, freed memory is sitting
in the heap and `malloc_trim(0)` gives it back. So a burst's heap goes back as its requests
finish (a trim in the middle of a burst does not stop the one after it), a steady load does not
trim (nothing piles up), and a trim that finds nothing raises the mark instead of repeating.

glibc only. Elsewhere (musl, macOS) there is no malloc_trim: the loop logs that at DEBUG and
returns, and the process keeps what its allocator keeps.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
from collections.abc import Callable
from typing import Protocol

from gateway.timeutil import Sleep

log = logging.getLogger("swgw.memory")
MB = 1024 * 1024


class Allocator(Protocol):
    """What the trimmer needs from the C allocator (glibc's, or a fake in tests)."""

    def in_use_bytes(self) -> int | None:
        """Bytes malloc has handed out and not had back, or None when it cannot tell."""

    def trim(self) -> None:
        """Give free pages back to the system."""


class _Mallinfo2(ctypes.Structure):
    _fields_ = [  # glibc's struct mallinfo2 (2.33+): ten size_t
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class Glibc:
    """glibc's malloc_trim and mallinfo2, through ctypes. `load()` returns None on any other libc."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._trim = lib.malloc_trim
        self._trim.argtypes, self._trim.restype = [ctypes.c_size_t], ctypes.c_int
        self._mallinfo2 = getattr(lib, "mallinfo2", None)  # glibc 2.33+; without it: trim on growth alone
        if self._mallinfo2 is not None:
            self._mallinfo2.argtypes, self._mallinfo2.restype = [], _Mallinfo2

    @classmethod
    def load(cls) -> Glibc | None:
        try:
            lib = ctypes.CDLL(None)  # the C library the interpreter is linked against
        except OSError:
            return None
        if not hasattr(lib, "gnu_get_libc_version") or not hasattr(lib, "malloc_trim"):
            return None  # musl, macOS, ...: no malloc_trim
        return cls(lib)

    def in_use_bytes(self) -> int | None:
        if self._mallinfo2 is None:
            return None
        info = self._mallinfo2()
        return int(info.uordblks + info.hblkhd)  # in the arenas, and the large blocks mmapped alone

    def trim(self) -> None:
        self._trim(0)


def rss_bytes() -> int:
    """This process's resident set size, from /proc/self/statm (resident pages x page size)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryTrimmer:
    """Calls malloc_trim(0) when freed memory has piled up in the heap after a burst.

    Parameters:
        allocator: glibc (`Glibc.load()`), or None where there is none: `run` then returns at once.
        interval_s: how often to look; default 1 second (a /proc read and a mallinfo2 walk of
            malloc's free lists: 0.1-0.2 ms after a burst).
        min_growth_mb: how much resident memory, beyond what was left after the last trim, must
            be out of malloc's use before a trim; default 16 MB (a burst of a few hundred
            requests in flight leaves 40-60 MB; a steady load leaves nothing new).
        rss: reads the RSS in bytes (/proc/self/statm by default; injected in tests).
        sleep: awaited between looks (injected in tests).
    """

    def __init__(
        self,
        allocator: Allocator | None,
        *,
        interval_s: float = 1.0,
        min_growth_mb: float = 16.0,
        rss: Callable[[], int] = rss_bytes,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.allocator = allocator
        self.interval_s = interval_s
        self.min_growth = int(min_growth_mb * MB)
        self._rss = rss
        self._sleep = sleep
        self._mark: int | None = None  # resident but not in malloc's use, after the last trim
        self.trims = 0

    @classmethod
    def for_this_process(cls) -> MemoryTrimmer:
        return cls(Glibc.load())

    def _unused(self, rss: int) -> int:
        """Resident bytes malloc does not have in use (all of the RSS when it cannot tell)."""
        assert self.allocator is not None
        return rss - (self.allocator.in_use_bytes() or 0)

    def check(self) -> bool:
        """One look: trim if `min_growth_mb` more than after the last trim is resident but unused."""
        now = self._rss()
        unused = self._unused(now)
        if self._mark is None or unused < self._mark:
            self._mark = unused  # the lowest since the last trim: start-up, or memory returned by itself
            return False
        if unused - self._mark < self.min_growth:
            return False
        assert self.allocator is not None
        self.allocator.trim()
        after = self._rss()
        self._mark = self._unused(after)  # what no trim can give back; nothing found: no trim per look
        self.trims += 1
        log.debug(
            "gave free memory back to the system: RSS %.0f -> %.0f MB",
            now / MB,
            after / MB,
            extra={"event": "memory_trimmed", "rss_before_mb": round(now / MB), "rss_after_mb": round(after / MB)},
        )
        return True

    async def run(self) -> None:
        """Look every `interval_s` for the life of the process (spawned supervised by the app)."""
        if self.allocator is None:
            log.debug("not glibc: freed memory is left to the C allocator (no malloc_trim)")
            return
        while True:
            self.check()
            await self._sleep(self.interval_s)
