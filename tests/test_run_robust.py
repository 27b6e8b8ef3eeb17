"""Robustness of the command line (issue 15): every bad input is stopped before work starts
with one line naming the key or file and what is allowed; user errors never show a
traceback (it goes to gaugeflow.log, or to the screen with --debug); a failed or refused run
leaves nothing that blocks its corrected rerun; no committed data is lost.

Most cases run `run.cli.main` in-process (fast); the few that need a real process boundary
(exit status of `python -m run`, a second concurrent job) start a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from run.cli import main
from cli_testing import cli, one_error_line

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[job]
output = "{out}"
seed = 1
progress = false
[lattice]
shape = [4, 4, 4, 4]
[action]
beta = 5.7
[hmc]
n_traj = 4
n_therm = 1
n_steps = 3
[flow]
n_layers = 1
staple_layers = 1
staple_width = 2
context_channels = 2
spline_bins = 2
[train]
lam2 = 0.02
base = "ensemble"
steps = 1
batch_size = 1
holdout_every = 0
[fermions]
kappa = 0.12
mu = 0.1
[measure]
n_sources = 1
[evaluate]
n_shots = 1
[analyze]
t_min = [1]
t_max = 2
"""


def tiny(tmp_path: Path, out: Path | None = None, extra: str = "") -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(TINY.format(out=out or tmp_path / "out") + extra)
    return p


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def gaugeflow(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "run", *map(str, args)], capture_output=True, text=True,
                          env=env(), cwd=ROOT, timeout=timeout, **kw)


def ensemble_fields(path):
    from lattice.io import EnsembleStore
    with EnsembleStore.open(path, "r") as e:
        return np.stack([e.read(i) for i in range(len(e))])


# ------------------------------------------------------------------ 1. validation before work
BAD_VALUES = [
    # (override, key named in the message, what is allowed)
    ("hmc.n_steps=-1", "hmc.n_steps", "integer >= 1"),
    ("hmc.n_steps=0", "hmc.n_steps", "integer >= 1"),
    ("hmc.tau=0", "hmc.tau", "> 0"),
    ("hmc.tau=nan", "hmc.tau", "finite"),
    ("hmc.n_traj=0", "hmc.n_traj", "integer >= 1"),
    ("hmc.n_traj=-5", "hmc.n_traj", "integer >= 1"),
    ("hmc.save_every=0", "hmc.save_every", "integer >= 1"),
    ("hmc.n_therm=-1", "hmc.n_therm", "integer >= 0"),
    ("hmc.n_steps_gauge=0", "hmc.n_steps_gauge", "integer >= 1"),
    ("hmc.lam=nan", "hmc.lam", "finite"),
    ("hmc.integrator=\"euler\"", "hmc.integrator", "'omelyan', 'leapfrog'"),
    ("hmc.start=\"warm\"", "hmc.start", "'hot', 'cold'"),
    ("lattice.N=0", "lattice.N", "from 2 to 16"),
    ("lattice.N=-2", "lattice.N", "from 2 to 16"),
    ("lattice.shape=[4,4,0,4]", "lattice.shape", "extents from 2"),
    ("job.seed=-1", "job.seed", "[0, 2^63)"),
    ("job.output=\"\"", "job.output", "non-empty"),
    ("job.backend=\"torch\"", "job.backend", "'numpy', 'cupy'"),
    ("action.beta=nan", "action.beta", "finite"),
    ("action.beta=-1.0", "action.beta", "> 0"),
    ("fermions.kappa=0.3", "fermions.kappa", "(0, 0.25)"),
    ("fermions.mu=inf", "fermions.mu", "finite"),
    ("fermions.cg_tol=-1", "fermions.cg_tol", "(0, 1)"),
    ("fermions.cg_maxiter=0", "fermions.cg_maxiter", "integer >= 1"),
    ("fermions.bc_time=\"weird\"", "fermions.bc_time", "'antiperiodic', 'periodic'"),
    ("flow.n_layers=0", "flow.n_layers", "integer >= 1"),
    ("flow.spline_bins=0", "flow.spline_bins", "from 1 to 999"),
    ("flow.context_kernel=2", "flow.context_kernel", "odd integer"),
    ("flow.schedule=\"fancy\"", "flow.schedule", "'simple', 'paper'"),
    ("train.batch_size=0", "train.batch_size", "integer >= 1"),
    ("train.lr=-1", "train.lr", "> 0"),
    ("train.steps=0", "train.steps", "trains nothing"),
    ("train.steps=-1", "train.steps", "integer >= 0"),
    ("train.holdout=1.5", "train.holdout", "fraction in (0, 1)"),
    ("train.holdout=0.0", "train.holdout", "fraction in (0, 1)"),
    ("train.clip=0", "train.clip", "> 0"),
    ("train.schedule=\"step\"", "train.schedule", "'cosine'"),
    ("train.shape=[4,4,4,1]", "train.shape", "extents from 2"),
    ("evaluate.n_shots=0", "evaluate.n_shots", "integer >= 1"),
    ("measure.n_sources=0", "measure.n_sources", "integer >= 1"),
    ("analyze.bin_size=0", "analyze.bin_size", "integer >= 1"),
    ("cost.c_gen=-1", "cost.c_gen", ">= 0"),
]


