"""MPI launch support for `mpirun -n R gaugeflow ...`.

* :func:`world` returns the MPI world communicator when the job runs on several ranks
  (mpi4py with the `mpich` wheel), else ``None`` (plain single-process run).
* :func:`install_abort_on_error` makes an uncaught exception on any rank print its
  traceback (prefixed with the rank) and abort *all* ranks, instead of leaving the others
  waiting forever in a collective call.
* Only rank 0 prints progress and writes logs and files (see ``is_root``).
"""
from __future__ import annotations

import os
import sys
import traceback

__all__ = ["world", "rank", "is_root", "install_abort_on_error", "log_to_file", "abort"]

_LAUNCH_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK",
                "HYDI_CONTROL_FD", "SLURM_STEP_NUM_TASKS")


def world():
    """MPI.COMM_WORLD if launched with more than one rank, else None."""
    if not any(v in os.environ for v in _LAUNCH_VARS):
        return None
    try:
        from mpi4py import MPI
    except ImportError:  # pragma: no cover
        raise RuntimeError("this job was launched by an MPI launcher but mpi4py is not installed; "
                           "install the 'mpi' extra (pip install 'gaugeflow[mpi]')")
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def rank(comm=None) -> int:
    return 0 if comm is None else comm.Get_rank()


def is_root(comm=None) -> bool:
    return rank(comm) == 0


def log_to_file(text: str) -> None:
    """Write an ERROR record to the job log only (not the console): through the log's file
    handler on rank 0, appended to ``<output>/gaugeflow.log`` on the other ranks (which keep no
    handler open, but may be the only ones to know why the job failed). Never raises."""
    try:
        import logging
        import time
        log = logging.getLogger("gaugeflow")
        files = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
        if files:
            rec = log.makeRecord(log.name, logging.ERROR, __file__, 0, text, None, None)
            for h in files:
                h.handle(rec)
                h.flush()
            return
        path = getattr(log, "gaugeflow_logfile", None)
        if path:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(path, "a") as f:
                f.write(f"{stamp} ERROR {text}\n")
    except Exception:  # pragma: no cover - never let logging hide the error or prevent an abort
        pass


ABORT_GRACE = 0.5   # seconds between the last message and MPI_Abort


def abort(comm, code: int) -> None:
    """Flush stdout/stderr, give the launcher a moment to forward them (MPICH's proxies may
    drop what is still in the pipe when MPI_Abort tears the job down), then abort all ranks."""
    import time
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pragma: no cover
            pass
    time.sleep(ABORT_GRACE)
    comm.Abort(code)


def install_abort_on_error(comm):
    """Abort every rank when one raises (no hang in collectives).

    Installs a ``sys.excepthook`` that writes the traceback to stderr with every line
    prefixed by ``[rank r]``, records it in the job log when the failing rank writes one
    (rank 0), flushes stdout/stderr and calls ``comm.Abort(1)``: the launcher then ends
    all ranks with a non-zero exit status. (Without it, a rank that dies leaves the others
    waiting forever in the next collective call.)
    """
    if comm is None:
        return

    def hook(etype, value, tb):
        r = comm.Get_rank()
        msg = "".join(traceback.format_exception(etype, value, tb)).rstrip()
        log_to_file(f"rank {r} failed, aborting all {comm.Get_size()} ranks:\n{msg}")
        try:
            sys.stdout.flush()
        except Exception:  # pragma: no cover
            pass
        sys.stderr.write("".join(f"[rank {r}] {line}\n" for line in msg.splitlines()))
        sys.stderr.write(f"[rank {r}] aborting all {comm.Get_size()} ranks\n")
        abort(comm, 1)

    sys.excepthook = hook
