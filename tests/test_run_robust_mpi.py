"""MPI faults (issue 15): an exception on one rank only, in each stage that writes files, ends
every rank of ``mpiexec -n 2 gaugeflow ...`` within a timeout, with a non-zero exit status,
the traceback in gaugeflow.log, and the records committed before it intact. (Before: the
failing rank, unwinding through ``with EnsembleStore(...)``, waited in ``close()`` for a
broadcast that the other rank, busy in the next trajectory's halo exchange, never joined.)
A user error raised on one rank only (a file-system error on rank 0) is reported in one line
and also aborts every rank."""

import pytest

pytest.importorskip("mpi4py")
pytest.importorskip("h5py")

from mpi_launching import LAUNCH_MARKS, launch  # noqa: E402

pytestmark = LAUNCH_MARKS

from test_run_robust import TINY  # noqa: E402


# Runs `gaugeflow STAGE CONFIG` with one function made to fail on one rank only.
FAIL_ON_ONE_RANK = """
import errno, sys
from run.cli import main
from run.parallel import world
how, stage = sys.argv[1], sys.argv[2]
rank = world().Get_rank()

def boom():
    raise RuntimeError(f"deliberate failure on rank 1 in {stage}")

import lattice.io.ensemble as ens
if how == "bug" and stage == "hmc":                  # after the 2nd stored configuration
    orig = ens.EnsembleStore.append
    def append(self, *a, **k):
        i = orig(self, *a, **k)
        if rank == 1 and i >= 1:
            boom()
        return i
    ens.EnsembleStore.append = append
elif how == "bug" and stage in ("evaluate", "measure"):   # reading the 2nd configuration
    orig = ens.EnsembleStore.read
    def read(self, i, **k):
        U = orig(self, i, **k)
        if rank == 1 and i >= 1:
            boom()
        return U
    ens.EnsembleStore.read = read
elif how == "bug" and stage == "train":
    import flows
    orig = flows.train
    def train(*a, **k):
        if rank == 1:
            boom()
        return orig(*a, **k)
    flows.train = train
elif how == "nospace":                            # a file-system error on rank 0 alone
    import run.context as c
    def record_timing(self, *a, **k):
        if rank == 0:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path("timings.json")))
    c.JobContext.record_timing = record_timing
sys.exit(main(sys.argv[2:]))
"""


def _open_when_released(path, wait=20.0):
    """Open the ensemble for reading once the aborted ranks have released its HDF5 file lock
    (the launcher may return while the killed processes are still being reaped)."""
    import time
    from lattice.io import EnsembleStore
    t0 = time.time()
    while True:
        try:
            return EnsembleStore.open(path, "r")
        except OSError as e:
            if "open by another process" not in str(e) or time.time() - t0 > wait:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """An ensemble (4 configurations) and a flow, by one process."""
    d = tmp_path_factory.mktemp("mpi_made")
    cfg = d / "tiny.toml"
    cfg.write_text(TINY.format(out=d / "out"))
    for c in ("hmc", "train"):
        r = launch(0, ["-m", "run", c, cfg], d)
        assert r.returncode == 0, r.stderr
    return d / "out"


@pytest.mark.parametrize("stage", ["hmc", "train", "evaluate", "measure"])
def test_exception_on_one_rank_aborts_every_rank(made, tmp_path, stage):
    out = tmp_path / "out"
    out.mkdir()
    if stage != "hmc":
        for f in ("ensemble.h5",) + (("flow.h5",) if stage != "train" else ()):
            (out / f).write_bytes((made / f).read_bytes())
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(out=out))
    sets = ["--set", "measure.flowed=false"] if stage == "measure" else []      # no flowed ensemble here
    r = launch(2, ["-c", FAIL_ON_ONE_RANK, "bug", stage, cfg, *sets], tmp_path)
    assert r.returncode != 0
    assert f"[rank 1] RuntimeError: deliberate failure on rank 1 in {stage}" in r.stderr, r.stderr
    log = (out / "gaugeflow.log").read_text()
    assert "rank 1 failed, aborting all 2 ranks" in log and "Traceback" in log and "deliberate failure" in log
    with _open_when_released(out / "ensemble.h5") as e:         # committed records intact
        assert len(e) == (2 if stage == "hmc" else 4)
        for i in range(len(e)):
            e.read(i)


