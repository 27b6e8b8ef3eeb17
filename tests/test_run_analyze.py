"""`gaugeflow analyze` on synthetic measurement files (no hmc/train/measure needed): settings
that the data cannot support are one-line configuration errors (exit status 2) found before any
fit; the effective-mass plot shows the fit that results.json reports; a measure.h5 without a
flowed ensemble (measure.flowed = false) gives the epsilon-reweighting analysis alone;
results.json records its provenance and settings."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import analysis as an
from lattice.io import RecordStore, Column
from cli_testing import cli, one_error_line

T = 8

CONFIG = """
[job]
output = "{out}"
progress = false
[lattice]
shape = [4, 4, 4, {T}]
[action]
beta = 5.7
[train]
lam2 = 0.02
base = "ensemble"
[analyze]
t_min = [1, 2]
"""


def measurements(out: Path, n: int, flowed: bool = True, evaluate: bool = True, seed: int = 1, T: int = T):
    """measure.h5 (and evaluate.h5) as `measure` and `evaluate` write them, with the correlators
    and weights of the toy Feynman-Hellmann model (analysis.ToyFeynmanHellmann) at lambda 0 -> 0.02.
    ``flowed=False``: as `measure` with measure.flowed = false (C_flow left at zero)."""
    out.mkdir(parents=True, exist_ok=True)
    toy = an.ToyFeynmanHellmann(T=T, mass=0.6, excited=(1.5, 0.5))
    ens = toy.ensemble(0.0, n, seed=seed)
    Cf, lw = toy.flow(ens, 0.02)
    cols = {"index": Column((), "i8"), "C": Column((T,)), "O": Column(), "plaquette": Column(),
            "C_flow": Column((T,)), "O_flow": Column(), "plaquette_flow": Column()}
    with RecordStore.create(out / "measure.h5", kind="pion-measurements", columns=cols,
                            attrs={"lam1": 0.0, "n_sources": 1, "flowed": flowed}) as s:
        for i in range(n):
            s.append({"index": i, "C": ens.C[i], "O": ens.O[i], "plaquette": 0.5,
                      "C_flow": Cf[i] if flowed else np.zeros(T), "O_flow": 0.0, "plaquette_flow": 0.0})
    if evaluate:
        with RecordStore.create(out / "evaluate.h5", kind="flow-evaluation", attrs={"lam1": 0.0, "lam2": 0.02},
                                columns={"index": Column((), "i8"), "log_w": Column()}) as s:
            for i in range(n):
                s.append({"index": i, "log_w": lw[i]})
    return ens, Cf, lw


def config(tmp_path: Path, T: int = T) -> Path:
    p = tmp_path / "job.toml"
    p.write_text(CONFIG.format(out=tmp_path / "out", T=T))
    return p


def sets(*overrides):
    return [a for o in overrides for a in ("--set", o)]


# ------------------------------------------------------------------ settings the data cannot support
BAD = [
    # (overrides, n_configs, key, value, what is allowed)   T = 8: t_max = 4, t_min = [1, 2]
    (["analyze.n_states=2", "analyze.t_min=[3]"], 40, "analyze.n_states", "2", "at most 1"),
    (["analyze.n_states=3"], 40, "analyze.n_states", "3", "at most 1"),
    (["analyze.bin_size=100"], 40, "analyze.bin_size", "100", "at most 20"),
    (["analyze.bin_size=21", "analyze.correlated=false"], 40, "analyze.bin_size", "21", "at most 20"),
    (["analyze.bin_size=9"], 40, "analyze.bin_size", "9", "at most 8 for correlated fits"),
]


@pytest.mark.parametrize("overrides,n,key,value,allowed", BAD, ids=["-".join(b[0]) for b in BAD])
def test_fit_settings_the_data_cannot_support_are_one_configuration_error(tmp_path, capsys, overrides, n, key,
                                                                         value, allowed):
    measurements(tmp_path / "out", n)
    rc, _, err = cli(capsys, "analyze", config(tmp_path), *sets(*overrides))
    line = one_error_line(err)
    assert rc == 2 and "configuration error" in line, line
    assert key in line and f"got {value}" in line and allowed in line, line
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("overrides", [["analyze.bin_size=8"], ["analyze.bin_size=20", "analyze.correlated=false"],
                                       ["analyze.n_states=2", "analyze.t_min=[1]", "analyze.correlated=false"]])
def test_the_largest_allowed_settings_run(tmp_path, capsys, overrides):
    """The limits named in the messages are the library's: at the limit the fits run."""
    measurements(tmp_path / "out", 40)
    rc, out, err = cli(capsys, "analyze", config(tmp_path), *sets(*overrides))
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "results.json").read_text())["n_configs"] == 40