@pytest.mark.parametrize("override,key,allowed", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_value_is_one_configuration_error_and_nothing_is_written(tmp_path, capsys, override, key, allowed):
    cfg = tiny(tmp_path)
    rc, out, err = cli(capsys, "hmc", cfg, "--set", override)
    line = one_error_line(err)
    assert rc == 2 and "configuration error" in line and key in line and allowed in line, line
    value = override.split("=", 1)[1].strip('"')
    assert value.replace(" ", "") in line.replace(" ", ""), line     # the offending value is named too
    assert not (tmp_path / "out").exists()                 # nothing created: the rerun starts clean


STAGE_CHECKS = [
    # (command, overrides, key, text): cross-checks of the lattice a stage needs
    ("hmc", ["fermions.enabled=true", "lattice.shape=[4,4,4,5]"], "lattice.shape", "even extents"),
    ("hmc", ["fermions.enabled=true", "lattice.shape=[2,4,4,4]"], "lattice.shape", "L_0 >= 4"),
    ("measure", ["lattice.shape=[4,4,4,5]"], "lattice.shape", "valence quarks of `measure`"),
    ("measure", ["lattice.shape=[4,4,8]"], "lattice.shape", "need a 4d lattice"),
    ("train", ["lattice.shape=[4,4,4,5]"], "lattice.shape", "masks are checkerboards"),
    ("train", ["train.shape=[4,4,4,3]"], "train.shape", "masks are checkerboards"),
    ("evaluate", ["lattice.shape=[4,4,6,5]"], "lattice.shape", "masks are checkerboards"),
    ("evaluate", ["fermions.enabled=true", "lattice.shape=[2,4,4,4]"], "lattice.shape", "L_0 >= 4"),
    ("import", ["lattice.N=2"], "lattice.N", "ILDG files hold SU(3) fields on 4d lattices"),
    ("analyze", ["analyze.t_max=3"], "analyze.t_max", "at most T/2 = 2"),
    ("analyze", ["analyze.t_min=[2]"], "analyze.t_min", "below analyze.t_max = 2"),
    ("demo", ["analyze.t_min=[1,2]"], "analyze.t_min", "below analyze.t_max = 2"),
]


@pytest.mark.parametrize("command,sets,key,text", STAGE_CHECKS, ids=[f"{c}-{'-'.join(s)}" for c, s, _, _ in STAGE_CHECKS])
def test_lattice_cross_checks_of_each_stage_before_it_starts(tmp_path, capsys, command, sets, key, text):
    cfg = tiny(tmp_path)
    args = [command, cfg] + [a for s in sets for a in ("--set", s)] + (["x.lime"] if command == "import" else [])
    rc, out, err = cli(capsys, *args)
    line = one_error_line(err)
    assert rc == 2 and key in line and text in line, line
    assert not (tmp_path / "out").exists()


def test_pure_gauge_hmc_on_an_odd_lattice_is_still_allowed(tmp_path, capsys):
    from run.config import load_config
    cfg = load_config(str(tiny(tmp_path)), ["lattice.shape=[3,3,3,5]", "analyze.t_max=4"], command="hmc")
    assert cfg["lattice"]["shape"] == [3, 3, 3, 5]


def test_a_directory_or_a_missing_file_as_config(tmp_path, capsys):
    rc, _, err = cli(capsys, "hmc", tmp_path)
    line = one_error_line(err)
    assert rc == 2 and "is a directory" in line and str(tmp_path) in line
    rc, _, err = cli(capsys, "hmc", tmp_path / "nothere.toml")
    assert rc == 2 and "not found" in one_error_line(err)


def test_a_config_file_without_the_toml_suffix_is_read(tmp_path, capsys):
    cfg = tiny(tmp_path)
    other = cfg.rename(tmp_path / "job.cfg")
    rc, _, err = cli(capsys, "hmc", other, "--set", "hmc.n_traj=0")      # read, then refused for its value
    assert rc == 2 and "hmc.n_traj" in one_error_line(err)
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00garbage")
    rc, _, err = cli(capsys, "hmc", tmp_path / "bin.toml")
    assert rc == 2 and "bin.toml" in one_error_line(err)


def test_options_after_the_files_of_import(tmp_path, capsys):
    cfg = tiny(tmp_path)
    rc, _, err = cli(capsys, "import", cfg, tmp_path / "a.lime", tmp_path / "b.lime", "--set", "lattice.N=2")
    assert rc == 2 and "lattice.N" in one_error_line(err)           # parsed: the option reached the config


# ------------------------------------------------------------------ shared tiny workflow
@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 4-configuration 4^4 ensemble and a one-layer flow trained for one step on it."""
    d = tmp_path_factory.mktemp("made")
    cfg = tiny(d, d / "out")
    for c in ("hmc", "train"):
        r = gaugeflow(c, cfg)
        assert r.returncode == 0, r.stderr
    return d / "out"


def copy_inputs(src: Path, dst: Path, names=("ensemble.h5", "flow.h5")):
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        (dst / n).write_bytes((src / n).read_bytes())


@pytest.mark.parametrize("command", ["evaluate", "measure"])
def test_every_stage_reads_cg_maxiter(made, tmp_path, capsys, command):
    """fermions.cg_maxiter reaches the solves of evaluate (determinant ratios) and measure
    (pion propagators): a limit too small to converge is a one-line CGNotConverged; the
    traceback is in the log; the corrected rerun is not blocked by what the failed run left."""
    out = tmp_path / "out"
    copy_inputs(made, out)
    cfg = tiny(tmp_path, out)
    sets = ["--set", "fermions.enabled=true"] if command == "evaluate" else ["--set", "measure.flowed=false"]
    rc, _, err = cli(capsys, command, cfg, *sets, "--set", "fermions.cg_maxiter=2")
    line = one_error_line(err)
    assert rc == 2 and "CGNotConverged" in line and "maxiter 2" in line and "fermions.cg_maxiter" in line, line
    log = (out / "gaugeflow.log").read_text()
    assert "Traceback" in log and "CGNotConverged" in log
    rc, _, err = cli(capsys, command, cfg, *sets)
    assert rc == 0, err
    assert len(ensemble_fields(out / "ensemble.h5")) == 4


def test_debug_shows_the_traceback(made, tmp_path, capsys):
    out = tmp_path / "out"
    copy_inputs(made, out)
    rc, _, err = cli(capsys, "measure", tiny(tmp_path, out), "--set", "fermions.cg_maxiter=1", "--set",
                     "measure.flowed=false", "--debug")
    assert rc == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("gaugeflow: error: CGNotConverged")


def test_a_bug_still_shows_its_traceback(made, tmp_path, capsys, monkeypatch):
    import run.jobs.measure as job

    def broken(ctx):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(job, "run", broken)
    copy_inputs(made, tmp_path / "out", ("ensemble.h5",))
    with pytest.raises(ZeroDivisionError):
        main(["measure", str(tiny(tmp_path)), "--set", "measure.flowed=false"])
    # ... and the lock of the output directory was released on the way out
    assert not (tmp_path / "out" / ".gaugeflow.lock").exists()


# ------------------------------------------------------------------ 2./4. no data lost
def _lock_text(out: Path) -> str:
    p = out / ".gaugeflow.lock"
    return p.read_text() if p.exists() else ""


def test_second_job_on_the_same_directory_refuses_and_the_first_completes(tmp_path):
    import json
    import time
    out = tmp_path / "out"
    cfg = tiny(tmp_path, out)
    first = subprocess.Popen([sys.executable, "-m", "run", "hmc", str(cfg), "--set", "hmc.n_traj=12"],
                             env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while '"pid"' not in _lock_text(out):
            assert first.poll() is None and time.time() - t0 < 60, "the first job did not start"
            time.sleep(0.02)
        holder = json.loads(_lock_text(out))
        second = gaugeflow("hmc", cfg, "--set", "hmc.n_traj=12", "--set", "hmc.n_steps=4")
        o1, e1 = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stderr
    line = one_error_line(second.stderr)
    assert "LockedError" in line and f"pid {first.pid}" in line and holder["host"] in line and str(out) in line, line
    assert first.returncode == 0, e1
    from lattice.io import EnsembleStore
    with EnsembleStore.open(out / "ensemble.h5", "r") as e:
        assert len(e) == 12 and e.meta["n_steps"] == 3
        assert len(e.sessions) == 1                        # one job appended
    assert not (out / ".gaugeflow.lock").exists()        # released at the end


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    import json
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".gaugeflow.lock").write_text(json.dumps({"pid": dead.pid, "host": "somewhere", "command": "hmc"}))
    rc, _, err = cli(capsys, "hmc", tiny(tmp_path, out), "--set", "hmc.n_traj=1")
    assert rc == 0, err
    assert f"took over the stale lock of pid {dead.pid}" in (out / "gaugeflow.log").read_text()


def test_a_live_lock_is_refused_in_process(tmp_path, capsys):
    import socket
    from run.lock import OutputLock
    out = tmp_path / "out"
    with OutputLock(out, "train"):
        rc, _, err = cli(capsys, "hmc", tiny(tmp_path, out))
    line = one_error_line(err)
    assert rc == 2 and f"pid {os.getpid()}" in line and socket.gethostname() in line and "`gaugeflow train`" in line
    assert not (out / "ensemble.h5").exists() and not (out / "gaugeflow.log").exists()


def test_a_failed_run_leaves_nothing_that_blocks_the_corrected_rerun(tmp_path, capsys, monkeypatch):
    """A run that fails before its first record leaves an empty ensemble.h5 with its
    settings; the corrected rerun replaces it (an empty store is not a mismatch). A store
    with records still refuses other settings, and keeps them."""
    from lattice import InvalidGaugeField, hmc as hmc_mod
    out = tmp_path / "out"
    cfg = tiny(tmp_path, out)
    orig = hmc_mod.run_hmc

    def diverge(*a, **k):
        raise InvalidGaugeField("trajectory 0: link not in SU(3) (simulated divergence)")
    monkeypatch.setattr(hmc_mod, "run_hmc", diverge)
    rc, _, err = cli(capsys, "hmc", cfg, "--set", "hmc.n_steps=3")
    assert rc == 2 and "InvalidGaugeField" in one_error_line(err) and "hmc.tau" in err
    assert (out / "ensemble.h5").exists()
    monkeypatch.setattr(hmc_mod, "run_hmc", orig)
    rc, _, err = cli(capsys, "hmc", cfg, "--set", "hmc.n_steps=4", "--set", "hmc.n_traj=2")
    assert rc == 0, err
    before = ensemble_fields(out / "ensemble.h5")
    rc, _, err = cli(capsys, "hmc", cfg, "--set", "hmc.n_steps=5", "--set", "hmc.n_traj=3")
    line = one_error_line(err)
    assert rc == 2 and "MismatchError" in line and "meta.n_steps" in line and "ensemble.h5" in line
    np.testing.assert_array_equal(ensemble_fields(out / "ensemble.h5"), before)


def test_disk_full_is_an_error_and_keeps_every_committed_record(tmp_path, capsys, monkeypatch):
    """Simulated: the file system reports too little free space from the 3rd record on. The
    store checks before writing (HDF5 crashes on a failed write), so the error is one line
    and the rerun resumes the same chain."""
    import errno
    import lattice.io.store as store
    out = tmp_path / "out"
    cfg = tiny(tmp_path, out)
    real = os.statvfs
    calls = {"n": 0}

    class Full:
        def __init__(self, st):
            self.f_bavail, self.f_frsize = 10, st.f_frsize

    def statvfs(p):
        calls["n"] += 1
        return Full(real(p)) if calls["n"] > 2 else real(p)
    monkeypatch.setattr(store.os, "statvfs", statvfs)
    rc, _, err = cli(capsys, "hmc", cfg, "--set", "hmc.n_traj=4")
    line = one_error_line(err)
    assert rc == 2 and "No space left on device" in line and "ensemble.h5" in line and "free space" in line, line
    assert len(ensemble_fields(out / "ensemble.h5")) == 2
    monkeypatch.setattr(store.os, "statvfs", real)
    rc, _, err = cli(capsys, "hmc", cfg, "--set", "hmc.n_traj=4")
    assert rc == 0, err
    ref = tmp_path / "ref"
    rc, _, err = cli(capsys, "hmc", tiny(tmp_path, ref), "--set", "hmc.n_traj=4")
    np.testing.assert_array_equal(ensemble_fields(out / "ensemble.h5"), ensemble_fields(ref / "ensemble.h5"))
    assert errno.ENOSPC == 28


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs (needs root and mount in this environment; the test is skipped otherwise)."""
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip() or 'mount failed'}); the simulated "
                    f"disk-full test covers the error path")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_disk_full_on_a_real_small_file_system(tmp_path, small_fs):
    """No segmentation fault (HDF5 after a failed write): one line, exit 2, records readable."""
    out = small_fs / "out"
    r = gaugeflow("hmc", tiny(tmp_path, out), "--set", "hmc.n_traj=20")
    line = one_error_line(r.stderr)
    assert r.returncode == 2 and "No space left on device" in line, r.stderr
    n = len(ensemble_fields(out / "ensemble.h5"))
    assert 2 <= n < 20


