"""MPI launch support for `mpirun -n R gaugeflow ...`.

* :func:`world` returns the MPI world communicator when the job runs on several ranks
  (mpi4py with the `mpich` wheel), else ``None`` (plain single-process run).
* :func:`install_abort_on_error` makes an uncaught exception on any rank print its
  traceback (prefixed with the rank) and abort *all* ranks, instead of leaving the others
  waiting forever in a collective call.
* Only rank 0 prints progress and writes logs and files (see ``is_root``).
* :func:`interrupts_end_the_job` turns SIGINT (Ctrl-C) and SIGTERM (scancel, a wall-time
  limit) into :class:`Interrupted`, so that the job unwinds through its cleanup (lock,
  atomic writes, open stores) and the command line ends it with one line
  (:func:`run.cli.main`); one handler per rank.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback

__all__ = ["world", "rank", "is_root", "install_abort_on_error", "log_to_file", "abort", "Interrupted",
           "interrupts_end_the_job"]

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


def log_to_file(text: str, level: str = "ERROR") -> None:
    """Write a record (default ERROR) to the job log only (not the console): through the log's
    file handler on rank 0, appended to ``<output>/gaugeflow.log`` on the other ranks (which
    keep no handler open, but may be the only ones to know why the job failed). Nothing when no
    job log was opened yet. Never raises."""
    try:
        import logging
        import time
        log = logging.getLogger("gaugeflow")
        files = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
        if files:
            rec = log.makeRecord(log.name, getattr(logging, level), __file__, 0, text, None, None)
            for h in files:
                h.handle(rec)
                h.flush()
            return
        path = getattr(log, "gaugeflow_logfile", None)
        if path:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            with open(path, "a") as f:
                f.write(f"{stamp} {level} {text}\n")
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


class Interrupted(KeyboardInterrupt):
    """The job received SIGINT or SIGTERM (``signum``). A KeyboardInterrupt, so that every
    ``finally`` and ``except BaseException`` cleanup runs on the way out, as for Ctrl-C."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    def __reduce__(self):
        return (type(self), (self.signum,))


@contextlib.contextmanager
def interrupts_end_the_job():
    """While active, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread (a signal
    the process ignores, e.g. under ``nohup``, stays ignored). After the first one both are
    ignored, so that a second Ctrl-C cannot cut the cleanup short (SIGKILL still ends the
    process at once). The previous handlers are restored on exit. Outside the main thread
    (where Python allows no handlers) nothing is installed."""
    installed = {}

    def handler(signum, frame):
        for s in installed:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old = signal.getsignal(s)
            if old is signal.SIG_IGN:
                continue
            signal.signal(s, handler)
            installed[s] = old
        except ValueError:       # not the main thread
            break
    try:
        yield
    finally:
        for s, old in installed.items():
            signal.signal(s, old if old is not None else signal.SIG_DFL)