def test_a_correlated_fit_longer_than_the_data_allows(tmp_path, capsys):
    """8 configurations cannot estimate the covariance of a 12-point window (T = 24, [1, 12]):
    analyze.correlated is named, with the t_min from which the correlated fit works."""
    measurements(tmp_path / "out", 8, T=24)
    rc, _, err = cli(capsys, "analyze", config(tmp_path, T=24))
    line = one_error_line(err)
    assert rc == 2 and "analyze.correlated must be false with 8 measured configurations" in line, line
    assert "got True" in line and "analyze.t_min >= 6" in line, line
    rc, _, err = cli(capsys, "analyze", config(tmp_path, T=24), *sets("analyze.t_min=[6]"))
    assert rc == 0, err


def test_fit_window_checks_come_before_the_job_starts(tmp_path, capsys):
    """n_states against the window needs no data: refused before the lock, log or config copy."""
    rc, _, err = cli(capsys, "analyze", config(tmp_path), *sets("analyze.n_states=2", "analyze.t_min=[3]"))
    assert rc == 2 and "analyze.n_states" in one_error_line(err)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ effective_mass.png
def test_the_effective_mass_plot_shows_the_fit_that_results_json_reports(tmp_path, capsys, monkeypatch):
    """Uncorrelated fits in bins of 2 (not the defaults): the plotted fit is the reported one."""
    import analysis.plots
    drawn = []
    real = analysis.plots.plot_effective_mass

    def spy(C, fit=None, **kw):
        fig = real(C, fit, **kw)
        drawn.append((C, fit, kw, fig))
        return fig

    monkeypatch.setattr(analysis.plots, "plot_effective_mass", spy)
    ens, _, _ = measurements(tmp_path / "out", 40)
    rc, _, err = cli(capsys, "analyze", config(tmp_path), *sets("analyze.correlated=false", "analyze.bin_size=2"))
    assert rc == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(drawn) == 1 and (tmp_path / "out" / "effective_mass.png").stat().st_size > 1000
    C, fit, kw, fig = drawn[0]
    k = res["t_min"].index(fit.t_min)
    assert fit.t_max == res["t_max"] and not fit.correlated and fit.info["bin_size"] == 2
    assert fit.energies[0] == res["mass"][k] and fit.energies_err[0] == res["mass_err"][k]
    assert fit.chi2_dof == res["chi2_dof"][k]
    # the points: the same folded data in the same bins
    assert kw["bin_size"] == 2 and kw["T"] == T
    np.testing.assert_array_equal(C, an.fold(ens.C))
    # the figure: the band at the reported mass, the legend with the reported chi2/dof
    ax = fig.axes[0]
    band = [l for l in ax.lines if l.get_label().startswith("fit")]
    assert len(band) == 1 and np.all(band[0].get_ydata() == res["mass"][k])
    assert f"={res['chi2_dof'][k]:.2f}" in band[0].get_label() and "uncorrelated" in band[0].get_label()