def test_read_only_output_directory(tmp_path, small_fs):
    out = small_fs / "out"
    out.mkdir()
    r = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only: {r.stderr.strip()}")
    r = gaugeflow("hmc", tiny(tmp_path, out))
    line = one_error_line(r.stderr)
    assert r.returncode == 2 and "read-only" in line.lower() and str(out) in line, r.stderr


def test_output_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("not a directory")
    rc, _, err = cli(capsys, "hmc", tiny(tmp_path))
    line = one_error_line(err)
    assert rc == 2 and "is not a directory" in line and "out" in line


# ------------------------------------------------------------------ import: identity and precision
def _ildg_files(tmp_path, n=3, precision=64, drift=0.0):
    import lattice as L
    from lattice.io import write_ildg
    files, fields = [], []
    for i in range(n):
        U = L.random_gauge((4, 4, 4, 4), N=3, seed=10 + i)
        if drift:
            U = U * (1 + drift)
        f = tmp_path / f"conf.{i:04d}"
        write_ildg(f, U, precision=precision)
        files.append(f)
        fields.append(U)
    return files, fields


def test_import_resumes_by_file_identity_and_refuses_a_changed_list(tmp_path, capsys):
    (tmp_path / "f").mkdir()
    files, _ = _ildg_files(tmp_path / "f")
    out = tmp_path / "out"
    cfg = tiny(tmp_path, out)
    assert cli(capsys, "import", cfg, *files[:2])[0] == 0
    rc, o, err = cli(capsys, "import", cfg, *files)              # extended at the end: resumes
    assert rc == 0 and "in the store already" in o and f"imported {files[2]}" in o, err
    ref = ensemble_fields(out / "ensemble.h5")
    assert len(ref) == 3
    for bad in ([files[1], files[0], files[2]], files[:1] + files[2:]):
        rc, _, err = cli(capsys, "import", cfg, *bad)
        line = one_error_line(err)
        assert rc == 2 and "MismatchError" in line and "the list changed" in line and "conf.0001" in line, line
        assert line.count(" -- ") == 1 and line.endswith("new ones at the end), or use another job.output")  # one hint
    files[1].write_bytes(files[2].read_bytes())                   # same name, other content
    rc, _, err = cli(capsys, "import", cfg, *files)
    assert rc == 2 and "other content" in one_error_line(err)
    rc, _, err = cli(capsys, "import", cfg, tmp_path / "f")       # a directory as a file
    assert rc == 2 and "is a directory" in one_error_line(err)
    np.testing.assert_array_equal(ensemble_fields(out / "ensemble.h5"), ref)


