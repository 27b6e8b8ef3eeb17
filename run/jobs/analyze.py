"""`gaugeflow analyze`: the Feynman-Hellmann analysis of the paper's section 3.

From `measure.h5` (C on U and f(U), O on U) and `evaluate.h5` (log w(f(U))):
* <x>_g^latt = -(2/3M) dM/dlambda against t_min (fit windows [t_min, T/2]) with flows
  (correlated ensembles lambda_1 -> lambda_2) and with epsilon-reweighting (exact derivative
  -<C O> + <C><O>), one jackknife per method, correlated single-cosh fits;
* the variance-reduction factor r = (err_eps / err_flow)^2 per t_min;
* the ESS of the flow weights and of plain reweighting (identity flow, log w = -dlambda O),
  and the share of var(log w) that the flow removes, 1 - var(log w) / var(dlambda O);
* the cost model of eq. 19: per-configuration costs measured in this run (timings.json)
  and the break-even number of configurations, next to the paper's own numbers;
* plots `effective_mass.png` (the effective mass of the folded correlator in the jackknife bins of
  the analysis, with the M(lambda_1) fit of the middle t_min that results.json reports, its
  band E_0 +- dE_0 and chi^2/dof) and `x_g_vs_tmin.png` (like Fig. 2); `results.json` (with
  chi^2/dof of the M(lambda_1) fit per t_min).
"""
from __future__ import annotations

import json
import math

import numpy as np

from lattice.io import atomic_write
from lattice.io._parallel import mark_all_ranks

from ..config import ConfigError, analyze_window, check_analyze
from ..context import JobContext
from ..records import RankStore
from .evaluate import KIND as EVAL_KIND
from .measure import KIND as MEAS_KIND

__all__ = ["run", "analyze"]


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


