"""gateway.runtime.memory: malloc_trim after a burst, only when the growth is free memory; no-op without glibc."""

from __future__ import annotations

import asyncio
import ctypes
import logging

import pytest

from gateway.runtime.memory import MB, Glibc, MemoryTrimmer, rss_bytes


class FakeAllocator:
    """A process of `other` resident bytes outside malloc, `in_use` bytes in malloc's use and
    `rss` in all; a trim gives back every free page of the heap (when `trimmable`)."""

    def __init__(self, *, other: int = 60 * MB, in_use: int | None = 10 * MB) -> None:
        self.other, self.in_use = other, in_use
        self.rss = other + (in_use or 0)
        self.trims = 0
        self.trimmable = True

    def in_use_bytes(self) -> int | None:
        return self.in_use

    def trim(self) -> None:
        self.trims += 1
        if self.trimmable:
            self.rss = self.other + (self.in_use or 0)


def trimmer(heap: FakeAllocator) -> MemoryTrimmer:
    return MemoryTrimmer(heap, min_growth_mb=16, rss=lambda: heap.rss)


def test_a_burst_freed_again_is_given_back_once() -> None:
    heap = FakeAllocator()
    t = trimmer(heap)
    assert not t.check()  # the first look sets the mark
    heap.rss += 60 * MB  # a burst grew the heap; its requests are done (in_use back to 10 MB)
    assert t.check()
    assert heap.trims == 1
    assert heap.rss == 70 * MB
    assert not t.check()
    assert heap.trims == 1


def test_memory_in_use_is_not_trimmed_and_a_trim_mid_burst_does_not_stop_the_one_after_it() -> None:
    heap = FakeAllocator()
    t = trimmer(heap)
    t.check()
    heap.in_use, heap.rss = 50 * MB, 130 * MB  # a burst in flight: 40 MB more in use, 20 MB freed already
    assert t.check()
    assert heap.rss == 110 * MB  # the 20 MB free went back; the 40 MB in use stayed
    heap.in_use = 10 * MB  # the burst is over: its 40 MB freed, still resident
    assert t.check()
    assert heap.rss == 70 * MB
    assert heap.trims == 2


def test_a_steady_load_whose_memory_is_in_use_never_trims() -> None:
    heap = FakeAllocator()
    t = trimmer(heap)
    t.check()
    for in_use in (30, 45, 38, 50, 41):  # requests come and go; the heap stays as large as they need
        heap.in_use = in_use * MB
        heap.rss = max(heap.rss, heap.other + heap.in_use)
        assert not t.check()  # what is free at any moment stays under 16 MB


def test_a_trim_that_gives_nothing_back_is_not_repeated() -> None:
    heap = FakeAllocator(in_use=None)  # no mallinfo2 (glibc < 2.33): all of the RSS counts
    t = trimmer(heap)
    t.check()
    heap.rss += 10 * MB
    assert not t.check()
    heap.rss += 20 * MB  # Python's own arenas grew, say: nothing malloc_trim can give back
    heap.trimmable = False
    assert t.check()
    assert not t.check()  # ... and that is the new mark, not a trim on every look
    assert heap.trims == 1


def test_the_mark_follows_memory_that_went_back_by_itself() -> None:
    heap = FakeAllocator()
    t = trimmer(heap)
    t.check()
    heap.other -= 20 * MB  # an arena unmapped, the top of the heap freed
    heap.rss -= 20 * MB
    t.check()
    heap.rss += 20 * MB  # 20 MB freed above the new lowest level
    assert t.check()


async def test_run_checks_every_interval_until_cancelled() -> None:
    heap = FakeAllocator()
    sleeps: list[float] = []
    grown = asyncio.Event()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            heap.rss += 50 * MB
        if heap.trims:
            grown.set()
        await asyncio.sleep(0)

    t = MemoryTrimmer(heap, interval_s=1.0, rss=lambda: heap.rss, sleep=sleep)
    task = asyncio.create_task(t.run())
    await asyncio.wait_for(grown.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert heap.trims == 1
    assert set(sleeps) == {1.0}


async def test_without_glibc_run_returns_at_once_with_a_debug_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="swgw.memory"):
        await asyncio.wait_for(MemoryTrimmer(None).run(), timeout=5)
    assert "not glibc" in caplog.text


def test_load_returns_none_on_a_libc_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    class Musl:  # no gnu_get_libc_version, no malloc_trim
        pass

    monkeypatch.setattr(ctypes, "CDLL", lambda _name: Musl())
    assert Glibc.load() is None


def test_load_returns_none_when_the_c_library_cannot_be_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(_name: object) -> None:
        raise OSError("no such library")

    monkeypatch.setattr(ctypes, "CDLL", fail)
    assert Glibc.load() is None


def test_glibc_gives_back_the_free_pages_of_a_fragmented_heap() -> None:
    """The real thing, on this (glibc) machine: free blocks kept between live ones come back on trim."""
    glibc = Glibc.load()
    if glibc is None:
        pytest.skip("not glibc")
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    blocks = [libc.malloc(64 * 1024 - 64) for _ in range(1600)]  # ~100 MB below the mmap threshold
    for b in blocks:
        libc.memset(b, 1, 64 * 1024 - 64)  # touched: resident
    for b in blocks[0::2]:
        libc.free(b)  # half freed, each between two live blocks: nothing at the top to give back
    before, in_use = rss_bytes(), glibc.in_use_bytes()
    glibc.trim()
    after = rss_bytes()
    for b in blocks[1::2]:
        libc.free(b)
    assert in_use is not None
    assert in_use < before - 40 * MB  # mallinfo2 sees that the freed half is not in use
    assert before - after >= 30 * MB, (before / MB, after / MB)
