"""Correlated-ensemble flows lambda_1 = 0 -> lambda_2 (paper section 3): how much of var(log w)
each flow removes, at the paper's lambda^2 V.

Quenched SU(3) Wilson beta = 5.7. Flows are trained (or fitted) on 4^4 and evaluated on an
independent chain at a larger volume, 8^3 x 16 (``--quick``: 4^3 x 8), with lambda_2 chosen
so that lambda^2 V equals the paper's 12^3 x 24, lambda = 0.005 (lambda^2 V = 1.037; var(log w)
of plain reweighting is proportional to lambda^2 V): lambda_2 = 0.01125 on 8^3 x 16. The
reference of every ratio is the identity flow (plain reweighting) on the same
configurations: ``removed`` = 1 - var(log w) / var(log w_identity) (the paper's marginal model
removes about 90%), with the ESS (eq. 11) of both.

Flows:
* spectral: learned active loops, 8 direction layers (the project's section 2 model),
  reverse KL with path gradients (``steps`` steps, lr 1e-4);
* residual, linear response: 48 layers M2 M4 M2 M4, plaquette + rectangle terms (and with
  chairs), constants fitted by one least-squares solve (no gradient training);
* residual, trained: plaquette + rectangle terms with field-dependent coefficients, started
  from the linear-response fit and refined by reverse KL with path gradients (Adam, 40 steps).
Nf = 2 at 4^4 with the exact determinant (twisted mass, kappa = 0.15, a mu = 0.05, Wilson
beta = 5.7): the residual linear-response flow with the fermion force in its target.

Training and evaluation ensembles are made here by HMC (minutes); each record carries the
training time in ``train_seconds``.
"""
from __future__ import annotations

import math
import time

import numpy as np

import lattice as L
from lattice.actions import Wilson
from lattice.hmc import run_hmc

PAPER_LAM2V = 0.005 ** 2 * 12 ** 3 * 24
BETA = 5.7


def chain(action, shape, n, sep=2, n_therm=60, seed=0, layout=None):
    """n configurations of an HMC chain at ``action`` (hot start, ``sep`` trajectories apart)."""
    U = L.random_gauge(shape, N=3, seed=seed)
    U, _ = run_hmc(action, U, n_traj=n_therm, n_steps=8, seed=seed + 1, progress=False)
    out = []
    for i in range(n):
        U, _ = run_hmc(action, U, n_traj=sep, n_steps=8, seed=seed + 2 + i, progress=False)
        out.append(U)
    return np.stack(out)


def log_weights(model, params, cfgs, S1, S2, lay, extra=None, batch=8):
    """log w = -S2(f(U)) + S1(U) + log J (+ extra(U, f(U))) per configuration, float64."""
    out = []
    for i in range(0, len(cfgs), batch):
        U = cfgs[i:i + batch]
        if model is None:
            V, ld = U, 0.0
        else:
            V, ld = model.forward(params, U, layout=lay)
        lw = -S2.action(V, layout=lay) + S1.action(U, layout=lay) + ld
        if extra is not None:
            lw = lw + extra(U, V)
        out.append(np.asarray(lw))
    return np.concatenate(out)


def _record(name, lw, lw_id, shape, lam2, t_train, **kw):
    from analysis import ess
    v, v0 = float(np.var(lw)), float(np.var(lw_id))
    return {"name": name, "seconds": t_train, "train_seconds": t_train, "lattice": "x".join(map(str, shape)),
            "lam2": lam2, "removed": 1.0 - v / v0, "var_log_w": v, "var_log_w_identity": v0,
            "ess": float(ess(lw)), "ess_identity": float(ess(lw_id)), "n_configs": int(len(lw)),
            "reference": "identity flow on the same configurations", **kw}


