"""Thread counts of the compute libraries in this process (BLAS, OpenMP, Numba).

Benchmarks on a shared machine are only comparable with the thread count fixed and recorded,
and an MPI job wants one thread per rank unless told otherwise. :func:`set_threads` sets the
BLAS/OpenMP pools already loaded into the process (via ``threadpoolctl``, so it works after
NumPy was imported, where the ``OMP_NUM_THREADS`` environment variable no longer does) and
Numba's pool; :func:`thread_record` is what benchmark and job records store.

``job.threads`` (default 1, what ``make`` exports) sets it for the command line; ``0`` leaves
the libraries' own defaults (usually all cores).
"""
from __future__ import annotations

__all__ = ["set_threads", "thread_record"]

_LIMITER = None


def set_threads(n: int) -> dict:
    """Limit every BLAS/OpenMP pool of this process (and Numba's) to ``n`` threads; ``n = 0``
    restores the libraries' defaults. Returns :func:`thread_record`."""
    global _LIMITER
    n = int(n)
    if n < 0:
        raise ValueError(f"thread count must be >= 0 (0 = the libraries' defaults), got {n}")
    import threadpoolctl
    from . import backend  # noqa: F401  (loads NumPy's BLAS first: a limit applies to loaded libraries only)
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        numba = None
    if _LIMITER is not None:
        _LIMITER.restore_original_limits()
        _LIMITER = None
    if n > 0:
        if numba is not None:   # first: this loads Numba's threading layer (an OpenMP pool)
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
        _LIMITER = threadpoolctl.threadpool_limits(limits=n)
    return thread_record()


def thread_record() -> dict:
    """``{"threads": max threads of any pool, "pools": [{"library", "api", "threads"}, ...]}``
    for the BLAS/OpenMP libraries loaded now (loads NumPy's BLAS first)."""
    from . import backend  # noqa: F401  (loads NumPy's BLAS, to be reported)
    import threadpoolctl
    pools = [{"library": p.get("internal_api") or p.get("prefix"), "api": p.get("user_api"),
              "threads": int(p.get("num_threads", 0))} for p in threadpoolctl.threadpool_info()]
    return {"threads": max((p["threads"] for p in pools), default=1), "pools": pools}
