"""Conditional pseudofermion flow (paper section 3): ESS of the Nf = 2 determinant-ratio
reweighting with the identity map and with the trained map, for 1, 4 and 16 noise shots.

Setup (as ``bench_correlated.nf2_exact``): Wilson beta = 5.7, twisted mass kappa = 0.15,
a mu = 0.05, lambda_1 = 0 -> lambda_2 with lambda^2 V at half the paper's value on 4^4. The
gauge ("marginal") flow is the residual 48-layer model fitted by linear response with the exact
determinant in base and target (seconds); U' = f(U). The pseudofermion flow (16 layers,
network width 8) starts at the O(kappa^2) expansion of the zero-variance map
(:meth:`flows.PseudofermionFlow.hopping_init`) and is trained on 4^4 by reverse KL with path
gradients on the training configurations; identity, start ("kappa2") and trained maps are
evaluated on held-out configurations:

* 4^4: Nf = 2 configurations (twisted-mass HMC, one trajectory apart);
* 8^3 x 16 (not with ``--quick``): the same flows applied to quenched beta = 5.7 configurations
  (an Nf = 2 chain at this volume costs hours on 2 cores; the estimator's variance depends on U
  through M^'s spectrum, which the quenched sea changes little at this kappa). The "whole"
  reweighting there combines the gauge flow's log-weight with the determinant ratio as if the
  base were Nf = 2: a proxy of the variance, not a physics result.

Every configuration gets 16 shots with the identity map and 16 with the trained map (the same
noise); the k-shot estimates use the first k shots. Reported per lattice and k: ESS (eq. 11)
over configurations of the determinant-ratio factor alone and of the whole reweighting,
identity and trained (the reference of the ratio is the identity on the same noise), the
per-shot var(log w), the number of shots the trained map needs for the relative precision of
16 identity shots (16 var_rel(trained) / var_rel(identity), var_rel = var(w)/mean(w)^2 per
configuration, averaged), and the cost of the map per shot against the CG solve it rides on.
The paper: 4^4 ESS 99.4% -> 99.6%; 12^3 x 24 with four shots 53% -> 58%.
"""
from __future__ import annotations

import math
import time

import numpy as np

import lattice as L
from lattice.actions import Wilson
from lattice.hmc import run_hmc

from .bench_correlated import PAPER_LAM2V, BETA, chain, log_weights

KAPPA, MU = 0.15, 0.05
SHOTS = (1, 4, 16)


def _nf2_chain(S, shape, n, seed):
    from fermions import run_hmc_nf2
    U = L.random_gauge(shape, N=3, seed=seed)
    U, _ = run_hmc(S, U, n_traj=40, n_steps=8, seed=seed + 1, progress=False)
    out = []
    for i in range(n):
        U, _ = run_hmc_nf2(S, U, KAPPA, MU, n_traj=1, n_steps_fermion=5, seed=seed + 2 + i, progress=False)
        out.append(U)
    return np.stack(out)


def _shots(U, V, maps, lay, seed):
    """{name: (16, n_cfg) per-shot log w} for each pf map (None = identity) on the same noise,
    and {name: seconds}."""
    import fermions as F
    lw = {k: [] for k in maps}
    sec = {k: 0.0 for k in maps}
    for i in range(len(U)):
        for name, params in maps.items():
            t0 = time.perf_counter()
            pf_map = None if params is None else params[0].bind(params[1], U[i:i + 1], V[i:i + 1], lay)
            r = F.log_det_ratio(U[i:i + 1], V[i:i + 1], KAPPA, MU, n_shots=max(SHOTS), seed=seed + i, layout=lay,
                                pf_map=pf_map)
            sec[name] += time.perf_counter() - t0
            lw[name].append(np.asarray(r.log_weights)[:, 0])
    return {k: np.stack(v, 1) for k, v in lw.items()}, sec


def _rel_var(lw):
    """var(w)/mean(w)^2 over shots, per configuration."""
    w = np.exp(lw - lw.max(0))
    return np.var(w, axis=0, ddof=1) / np.mean(w, axis=0) ** 2