# ------------------------------------------------------------------ measure.flowed = false
@pytest.mark.parametrize("with_evaluate", [True, False], ids=["with-evaluate.h5", "without-evaluate.h5"])
def test_without_a_flowed_ensemble_only_epsilon_reweighting_is_done_and_said(tmp_path, capsys, with_evaluate):
    ens, _, lw = measurements(tmp_path / "out", 40, flowed=False, evaluate=with_evaluate)
    rc, out, err = cli(capsys, "analyze", config(tmp_path))
    assert rc == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["flow_estimate"]["made"] is False
    assert "measure.flowed = false" in res["flow_estimate"]["reason"], res["flow_estimate"]
    assert "no flow estimate" in out and "measure.flowed = false" in out, out
    assert "no flow estimate" in (tmp_path / "out" / "gaugeflow.log").read_text()
    for key in ("x_g_flow", "x_g_flow_err", "variance_reduction", "cost_measured"):
        assert key not in res
    # the epsilon-reweighting numbers are those of the library with the job's settings
    eps = an.gluon_momentum_fraction(ens.C, T=T, t_min=[1, 2], t_max=T // 2, method="epsilon", operator=ens.O,
                                     fold=True)
    np.testing.assert_array_equal(res["x_g_eps"], eps.x_g[0])
    np.testing.assert_array_equal(res["x_g_eps_err"], eps.x_g[1])
    assert res["mass"] == eps.mass[0].tolist()
    assert res["ess_identity"] == pytest.approx(float(an.ess(-0.02 * (ens.O - ens.O.mean()))), rel=1e-12)
    assert ("ess_flow" in res) == with_evaluate
    if with_evaluate:
        assert res["ess_flow"] == pytest.approx(float(an.ess(lw)), rel=1e-12)
    assert (tmp_path / "out" / "x_g_vs_tmin.png").is_file() and (tmp_path / "out" / "effective_mass.png").is_file()


def test_with_a_flowed_ensemble_both_methods_are_reported(tmp_path, capsys):
    measurements(tmp_path / "out", 40)
    rc, out, err = cli(capsys, "analyze", config(tmp_path))
    assert rc == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["flow_estimate"] == {"made": True, "reason": None}
    assert len(res["x_g_flow"]) == len(res["x_g_eps"]) == len(res["variance_reduction"]) == 2
    assert "no flow estimate" not in out and "<x>_g flows" in out


# ------------------------------------------------------------------ provenance and settings
def test_results_json_records_provenance_settings_and_inputs(tmp_path, capsys):
    import hashlib
    from lattice.io import provenance
    from lattice.io.provenance import git_commit
    from run.config import load_config
    measurements(tmp_path / "out", 40)
    overrides = ("analyze.bin_size=2", "analyze.correlated=false", "analyze.eps=0.01")
    rc, _, err = cli(capsys, "analyze", config(tmp_path), *sets(*overrides))
    assert rc == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    prov = res["provenance"]
    assert set(prov) == set(provenance())                       # the record the HDF5 outputs carry
    assert prov["code"] == "gaugeflow" and prov["git_commit"] == git_commit()[0] and prov["mpi_ranks"] == 1
    with RecordStore.open(tmp_path / "out" / "measure.h5", "r", kind="pion-measurements") as s:
        assert prov["conventions_version"] == s.provenance["conventions_version"]
    cfg = load_config(str(config(tmp_path)), list(overrides))
    st = res["settings"]
    assert st["analyze"] == cfg["analyze"] and st["analyze"]["bin_size"] == 2 and st["analyze"]["eps"] == 0.01
    assert (st["lam1"], st["lam2"]) == (cfg["train"]["lam1"], cfg["train"]["lam2"])
    assert st["fit"] == {"T": T, "t_min": [1, 2], "t_max": T // 2, "fold": True, "n_states": 1, "correlated": False,
                         "bin_size": 2, "n_bins": 20, "errors": "jackknife", "derivative": "eps = 0.01"}
    assert "eq. 17" in st["x_g_convention"] and "twice this" in st["x_g_convention"]     # the factor question
    for name in ("measure.h5", "evaluate.h5"):
        assert res["inputs"][name]["sha256"] == hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest()


