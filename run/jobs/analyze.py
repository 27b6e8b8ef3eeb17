"""`gaugeflow analyze`: the Feynman-Hellmann analysis of the paper's section 3.

From `measure.h5` (C on U and f(U), O on U) and `evaluate.h5` (log w(f(U))):
* <x>_g^latt = -(2/3M) dM/dlambda against t_min (fit windows [t_min, T/2]) with flows
  (correlated ensembles lambda_1 -> lambda_2) and with epsilon-reweighting (exact derivative
  -<C O> + <C><O>), one jackknife per method, correlated single-cosh fits;
* the variance-reduction factor r = (err_eps / err_flow)^2 per t_min;
* with ``analyze.independent`` = the measure.h5 of an independent ensemble at lambda_2 (made
  in another job.output with hmc.lam = train.lam1 = lambda_2, train.lam2 = lambda_1 and
  measure.flowed = false), the
  third method of the paper's section 3: independent ensembles, dM/dlambda = [M(lambda_2) -
  M(lambda_1)]/(lambda_2 - lambda_1), each ensemble with its own jackknife and the errors added
  in quadrature (``x_g_independent``); the file must be at lambda_2 with this run's kappa, mu,
  bc_time and beta (else a MismatchError naming the field);
* without a flowed ensemble (measure.h5 made with measure.flowed = false, recorded in its
  attribute ``flowed``) epsilon-reweighting alone: results.json's ``flow_estimate`` says
  ``made: false`` and why, and the flow's numbers (x_g_flow, r, the measured cost model) are
  absent; evaluate.h5 is then optional (the ESS of its weights is reported if it is there);
* the ESS of the flow weights and of plain reweighting (identity flow, log w = -dlambda O),
  and the share of var(log w) that the flow removes, 1 - var(log w) / var(dlambda O);
* the cost model of eq. 19: per-configuration costs measured in this run (timings.json)
  and the break-even number of configurations, next to the paper's own numbers;
* plots `effective_mass.png` (the effective mass of the folded correlator in the jackknife bins of
  the analysis, with the M(lambda_1) fit of the middle t_min that results.json reports, its
  band E_0 +- dE_0 and chi^2/dof) and `x_g_vs_tmin.png` (like Fig. 2); `results.json` (with
  chi^2/dof of the M(lambda_1) fit per t_min), which records its provenance (``provenance``:
  ``lattice.io.provenance()``, the record every HDF5 output carries), the settings it used
  (``settings``: the [analyze] section as configured, lambda_1, lambda_2 and the resolved fit
  windows, bins and derivative) and the SHA-256 of its input files (``inputs``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lattice.io import atomic_write, provenance, MismatchError
from lattice.io._parallel import mark_all_ranks

from ..config import ConfigError, analyze_window, check_analyze
from ..context import JobContext, file_digest
from ..inputs import missing_input, require_file, run_checks, with_hint
from ..records import RankStore
from .evaluate import KIND as EVAL_KIND
from .measure import KIND as MEAS_KIND

__all__ = ["run", "analyze"]

X_G_CONVENTION = ("bare lattice <x>_g = -(2/(3M)) dM/dlambda, the paper's eq. 17; with O normalised as in eq. 16 "
                  "the tree-level relation is -(4/(3M)) dM/dlambda, twice this (docs/design.md 7.10)")


def _stage_costs(ctx: JobContext):
    p = ctx.path("timings.json")
    if not p.exists():
        return None
    t = json.loads(p.read_text())
    per = {k: v["seconds"] / max(v["n_configs"], 1) for k, v in t.items()}
    need = ("hmc", "measure", "evaluate")
    if not all(k in per for k in need):
        return None
    return {"generation": per["hmc"], "measurement": per["measure"], "flow_and_reweighting": per["evaluate"],
            "training": t.get("train", {}).get("seconds", float("nan"))}


def _no_flow_reason(meas_path, attrs) -> str | None:
    """Why measure.h5 holds no correlators on the flowed ensemble f(U), or None if it does. Read
    from its ``flowed`` attribute (what `measure` recorded; every measure.h5 carries it), not from
    the values of C_flow (zeros then)."""
    if bool(attrs.get("flowed", True)):
        return None
    return (f"{meas_path} was measured without the flowed ensemble (flowed = false: measure.flowed = false, "
            f"or no flowed.h5), so it has no correlators on f(U); for the flow estimate run `evaluate`, then "
            f"`measure` with measure.flowed = true into a fresh measure.h5")


def check_inputs(cfg: dict) -> None:
    """measure.h5 and, where it holds the flowed ensemble's correlators, evaluate.h5 (before
    anything is written; :mod:`run.inputs`)."""
    from lattice.io import RecordStore
    meas = require_file(cfg, "measure.h5", "measurement file",
                        "run `gaugeflow measure` with this config first, or check job.output (--output)")
    with RecordStore.open(meas, "r", kind=MEAS_KIND) as s:
        flowed = bool(s.attrs.get("flowed", True))
    if flowed:
        require_file(cfg, "evaluate.h5", "reweighting file",
                     "run `gaugeflow evaluate` with this config first (measure.h5 holds the flowed ensemble), "
                     "or check job.output (--output)")
    if cfg["analyze"]["independent"]:
        _check_independent(cfg, meas, Path(cfg["analyze"]["independent"]))


_INDEPENDENT_HINT = ("make it in another job.output with hmc.lam = train.lam1 = {lam2:g} (this config's train.lam2), "
                     "train.lam2 = this config's train.lam1 and measure.flowed = false, running `hmc` and `measure` "
                     "there; or fix analyze.independent")


def _attr(attrs, key):
    v = attrs.get(key)
    return v.decode() if isinstance(v, bytes) else (np.asarray(v).tolist() if v is not None else None)


def _check_independent(cfg: dict, meas: Path, other: Path) -> None:
    """analyze.independent: the measure.h5 of an ensemble at lambda_2, other than this run's,
    measured with this run's kappa, mu, bc_time and beta (a MismatchError naming the field)."""
    from lattice.io import RecordStore
    lam2 = cfg["train"]["lam2"]
    hint = _INDEPENDENT_HINT.format(lam2=lam2)
    if not other.is_file():
        raise missing_input(other, "measurement file of the independent ensemble", hint,
                            detail=f"analyze.independent, at lambda_2 = {lam2:g}")
    if other.resolve() == meas.resolve():
        raise with_hint(MismatchError(f"analyze.independent = {other} is this run's own measure.h5 (lambda_1 = "
                                      f"{cfg['train']['lam1']:g}), not an ensemble at lambda_2 = {lam2:g}",
                                      field="analyze.independent", path=other), hint)
    with RecordStore.open(meas, "r", kind=MEAS_KIND) as s:
        mine = dict(s.attrs)
    with RecordStore.open(other, "r", kind=MEAS_KIND) as s:
        theirs = dict(s.attrs)
    found = _attr(theirs, "lam1")
    if found is None or float(found) != float(lam2):
        raise with_hint(MismatchError(f"analyze.independent = {other} was measured at lambda = {found}, not at "
                                      f"train.lam2 = {lam2:g}", field="lam1", found=found, expected=lam2,
                                      path=other), hint)
    for key in ("kappa", "mu", "bc_time", "beta"):
        a, b = _attr(mine, key), _attr(theirs, key)
        if a != b:
            raise with_hint(MismatchError(f"analyze.independent = {other} has {key} = {b}, this run's measure.h5 "
                                          f"{key} = {a}: the two ensembles must differ in lambda only",
                                          field=key, found=b, expected=a, path=other), hint)


