"""Give freed heap memory back to the OS (glibc `malloc_trim`): after calls that left it idle, and after unloads.

glibc keeps freed blocks in its arenas (one per busy thread), so a server that once decoded a burst of
large inputs keeps that RSS for good. A trim walks every arena and returns their free pages: cheap, but
not free (tens of ms on a large heap). So after calls it runs only when the resident memory that the
heap does not use ("slack": RSS minus the bytes malloc has handed out, from `mallinfo2`) grew by
`growth` bytes since the last trim, at most once per `interval` seconds (a call within the interval
books one trim for its end). Memory held by calls still running is in use, not slack: it is never
mistaken for what a trim could give back. Where there is no glibc (musl, macOS) every method is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

TRIM_INTERVAL_S = 1.0  # at most one trim per second after calls
GROWTH_BYTES = 64 * 2**20  # idle resident heap worth a trim
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2`: every field a size_t."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


def _libc_function(name: str, restype, argtypes):
    """A glibc function, or None where the C library has none."""
    try:
        function = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    function.restype, function.argtypes = restype, argtypes
    return function


MALLOC_TRIM = _libc_function("malloc_trim", ctypes.c_int, [ctypes.c_size_t])
MALLINFO2 = _libc_function("mallinfo2", _MallInfo2, [])  # glibc >= 2.33
MALLOPT = _libc_function("mallopt", ctypes.c_int, [ctypes.c_int, ctypes.c_int])
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
HEAP_BLOCK_BYTES = 32 * 2**20  # glibc's largest mmap threshold on 64-bit: frames up to this come from the heap
HEAP_KEEP_BYTES = 128 * 2**20  # free memory at the heap's top kept before glibc gives it back by itself


def keep_heap_warm() -> bool:
    """Serve a frame's large arrays from the heap and keep freed ones resident, so the next frame reuses them.

    By default glibc maps every block over its (adaptive) threshold afresh and unmaps it on free, and trims
    the heap's top past twice that: each frame then faults in and zeroes megabytes of new pages. Where page
    faults are dear (virtualised hosts) that was most of the CPU of small array steps: fusing a 640x640
    pair cost 6.6 ms of CPU instead of 1.2 ms. The MemoryReleaser still trims idle memory after calls, so
    RSS stays bounded. Process-wide: `mmfusion serve` and `mmfusion cameras` call it at start;
    MMFUSION_KEEP_HEAP=0 leaves glibc's defaults. False where there is no glibc or it is switched off.
    """
    if MALLOPT is None or os.environ.get("MMFUSION_KEEP_HEAP", "1") == "0":
        return False
    return bool(MALLOPT(M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)) and bool(MALLOPT(M_TRIM_THRESHOLD, HEAP_KEEP_BYTES))


def rss_bytes() -> int:
    """This process's resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def slack_bytes() -> int:
    """RSS less the heap in use (malloc'd blocks and mmapped chunks); plain RSS without mallinfo2."""
    if MALLINFO2 is None:
        return rss_bytes()
    info = MALLINFO2()
    return rss_bytes() - info.uordblks - info.hblkhd


class MemoryReleaser:
    """Trims the heap after calls that left `growth` bytes of idle heap resident, at most every `interval` s."""

    def __init__(self, interval: float = TRIM_INTERVAL_S, growth: int = GROWTH_BYTES) -> None:
        self.interval = interval
        self.growth = growth
        self.trims = 0
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._baseline = slack_bytes()
        self._later: threading.Timer | None = None

    def trim(self) -> bool:
        """Return free heap pages to the OS now; False where there is no malloc_trim."""
        if MALLOC_TRIM is None:
            return False
        with self._lock:
            MALLOC_TRIM(0)
            self._last = time.monotonic()
            self._baseline = slack_bytes()
            self.trims += 1
        return True

    def after_call(self) -> bool:
        """Trim if the idle resident heap grew by `growth` since the last trim; True if it trimmed now."""
        if MALLOC_TRIM is None or self._lock.locked():
            return False
        slack = slack_bytes()
        self._baseline = min(self._baseline, slack)  # memory given back by itself lowers the bar
        if slack - self._baseline < self.growth:
            return False
        wait = self._last + self.interval - time.monotonic()
        if wait <= 0:
            return self.trim()
        with self._lock:  # trimmed a moment ago: once more when the interval is over, for the calls ending now
            if self._later is None:
                self._later = threading.Timer(wait, self._trim_later)
                self._later.daemon = True
                self._later.start()
        return False

    def _trim_later(self) -> None:
        with self._lock:
            self._later = None
        self.trim()

    def after_unload(self) -> bool:
        """Collect the unloaded model's reference cycles, then trim whatever they held."""
        gc.collect()
        return self.trim()


RELEASER = MemoryReleaser()  # the heap is the process's: one releaser for every server in it


class ReleasingExecutor(ThreadPoolExecutor):
    """A gRPC server's thread pool that offers freed memory back to the OS after each call it ran."""

    def __init__(self, max_workers: int, releaser: MemoryReleaser = RELEASER, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.releaser = releaser

    def submit(self, fn, /, *args, **kwargs):
        return super().submit(self._released, fn, args, kwargs)

    def _released(self, fn, args, kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            self.releaser.after_call()
