"""`gaugeflow evaluate`: apply the trained flow to every configuration of the lambda_1
ensemble (any volume, any rank count) and compute its reweighting factor to lambda_2:

    log w(f(U)) = -S_lambda2(f(U)) + S_lambda1(U) + log J(U) + log[det M^dag M(f(U)) / det M^dag M(U)],

the last term (Nf = 2 only) estimated with `evaluate.n_shots` pseudofermion noise vectors on
the even-odd operator (`fermions.log_det_ratio`). With ``pf_flow.enabled`` the estimator uses the
trained conditional pseudofermion flow (`pf_flow.h5`) and, for comparison, also the identity
map on the same noise (`log_det_identity`, `log_w_no_pf`). Outputs `evaluate.h5` (per configuration:
log J, the action difference, the per-shot determinant log-weights, log w, and the log-weight
of plain reweighting without a flow, S_lambda1(U) - S_lambda2(U), for the share of var(log w)
that the flow removes) and `flowed.h5`
(the flowed ensemble f(U), labelled with the lambda_2 action). Resumes after a kill.

Inputs (checked before anything is written, :func:`check_inputs`): the lambda_1 ensemble,
`flow.h5` trained with this config's settings, and with ``pf_flow.enabled`` `pf_flow.h5`.
"""
from __future__ import annotations

import time

import numpy as np

from lattice.backend import derive_seed, to_host
from lattice.io import EnsembleStore

from ..context import JobContext, make_action, file_digest
from ..inputs import require_ensemble, require_file, run_checks
from ..records import RankStore, Column
from . import hmc as hmc_job
from .train import flow_path, check_flow_matches, check_pf_flow_matches, pf_flow_path

__all__ = ["run", "KIND", "check_inputs"]

KIND = "flow-evaluation"


def _uses_pf_flow(cfg) -> bool:
    return bool(cfg["fermions"]["enabled"] and cfg["evaluate"]["n_shots"] and cfg["pf_flow"]["enabled"])


def check_inputs(cfg: dict) -> None:
    """The lambda_1 ensemble, a `flow.h5` of this config's settings (:func:`check_flow_matches`)
    and, with ``pf_flow.enabled``, a matching `pf_flow.h5`: before anything is written."""
    require_ensemble(cfg, cfg["train"]["lam1"], "evaluate")
    train_first = "run `gaugeflow train` with this config first, or check job.output (--output)"
    flow = require_file(cfg, "flow.h5", "trained flow", train_first)
    check_flow_matches(cfg, flow)
    if _uses_pf_flow(cfg):
        pf = require_file(cfg, "pf_flow.h5", "pseudofermion flow",
                          train_first + "; with pf_flow.enabled = true `train` trains it after the gauge flow")
        check_pf_flow_matches(cfg, pf, flow)