def _require_configs(n: int, what: str, hint: str) -> None:
    """At least 8 configurations (a one-line MismatchError on every rank otherwise)."""
    if n < 8:
        raise mark_all_ranks(with_hint(MismatchError(f"only {n} configurations {what}; the analysis needs at least 8",
                                                     field="n_configs", found=n, expected=">= 8"), hint))


def analyze(ctx: JobContext):
    from analysis import (gluon_momentum_fraction, ess, break_even, paper_example, plot_fh_scan,
                          plot_effective_mass, fold)
    cfg = ctx.cfg
    a, t = cfg["analyze"], cfg["train"]
    run_checks(ctx.comm, check_inputs, cfg)      # as the command line does, also when called from Python
    meas = RankStore.read_columns(ctx.path("measure.h5"), MEAS_KIND, ["index", "C", "O", "C_flow"])
    no_flow = _no_flow_reason(ctx.path("measure.h5"), meas["_attrs"])
    # evaluate.h5 (log w of the flow): needed for the flow estimate; without it, used for the ESS if present
    ev = None if (no_flow and not ctx.path("evaluate.h5").exists()) else \
        RankStore.read_columns(ctx.path("evaluate.h5"), EVAL_KIND, ["index", "log_w"])
    n = len(meas["index"]) if ev is None else min(len(meas["index"]), len(ev["index"]))
    counts = f"measure.h5: {len(meas['index'])}" + ("" if ev is None else f", evaluate.h5: {len(ev['index'])}")
    _require_configs(n, f"to analyze ({counts})",
                     "generate more configurations (hmc.n_traj), then run `measure` (and `evaluate`) again")
    if ev is not None and not np.array_equal(meas["index"][:n], ev["index"][:n]):
        raise mark_all_ranks(with_hint(
            MismatchError("measure.h5 and evaluate.h5 do not refer to the same configurations (their index "
                          "columns differ)", field="index"),
            "rerun `evaluate` and `measure` on the same ensemble into one job.output"))
    C, Cf, O = meas["C"][:n], meas["C_flow"][:n], meas["O"][:n]
    lw = None if ev is None else ev["log_w"][:n]
    T = C.shape[1]
    try:        # the fit settings against the data, before any fit (identical on every rank)
        check_analyze(cfg, T, n_configs=n, source=cfg.get("_source", "config"))
    except ConfigError as exc:
        raise mark_all_ranks(exc)
    if no_flow:
        ctx.say(f"{ctx.path('measure.h5')} has no flowed ensemble (flowed = false): no flow estimate, "
                f"epsilon-reweighting only")
    t_max, t_mins = analyze_window(T, a)
    kw = dict(T=T, t_max=t_max, n_states=a["n_states"], correlated=a["correlated"], bin_size=a["bin_size"], fold=True)
    indep, n2 = None, 0
    if a["independent"]:          # the third method: an independent ensemble at lambda_2
        C2 = RankStore.read_columns(Path(a["independent"]), MEAS_KIND, ["C"])["C"]
        n2 = len(C2)
        if C2.ndim != 2 or C2.shape[1] != T:
            raise mark_all_ranks(with_hint(MismatchError(
                f"analyze.independent = {a['independent']} holds correlators of shape {tuple(C2.shape[1:])}, this run "
                f"T = {T}", field="T", found=tuple(C2.shape[1:]), expected=T), _INDEPENDENT_HINT.format(lam2=t["lam2"])))
        _require_configs(n2, f"in analyze.independent = {a['independent']}", _INDEPENDENT_HINT.format(lam2=t["lam2"]))
        try:
            check_analyze(cfg, T, n_configs=n2, source=f"{cfg.get('_source', 'config')} (analyze.independent)")
        except ConfigError as exc:
            raise mark_all_ranks(exc)
        indep = gluon_momentum_fraction(C, t_min=t_mins, method="independent", lam1=t["lam1"], lam2=t["lam2"],
                                        C_lam2=C2, label="independent ensembles", **kw)
    flow = None if no_flow else gluon_momentum_fraction(
        C, t_min=t_mins, method="flow", lam1=t["lam1"], lam2=t["lam2"], C_flowed=Cf, log_weights=lw, label="flows",
        **kw)
    eps = gluon_momentum_fraction(C, t_min=t_mins, method="epsilon", lam1=t["lam1"], operator=O,
                                  eps=a["eps"] or None, label="eps-reweighting", **kw)
    mass_scan = eps if flow is None else flow        # the same M(lambda_1) fits in both methods
    xe, ee = eps.x_g
    dlam = t["lam2"] - t["lam1"]
    res = {"n_configs": n, "lam1": t["lam1"], "lam2": t["lam2"], "t_min": [int(x) for x in t_mins], "t_max": t_max,
           "flow_estimate": {"made": flow is not None, "reason": no_flow}}
    res.update({"x_g_eps": xe.tolist(), "x_g_eps_err": ee.tolist()})
    if flow is not None:
        xf, ef = flow.x_g
        r = (ee / ef) ** 2
        res.update({"x_g_flow": xf.tolist(), "x_g_flow_err": ef.tolist(), "variance_reduction": r.tolist()})
    res["independent_estimate"] = {"made": indep is not None, "file": a["independent"] or None, "n_configs": n2}
    if indep is not None:
        xi, ei = indep.x_g
        res.update({"x_g_independent": xi.tolist(), "x_g_independent_err": ei.tolist()})
    res["ess_identity"] = float(ess(-dlam * (O - O.mean())))
    if lw is not None:
        var_id = float(np.var(dlam * O))
        res.update({"ess_flow": float(ess(lw)),
                    "var_log_w_removed": 1.0 - float(np.var(lw)) / var_id if var_id > 0 else 0.0})
    res.update({"mass": mass_scan.mass[0].tolist(), "mass_err": mass_scan.mass[1].tolist(),
                "chi2_dof": [float(x.fits[0].chi2_dof) for x in mass_scan.results]})
    if lw is not None and cfg["pf_flow"]["enabled"] and cfg["fermions"]["enabled"]:   # the flow without the pf map
        lw0 = RankStore.read_columns(ctx.path("evaluate.h5"), EVAL_KIND, ["log_w_no_pf"])["log_w_no_pf"][:n]
        res["ess_flow_no_pf"] = float(ess(lw0))
    costs = _stage_costs(ctx)
    c = cfg["cost"]
    paper = paper_example()
    res["cost_paper"] = {"c_flow": c["c_gen"] + c["c_flow"] + 2 * c["c_meas"] + c["c_rew"],
                         "c_eps": c["c_gen"] + c["c_meas"], "training": c["train_cost"], "unit": c["unit"]}
    res["cost_paper"]["break_even"] = {str(rr): float(break_even(rr, c["train_cost"], res["cost_paper"]["c_flow"],
                                                                 res["cost_paper"]["c_eps"])) for rr in (5.0, 10.0)}
    if costs is not None and flow is not None:       # needs r, i.e. the flow estimate
        r_med = float(np.median(r))
        c_eps = costs["generation"] + costs["measurement"]
        c_f = costs["generation"] + 2 * costs["measurement"] + costs["flow_and_reweighting"]
        be = float(break_even(r_med, costs["training"], c_f, c_eps)) if r_med * c_eps > c_f else float("inf")
        res["cost_measured"] = {"per_config_seconds": costs, "c_flow": c_f, "c_eps": c_eps, "r": r_med,
                                "break_even": be}
    # how these numbers were made: the settings used, the input files, the provenance record of
    # every HDF5 output (lattice.io.provenance)
    res["settings"] = {"config": cfg.get("_source", ""), "analyze": dict(a), "lam1": t["lam1"], "lam2": t["lam2"],
                       "fit": {"T": T, "t_min": [int(x) for x in t_mins], "t_max": t_max, "fold": True,
                               "n_states": a["n_states"], "correlated": a["correlated"], "bin_size": a["bin_size"],
                               "n_bins": n // a["bin_size"], "errors": "jackknife",
                               "derivative": "exact" if not a["eps"] else f"eps = {a['eps']:g}"},
                       "x_g_convention": X_G_CONVENTION}
    if ctx.root:
        res["inputs"] = {name: {"sha256": file_digest(ctx.path(name))}
                         for name in ("measure.h5", "evaluate.h5") if name == "measure.h5" or ev is not None}
        if indep is not None:
            res["inputs"]["independent"] = {"path": str(Path(a["independent"]).resolve()),
                                            "sha256": file_digest(a["independent"])}
        res["provenance"] = provenance(layout=ctx.layout)
        atomic_write(ctx.path("results.json"), json.dumps(res, indent=1).encode())
        scans = {"eps-reweighting": eps} if flow is None else {"flows": flow, "eps-reweighting": eps}
        if indep is not None:
            scans["independent ensembles"] = indep
        plot_fh_scan(scans, filename=str(ctx.path("x_g_vs_tmin.png")))
        # the M(lambda_1) fit of the middle t_min exactly as reported (same settings, same jackknife
        # bins), over the effective mass of the same folded data in the same bins
        k = len(t_mins) // 2
        plot_effective_mass(fold(C), mass_scan.results[k].fits[0], T=T, bin_size=a["bin_size"],
                            filename=str(ctx.path("effective_mass.png")))
    return res, flow, eps


