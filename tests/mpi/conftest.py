"""MPI test support: run with `mpiexec -n R python -m pytest -m mpi tests/mpi`.

A failing test on one rank would leave the other ranks waiting in a collective call, so a
failure prints its report on the failing rank and aborts all ranks (non-zero exit, no hang).
Tests here must be marked ``@pytest.mark.mpi``.
"""
import sys

import pytest

MPI = pytest.importorskip("mpi4py.MPI")


@pytest.fixture(scope="session")
def comm():
    return MPI.COMM_WORLD


def pytest_runtest_logreport(report):
    if report.failed:
        rank = MPI.COMM_WORLD.Get_rank()
        sys.stderr.write(f"\n[rank {rank}] FAILED {report.nodeid} ({report.when})\n{report.longreprtext}\n")
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
