"""Process memory: what the run measures (peak resident memory, CUDA peak) and what ``estimate`` predicts with."""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable

import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def current_rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()


def peak_memory(device: torch.device) -> dict[str, float]:
    """What the run reports: peak RSS, and the CUDA allocator's peak on a GPU."""
    out = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def _libc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), or None where there is none (macOS, musl)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return lambda: libc.malloc_trim(0)
    except (OSError, AttributeError):
        return None


def heap_trimmer(device: torch.device) -> Callable[[], object]:
    """A function to call after each optimizer step on CPU: hands the heap's free pages back to the OS.

    Without it, glibc keeps freed activation memory and fragments it, and the resident memory of a CPU run creeps
    up step after step (MiniLM: +60% over 40 steps of equal-sized batches). On GPUs (and without glibc) a no-op.
    """
    trim = _libc_trim() if device.type == "cpu" and sys.platform.startswith("linux") else None
    return trim or (lambda: None)