@pytest.mark.parametrize("precision,drift", [(32, 0.0), (64, 2e-9)])
def test_import_of_single_precision_or_drifted_files_reunitarises(tmp_path, capsys, precision, drift):
    from lattice import su_n
    from lattice.io import EnsembleStore
    files, fields = _ildg_files(tmp_path, n=2, precision=precision, drift=drift)
    out = tmp_path / "out"
    rc, o, err = cli(capsys, "import", tiny(tmp_path, out), *files)
    assert rc == 0 and "reunitarised" in o, err
    with EnsembleStore.open(out / "ensemble.h5", "r") as e:
        for i in range(2):
            st = e.state(i)
            assert st["precision"] == precision and st["reunitarized"] and st["max_violation"] > 1e-10
            assert st["file"] == files[i].name and len(st["sha256"]) == 64
            U = e.read(i)
            assert float(np.max(su_n.unitarity_violation(U))) < 1e-12
            np.testing.assert_allclose(U, fields[i], atol=1e-5 if precision == 32 else 1e-8)


def test_import_of_exact_double_precision_files_is_bit_for_bit(tmp_path, capsys):
    files, fields = _ildg_files(tmp_path, n=1)
    out = tmp_path / "out"
    assert cli(capsys, "import", tiny(tmp_path, out), *files)[0] == 0
    np.testing.assert_array_equal(ensemble_fields(out / "ensemble.h5")[0], fields[0])