# ------------------------------------------------------------------ inputs checked before anything is written
def test_missing_inputs_refuse_analyze_before_it_writes(tmp_path, capsys):
    """No measure.h5, or a flowed measure.h5 without evaluate.h5: one line with what to run,
    and nothing new in job.output."""
    out = tmp_path / "out"
    rc, _, err = cli(capsys, "analyze", config(tmp_path))
    line = one_error_line(err)
    assert rc == 2 and "no measurement file" in line and "measure.h5" in line and "gaugeflow measure" in line, line
    assert not out.exists()
    measurements(out, 12, flowed=True, evaluate=False)
    rc, _, err = cli(capsys, "analyze", config(tmp_path))
    line = one_error_line(err)
    assert rc == 2 and "evaluate.h5" in line and "gaugeflow evaluate" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["measure.h5"]


def test_too_few_or_mismatched_configurations_are_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    measurements(out, 5)
    rc, _, err = cli(capsys, "analyze", config(tmp_path))
    line = one_error_line(err)
    assert rc == 2 and "MismatchError" in line and "only 5 configurations to analyze (measure.h5: 5, evaluate.h5: 5)" in line, line
    assert "hmc.n_traj" in line
    for name in ("measure.h5", "evaluate.h5"):
        (out / name).unlink()
    measurements(out, 12, evaluate=False)
    with RecordStore.create(out / "evaluate.h5", kind="flow-evaluation", attrs={"lam1": 0.0, "lam2": 0.02},
                            columns={"index": Column((), "i8"), "log_w": Column()}) as s:
        for i in range(12):
            s.append({"index": i + 1, "log_w": 0.0})
    rc, _, err = cli(capsys, "analyze", config(tmp_path))
    line = one_error_line(err)
    assert rc == 2 and "do not refer to the same configurations" in line and "rerun `evaluate`" in line, line


def test_a_fit_the_data_cannot_support_is_one_line(tmp_path, capsys):
    """Correlators without fluctuations (a zero variance): the fit's FitError is one line with
    what to try, not a traceback."""
    out = tmp_path / "out"
    measurements(out, 12)
    C = np.cosh(0.6 * (np.arange(T) - T / 2))
    (out / "measure.h5").unlink()
    cols = {"index": Column((), "i8"), "C": Column((T,)), "O": Column(), "plaquette": Column(),
            "C_flow": Column((T,)), "O_flow": Column(), "plaquette_flow": Column()}
    with RecordStore.create(out / "measure.h5", kind="pion-measurements", columns=cols,
                            attrs={"lam1": 0.0, "n_sources": 1, "flowed": True}) as s:
        for i in range(12):
            s.append({"index": i, "C": C, "O": float(i % 3), "plaquette": 0.5, "C_flow": C, "O_flow": 0.0,
                      "plaquette_flow": 0.0})
    rc, _, err = cli(capsys, "analyze", config(tmp_path))
    line = one_error_line(err)
    assert rc == 2 and "FitError" in line and "analyze.n_states" in line, line


