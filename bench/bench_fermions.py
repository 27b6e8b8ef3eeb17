"""Fermion benchmarks: hopping term and Schur complement (GFLOP/s, bandwidth roofline), CG at the
paper's kappa and mu on a thermalised pure-gauge configuration, dense log det at 4^4.

References measured in the same run:
* the hopping term and M^ run through lattice.kernels, i.e. the compiled path for NumPy arrays
  (bench_kernels_hopping compares it with the array-API reference).
* roofline: the Wilson hopping term moves at least 2880 bytes per site in double precision
  (8 neighbour spinors 8 x 192 B, 8 links 8 x 144 B, one output spinor 192 B) for 1320 flops;
  ratio = (2880 V / copy bandwidth) / measured time, copy bandwidth from ``bench.common``.
  M^ = A - kappa^2 H_oe A^-1 H_eo applies the hopping term once per site (half the sites each
  way) and is counted with the same 1320 flops / 2880 bytes per site.
* gauge configuration: Wilson beta = 5.7 (stand-in for the paper's LW beta = 3.8 ensemble):
  thermalised on a lattice of half the extent (cold start, n_therm/2 MD-only trajectories, then
  n_therm/2 HMC trajectories), tiled 2x in every direction and evolved by a few more HMC
  trajectories at full size (plaquette thermalised; a stand-in for CG costs, not a
  decorrelated ensemble).
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np

import lattice as L
from lattice import hmc
from lattice.actions import Wilson
import fermions as F
from fermions.wilson import to_soa

from .common import best_time, copy_bandwidth

KAPPA, MU = 0.164111, 0.012
BYTES_PER_SITE = 2880
FLOPS_PER_SITE = 1320


def thermalised_config(shape, beta=5.7, n_therm=40, n_full=3, seed=1):
    """Cold start on shape/2: n_therm/2 MD-only trajectories (no accept/reject, so the large
    energy changes out of the cold start cannot freeze the chain), n_therm/2 HMC trajectories;
    tile 2x in every direction; n_full HMC trajectories at full size."""
    act = Wilson(beta)
    small = tuple(s // 2 for s in shape)
    U = L.unit_gauge(small)
    U, _ = hmc.run_hmc(act, U, n_therm // 2, tau=1.0, n_steps=10, seed=seed, progress=False, metropolis=False)
    U, h1 = hmc.run_hmc(act, U, n_therm - n_therm // 2, tau=1.0, n_steps=10, seed=seed, start_traj=n_therm,
                        progress=False)
    U = np.tile(U, (1, 2, 2, 2, 2, 1, 1))
    U, hist = hmc.run_hmc(act, U, n_full, tau=1.0, n_steps=16, seed=seed + 1, progress=False)
    acc = [h.accepted[0] for h in h1] + [h.accepted[0] for h in hist]
    return U, float(L.plaquette(U)), acc


def _kernel_records(shape, bw, quick):
    recs = []
    V = int(np.prod(shape))
    U = L.random_gauge(shape, seed=1)
    op = F.TwistedMassWilson(U, KAPPA, MU, check=False)
    psi = L.Rng(2).complex_normal(layout=op.layout, inner=(4, 3))
    roof = BYTES_PER_SITE * V / bw
    rep = 3 if quick else 5
    s = to_soa(psi)
    t_h = best_time(lambda: op.links.hop(s), repeat=rep)
    t_hp = best_time(lambda: op.hopping(psi), repeat=rep)
    lat = "x".join(map(str, shape))
    recs.append({"name": f"hopping H {lat} (internal layout)", "seconds": t_h,
                 "gflops": FLOPS_PER_SITE * V / t_h / 1e9, "ratio": roof / t_h,
                 "reference": "memory-bandwidth roofline 2880 B/site at the measured copy bandwidth"})
    recs.append({"name": f"hopping H {lat} (public, incl. layout conversion)", "seconds": t_hp,
                 "gflops": FLOPS_PER_SITE * V / t_hp / 1e9, "ratio": roof / t_hp,
                 "reference": "memory-bandwidth roofline"})
    _, po = op.pack(psi)
    so = to_soa(po)
    t_s = best_time(lambda: op._schur(so), repeat=rep)
    t_sp = best_time(lambda: op.apply_schur(po), repeat=rep)
    recs.append({"name": f"Schur M^ {lat} (internal layout)", "seconds": t_s,
                 "gflops": FLOPS_PER_SITE * V / t_s / 1e9, "ratio": roof / t_s,
                 "reference": "memory-bandwidth roofline (1320 flop, 2880 B per site)"})
    recs.append({"name": f"Schur M^ {lat} (public)", "seconds": t_sp,
                 "gflops": FLOPS_PER_SITE * V / t_sp / 1e9, "ratio": roof / t_sp,
                 "reference": "memory-bandwidth roofline"})
    op32 = op.astype(np.complex64)
    s32 = to_soa(po.astype(np.complex64))
    t_32 = best_time(lambda: op32._schur(s32), repeat=rep)
    recs.append({"name": f"Schur M^ {lat} complex64 (internal)", "seconds": t_32,
                 "gflops": FLOPS_PER_SITE * V / t_32 / 1e9, "ratio": (roof / 2) / t_32,
                 "reference": "single-precision roofline 1440 B/site"})
    return recs


def _cg_records(U, plaq, acc, quick):
    recs = []
    shape = tuple(U.shape[1:5])
    lat = "x".join(map(str, shape))
    V = int(np.prod(shape))
    op = F.TwistedMassWilson(U, KAPPA, MU)
    b = L.Rng(3).complex_normal(layout=op.half_layout, inner=(4, 3))
    for precision in ("double", "mixed"):
        kw = {} if precision == "double" else {"apply_A_low": op.astype(np.complex64).apply_schur_normal}
        t0 = time.perf_counter()
        x, info = F.cg(op.apply_schur_normal, b, tol=1e-10, layout=op.half_layout, **kw)
        t = time.perf_counter() - t0
        r = b - op.apply_schur_normal(x)
        rel = float(np.sqrt(np.vdot(r, r).real / np.vdot(b, b).real))
        its = info.iterations
        recs.append({"name": f"CG M^dag M^ {lat} to 1e-10 ({precision})", "seconds": t,
                     "iterations": its, "low_precision_iterations": info.low_iterations,
                     "true_residual": rel, "ms_per_iteration": 1e3 * t / max(its, 1),
                     "gflops_operator": 2 * FLOPS_PER_SITE * V * its / t / 1e9,
                     "kappa": KAPPA, "mu": MU, "config": f"Wilson beta=5.7, plaquette {plaq:.4f}",
                     "hmc_accepted": f"{sum(acc)}/{len(acc)}"})
    t0 = time.perf_counter()
    psi, sinfo = op.solve(L.Rng(4).complex_normal(layout=op.layout, inner=(4, 3)), tol=1e-10)
    recs.append({"name": f"full solve M psi = b {lat} (even-odd, tol 1e-10)", "seconds": time.perf_counter() - t0,
                 "iterations": sinfo.cg.iterations, "full_residual": sinfo.residual})
    return recs


def _dense_records(quick):
    shape = (4, 4, 4, 4)
    U = L.random_gauge(shape, seed=5)
    tracemalloc.start()
    t0 = time.perf_counter()
    ld = F.dense_log_det(U, KAPPA, MU)
    t_ld = time.perf_counter() - t0
    peak_ld = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    recs = [{"name": "dense log det M^dag M 4^4 (M^ 1536x1536)", "seconds": t_ld,
             "peak_MiB": peak_ld / 2 ** 20, "log_det": float(ld)}]
    if not quick:
        t0 = time.perf_counter()
        ld2, Fr = F.dense_log_det_force(U, KAPPA, MU)
        t_f = time.perf_counter() - t0
        peak_f = tracemalloc.get_traced_memory()[1]
        recs.append({"name": "dense log det + exact force 4^4", "seconds": t_f, "peak_MiB": peak_f / 2 ** 20})
    tracemalloc.stop()
    return recs


def _det_ratio_records(U, quick):
    """Accuracy of the log-weights: default tol 1e-10 against tol 1e-13 (same noise)."""
    shape = tuple(U.shape[1:5])
    lat = "x".join(map(str, shape))
    X = L.su_n.random_algebra(L.Rng(9), 3, lead=U.shape[:-2], scale=0.002)
    Up = L.su_n.expm(X) @ U
    t0 = time.perf_counter()
    a = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=2, seed=1, tol=1e-10)
    t = time.perf_counter() - t0
    b = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=2, seed=1, tol=1e-13)
    n = 2 * 3 * int(np.prod(shape))
    return [{"name": f"det ratio {lat}, 2 shots, tol 1e-10", "seconds": t, "iterations": a.cg.iterations,
             "exponent_scale": n, "log_weights": [float(v) for v in a.log_weights],
             "max_abs_error_vs_tol_1e-13": float(np.max(np.abs(a.log_weights - b.log_weights)))}]


def run(quick: bool = False):
    bw = copy_bandwidth()
    recs = [{"name": "copy bandwidth (reference)", "seconds": 0.0, "GB_per_s": bw / 1e9}]
    for shape in ([(8, 8, 8, 16)] if quick else [(8, 8, 8, 16), (12, 12, 12, 24)]):
        recs += _kernel_records(shape, bw, quick)
    cg_shapes = [(4, 4, 4, 8)] if quick else [(8, 8, 8, 16), (12, 12, 12, 24)]
    for shape in cg_shapes:
        t0 = time.perf_counter()
        U, plaq, acc = thermalised_config(shape, n_therm=10 if quick else 40)
        recs.append({"name": f"generate beta=5.7 config {'x'.join(map(str, shape))}",
                     "seconds": time.perf_counter() - t0, "plaquette": plaq})
        recs += _cg_records(U, plaq, acc, quick)
        if shape == cg_shapes[-1]:
            recs += _det_ratio_records(U, quick)
    recs += _dense_records(quick)
    return recs