def test_import_refuses_a_cut_file_and_marks_one_without_checksum(tmp_path, capsys):
    """A file cut before its checksum record stops the import; a file written without one is
    imported, with state checksum = "absent" and UNVERIFIED in the log."""
    from lattice.io import EnsembleStore, lime
    files, fields = _ildg_files(tmp_path, n=2)
    last = lime.scan(files[1])[-1]
    raw = files[1].read_bytes()[:last.header_offset]
    files[1].write_bytes(raw)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "import", tiny(tmp_path, out), *files)
    line = one_error_line(err)
    assert rc == 2 and "TruncatedFileError" in line and "conf.0001" in line and "ends inside a LIME message" in line
    with open(files[1], "r+b") as f:                         # the same file as a writer without ME flags leaves it
        for r in lime.scan(files[1]):
            f.seek(r.header_offset + 6)
            f.write(bytes([0x80 if r.mb else 0]))
    from lattice.io import UnverifiedDataWarning
    with pytest.warns(UnverifiedDataWarning, match="conf.0001: no scidac-checksum"):
        rc, o, err = cli(capsys, "import", tiny(tmp_path, out), *files)
    assert rc == 0 and "UNVERIFIED" in o and o.count("UNVERIFIED") == 1, err
    with EnsembleStore.open(out / "ensemble.h5", "r") as e:
        assert [e.state(i)["checksum"] for i in range(2)] == ["verified", "absent"]
        np.testing.assert_array_equal(e.read(1), fields[1])


# ------------------------------------------------------------------ evaluate: the flow must match
def test_evaluate_refuses_a_flow_of_other_settings_in_a_fresh_directory(made, tmp_path, capsys):
    out = tmp_path / "out"
    copy_inputs(made, out)
    cfg = tiny(tmp_path, out)
    for sets, key in ((["train.lam2=0.03"], "train.lam2"), (["flow.n_layers=2"], "flow.n_layers")):
        rc, _, err = cli(capsys, "evaluate", cfg, *[a for s in sets for a in ("--set", s)])
        line = one_error_line(err)
        assert rc == 2 and "trained with other settings" in line and key in line and "flow.h5" in line, line
        assert sorted(os.listdir(out)) == ["ensemble.h5", "flow.h5"]     # refused before it wrote anything
    rc, _, err = cli(capsys, "evaluate", cfg)
    assert rc == 0, err


# ------------------------------------------------------------------ layout shapes
def test_layout_functions_refuse_arrays_of_the_wrong_shape():
    import lattice as L
    lay = L.Layout((4, 4, 4, 8))
    dens = np.zeros((3, 4, 4, 4, 8))
    with pytest.raises(L.LayoutError, match=r"\(3, 4, 4, 4, 8\).*2 inner axes.*\(4, 4, 4, 8\)"):
        lay.shift(dens, 1, +1, inner=2)
    np.testing.assert_array_equal(lay.shift(dens, 1, +1, inner=0), np.roll(dens, -1, axis=2))
    U = np.zeros((4, 4, 4, 4, 4, 3, 3))
    with pytest.raises(L.LayoutError, match=r"\(4, 4, 4, 4, 4, 3, 3\).*\(4, 4, 4, 8\)"):
        lay.shift(U, 0, inner=2)
    with pytest.raises(L.LayoutError, match="no site axis 4"):
        lay.shift(dens, 4, inner=0)
    with pytest.raises(L.LayoutError, match="does not fit"):
        lay.gather_field(U, inner=2)
    with pytest.raises(L.LayoutError, match="does not fit"):
        lay.local_part(U, inner=2)
    with pytest.raises(L.LayoutError, match="does not fit"):
        lay.sum(dens[..., :4], inner=0)