def _table(res) -> str:
    from analysis import format_value
    flow, indep = res["flow_estimate"]["made"], res["independent_estimate"]["made"]
    lines = [f"  {'t_min':>5s}  " + (f"{'<x>_g flows':>14s}  " if flow else "") + f"{'<x>_g eps-rew':>14s}"
             + (f"  {'<x>_g indep.':>14s}" if indep else "") + (f"  {'r = var ratio':>13s}" if flow else "")]
    for i, t0 in enumerate(res["t_min"]):
        lines.append(f"  {t0:5d}  "
                     + (f"{format_value(res['x_g_flow'][i], res['x_g_flow_err'][i]):>14s}  " if flow else "")
                     + f"{format_value(res['x_g_eps'][i], res['x_g_eps_err'][i]):>14s}"
                     + (f"  {format_value(res['x_g_independent'][i], res['x_g_independent_err'][i]):>14s}"
                        if indep else "")
                     + (f"  {res['variance_reduction'][i]:13.2f}" if flow else ""))
    return "\n".join(lines)


def run(ctx: JobContext):
    res, flow, eps = analyze(ctx)
    ctx.say(f"\nFeynman-Hellmann <x>_g^latt = -(2/3M) dM/dlambda (paper eq. 17 convention), "
            f"{res['n_configs']} configurations, lambda {res['lam1']} -> {res['lam2']}, fits [t_min, {res['t_max']}]:")
    ctx.say(_table(res))
    if flow is not None:
        ctx.say(f"median variance reduction r = {np.median(res['variance_reduction']):.2f}; "
                f"ESS of flow weights {res['ess_flow']:.3f} (plain reweighting without a flow: "
                f"{res['ess_identity']:.3f}); the flow removes {100 * res['var_log_w_removed']:.1f}% of var(log w)"
                + (f"; without the pseudofermion flow the ESS is {res['ess_flow_no_pf']:.3f}"
                   if "ess_flow_no_pf" in res else ""))
    else:
        ctx.say(f"no flow estimate (and no variance reduction r): {res['flow_estimate']['reason']}; "
                f"ESS of plain reweighting without a flow {res['ess_identity']:.3f}"
                + (f", of the flow weights in evaluate.h5 {res['ess_flow']:.3f}" if "ess_flow" in res else ""))
    cp = res["cost_paper"]
    ctx.say(f"cost model (eq. 19), paper's numbers: c_f = {cp['c_flow']:.2f}, c_eps = {cp['c_eps']:.2f} {cp['unit']}, "
            f"training {cp['training']:g} {cp['unit']}: break-even N = {cp['break_even']['5.0']:.0f} (r=5), "
            f"{cp['break_even']['10.0']:.0f} (r=10)")
    if "cost_measured" in res:
        cm = res["cost_measured"]
        ctx.say(f"cost model, this run (CPU seconds/config): c_f = {cm['c_flow']:.2f}, c_eps = {cm['c_eps']:.2f}, "
                f"training {cm['per_config_seconds']['training']:.0f} s, r = {cm['r']:.2f}: "
                + (f"break-even after {cm['break_even']:.0f} configurations" if math.isfinite(cm['break_even'])
                   else "no break-even (r c_eps <= c_f at this scale)"))
    ctx.say(f"results: {ctx.path('results.json')}, plots: {ctx.path('x_g_vs_tmin.png')}, {ctx.path('effective_mass.png')}")
    return res