def _records(label, lw, lw_gauge, sec, t_map, **kw):
    """Records of one lattice: ESS per shot count and map, then the per-shot variances."""
    from analysis import ess
    from fermions import log_mean_exp
    recs = []
    n_cfg = lw["identity"].shape[1]
    t_cg = sec["identity"] / (n_cfg * max(SHOTS))
    for k in SHOTS:
        r = {"name": f"{label}, {k} shot{'s' if k > 1 else ''}", "seconds": sum(sec.values()) / n_cfg}
        for name, x in lw.items():
            W = log_mean_exp(x[:k], 0)
            r[f"ess_det_{name}"] = float(ess(W))
            r[f"ess_whole_{name}"] = float(ess(lw_gauge + W))
        recs.append({**r, "reference": "identity map on the same noise", "n_configs": n_cfg, **kw})
    v = {name: float(np.mean(np.var(x, 0, ddof=1))) for name, x in lw.items()}
    rv = {name: float(np.mean(_rel_var(x))) for name, x in lw.items()}
    r = {"name": f"{label}, per-shot variance", "seconds": sum(sec.values()) / n_cfg}
    for name in lw:
        r[f"var_log_w_{name}"] = v[name]
        if name != "identity":
            r[f"ratio_{name}"] = v[name] / v["identity"]
            r[f"shots_for_16_identity_{name}"] = 16 * rv[name] / rv["identity"] if rv["identity"] > 0 else float("nan")
    recs.append({**r, "map_seconds_per_shot": t_map, "cg_seconds_per_shot": t_cg, "map_cost_vs_cg": t_map / t_cg,
                 "reference": "identity map: per-shot var(log w) and CG time", **kw})
    return recs


def run(quick: bool = False):
    import flows
    from fermions import ExactNf2Determinant
    from flows.pseudofermion import PseudofermionFlow, PseudofermionObjective
    shape = (4, 4, 4, 4)
    lam2 = math.sqrt(PAPER_LAM2V / math.prod(shape)) / 2
    n_train, n_eval = (16, 6) if quick else (32, 16)
    steps = 4 if quick else 60
    lay = L.Layout(shape)
    S1, S2 = Wilson(BETA), Wilson(BETA, lam=lam2)
    det = ExactNf2Determinant(KAPPA, MU)
    cfgs = _nf2_chain(S1, shape, n_train + n_eval, seed=5)
    T1, T2 = flows.Target([flows.GaugeTarget(S1), det]), flows.Target([flows.GaugeTarget(S2), det])
    gauge = flows.residual_flow(4, 3, ("M2", "M4", "M2", "M4"), ("plaquette", "rectangle"))
    gp, _ = flows.linear_response_fit(gauge, gauge.init(0), cfgs[:n_train], T1, T2, layout=lay)
    V = np.concatenate([gauge.forward(gp, cfgs[i:i + 8], layout=lay)[0] for i in range(0, len(cfgs), 8)])
    model = PseudofermionFlow(16, hidden=8)
    p_k2 = model.hopping_init(model.init(0), KAPPA, MU)
    obj = PseudofermionObjective(cfgs, V, KAPPA, MU, n_shots=4, holdout=n_eval, layout=lay)
    t0 = time.perf_counter()
    p, hist = flows.train(model, p_k2, None, obj, steps=steps, batch_size=2, lr=1e-4, progress=False, seed=1)
    t_train = time.perf_counter() - t0
    maps = {"identity": None, "kappa2": (model, p_k2), "trained": (model, p)}
    kw = {"train_seconds": t_train, "train_steps": steps}
    recs = []
    lw_g = log_weights(gauge, gp, cfgs[n_train:], S1, S2, lay)          # -S2(f(U)) + S1(U) + log J
    lw, sec = _shots(cfgs[n_train:], V[n_train:], maps, lay, seed=100)
    t_map = _time_map(model, p, cfgs[:1], V[:1], lay)
    recs += _records("4^4 Nf=2", lw, lw_g, sec, t_map, lattice="4x4x4x4", **kw)
    if not quick:
        big = (8, 8, 8, 16)
        lb = L.Layout(big)
        Ub = chain(S1, big, 2, seed=31)
        Vb = np.concatenate([gauge.forward(gp, Ub[i:i + 1], layout=lb)[0] for i in range(len(Ub))])
        lw_g = log_weights(gauge, gp, Ub, S1, S2, lb)
        lw, sec = _shots(Ub, Vb, maps, lb, seed=200)
        t_map = _time_map(model, p, Ub[:1], Vb[:1], lb)
        recs += _records("8^3x16 quenched configurations (proxy)", lw, lw_g, sec, t_map, lattice="8x8x8x16", **kw)
    return recs


def _time_map(model, params, U, Up, lay, n_shots: int = 4):
    """Seconds per shot of the trained map (prepare + forward), measured on ``n_shots`` shots."""
    from fermions.det_ratio import draw_odd_noise
    from fermions.evenodd import even_odd
    half = even_odd(lay).half
    phi = draw_odd_noise(L.Rng(3), half, (n_shots, 1), 3)
    t0 = time.perf_counter()
    m = model.bind(params, U, Up, lay)
    m(phi)
    return (time.perf_counter() - t0) / n_shots