def test_a_bit_flip_in_hdf5_metadata_is_a_corrupt_file_error(made, tmp_path, capsys):
    """Formerly a raw KeyError ('incorrect metadata checksum', 'bad object header ...')."""
    from lattice.io import EnsembleStore, CorruptFileError
    src = (made / "ensemble.h5").read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    p = out / "ensemble.h5"
    for off in range(0, 4096, 3):                      # the superblock and root object header
        d = bytearray(src)
        d[off] ^= 0x10
        p.write_bytes(bytes(d))
        try:
            with EnsembleStore.open(p, "r") as e:
                e.scalars()
        except CorruptFileError as exc:
            if "HDF5 metadata are damaged" in str(exc):
                break
    else:
        pytest.skip("no metadata bit flip found that h5py reports as an h5py error")
    rc, _, err = cli(capsys, "measure", tiny(tmp_path, out))
    line = one_error_line(err)
    assert rc == 2 and "CorruptFileError" in line and "ensemble.h5" in line and "metadata are damaged" in line, line


def test_disk_full_while_train_writes_its_checkpoint(made, tmp_path, capsys, monkeypatch):
    import errno
    import flows  # noqa: F401  (flows.train is the function; the module is in sys.modules)
    ftrain = sys.modules["flows.train"]
    out = tmp_path / "out"
    copy_inputs(made, out, ("ensemble.h5",))

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(ftrain, "save_checkpoint", full)
    rc, _, err = cli(capsys, "train", tiny(tmp_path, out))
    line = one_error_line(err)
    assert rc == 2 and "No space left on device" in line and "train.ckpt.h5" in line and "free space" in line, line
    assert len(ensemble_fields(out / "ensemble.h5")) == 4


def _user_error(kind):
    import errno
    from lattice import InvalidGaugeField, LayoutError
    from fermions import CGNotConverged, EvenOddError
    return {"InvalidGaugeField": InvalidGaugeField("configuration 3: link not in SU(3)"),
            "CGNotConverged": CGNotConverged("CG did not converge after 7 iterations"),
            "EvenOddError": EvenOddError("even-odd packing needs an even local L_0"),
            "LayoutError": LayoutError("field of shape (3, 4) does not fit the lattice"),
            "IsADirectoryError": IsADirectoryError(errno.EISDIR, "Is a directory", "/some/dir"),
            "PermissionError": PermissionError(errno.EACCES, "Permission denied", "/some/file"),
            "OSError": OSError(errno.EROFS, "Read-only file system", "/ro/out/gaugeflow.log")}[kind]


@pytest.mark.parametrize("kind", ["InvalidGaugeField", "CGNotConverged", "EvenOddError", "LayoutError",
                                  "IsADirectoryError", "PermissionError", "OSError"])
def test_every_user_error_class_is_one_line_with_the_traceback_in_the_log(tmp_path, capsys, monkeypatch, kind):
    import run.jobs.hmc as job
    exc = _user_error(kind)

    def failing(ctx):
        raise exc
    monkeypatch.setattr(job, "run", failing)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "hmc", tiny(tmp_path, out))
    line = one_error_line(err)
    assert rc == 2 and line.startswith(f"gaugeflow: error: {kind}: ") and " -- " in line, line   # with a hint
    log = (out / "gaugeflow.log").read_text()
    assert "Traceback" in log and kind in log
    assert not (out / ".gaugeflow.lock").exists()


# ------------------------------------------------------------------ hmc: the CG settings of the config
def test_hmc_solves_at_the_configured_cg_tol_and_records_it(tmp_path, capsys):
    """fermions.cg_tol is what the pseudofermion CGs of hmc use (formerly the force ran at a fixed
    1e-9 and the action at min(cg_tol, 1e-10), so a loose cg_tol with a small cg_maxiter still
    failed, and the hint "loosen fermions.cg_tol" could not help); the tolerances used are in
    the session provenance of the ensemble."""
    from lattice.io import EnsembleStore
    out = tmp_path / "out"
    sets = ["fermions.enabled=true", "fermions.cg_tol=0.5", "fermions.cg_maxiter=3", "hmc.n_traj=1"]
    rc, o, err = cli(capsys, "hmc", tiny(tmp_path, out), *[a for s in sets for a in ("--set", s)])
    assert rc == 0, err
    assert "relative residual 0.5" in o
    with EnsembleStore.open(out / "ensemble.h5", "r") as e:
        assert e.meta["fermions"]["cg_tol"] == 0.5
        s = e.sessions[-1]
        assert s["cg_action_tol"] == 0.5 and s["cg_force_tol"] == 0.5 and s["cg_maxiter"] == 3


# ------------------------------------------------------------------ inputs checked before anything is written
def test_measure_refuses_without_the_flowed_ensemble_and_records_whether_it_measured_it(tmp_path, capsys):
    """measure.flowed = true (the default) without `evaluate` having run: refused in one line,
    nothing written (formerly measured U only, wrote C_flow = 0 and then refused its own rerun
    once the flowed ensemble existed). measure.h5 records the choice in its attribute `flowed`."""
    from lattice.io import RecordStore
    from run.jobs.measure import KIND
    out = tmp_path / "out"
    cfg = tiny(tmp_path, out)
    assert cli(capsys, "hmc", cfg, "--set", "hmc.n_traj=1")[0] == 0
    before = sorted(os.listdir(out))
    rc, _, err = cli(capsys, "measure", cfg)
    line = one_error_line(err)
    assert rc == 2 and f"no flowed ensemble {out / 'flowed.h5'}" in line, line
    assert "run `gaugeflow evaluate` first, or set measure.flowed=false" in line
    assert sorted(os.listdir(out)) == before                   # no measure.h5, config or log entry
    assert cli(capsys, "measure", cfg, "--set", "measure.flowed=false")[0] == 0
    with RecordStore.open(out / "measure.h5", "r", kind=KIND) as s:
        assert s.attrs["flowed"] is False
    other = tmp_path / "flowed"                                 # an ensemble standing in for evaluate's f(U)
    copy_inputs(out, other, ("ensemble.h5",))
    (other / "flowed.h5").write_bytes((out / "ensemble.h5").read_bytes())
    assert cli(capsys, "measure", tiny(tmp_path, other))[0] == 0
    with RecordStore.open(other / "measure.h5", "r", kind=KIND) as s:
        assert s.attrs["flowed"] is True
        np.testing.assert_array_equal(s.column("C_flow"), s.column("C"))


