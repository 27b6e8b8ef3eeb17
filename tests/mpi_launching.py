"""Helpers for tests that start `mpiexec` subprocesses (shared by test_mpi_launch.py and
test_run_robust_mpi.py): the launcher next to this interpreter, skip marks, a clean
environment, and a launch with a timeout that turns a hang into a test failure."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).with_name("mpiexec")
TIMEOUT = 120          # seconds; a hang (deadlock) would otherwise stall the test run

LAUNCH_MARKS = [
    pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec next to {sys.executable}"),
    pytest.mark.skipif(any(v in os.environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")),
                       reason="already inside an MPI launch"),
]


def launch_env():
    """The environment without the variables of an enclosing MPI launch, with the checkout and
    tests/ on the path and one BLAS thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDI_", "MPIR_", "OMPI_", "PMIX_"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + str(ROOT / "tests") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def launch(ranks, args, cwd, timeout=TIMEOUT):
    """Run ``python ARGS`` under ``mpiexec -n ranks`` (ranks = 0: plain process)."""
    cmd = ([str(MPIEXEC), "-n", str(ranks)] if ranks else []) + [sys.executable] + list(map(str, args))
    try:
        return subprocess.run(cmd, cwd=cwd, env=launch_env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:   # the launcher's process group is killed by run()
        pytest.fail(f"{' '.join(cmd)} hung for {timeout} s (deadlock?):\n{exc.stdout}\n{exc.stderr}")