# ------------------------------------------------------------------ independent ensembles
def independent_measurements(path: Path, n: int, lam: float = 0.02, seed: int = 11, T: int = T, **attrs) -> Path:
    """measure.h5 of an independent toy ensemble at ``lam``, as `measure` writes it with
    measure.flowed = false in another job.output (hmc.lam = train.lam1 = lam)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ens = an.ToyFeynmanHellmann(T=T, mass=0.6, excited=(1.5, 0.5)).ensemble(lam, n, seed=seed)
    cols = {"index": Column((), "i8"), "C": Column((T,)), "O": Column(), "plaquette": Column(),
            "C_flow": Column((T,)), "O_flow": Column(), "plaquette_flow": Column()}
    with RecordStore.create(path, kind="pion-measurements", columns=cols,
                            attrs={"lam1": lam, "n_sources": 1, "flowed": False, **attrs}) as s:
        for i in range(n):
            s.append({"index": i, "C": ens.C[i], "O": ens.O[i], "plaquette": 0.5, "C_flow": np.zeros(T),
                      "O_flow": 0.0, "plaquette_flow": 0.0})
    return path


def test_an_independent_ensemble_at_lambda2_gives_the_third_estimate(tmp_path, capsys):
    """analyze.independent: <x>_g from independent ensembles at lambda_1 and lambda_2 next to the
    flow and epsilon estimates (it agrees with them within errors, and its error is the larger
    -- nothing cancels between independent ensembles); table, plot and inputs record it."""
    measurements(tmp_path / "out", 200)
    other = independent_measurements(tmp_path / "lam2" / "measure.h5", 200)
    rc, out, err = cli(capsys, "analyze", config(tmp_path), *sets(f"analyze.independent={json.dumps(str(other))}"))
    assert rc == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["independent_estimate"] == {"made": True, "file": str(other), "n_configs": 200}
    xi, ei = np.array(res["x_g_independent"]), np.array(res["x_g_independent_err"])
    xe, ee = np.array(res["x_g_eps"]), np.array(res["x_g_eps_err"])
    assert xi.shape == (2,) and np.all(ei > 0)
    assert np.all(np.abs(xi - xe) < 4 * np.hypot(ei, ee)), (xi, ei, xe, ee)
    assert np.all(ei > np.array(res["x_g_flow_err"]))
    assert res["inputs"]["independent"]["path"] == str(other.resolve())
    assert len(res["inputs"]["independent"]["sha256"]) == 64
    assert "<x>_g indep." in out and (tmp_path / "out" / "x_g_vs_tmin.png").exists()


def test_without_analyze_independent_there_is_no_third_estimate(tmp_path, capsys):
    measurements(tmp_path / "out", 40)
    rc, out, err = cli(capsys, "analyze", config(tmp_path))
    assert rc == 0, err
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["independent_estimate"] == {"made": False, "file": None, "n_configs": 0}
    assert "x_g_independent" not in res and "indep." not in out


@pytest.mark.parametrize("case", ["missing", "own file", "other lambda", "other kappa", "other T", "too few"])
def test_an_unusable_independent_ensemble_is_refused_in_one_line(tmp_path, capsys, case):
    measurements(tmp_path / "out", 40)
    other = tmp_path / "lam2" / "measure.h5"
    if case == "own file":
        other = tmp_path / "out" / "measure.h5"
    elif case == "other lambda":
        independent_measurements(other, 40, lam=0.01)
    elif case == "other kappa":
        independent_measurements(other, 40, kappa=0.13)
    elif case == "other T":
        independent_measurements(other, 40, T=2 * T)
    elif case == "too few":
        independent_measurements(other, 3)
    rc, _, err = cli(capsys, "analyze", config(tmp_path), *sets(f"analyze.independent={json.dumps(str(other))}"))
    line = one_error_line(err)
    assert rc == 2, line
    want = {"missing": "no measurement file of the independent ensemble",
            "own file": "is this run's own measure.h5",
            "other lambda": "was measured at lambda = 0.01, not at train.lam2 = 0.02",
            "other kappa": "has kappa = 0.13, this run's measure.h5 kappa = None",
            "other T": "holds correlators of shape (16,), this run T = 8",
            "too few": "only 3 configurations in analyze.independent"}[case]
    assert want in line and "hmc.lam = train.lam1 = 0.02" in line, line
    assert not (tmp_path / "out" / "results.json").exists()


def test_analyze_called_from_python_checks_the_independent_file_too(tmp_path):
    """run.jobs.analyze.analyze(ctx) makes the command line's input checks itself, so a file at
    another lambda is refused also outside `gaugeflow analyze`."""
    from lattice.io import MismatchError
    from run.config import load_config
    from run.context import make_context
    from run.jobs.analyze import analyze
    measurements(tmp_path / "out", 40)
    other = independent_measurements(tmp_path / "lam2" / "measure.h5", 40, lam=0.01)
    cfg = load_config(str(config(tmp_path)), [f"analyze.independent={json.dumps(str(other))}"], command="analyze")
    ctx = make_context(cfg, "analyze", comm=None)
    try:
        with pytest.raises(MismatchError, match="was measured at lambda = 0.01, not at train.lam2 = 0.02"):
            analyze(ctx)
    finally:
        ctx.release()
    assert not (tmp_path / "out" / "results.json").exists()