@pytest.mark.parametrize("command", ["train", "evaluate", "measure"])
def test_a_stage_without_its_ensemble_refuses_and_writes_nothing(tmp_path, capsys, command):
    """A wrong --output: train no longer runs a whole HMC of its own (without `== hmc` and
    hmc.config.toml); evaluate and measure no longer create the directory, their config and log."""
    out = tmp_path / "typo"
    rc, _, err = cli(capsys, command, tiny(tmp_path), "--output", out)
    line = one_error_line(err)
    assert rc == 2 and f"FileNotFoundError: no ensemble {out / 'ensemble.h5'}" in line and f"`{command}`" in line
    assert "run `gaugeflow hmc` (or `gaugeflow import`) with this config first, or check job.output" in line, line
    assert not out.exists()


def test_evaluate_without_a_flow_writes_nothing(made, tmp_path, capsys):
    out = tmp_path / "out"
    copy_inputs(made, out, ("ensemble.h5",))
    rc, _, err = cli(capsys, "evaluate", tiny(tmp_path, out))
    line = one_error_line(err)
    assert rc == 2 and f"no trained flow {out / 'flow.h5'}" in line and "run `gaugeflow train`" in line, line
    assert os.listdir(out) == ["ensemble.h5"]


def test_a_flow_file_that_is_not_hdf5_has_a_hint(made, tmp_path, capsys):
    out = tmp_path / "out"
    copy_inputs(made, out, ("ensemble.h5",))
    (out / "flow.h5").write_text("not HDF5")
    rc, _, err = cli(capsys, "evaluate", tiny(tmp_path, out))
    line = one_error_line(err)
    assert rc == 2 and "ParamFileError" in line and "as HDF5" in line, line
    assert line.endswith("-- restore the file from a copy, or delete it and rerun `gaugeflow train` (it writes "
                         "flow.h5, pf_flow.h5 and their checkpoints)"), line


def test_a_missing_file_has_a_hint(tmp_path, capsys, monkeypatch):
    """FileNotFoundError: also where a stage finds no input of its own (e.g. analyze's)."""
    import run.jobs.hmc as job

    def failing(ctx):
        raise FileNotFoundError(f"{tmp_path / 'e2' / 'ensemble.h5'} does not exist")
    monkeypatch.setattr(job, "run", failing)
    rc, _, err = cli(capsys, "hmc", tiny(tmp_path))
    line = one_error_line(err)
    assert rc == 2 and "e2/ensemble.h5 does not exist -- check the path and job.output (--output)" in line, line


def test_train_needs_the_ensemble_only_with_an_ensemble_base(tmp_path, capsys):
    """train.base = "haar" reads no ensemble (the held-out ESS is on Haar samples; linear-response
    and the pseudofermion flow need train.base = "ensemble"): it runs in an empty directory."""
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "train", tiny(tmp_path, out), "--set", 'train.base="haar"', "--set", "train.holdout_every=1")
    assert rc == 0, err
    assert (out / "flow.h5").exists() and not (out / "ensemble.h5").exists()


def test_demo_still_runs_hmc_before_train(tmp_path, capsys, monkeypatch):
    import run.jobs.demo as demo
    for stage in (demo.evaluate, demo.measure, demo.analyze):        # the stages after train: not needed here
        monkeypatch.setattr(stage, "run", lambda ctx: None)
    out = tmp_path / "out"
    rc, o, err = cli(capsys, "demo", tiny(tmp_path, out))
    assert rc == 0, err
    assert "== hmc" in o and "== train" in o and (out / "ensemble.h5").exists() and (out / "flow.h5").exists()


# ------------------------------------------------------------------ import: its arguments
def test_import_needs_a_config_and_files(tmp_path, capsys, monkeypatch):
    """Formerly `import my.toml` read my.toml as an ILDG file (bad LIME magic number), and
    `import conf.0000` imported it with the bundled demo config (Wilson beta = 5.7, into out/demo)."""
    monkeypatch.chdir(tmp_path)
    files, _ = _ildg_files(tmp_path, n=2)
    cfg = tiny(tmp_path)
    for args, text in (([cfg], f"no ILDG files given after the config '{cfg}'"),
                       (["demo"], "no ILDG files given after the config 'demo'"),
                       ([files[0]], f"no config given: the first argument '{files[0]}' is neither a TOML file nor a "
                                    f"bundled config name"),
                       (files, f"no config given: the first argument '{files[0]}' is neither"),
                       ([], "import needs a config and at least one ILDG file")):
        rc, _, err = cli(capsys, "import", *args)
        line = one_error_line(err)
        assert rc == 2 and f"UsageError: {text}" in line and "gaugeflow import CONFIG FILE..." in line, line
    assert sorted(os.listdir(tmp_path)) == ["conf.0000", "conf.0001", "tiny.toml"]     # nothing written