def analyze(ctx: JobContext):
    from analysis import (gluon_momentum_fraction, ess, break_even, paper_example, plot_fh_scan,
                          plot_effective_mass, fold)
    cfg = ctx.cfg
    a, t = cfg["analyze"], cfg["train"]
    meas = RankStore.read_columns(ctx.path("measure.h5"), MEAS_KIND, ["index", "C", "O", "C_flow"])
    ev = RankStore.read_columns(ctx.path("evaluate.h5"), EVAL_KIND, ["index", "log_w"])
    n = min(len(meas["index"]), len(ev["index"]))
    if n < 8:
        raise RuntimeError(f"only {n} measured configurations: run `measure` (and `evaluate`) first")
    if not np.array_equal(meas["index"][:n], ev["index"][:n]):
        raise RuntimeError("measure.h5 and evaluate.h5 do not refer to the same configurations")
    C, Cf, O, lw = meas["C"][:n], meas["C_flow"][:n], meas["O"][:n], ev["log_w"][:n]
    T = C.shape[1]
    try:        # the fit settings against the data, before any fit (identical on every rank)
        check_analyze(cfg, T, n_configs=n, source=cfg.get("_source", "config"))
    except ConfigError as exc:
        raise mark_all_ranks(exc)
    t_max, t_mins = analyze_window(T, a)
    kw = dict(T=T, t_max=t_max, n_states=a["n_states"], correlated=a["correlated"], bin_size=a["bin_size"], fold=True)
    flow = gluon_momentum_fraction(C, t_min=t_mins, method="flow", lam1=t["lam1"], lam2=t["lam2"], C_flowed=Cf,
                                   log_weights=lw, label="flows", **kw)
    eps = gluon_momentum_fraction(C, t_min=t_mins, method="epsilon", lam1=t["lam1"], operator=O,
                                  eps=a["eps"] or None, label="eps-reweighting", **kw)
    xf, ef = flow.x_g
    xe, ee = eps.x_g
    r = (ee / ef) ** 2
    dlam = t["lam2"] - t["lam1"]
    ess_flow, ess_id = float(ess(lw)), float(ess(-dlam * (O - O.mean())))
    var_id = float(np.var(dlam * O))
    share = 1.0 - float(np.var(lw)) / var_id if var_id > 0 else 0.0
    res = {"n_configs": n, "lam1": t["lam1"], "lam2": t["lam2"], "t_min": [int(x) for x in t_mins], "t_max": t_max,
           "x_g_flow": xf.tolist(), "x_g_flow_err": ef.tolist(), "x_g_eps": xe.tolist(), "x_g_eps_err": ee.tolist(),
           "variance_reduction": r.tolist(), "ess_flow": ess_flow, "ess_identity": ess_id,
           "var_log_w_removed": share,
           "mass": flow.mass[0].tolist(), "mass_err": flow.mass[1].tolist(),
           "chi2_dof": [float(r.fits[0].chi2_dof) for r in flow.results]}
    if cfg["pf_flow"]["enabled"] and cfg["fermions"]["enabled"]:   # the same flow without the pseudofermion map
        lw0 = RankStore.read_columns(ctx.path("evaluate.h5"), EVAL_KIND, ["log_w_no_pf"])["log_w_no_pf"][:n]
        res["ess_flow_no_pf"] = float(ess(lw0))
    r_med = float(np.median(r))
    costs = _stage_costs(ctx)
    c = cfg["cost"]
    paper = paper_example()
    res["cost_paper"] = {"c_flow": c["c_gen"] + c["c_flow"] + 2 * c["c_meas"] + c["c_rew"],
                         "c_eps": c["c_gen"] + c["c_meas"], "training": c["train_cost"], "unit": c["unit"]}
    res["cost_paper"]["break_even"] = {str(rr): float(break_even(rr, c["train_cost"], res["cost_paper"]["c_flow"],
                                                                 res["cost_paper"]["c_eps"])) for rr in (5.0, 10.0)}
    if costs is not None:
        c_eps = costs["generation"] + costs["measurement"]
        c_f = costs["generation"] + 2 * costs["measurement"] + costs["flow_and_reweighting"]
        be = float(break_even(r_med, costs["training"], c_f, c_eps)) if r_med * c_eps > c_f else float("inf")
        res["cost_measured"] = {"per_config_seconds": costs, "c_flow": c_f, "c_eps": c_eps, "r": r_med,
                                "break_even": be}
    if ctx.root:
        atomic_write(ctx.path("results.json"), json.dumps(res, indent=1).encode())
        plot_fh_scan({"flows": flow, "eps-reweighting": eps}, filename=str(ctx.path("x_g_vs_tmin.png")))
        # the M(lambda_1) fit of the middle t_min exactly as reported (same settings, same jackknife
        # bins), over the effective mass of the same folded data in the same bins
        k = len(t_mins) // 2
        plot_effective_mass(fold(C), flow.results[k].fits[0], T=T, bin_size=a["bin_size"],
                            filename=str(ctx.path("effective_mass.png")))
    return res, flow, eps


def _table(res) -> str:
    from analysis import format_value
    lines = [f"  {'t_min':>5s}  {'<x>_g flows':>14s}  {'<x>_g eps-rew':>14s}  {'r = var ratio':>13s}"]
    for i, t0 in enumerate(res["t_min"]):
        lines.append(f"  {t0:5d}  {format_value(res['x_g_flow'][i], res['x_g_flow_err'][i]):>14s}  "
                     f"{format_value(res['x_g_eps'][i], res['x_g_eps_err'][i]):>14s}  {res['variance_reduction'][i]:13.2f}")
    return "\n".join(lines)


def run(ctx: JobContext):
    res, flow, eps = analyze(ctx)
    ctx.say(f"\nFeynman-Hellmann <x>_g^latt = -(2/3M) dM/dlambda (paper eq. 17 convention), "
            f"{res['n_configs']} configurations, lambda {res['lam1']} -> {res['lam2']}, fits [t_min, {res['t_max']}]:")
    ctx.say(_table(res))
    ctx.say(f"median variance reduction r = {np.median(res['variance_reduction']):.2f}; "
            f"ESS of flow weights {res['ess_flow']:.3f} (plain reweighting without a flow: {res['ess_identity']:.3f}); "
            f"the flow removes {100 * res['var_log_w_removed']:.1f}% of var(log w)"
            + (f"; without the pseudofermion flow the ESS is {res['ess_flow_no_pf']:.3f}" if "ess_flow_no_pf" in res else ""))
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
