"""Shared benchmark helpers: timing and the memory-bandwidth reference."""
from __future__ import annotations

import time

import numpy as np


def best_time(fn, repeat: int = 3, number: int = 1) -> float:
    """Best wall time of ``number`` calls over ``repeat`` repetitions (seconds per call)."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def copy_bandwidth(nbytes: int = 256 * 2**20) -> float:
    """STREAM-copy-like bandwidth in bytes/s: (read + write) bytes of ``dst[:] = src``."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    t = best_time(lambda: np.copyto(dst, src), repeat=5)
    return 2 * src.nbytes / t
