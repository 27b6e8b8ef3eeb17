"""MPI helpers for host-side I/O: run a step on one rank, raise its errors on all ranks.

h5py from the package index is serial, and file formats here are written by one process:
every file operation runs on rank ``root`` (0) and the other ranks wait for its outcome.
:func:`on_root` makes an exception on the root rank re-appear on every rank, so that a
corrupt file or a mismatched ensemble stops the whole job with the same clear message
instead of leaving the other ranks waiting in a collective call.
"""
from __future__ import annotations

import pickle

__all__ = ["is_distributed", "on_root", "collective", "mark_all_ranks", "raised_on_all_ranks"]

_ALL_RANKS = "_gaugeflow_raised_on_all_ranks"


def mark_all_ranks(err: BaseException) -> BaseException:
    """Mark ``err`` as raised identically on every MPI rank (so that a caller may report it
    and return normally on every rank instead of aborting the job)."""
    try:
        setattr(err, _ALL_RANKS, True)
    except Exception:  # pragma: no cover - exceptions without a __dict__
        pass
    return err


def raised_on_all_ranks(err: BaseException) -> bool:
    """True if ``err`` came out of :func:`on_root` / :func:`collective` (hence is being raised on
    every rank) or was marked with :func:`mark_all_ranks`."""
    return bool(getattr(err, _ALL_RANKS, False))


def is_distributed(layout) -> bool:
    return layout is not None and getattr(layout, "is_distributed", False)


def _portable(err: BaseException) -> BaseException:
    """``err`` itself if it pickles (so that it can be broadcast), else a RuntimeError copy."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__} on the I/O rank: {err}")


def on_root(layout, fn, *args, root: int = 0, bcast_result: bool = False, **kwargs):
    """Call ``fn(*args, **kwargs)`` on rank ``root`` only.

    Returns its result on the root rank (on every rank with ``bcast_result=True``; keep such
    results small) and ``None`` elsewhere. If ``fn`` raises on the root rank, the same
    exception is raised on every rank. Without MPI this is a plain call.
    """
    if not is_distributed(layout):
        return fn(*args, **kwargs)
    comm = layout.comm
    result, err = None, None
    if comm.Get_rank() == root:
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # re-raised below, on every rank
            err = e
    status = comm.bcast(None if err is None else _portable(err), root=root)
    if status is not None:
        if err is not None:
            raise mark_all_ranks(err)
        raise mark_all_ranks(status)
    if bcast_result:
        result = comm.bcast(result, root=root)
    return result


def collective(layout, fn, *args, **kwargs):
    """Call ``fn`` on every rank; if it raises on any rank, raise on all ranks.

    The failing rank re-raises its own exception, the others the first failing rank's.
    Use it for checks of distributed data (e.g. SU(N) validity of each rank's block) that
    precede a collective operation, so that no rank is left waiting.
    """
    if not is_distributed(layout):
        return fn(*args, **kwargs)
    result, err = None, None
    try:
        result = fn(*args, **kwargs)
    except BaseException as e:
        err = e
    errs = layout.comm.allgather(None if err is None else _portable(err))
    if err is not None:
        raise mark_all_ranks(err)
    first = next((e for e in errs if e is not None), None)
    if first is not None:
        raise mark_all_ranks(first)
    return result