def test_import_of_another_lattice_says_to_set_lattice_shape(tmp_path, capsys):
    files, _ = _ildg_files(tmp_path, n=2)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "import", tiny(tmp_path, out), *files, "--set", "lattice.shape=[4,4,4,8]")
    line = one_error_line(err)
    assert rc == 2 and "MismatchError" in line and "conf.0000 holds a 4x4x4x4 lattice" in line, line
    assert line.count(" -- ") == 1 and "set lattice.shape = [4, 4, 4, 4]" in line and "job.output" not in line
    assert not out.exists()


# ------------------------------------------------------------------ interrupts: Ctrl-C, SIGTERM
def test_an_interrupt_ends_the_job_with_one_line_and_its_cleanup(tmp_path, capsys, monkeypatch):
    """What the signal handlers raise (run.parallel.Interrupted) ends the job like an error does:
    the lock is released, one line on stderr and in the log, exit status 128 + signal."""
    import signal
    import run.jobs.hmc as job
    from run.parallel import Interrupted

    def interrupted(ctx):
        raise Interrupted(signal.SIGTERM)
    monkeypatch.setattr(job, "run", interrupted)
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "hmc", tiny(tmp_path, out))
    line = one_error_line(err)
    assert rc == 143 and line.startswith("gaugeflow: hmc interrupted by SIGTERM after ") and \
        line.endswith("s; rerun the same command to resume"), line
    assert "WARNING " + line in (out / "gaugeflow.log").read_text()
    assert not (out / ".gaugeflow.lock").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL          # the handlers are restored


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_real_signal_ends_the_job_cleanly_and_the_rerun_resumes(tmp_path, sig, code):
    """Ctrl-C formerly printed a 30-line KeyboardInterrupt traceback; SIGTERM (scancel, wall-time
    limits) left nothing in gaugeflow.log."""
    import signal
    import time
    from lattice.io import EnsembleStore
    out = tmp_path / "out"
    cfg = tiny(tmp_path, out)
    p = subprocess.Popen([sys.executable, "-m", "run", "hmc", str(cfg), "--set", "hmc.n_traj=500"], env=env(),
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.time()
        while '"pid"' not in _lock_text(out):
            assert p.poll() is None and time.time() - t0 < 60, "the job did not start"
            time.sleep(0.02)
        time.sleep(3)                                  # a few trajectories stored
        p.send_signal(getattr(signal, sig))
        o, e = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    line = one_error_line(e)
    assert p.returncode == code and f"gaugeflow: hmc interrupted by {sig} after " in line, e
    assert line in (out / "gaugeflow.log").read_text()
    assert sorted(os.listdir(out)) == ["ensemble.h5", "gaugeflow.log", "hmc.config.toml"]   # no lock, no temp file
    with EnsembleStore.open(out / "ensemble.h5", "r") as ens:
        n = len(ens)
    assert 0 < n < 500
    rc = main(["hmc", str(cfg), "--set", f"hmc.n_traj={n + 1}"])
    assert rc == 0 and len(ensemble_fields(out / "ensemble.h5")) == n + 1
    assert f"resuming ensemble.h5: {n} configurations stored" in (out / "gaugeflow.log").read_text()


# ------------------------------------------------------------------ progress in batch logs
def test_progress_in_a_batch_log_is_a_few_plain_lines(tmp_path, capsys, monkeypatch):
    """job.progress = true with stderr not a terminal (a SLURM log): formerly one \\r frame per
    trajectory; now plain lines, at most one a minute plus the first and the last."""
    monkeypatch.delenv("GAUGEFLOW_PROGRESS_INTERVAL", raising=False)
    rc, _, err = cli(capsys, "hmc", tiny(tmp_path), "--set", "job.progress=true", "--set", "hmc.n_traj=30")
    assert rc == 0, err
    lines = [l for l in err.splitlines() if l.startswith("HMC:")]
    assert "\r" not in err and 2 <= len(lines) <= 3 and "31/31" in lines[-1], err


# ------------------------------------------------------------------ flow files: permissions, provenance
def test_flow_files_follow_the_umask_and_record_their_provenance(made):
    """flow.h5 and train.ckpt.h5 of `gaugeflow train` (formerly 0600, and without provenance)."""
    import flows
    from lattice.io import CONVENTIONS_VERSION, EnsembleStore
    umask = os.umask(0)
    os.umask(umask)
    for name in ("flow.h5", "train.ckpt.h5"):
        assert (made / name).stat().st_mode & 0o777 == (made / "ensemble.h5").stat().st_mode & 0o777 \
            == 0o666 & ~umask, name
        prov = flows.read_file_provenance(made / name)
        assert prov["conventions_version"] == CONVENTIONS_VERSION and prov["mpi_ranks"] == 1, name
        assert " train " in prov["command"] and prov["time_utc"] and "git_commit" in prov, name
    with EnsembleStore.open(made / "ensemble.h5", "r") as e:
        assert set(e.provenance) <= set(prov)            # the same record as the other outputs
