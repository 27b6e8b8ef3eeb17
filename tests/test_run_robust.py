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


def cli(capsys, *args):
    """(exit status, stdout, stderr) of `gaugeflow *args` run in this process."""
    rc = main([str(a) for a in args])
    o, e = capsys.readouterr()
    return rc, o, e


def one_error_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("gaugeflow: "), err
    assert "Traceback" not in err
    return lines[0]


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
    ("train.steps=0", "train.steps", "integer >= 1"),
    ("train.holdout=1.5", "train.holdout", "fraction in (0, 1)"),
    ("train.holdout=0.0", "train.holdout", "fraction in (0, 1)"),
    ("train.clip=0", "train.clip", "> 0"),
    ("train.schedule=\"step\"", "train.schedule", "'cosine'"),
    ("train.shape=[4,4,4,1]", "train.shape", "extents from 2"),
    ("evaluate.n_shots=0", "evaluate.n_shots", "integer >= 1"),
    ("measure.n_sources=0", "measure.n_sources", "integer >= 1"),
    ("analyze.bin_size=0", "analyze.bin_size", "integer >= 1"),
    ("analyze.t_max=3", "analyze.t_max", "at most T/2 = 2"),
    ("analyze.t_min=[2]", "analyze.t_min", "below analyze.t_max = 2"),
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
    ("train", ["lattice.shape=[4,4,4,5]", "analyze.t_min=[1]"], "lattice.shape", "masks are checkerboards"),
    ("train", ["train.shape=[4,4,4,3]"], "train.shape", "masks are checkerboards"),
    ("evaluate", ["lattice.shape=[4,4,6,5]"], "lattice.shape", "masks are checkerboards"),
    ("evaluate", ["fermions.enabled=true", "lattice.shape=[2,4,4,4]"], "lattice.shape", "L_0 >= 4"),
    ("import", ["lattice.N=2"], "lattice.N", "ILDG files hold SU(3) fields on 4d lattices"),
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
    cfg = load_config(str(tiny(tmp_path)), ["lattice.shape=[3,3,3,5]", "analyze.t_min=[1]"], command="hmc")
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
    sets = ["--set", "fermions.enabled=true"] if command == "evaluate" else []
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
    rc, _, err = cli(capsys, "measure", tiny(tmp_path, out), "--set", "fermions.cg_maxiter=1", "--debug")
    assert rc == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("gaugeflow: error: CGNotConverged")


def test_a_bug_still_shows_its_traceback(made, tmp_path, capsys, monkeypatch):
    import run.jobs.measure as job

    def broken(ctx):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(job, "run", broken)
    with pytest.raises(ZeroDivisionError):
        main(["measure", str(tiny(tmp_path))])
    # ... and the lock of the output directory was released on the way out
    assert not (tmp_path / "out" / ".gaugeflow.lock").exists()
