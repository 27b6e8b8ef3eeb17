"""Launching under MPI, tested from a normal (single-process) pytest run by starting
``mpiexec -n 2 python ...`` subprocesses with a timeout:

* an exception on one rank aborts every rank with a message that names the rank (no hang);
* a lattice that does not divide over the ranks is a clear configuration error (no hang);
* ``mpirun -n 2 gaugeflow hmc`` writes the same ensemble datasets as one process, and only
  rank 0 prints progress and writes the log; ``gaugeflow measure`` (pion correlators, the
  Feynman-Hellmann operator) on that ensemble writes the same measurement file;
* a job failing on rank 0 aborts all ranks and leaves the traceback in the job log.
"""

import re

import numpy as np
import pytest

pytest.importorskip("mpi4py")
h5py = pytest.importorskip("h5py")

from mpi_launching import LAUNCH_MARKS, launch  # noqa: E402

pytestmark = LAUNCH_MARKS


RAISE_ON_ONE_RANK = """
from run.parallel import world, install_abort_on_error
comm = world()
assert comm is not None and comm.Get_size() == 2
install_abort_on_error(comm)
if comm.Get_rank() == 1:
    raise RuntimeError("deliberate failure on one rank")
comm.Barrier()          # rank 0 waits here forever unless the failure aborts it
print("unreachable")
"""


def test_exception_on_one_rank_aborts_all_ranks(tmp_path):
    r = launch(2, ["-c", RAISE_ON_ONE_RANK], tmp_path)
    assert r.returncode != 0
    assert "[rank 1] RuntimeError: deliberate failure on one rank" in r.stderr
    assert "unreachable" not in r.stdout


def _hmc_args(out, *extra):
    return ["-m", "run", "hmc", "demo", "--output", str(out), "--set", "hmc.n_traj=2", "--set", "hmc.n_therm=1",
            "--set", "hmc.n_steps=3", *extra]


def test_indivisible_lattice_is_a_configuration_error_on_every_rank(tmp_path):
    r = launch(2, _hmc_args(tmp_path / "o", "--set", "lattice.shape=[3,3,3,5]"), tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if "configuration error" in l]
    assert len(lines) == 2 and all("cannot decompose lattice (3, 3, 3, 5) over 2 ranks" in l for l in lines), r.stderr


WALL_CLOCK = "seconds"      # per-trajectory wall time in the scalars table: differs between any two runs


def _datasets(path):
    """name -> (dtype, shape, bytes) of every dataset; the scalars table without its wall-clock
    column, and without the checksum that covers that column."""
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if not isinstance(obj, h5py.Dataset) or name == "checksums/scalars":
                return
            v = obj[()]
            if v.dtype.names and WALL_CLOCK in v.dtype.names:
                v = v[[n for n in v.dtype.names if n != WALL_CLOCK]]
                out[name] = (v.dtype.descr, v.shape, [tuple(r) for r in v.tolist()])
            else:
                out[name] = (v.dtype.str, v.shape, v.tobytes() if v.dtype.kind != "O" else repr(v.tolist()))
        f.visititems(visit)
        ranks = int(f.attrs["provenance.mpi_ranks"])
    return out, ranks


@pytest.fixture(scope="module")
def hmc_runs(tmp_path_factory):
    """``gaugeflow hmc`` on 2 ranks and on one process (shared by the tests below)."""
    d = tmp_path_factory.mktemp("hmc")
    r2 = launch(2, _hmc_args(d / "p"), d)
    assert r2.returncode == 0, r2.stderr
    r1 = launch(0, _hmc_args(d / "s"), d)
    assert r1.returncode == 0, r1.stderr
    return d, r1, r2


def test_mpirun_hmc_writes_the_single_process_ensemble_and_only_rank0_talks(hmc_runs):
    tmp_path, r1, r2 = hmc_runs
    d2, n2 = _datasets(tmp_path / "p" / "ensemble.h5")
    d1, n1 = _datasets(tmp_path / "s" / "ensemble.h5")
    assert (n2, n1) == (2, 1)
    assert sorted(d2) == sorted(d1) and {"configs", "scalars", "state"} <= set(d1) and d1["configs"][1][0] == 2
    assert [k for k in d1 if d1[k] != d2[k]] == []
    # rank 0 alone prints (one header, one summary) and writes the log; one progress bar
    for r in (r1, r2):
        assert sum("gaugeflow hmc:" in l for l in r.stdout.splitlines()) == 1, r.stdout
        assert sum("ensemble.h5:" in l for l in r.stdout.splitlines()) == 1, r.stdout
    assert "2 rank(s), grid (1, 1, 1, 2)" in r2.stdout
    bar_start = re.compile(r"^HMC: +0%\|.*\| 0/3 \[", re.M)         # the bar's first line, once per bar
    assert len(bar_start.findall(r2.stderr)) == len(bar_start.findall(r1.stderr)) == 1, r2.stderr
    log = (tmp_path / "p" / "gaugeflow.log").read_text().splitlines()
    assert sum("gaugeflow hmc:" in l for l in log) == 1 and sum("ensemble.h5:" in l for l in log) == 1