def quenched(quick: bool):
    import flows
    train_shape = (4, 4, 4, 4)
    eval_shape = (4, 4, 4, 8) if quick else (8, 8, 8, 16)
    V = math.prod(eval_shape)
    lam2 = math.sqrt(PAPER_LAM2V / V)
    n_train, n_eval = (48, 24) if quick else (160, 32)
    S1, S2 = Wilson(BETA), Wilson(BETA, lam=lam2)
    T1, T2 = flows.GaugeTarget(S1), flows.GaugeTarget(S2)
    lay_t, lay_e = L.Layout(train_shape), L.Layout(eval_shape)
    ens_t = chain(S1, train_shape, n_train + 32, seed=11)
    ens_e = chain(S1, eval_shape, n_eval, seed=23)
    base = flows.EnsembleBase(ens_t, T1, holdout=32, layout=lay_t)
    lw_id = log_weights(None, None, ens_e, S1, S2, lay_e)
    recs = [_record("identity (plain reweighting)", lw_id, lw_id, eval_shape, lam2, 0.0)]

    # spectral, learned loops, 8 layers
    steps = 10 if quick else 100
    model = flows.SpectralFlow(4, 3, 8, "learned", schedule="simple", context_hidden=(8, 8))
    p = model.init(0)
    t0 = time.perf_counter()
    p, _ = flows.train(model, p, T2, base, steps=steps, batch_size=4, lr=1e-4, warmup=min(10, steps // 2),
                       progress=False, layout=lay_t, seed=1)
    t = time.perf_counter() - t0
    recs.append(_record(f"spectral learned 8 layers, {steps} steps", log_weights(model, p, ens_e, S1, S2, lay_e),
                        lw_id, eval_shape, lam2, t))

    # residual, linear response only; then trained with field-dependent coefficients
    for fd, fams in ((False, ("plaquette", "rectangle")), (False, ("plaquette", "rectangle", "chair")),
                     (True, ("plaquette", "rectangle"))):
        if quick and "chair" in fams:
            continue
        model = flows.residual_flow(4, 3, ("M2", "M4", "M2", "M4"), fams, field_dependent=fd,
                                    context_hidden=(4,), context_kernel=1)
        p = model.init(0)
        t0 = time.perf_counter()
        p, fit = flows.linear_response_fit(model, p, base.configs[:base.n_train], T1, T2, layout=lay_t)
        steps = 0
        if fd:
            steps = 4 if quick else 40
            p, _ = flows.train(model, p, T2, base, steps=steps, batch_size=8, lr=3e-3, progress=False,
                               layout=lay_t, seed=2)
        t = time.perf_counter() - t0
        name = (f"residual 48 layers {'+'.join(fams)}: " +
                (f"field-dependent, linear response + {steps} steps" if fd else "constants, linear response"))
        recs.append(_record(name, log_weights(model, p, ens_e, S1, S2, lay_e), lw_id, eval_shape, lam2, t,
                            removed_first_order_fit=fit.share_removed))
    return recs


def nf2_exact(quick: bool):
    """Nf = 2 at 4^4: base and target include the exact log det(M^dag M) (dense)."""
    import flows
    from fermions import run_hmc_nf2, ExactNf2Determinant
    shape = (4, 4, 4, 4)
    kappa, mu = 0.15, 0.05
    lam2 = math.sqrt(PAPER_LAM2V / math.prod(shape)) / 2
    n = 24 if quick else 64
    lay = L.Layout(shape)
    S1, S2 = Wilson(BETA), Wilson(BETA, lam=lam2)
    det = ExactNf2Determinant(kappa, mu)
    U = L.random_gauge(shape, N=3, seed=5)
    U, _ = run_hmc(S1, U, n_traj=40, n_steps=8, seed=6, progress=False)
    cfgs = []
    for i in range(n):
        U, _ = run_hmc_nf2(S1, U, kappa, mu, n_traj=1, n_steps_fermion=5, seed=7 + i, progress=False)
        cfgs.append(U)
    cfgs = np.stack(cfgs)
    h = n // 3
    T1, T2 = flows.Target([flows.GaugeTarget(S1), det]), flows.Target([flows.GaugeTarget(S2), det])
    model = flows.residual_flow(4, 3, ("M2", "M4", "M2", "M4"), ("plaquette", "rectangle"))
    t0 = time.perf_counter()
    p, fit = flows.linear_response_fit(model, model.init(0), cfgs[:-h], T1, T2, layout=lay)
    t = time.perf_counter() - t0
    held = cfgs[-h:]
    ratio = lambda U, V: det.log_prob(V, lay) - det.log_prob(U, lay)
    lw_id = log_weights(None, None, held, S1, S2, lay)
    lw = log_weights(model, p, held, S1, S2, lay, extra=ratio)
    return [_record("Nf=2 exact det, residual 48 layers, linear response", lw, lw_id, shape, lam2, t,
                    removed_first_order_fit=fit.share_removed)]


def demo_r():
    """The Feynman-Hellmann variance ratio r of the last `make demo` (out/demo/results.json)."""
    import json
    from pathlib import Path
    p = Path("out/demo/results.json")
    if not p.exists():
        return []
    res = json.loads(p.read_text())
    if "variance_reduction" not in res:        # analyzed without a flowed ensemble: no r
        return []
    return [{"name": "make demo: median r (last run)", "seconds": 0.0, "r": float(np.median(res["variance_reduction"])),
             "removed": res.get("var_log_w_removed", float("nan")), "ess": res["ess_flow"],
             "ess_identity": res["ess_identity"], "reference": "epsilon-reweighting on the same ensemble"}]


def run(quick: bool = False):
    return quenched(quick) + nf2_exact(quick) + demo_r()