def test_user_error_on_one_rank_is_one_line_and_aborts_every_rank(made, tmp_path):
    out = tmp_path / "out"
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(out=out))
    r = launch(2, ["-c", FAIL_ON_ONE_RANK, "nospace", "hmc", cfg], tmp_path)
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if "gaugeflow: error:" in l]
    assert len(lines) == 1 and lines[0].startswith("[rank 0] gaugeflow: error: OSError") and "timings.json" in lines[0] \
        and "free space" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert "No space left on device" in (out / "gaugeflow.log").read_text()
    with _open_when_released(out / "ensemble.h5") as e:
        assert len(e) == 4


def test_odd_local_extents_of_a_flow_are_a_configuration_error_before_work(tmp_path):
    """4^3 x 6 is even, but over 2 ranks the time blocks are 3 sites: the flow's checkerboard
    masks cannot be built. Refused on every rank before anything is written."""
    out = tmp_path / "out"
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(out=out))
    r = launch(2, ["-m", "run", "train", cfg, "--set", "lattice.shape=[4,4,4,6]", "--set", "analyze.t_max=3"], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if "configuration error" in l]
    assert len(lines) == 2 and all("lattice.shape" in l and "even local extents" in l for l in lines), r.stderr
    assert not out.exists()


def test_sigterm_ends_every_rank_with_one_line(tmp_path):
    """scancel / a wall-time limit: every rank gets SIGTERM; rank 0 reports once (stderr and
    log) after the cleanup and ends all ranks; exit status 143; the store is intact.

    If the signal reaches rank 1 first while rank 0 waits for it in a collective call (MPI
    does not return to Python there, so rank 0 never sees its own signal), rank 1 reports
    instead after INTERRUPT_GRACE and aborts the job (run/cli.py::_interrupted): still one
    line and one log record; rank 0's lock file is then left behind, but not held, and the
    rerun that the line asks for takes it over. Both outcomes occur on a loaded machine."""
    import re
    from run.lock import LockedError, OutputLock
    import signal
    import subprocess
    import sys
    import time
    from mpi_launching import MPIEXEC, launch_env
    out = tmp_path / "out"
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY.format(out=out))
    p = subprocess.Popen([str(MPIEXEC), "-n", "2", sys.executable, "-m", "run", "hmc", str(cfg), "--set",
                          "hmc.n_traj=500", "--set", "lattice.shape=[4,4,4,8]"], cwd=tmp_path, env=launch_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while not (out / ".gaugeflow.lock").exists() or '"pid"' not in (out / ".gaugeflow.lock").read_text():
            assert p.poll() is None and time.time() - t0 < 60, "the job did not start"
            time.sleep(0.05)
        time.sleep(3)
        p.send_signal(signal.SIGTERM)
        o, e = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, e
    lines = [l for l in e.splitlines() if "interrupted by" in l]
    assert len(lines) == 1, e
    by_rank0 = lines[0].startswith("gaugeflow: hmc interrupted by SIGTERM after ")
    by_other = re.fullmatch(r"\[rank 1\] gaugeflow: hmc interrupted by SIGTERM after .*; rerun the same command "
                            r"to resume \(rank 0 did not end the job\)", lines[0])
    assert by_rank0 or by_other, e
    assert "Traceback" not in e
    assert (out / "gaugeflow.log").read_text().count("interrupted by SIGTERM") == 1
    if by_rank0:
        assert not (out / ".gaugeflow.lock").exists()
    else:
        t0 = time.time()
        while True:                                       # what the rerun does, once rank 0 is reaped
            try:
                lock = OutputLock(out, "hmc").acquire()
                break
            except LockedError:
                assert time.time() - t0 < 20, "the aborted rank 0 still holds the output lock"
                time.sleep(0.2)
        assert lock.took_over is not None
        lock.release()
    with _open_when_released(out / "ensemble.h5") as ens:
        assert 0 < len(ens) < 500
        ens.read(len(ens) - 1)