RAISE_ON_ROOT_IN_A_JOB = """
import sys
from run.cli import main
import run.jobs.hmc as job

def failing(ctx, *a, **k):
    ctx.say("starting")
    if ctx.layout.rank == 0:
        raise FloatingPointError("deliberate failure on rank 0")
    ctx.layout.comm.Barrier()

job.run = failing
main(sys.argv[1:])
"""


def test_job_failing_on_rank0_aborts_and_is_logged(tmp_path):
    out = tmp_path / "o"
    r = launch(2, ["-c", RAISE_ON_ROOT_IN_A_JOB] + _hmc_args(out)[2:], tmp_path)
    assert r.returncode != 0
    assert "[rank 0] FloatingPointError: deliberate failure on rank 0" in r.stderr
    assert "aborting all 2 ranks" in r.stderr
    log = (out / "gaugeflow.log").read_text()
    assert "rank 0 failed, aborting all 2 ranks" in log and "FloatingPointError" in log
    assert r.stdout.count("starting") == 1


def test_mpirun_measure_writes_the_single_process_file(hmc_runs):
    tmp_path, _, _ = hmc_runs
    extra = ("--set", "measure.flowed=false", "--set", "measure.n_sources=1", "--set", "fermions.kappa=0.12",
             "--set", "fermions.mu=0.1")
    r2 = launch(2, ["-m", "run", "measure"] + _hmc_args(tmp_path / "p")[3:] + list(extra), tmp_path)
    assert r2.returncode == 0, r2.stderr
    r1 = launch(0, ["-m", "run", "measure"] + _hmc_args(tmp_path / "s")[3:] + list(extra), tmp_path)
    assert r1.returncode == 0, r1.stderr
    d2, n2 = _datasets(tmp_path / "p" / "measure.h5")
    d1, n1 = _datasets(tmp_path / "s" / "measure.h5")
    assert d1["C"][1] == (2, 8)          # (provenance.mpi_ranks: the store is written on rank 0 alone)
    assert sorted(d2) == sorted(d1) and [k for k in d1 if d1[k] != d2[k]] == []


def test_mpirun_evaluate_reproduces_the_single_process_flow_evaluation(tmp_path):
    """A flow trained by one process, applied under `mpirun -n 2 gaugeflow evaluate`: the
    flowed ensemble and the reweighting factors equal the single-process ones to 1e-12 (the
    flow's site sums are blocked in rank order, not bitwise)."""
    import shutil
    from lattice.io import RecordStore, EnsembleStore
    small = ("--set", "hmc.n_traj=4", "--set", "flow.masks=[\"M2\"]", "--set", "train.steps=1", "--set", "train.warmup=0",
             "--set", "train.batch_size=1", "--set", "train.holdout_every=0", "--set", "train.init=identity")
    s, p = tmp_path / "s", tmp_path / "p"
    for cmd in ("hmc", "train", "evaluate"):
        r = launch(0, ["-m", "run", cmd] + _hmc_args(s)[3:] + list(small), tmp_path)
        assert r.returncode == 0, r.stderr
    p.mkdir()
    for f in ("ensemble.h5", "flow.h5"):
        shutil.copy(s / f, p / f)
    r2 = launch(2, ["-m", "run", "evaluate"] + _hmc_args(p)[3:] + list(small), tmp_path)
    assert r2.returncode == 0, r2.stderr
    cols = ("index", "logJ", "dS", "log_w")
    with RecordStore.open(s / "evaluate.h5", "r", kind="flow-evaluation") as a, \
            RecordStore.open(p / "evaluate.h5", "r", kind="flow-evaluation") as b:
        assert len(a) == len(b) == 4
        for c in cols:
            np.testing.assert_allclose(np.asarray(b.column(c)), np.asarray(a.column(c)), rtol=1e-12, atol=1e-10)
    with EnsembleStore.open(s / "flowed.h5", "r") as a, EnsembleStore.open(p / "flowed.h5", "r") as b:
        for i in range(4):
            np.testing.assert_allclose(b.read(i), a.read(i), rtol=0, atol=1e-12)
