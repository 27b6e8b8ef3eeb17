"""Per-configuration costs of the workflow's stages (paper eq. 19) at 8^3 x 16 and 12^3 x 24,
and the wall times of the last `make demo` run.

Eq. 19: COST(eps-rew) = generation + measurement; COST(flows) = generation + training +
flow eval. + 2 x measurement + reweighting. The paper's A100 figures per configuration are
generation 0.17, measurement 0.17, flow evaluation 0.01, reweighting 0.04 GPU h, i.e. relative
to generation 1 : 1 : 0.06 : 0.24. Here every cost is measured on one CPU core on one
configuration and reported with its ratio to the generation cost measured in the same run
(the reference), next to the paper's ratio.

Settings (the paper's, eq. 18: kappa = 0.164111, a mu = 0.012, CG to 1e-10; the gauge
configuration is the thermalised Wilson beta = 5.7 stand-in of bench_fermions, with similar
CG iteration counts):
* generation: one Nf = 2 trajectory of `paper-12c24.toml` (Omelyan, 8 outer steps with the
  pseudofermion force, 6 inner Luscher-Weisz steps each) = 17 pseudofermion forces + 1 action
  solve + 8 x 2 x 6 x 2 = 192 gauge forces, composed from one measured pseudofermion force
  (incl. its CG solve) and one measured LW force. One trajectory per configuration (the
  paper's trajectory spacing is not stated; multiply by it).
* flow evaluation: forward pass (with log J) of the 48-layer learned-loop flow, measured on
  4 layers (direction updates of the paper schedule) and scaled by 12.
* reweighting: the determinant ratio with 4 pseudofermion shots (2 CG solves per shot, on U and
  f(U)), measured with 1 shot and scaled by 4; plus the two gauge actions.
* measurement: pion correlator with 16 stochastic timeslice sources, measured with 1 source
  and scaled by 16, plus the Feynman-Hellmann operator O.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import lattice as L
from lattice.actions import LuscherWeisz

from .bench_fermions import thermalised_config, KAPPA, MU

PAPER = {"generation": 0.17, "measurement": 0.17, "flow evaluation": 0.01, "reweighting": 0.04}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _costs(shape, n_layers_measured=4, n_layers=48):
    import flows
    import fermions as F
    U, plaq, _ = thermalised_config(shape, n_therm=20, n_full=1)
    U = U[None]
    lay = L.Layout(shape)
    S = LuscherWeisz(3.8, lam=0.005)
    t_gauge, _ = _timed(lambda: S.force(U, lay))
    pf = F.PseudofermionNf2(KAPPA, MU, action_tol=1e-10)
    pf.refresh(U, L.Rng(3), layout=lay)
    t_pf, _ = _timed(lambda: pf.force(U, lay))
    its = pf.cg_iterations[-1][1]
    t_gen = 18 * t_pf + 192 * t_gauge
    model = flows.SpectralFlow(4, 3, n_layers_measured, "learned", schedule="paper", context_channels=16)
    params = model.init(0)
    t_fl, (V, logJ) = _timed(lambda: model.forward(params, U, layout=lay))
    t_flow = t_fl * n_layers / n_layers_measured
    t_rw, _ = _timed(lambda: (F.log_det_ratio(U, V, KAPPA, MU, n_shots=1, seed=5, layout=lay),
                              S.action(V, lay), S.action(U, lay)))
    t_rew = 4 * t_rw
    t_ms, _ = _timed(lambda: (F.pion_correlator(U, KAPPA, MU, n_sources=1, seed=7, layout=lay), S.operator(U, lay)))
    t_meas = 16 * t_ms
    lat = "x".join(map(str, shape))
    parts = {"generation": t_gen, "measurement": t_meas, "flow evaluation": t_flow, "reweighting": t_rew}
    recs = []
    for k, v in parts.items():
        recs.append({"name": f"{k} per config {lat}", "seconds": v, "ratio": v / t_gen,
                     "paper_ratio": PAPER[k] / PAPER["generation"],
                     "reference": "generation cost per configuration, same run (paper: A100 GPU h ratios)"})
    c_eps = t_gen + t_meas
    c_flow = t_gen + t_flow + 2 * t_meas + t_rew
    recs.append({"name": f"eq. 19 per-config cost ratio flows/eps {lat}", "seconds": c_flow, "ratio": c_flow / c_eps,
                 "paper_ratio": (0.17 + 0.01 + 2 * 0.17 + 0.04) / (0.17 + 0.17), "cg_iterations": its,
                 "plaquette": plaq, "reference": "COST(eps-rew) per configuration, same run"})
    return recs


def _demo_wall_times():
    """Stage wall times of the last demo run (out/demo/timings.json), if there is one."""
    p = Path("out/demo/timings.json")
    if not p.exists():
        return []
    t = json.loads(p.read_text())
    total = sum(v["seconds"] for v in t.values())
    return [{"name": f"demo stage {k} ({v['n_configs']} configs)", "seconds": v["seconds"],
             "ratio": v["seconds"] / total, "reference": "total demo wall time of the recorded stages"}
            for k, v in t.items()]


def run(quick: bool = False):
    shapes = [(4, 4, 4, 8)] if quick else [(8, 8, 8, 16), (12, 12, 12, 24)]
    recs = []
    for s in shapes:
        recs += _costs(s)
    return recs + _demo_wall_times()
