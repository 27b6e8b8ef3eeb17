"""The runner end to end (issue 8): the toy workflow through the command line on a tiny
lattice, reproducibility from the seed, resuming after SIGKILL, clear errors for bad
configs and mismatched files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from lattice.io import RecordStore, EnsembleStore

ROOT = Path(__file__).resolve().parents[1]

TINY = """
[job]
name = "tiny"
output = "{out}"
seed = {seed}
progress = false
[lattice]
shape = [4, 4, 4, 4]
[action]
type = "wilson"
beta = 5.7
[hmc]
n_traj = {n_traj}
n_therm = 4
n_steps = 5
[flow]
loops = "learned"
n_layers = 2
schedule = "simple"
context_channels = 2
spline_bins = 4
[train]
lam1 = 0.0
lam2 = 0.02
base = "ensemble"
steps = {steps}
batch_size = 2
lr = 1e-4
holdout = 0.25
holdout_every = 2
checkpoint_every = 1
[fermions]
kappa = 0.13
mu = 0.01
[measure]
n_sources = 1
[analyze]
t_min = [1]
t_max = 2
"""


def write_config(path: Path, out: Path, seed: int = 3, n_traj: int = 10, steps: int = 3, extra: str = "") -> Path:
    path.write_text(TINY.format(out=out, seed=seed, n_traj=n_traj, steps=steps) + extra)
    return path


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def gaugeflow(*args, check=True, timeout=600):
    r = subprocess.run([sys.executable, "-m", "run", *map(str, args)], capture_output=True, text=True,
                       env=env(), cwd=ROOT, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"gaugeflow {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def columns(path, kind, names):
    with RecordStore.open(path, "r", kind=kind) as s:
        return {n: np.asarray(s.column(n)) for n in names}


def ensemble_fields(path):
    with EnsembleStore.open(path, "r") as e:
        return np.stack([e.read(i) for i in range(len(e))])


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """hmc -> train -> evaluate -> measure -> analyze on 4^4, run twice with the same seed."""
    runs = []
    for k in range(2):
        d = tmp_path_factory.mktemp(f"wf{k}")
        cfg = write_config(d / "tiny.toml", d / "out")
        logs = {c: gaugeflow(c, cfg).stdout for c in ("hmc", "train", "evaluate", "measure", "analyze")}
        runs.append((d / "out", logs))
    return runs


def test_workflow_outputs_exist_and_are_consistent(workflow):
    out, logs = workflow[0]
    for f in ("ensemble.h5", "flow.h5", "train.ckpt.h5", "training.png", "flowed.h5", "evaluate.h5",
              "measure.h5", "results.json", "x_g_vs_tmin.png", "effective_mass.png", "gaugeflow.log",
              "timings.json"):
        assert (out / f).is_file(), f"{f} missing"
    ev = columns(out / "evaluate.h5", "flow-evaluation", ["index", "logJ", "dS", "log_det_W", "log_w"])
    me = columns(out / "measure.h5", "pion-measurements", ["index", "C", "C_flow", "O", "O_flow"])
    with RecordStore.open(out / "measure.h5", "r", kind="pion-measurements") as s:
        assert s.attrs["flowed"] is True                       # C_flow, O_flow are measurements on f(U)
    n = 10
    assert np.array_equal(ev["index"], np.arange(n)) and np.array_equal(me["index"], np.arange(n))
    # log w = -(S_lam2(f(U)) - S_lam1(U)) + log J (+ 0: quenched)
    np.testing.assert_array_equal(ev["log_det_W"], 0.0)
    np.testing.assert_allclose(ev["log_w"], -ev["dS"] + ev["logJ"], rtol=0, atol=1e-12)
    # the flowed ensemble is what evaluate recorded: recompute dS from the stored fields
    from lattice.actions import Wilson
    U, V = ensemble_fields(out / "ensemble.h5"), ensemble_fields(out / "flowed.h5")
    dS = Wilson(5.7, lam=0.02).action(V) - Wilson(5.7).action(U)
    np.testing.assert_allclose(ev["dS"], dS, rtol=1e-12, atol=1e-9)
    assert np.all(me["C"] > 0) and np.all(me["C_flow"] > 0)
    res = json.loads((out / "results.json").read_text())
    assert res["n_configs"] == n and res["t_min"] == [1]
    assert all(np.isfinite(res[k][0]) for k in ("x_g_flow", "x_g_flow_err", "x_g_eps", "x_g_eps_err"))
    assert 0 < res["ess_flow"] <= 1
    from analysis import ess
    assert res["ess_flow"] == pytest.approx(float(ess(ev["log_w"])), rel=1e-12)
    assert "Feynman-Hellmann" in logs["analyze"] and "<x>_g flows" in logs["analyze"]


def test_workflow_is_reproducible_from_the_seed(workflow):
    (a, _), (b, _) = workflow
    np.testing.assert_array_equal(ensemble_fields(a / "ensemble.h5"), ensemble_fields(b / "ensemble.h5"))
    np.testing.assert_array_equal(ensemble_fields(a / "flowed.h5"), ensemble_fields(b / "flowed.h5"))
    for f, kind, names in (("evaluate.h5", "flow-evaluation", ["log_w", "logJ"]),
                           ("measure.h5", "pion-measurements", ["C", "C_flow", "O"])):
        ca, cb = columns(a / f, kind, names), columns(b / f, kind, names)
        for k in names:
            np.testing.assert_array_equal(ca[k], cb[k])
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["x_g_flow"] == rb["x_g_flow"] and ra["x_g_eps_err"] == rb["x_g_eps_err"]


def test_rerun_of_a_finished_stage_changes_nothing(workflow, tmp_path):
    out, _ = workflow[0]
    before = columns(out / "evaluate.h5", "flow-evaluation", ["log_w"])["log_w"]
    cfg = write_config(tmp_path / "tiny.toml", out)
    r = gaugeflow("train", cfg)
    assert "training skipped" in r.stdout
    gaugeflow("evaluate", cfg)
    np.testing.assert_array_equal(columns(out / "evaluate.h5", "flow-evaluation", ["log_w"])["log_w"], before)


# ------------------------------------------------------------------ kill and resume
def _kill_when(args, ready, timeout=300):
    """Start `gaugeflow *args` with progress bars, SIGKILL it as soon as ``ready(stderr)``
    holds (the text the job printed so far); returns True if it was killed while running.
    (stderr is a pipe: a progress line for every update needs GAUGEFLOW_PROGRESS_INTERVAL=0.)"""
    import threading
    p = subprocess.Popen([sys.executable, "-m", "run", *map(str, args), "--set", "job.progress=true"],
                         env=dict(env(), GAUGEFLOW_PROGRESS_INTERVAL="0"), cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    buf = []
    reader = threading.Thread(target=lambda: [buf.append(c) for c in iter(lambda: p.stderr.read1(4096), b"")],
                              daemon=True)
    reader.start()
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if ready(b"".join(buf).decode(errors="replace")):
                p.send_signal(signal.SIGKILL)
                p.wait()
                return p.returncode == -signal.SIGKILL
            if p.poll() is not None:
                return False
            time.sleep(0.01)
        raise AssertionError("the job did not reach the kill point in time")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def _progress(text: str, desc: str) -> int:
    """Last count shown by the tqdm bar ``desc`` ("desc: 40%|...| 4/10 ...")."""
    import re
    m = re.findall(re.escape(desc) + r"[^|]*\|[^|]*\|\s*(\d+)/\d+", text)
    return int(m[-1]) if m else 0


@pytest.mark.parametrize("stage", ["hmc", "train", "evaluate"])
def test_killed_stage_resumes_to_the_uninterrupted_result(stage, workflow, tmp_path):
    ref_out, _ = workflow[0]
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "tiny.toml", out, n_traj=30 if stage == "hmc" else 10)
    if stage == "hmc":      # uninterrupted reference with the same config
        ref_out = tmp_path / "ref"
        gaugeflow("hmc", cfg, "--output", ref_out)
        ready = lambda err: _progress(err, "HMC") >= 12            # noqa: E731  (8 stored)
    else:                   # inputs of the stage from the reference workflow
        out.mkdir()
        for f in ("ensemble.h5",) + (("flow.h5",) if stage == "evaluate" else ()):
            (out / f).write_bytes((ref_out / f).read_bytes())
        if stage == "train":
            ready = lambda err: (out / "train.ckpt.h5").exists()     # noqa: E731  (after step 1 of 3)
        else:
            ready = lambda err: _progress(err, "evaluate") >= 2     # noqa: E731
    killed = _kill_when([stage, cfg], ready)
    assert killed, f"{stage} finished before it could be killed; make the job longer"
    if stage == "train":
        assert not (out / "flow.h5").exists()
    r = gaugeflow(stage, cfg)
    assert "resum" in r.stdout + r.stderr or stage == "train"
    if stage == "hmc":
        np.testing.assert_array_equal(ensemble_fields(out / "ensemble.h5"), ensemble_fields(ref_out / "ensemble.h5"))
    elif stage == "train":
        import flows
        assert "resumed training" in (out / "gaugeflow.log").read_text()
        _, p = flows.load(out / "flow.h5")
        _, q = flows.load(ref_out / "flow.h5")
        assert p.keys() == q.keys()
        for k in p:
            np.testing.assert_array_equal(p[k], q[k])
    else:
        a = columns(out / "evaluate.h5", "flow-evaluation", ["index", "log_w"])
        b = columns(ref_out / "evaluate.h5", "flow-evaluation", ["index", "log_w"])
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["log_w"], b["log_w"])
        np.testing.assert_array_equal(ensemble_fields(out / "flowed.h5"), ensemble_fields(ref_out / "flowed.h5"))


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("old,new,match", [
    ("[measure]", "[hmc2]\nx = 1\n[measure]", "unknown section [hmc2]"),
    ("n_sources = 1", "n_source = 3", "unknown key measure.n_source"),
])
def test_bad_config_sections_and_keys(tmp_path, old, new, match):
    cfg = write_config(tmp_path / "bad.toml", tmp_path / "out")
    cfg.write_text(cfg.read_text().replace(old, new))
    r = gaugeflow("hmc", cfg, check=False)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("override,match", [
    ("hmc.n_traj=ten", "hmc.n_traj must be int"),
    ("train.shape=[4,4]", "as many axes as lattice.shape"),
    ("lattice.shape=[4,4,8]", None),   # valid for pure gauge ...
    ("train.lam2=0.0", "train.lam1 == train.lam2"),
    ("flow.loops=\"wilson\"", "flow.loops must be"),
    ("train.warmup=3", "train.warmup = 3 must lie in"),
    ("fermions.enabled=true", None),   # valid: Nf=2 on 4^4 (only parsed here; see below)
])
def test_bad_values_give_clear_errors(tmp_path, override, match):
    from run.config import load_config, ConfigError
    cfg = write_config(tmp_path / "c.toml", tmp_path / "out")
    if match is None:
        load_config(str(cfg), [override])
        if "shape" in override:   # ... but not with dynamical fermions
            with pytest.raises(ConfigError, match="dynamical fermions need a 4d lattice"):
                load_config(str(cfg), [override, "fermions.enabled=true", "train.shape=[4,4,8]"])
        return
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace("[", r"\[")):
        load_config(str(cfg), [override])


def test_mismatched_files_are_refused(workflow, tmp_path):
    ref_out, _ = workflow[0]
    out = tmp_path / "out"
    out.mkdir()
    for f in ("ensemble.h5", "flow.h5", "flowed.h5", "evaluate.h5"):
        (out / f).write_bytes((ref_out / f).read_bytes())
    cfg = write_config(tmp_path / "tiny.toml", out)
    # another beta than the ensemble was generated with
    r = gaugeflow("evaluate", cfg, "--set", "action.beta=6.0", check=False)
    assert r.returncode == 2 and "MismatchError" in r.stderr and "beta" in r.stderr, r.stderr
    # the flow trained with other settings than the config asks for
    r = gaugeflow("train", cfg, "--set", "train.lam2=0.03", check=False)
    assert r.returncode == 2 and "trained with other settings" in r.stderr and "train" in r.stderr, r.stderr
    # evaluate.h5 belongs to another flow file: retrain-free check via the digest
    import flows
    model, params = flows.load(out / "flow.h5")
    params = {k: v * 1.0001 for k, v in params.items()}
    flows.save(out / "flow.h5", model, params, extra=flows.read_config(ref_out / "flow.h5"))
    r = gaugeflow("evaluate", cfg, check=False)
    assert r.returncode == 2 and "flow_sha256" in r.stderr, r.stderr


def test_truncated_file_is_a_clear_error(workflow, tmp_path):
    ref_out, _ = workflow[0]
    out = tmp_path / "out"
    out.mkdir()
    data = (ref_out / "ensemble.h5").read_bytes()
    (out / "ensemble.h5").write_bytes(data[: len(data) // 2])
    (out / "flow.h5").write_bytes((ref_out / "flow.h5").read_bytes())
    cfg = write_config(tmp_path / "tiny.toml", out)
    r = gaugeflow("evaluate", cfg, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "ensemble.h5" in r.stderr, r.stderr


def test_missing_flow_is_a_clear_error(workflow, tmp_path):
    ref_out, _ = workflow[0]
    cfg = write_config(tmp_path / "tiny.toml", tmp_path / "out")
    (tmp_path / "out").mkdir()
    r = gaugeflow("evaluate", cfg, check=False)          # the ensemble is missing first
    assert r.returncode == 2 and "no ensemble" in r.stderr and "run `gaugeflow hmc`" in r.stderr, r.stderr
    (tmp_path / "out" / "ensemble.h5").write_bytes((ref_out / "ensemble.h5").read_bytes())
    r = gaugeflow("evaluate", cfg, check=False)
    assert r.returncode == 2 and "no trained flow" in r.stderr and "run `gaugeflow train`" in r.stderr, r.stderr
    assert os.listdir(tmp_path / "out") == ["ensemble.h5"]


def test_nf2_workflow_with_exact_determinant_and_pseudofermion_ratios(tmp_path):
    """Nf = 2 through the command line: twisted-mass HMC, training with the exact determinant,
    then the conditional pseudofermion flow as the second stage of `train`, evaluation with
    stochastic determinant ratios with and without it (same noise), measurement and analysis."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "nf2.toml", out, n_traj=8, steps=1)
    sets = ["fermions.enabled=true", "fermions.kappa=0.12", "hmc.n_therm=1", "hmc.n_steps=3",
            "hmc.n_steps_gauge=2", "train.exact_fermions=true", "train.batch_size=1", "train.holdout_every=1",
            "evaluate.n_shots=2", "pf_flow.enabled=true", "pf_flow.n_layers=2", "pf_flow.hidden=2",
            "pf_flow.steps=2", "pf_flow.batch_size=1", "pf_flow.n_shots=2", "pf_flow.holdout=2",
            "pf_flow.holdout_every=1", "pf_flow.lr=0.01"]
    args = [a for s in sets for a in ("--set", s)]
    for c in ("hmc", "train", "evaluate", "measure", "analyze"):
        gaugeflow(c, cfg, *args)
    with EnsembleStore.open(out / "ensemble.h5", "r") as e:
        assert e.meta["fermions"]["kappa"] == 0.12 and len(e) == 8
    ev = columns(out / "evaluate.h5", "flow-evaluation", ["log_det", "log_det_W", "logJ", "dS", "log_w"])
    assert ev["log_det"].shape == (8, 2) and np.all(np.isfinite(ev["log_det"]))
    from scipy.special import logsumexp
    np.testing.assert_allclose(ev["log_det_W"], logsumexp(ev["log_det"], axis=1) - np.log(2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ev["log_w"], -ev["dS"] + ev["logJ"] + ev["log_det_W"], rtol=0, atol=1e-12)
    # the pseudofermion flow: trained (moved away from the identity), evaluated next to the identity map
    pf = columns(out / "evaluate.h5", "flow-evaluation", ["log_det_identity", "log_det_W_identity", "log_w_no_pf"])
    np.testing.assert_allclose(pf["log_w_no_pf"], -ev["dS"] + ev["logJ"] + pf["log_det_W_identity"], rtol=0,
                               atol=1e-12)
    assert np.all(np.isfinite(pf["log_det_identity"])) and not np.allclose(pf["log_det_identity"], ev["log_det"])
    # same noise: the trained map changes each shot by little after two steps
    assert np.abs(pf["log_det_identity"] - ev["log_det"]).max() < 0.5 * np.abs(ev["log_det"]).max() + 0.5
    import flows
    pf_cfg = flows.read_config(out / "pf_flow.h5")
    assert pf_cfg["model"]["n_layers"] == 2 and len(pf_cfg["history"]["step"]) == 2
    assert pf_cfg["run_info"]["fermions"]["kappa"] == 0.12
    assert (out / "pf_training.png").exists()
    run_info = flows.read_config(out / "flow.h5")["run_info"]
    assert "exact_nf2_determinant" in json.dumps(run_info["target"])
    res = json.loads((out / "results.json").read_text())
    assert np.isfinite(res["x_g_flow"][0]) and 0 < res["ess_flow_no_pf"] <= 1


def test_import_of_ildg_files_through_the_command_line(workflow, tmp_path):
    """`gaugeflow import CONFIG FILES...` stores ILDG files of other codes as an ensemble (in
    the order given; rerunning skips what is there); a file of another lattice is refused."""
    from lattice.io import write_ildg
    ref_out, _ = workflow[0]
    U = ensemble_fields(ref_out / "ensemble.h5")[:3]
    files = []
    for i, u in enumerate(U):
        files.append(tmp_path / f"conf.{i:04d}")
        write_ildg(files[-1], u)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "tiny.toml", out)
    gaugeflow("import", cfg, *files)
    np.testing.assert_array_equal(ensemble_fields(out / "ensemble.h5"), U)
    r = gaugeflow("import", cfg, *files)           # resume: nothing appended twice
    assert len(ensemble_fields(out / "ensemble.h5")) == 3 and "imported" not in r.stdout
    r = gaugeflow("import", cfg, "--set", "lattice.shape=[4,4,4,8]", "--output", tmp_path / "o2", files[0],
                  check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "conf.0000" in r.stderr, r.stderr


def test_residual_flow_workflow_reduces_the_variance_of_log_w(tmp_path):
    """The correlated-ensemble workflow with the residual flow (flow.kind = "residual",
    train.init = "linear-response", a few path-gradient steps): the fit is reported, and on the
    ensemble the flow's log-weights have less than half the variance of plain reweighting's
    (evaluate.h5 keeps both)."""
    out = tmp_path / "out"
    extra = ('\n[flow]\nkind = "residual"\nmasks = ["M2", "M4"]\nfamilies = ["plaquette", "rectangle"]\n')
    cfg = write_config(tmp_path / "res.toml", out, n_traj=32, steps=2,
                       extra="").read_text().replace(
        '[flow]\nloops = "learned"\nn_layers = 2\nschedule = "simple"\ncontext_channels = 2\nspline_bins = 4\n',
        extra.lstrip("\n")).replace('base = "ensemble"', 'base = "ensemble"\ninit = "linear-response"\nwarmup = 0')
    (tmp_path / "res.toml").write_text(cfg)
    logs = {c: gaugeflow(c, tmp_path / "res.toml").stdout for c in ("hmc", "train", "evaluate")}
    assert "linear-response fit on 24 configurations" in logs["train"], logs["train"]
    assert "removed" in logs["evaluate"]
    ev = columns(out / "evaluate.h5", "flow-evaluation", ["log_w", "log_w_identity", "dS", "logJ"])
    assert np.var(ev["log_w"]) < 0.5 * np.var(ev["log_w_identity"])
    import flows
    model, _ = flows.load(out / "flow.h5")
    assert type(model).__name__ == "ResidualFlow" and len(model.layers) == 24
    assert flows.read_config(out / "flow.h5")["linear_response"]["share_removed"] > 0.5


def test_spectral_flow_that_misses_links_is_warned_about(workflow):
    """TINY's spectral flow has 2 direction layers on a 4d lattice (2 Nd = 8 needed to update
    every link): `train` says so before training."""
    _, logs = workflow[0]
    assert "leave some links untouched" in logs["train"] and "raise flow.n_layers" in logs["train"]