def run(ctx: JobContext):
    import flows
    from analysis import ess
    cfg = ctx.cfg
    t, f = cfg["train"], cfg["fermions"]
    lam1, lam2 = t["lam1"], t["lam2"]
    S1, S2 = make_action(cfg, lam1), make_action(cfg, lam2)
    run_checks(ctx.comm, check_inputs, cfg)
    model, params = flows.load(flow_path(ctx), xp=ctx.xp)
    digest = file_digest(flow_path(ctx))
    n_shots = cfg["evaluate"]["n_shots"] if f["enabled"] else 0
    seed = cfg["job"]["seed"]          # configuration i: noise from derive_seed(seed, "evaluate", i)
    attrs = {"lam1": lam1, "lam2": lam2, "action1": S1.params(), "action2": S2.params(), "n_shots": n_shots,
             "fermions": hmc_job._fermion_settings(cfg) if f["enabled"] else "none", "seed": seed,
             "seed_streams": "lattice.derive_seed(seed, 'evaluate', i)", "flow_sha256": digest}
    use_pf = _uses_pf_flow(cfg)
    pf_model = pf_params = None
    if use_pf:
        from flows.pseudofermion import load_pf_flow
        pf_model, pf_params, _ = load_pf_flow(pf_flow_path(ctx), xp=ctx.xp)
        attrs["pf_flow_sha256"] = file_digest(pf_flow_path(ctx))
    ns = max(n_shots, 1)
    cols = {"index": Column((), "i8"), "logJ": Column(), "dS": Column(), "log_det": Column((ns,)),
            "log_det_W": Column(), "log_w": Column(), "log_w_identity": Column(),
            "log_det_identity": Column((ns,)), "log_det_W_identity": Column(), "log_w_no_pf": Column()}
    shape, N = tuple(cfg["lattice"]["shape"]), cfg["lattice"]["N"]
    src = EnsembleStore.open(hmc_job.ensemble_path(ctx, lam1), "r", layout=ctx.layout,
                             expect={"action": S1.params()})
    flowed = EnsembleStore.open_or_create(ctx.path("flowed.h5"), lattice_shape=shape, N=N, action=S2.params(),
                                          meta={"flow_sha256": digest, "lam1": lam1}, layout=ctx.layout)
    t0 = time.perf_counter()
    with src, flowed, RankStore(ctx.layout, ctx.path("evaluate.h5"), kind=KIND, attrs=attrs, columns=cols) as out:
        n = len(src)
        start = min(out.n, len(flowed))
        if start:
            ctx.say(f"resuming evaluation at configuration {start} of {n}")
        bar = None
        if ctx.progress:
            from lattice.progress import progress_bar
            bar = progress_bar(n, initial=start, desc="evaluate", unit="cfg")
        for i in range(start, n):
            U = src.read(i, xp=ctx.xp)[None, ...]
            V, logJ = model.forward(params, U, layout=ctx.layout)
            s1 = S1.action(U, ctx.layout)[0]
            s2, s2_id = S2.action(V, ctx.layout)[0], S2.action(U, ctx.layout)[0]
            dS = float(s2 - s1)
            lj = float(logJ[0])
            shots, lW = np.zeros(1), 0.0
            if n_shots:
                from fermions import log_det_ratio

                def ratio(pf_map=None):
                    r = log_det_ratio(U, V, f["kappa"], f["mu"], n_shots, derive_seed(seed, "evaluate", i),
                                      tol=f["cg_tol"], maxiter=f["cg_maxiter"], layout=ctx.layout, bc=f["bc_time"],
                                      pf_map=pf_map)
                    return np.asarray(to_host(r.log_weights), float).reshape(n_shots), float(to_host(r.log_W).reshape(()))
                shots, lW = ratio()
            shots_id, lW_id = shots, lW
            if use_pf:     # the same noise through the trained map
                shots, lW = ratio(pf_model.bind(pf_params, U, V, ctx.layout))
            if len(flowed) <= i:
                flowed.append(V[0, ...], index=i, logJ=lj)
            # log w = -S_lambda2(f(U)) + S_lambda1(U) + log J + log det ratio (flows.log_weight)
            log_p, log_r = -float(s2), -float(s1)
            out.append({"index": i, "logJ": lj, "dS": dS, "log_det": shots, "log_det_W": lW,
                        "log_w": flows.log_weight(log_p, log_r, lj, lW),
                        "log_w_identity": flows.log_weight(-float(s2_id), log_r), "log_det_identity": shots_id,
                        "log_det_W_identity": lW_id, "log_w_no_pf": flows.log_weight(log_p, log_r, lj, lW_id)})
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        lw, lw_id = out.column("log_w"), out.column("log_w_identity")
        if use_pf:
            pf_cols = {k: out.column(k) for k in ("log_w_no_pf", "log_det", "log_det_identity", "log_det_W",
                                                  "log_det_W_identity")}
    elapsed = time.perf_counter() - t0
    if n > start:
        ctx.record_timing("evaluate", elapsed, n - start)
    v, v0 = float(np.var(lw)), float(np.var(lw_id))
    ctx.say(f"evaluated {len(lw)} configurations (lambda {lam1} -> {lam2}{', %d noise shots' % n_shots if n_shots else ''}): "
            f"ESS {ess(lw_id):.3f} without the flow -> {ess(lw):.3f} with it; var(log w) {v0:.4g} -> {v:.4g}, "
            f"{100 * (1 - v / v0) if v0 > 0 else 0.0:.1f}% removed")
    if use_pf:
        c = pf_cols
        var_id = float(np.mean(np.var(c["log_det_identity"], axis=1, ddof=1))) if n_shots > 1 else float("nan")
        var_pf = float(np.mean(np.var(c["log_det"], axis=1, ddof=1))) if n_shots > 1 else float("nan")
        ctx.say(f"pseudofermion flow ({n_shots} shots): per-shot var(log w_det) {var_id:.4g} (identity) -> {var_pf:.4g} "
                f"(trained); ESS of the determinant ratio alone {ess(c['log_det_W_identity']):.3f} -> "
                f"{ess(c['log_det_W']):.3f}; ESS of the whole reweighting {ess(c['log_w_no_pf']):.3f} -> {ess(lw):.3f}")
    return ctx.path("evaluate.h5")
