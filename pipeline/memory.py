"""Peak memory of one training computation, measured inside a long-lived process.

``resource.getrusage(...).ru_maxrss`` is the high-water mark of the whole process: in a sweep
that trained hundreds of jobs it says nothing about one of them. Linux lets a process reset its
own mark (``echo 5 > /proc/self/clear_refs``, since Linux 4.0): :func:`peak_rss` resets it,
runs the computation and reads the new mark (``VmHWM`` in ``/proc/self/status``), so the peak
belongs to that computation (plus what the process already held: its RSS at the start is
recorded beside it). Memory that earlier jobs freed to the C heap would be reused without
raising the RSS, so the heap is first given back to the system (glibc's ``malloc_trim``).
Standard library only; elsewhere (no /proc, another libc) the numbers are absent, never made up.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def status_mb(field: str) -> float:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in MB (10⁶ bytes); nan without it."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    except OSError:
        return math.nan
    return int(match.group(1)) * 1024 / 1e6 if match else math.nan


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None


def reset_peak() -> bool:
    """Give the free C heap back to the system and reset this process's RSS high-water mark
    to its current RSS; False where Linux's clear_refs is not available."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


@dataclass
class PeakRSS:
    start_mb: float = math.nan  # RSS when the computation started
    peak_mb: float = math.nan  # highest RSS while it ran

    def metrics(self) -> dict[str, float]:
        """``peak_rss_mb`` and ``rss_start_mb``, when measured."""
        values = {"peak_rss_mb": self.peak_mb, "rss_start_mb": self.start_mb}
        return {k: v for k, v in values.items() if math.isfinite(v)}


@contextlib.contextmanager
def peak_rss() -> Iterator[PeakRSS]:
    """Measure the peak RSS of the block (see the module doc)."""
    measured = PeakRSS()
    reset = reset_peak()
    if reset:
        measured.start_mb = status_mb("VmRSS")
    yield measured
    if reset:
        measured.peak_mb = status_mb("VmHWM")
