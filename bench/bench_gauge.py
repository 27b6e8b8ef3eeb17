"""Gauge-field kernels: plaquette and force (Wilson, Luscher-Weisz) on 8^4 and 12^3x24 in
float64, as effective bandwidth relative to the copy bandwidth measured in the same run,
and pure-gauge HMC trajectories per minute on 8^4.

Effective bytes: the unavoidable traffic, reading the links (Nd * N^2 * 16 bytes per site)
and, for the force, writing it (the same again); the plaquette writes nothing."""
from __future__ import annotations

import time

import lattice as L
from lattice.actions import Wilson, LuscherWeisz
from lattice import hmc

from .common import best_time, copy_bandwidth


def run(quick: bool = False):
    bw = copy_bandwidth()
    recs = [{"name": "copy bandwidth (reference)", "seconds": 0.0, "GB_per_s": bw / 1e9}]
    shapes = [(8, 8, 8, 8)] if quick else [(8, 8, 8, 8), (12, 12, 12, 24)]
    for shape in shapes:
        lay = L.Layout(shape)
        U = L.random_gauge(shape, seed=1, layout=lay)
        link_bytes = U.nbytes
        tag = "x".join(map(str, shape))
        t = best_time(lambda: L.plaquette(U, lay))
        recs.append({"name": f"plaquette {tag}", "seconds": t, "GB_per_s": link_bytes / t / 1e9,
                     "ratio": link_bytes / t / bw, "reference": "copy bandwidth"})
        for act in (Wilson(5.7), LuscherWeisz(3.8)):
            t = best_time(lambda: act.force(U, lay), repeat=2)
            recs.append({"name": f"force {act.name} {tag}", "seconds": t,
                         "GB_per_s": 2 * link_bytes / t / 1e9, "ratio": 2 * link_bytes / t / bw,
                         "reference": "copy bandwidth"})
    shape = (8, 8, 8, 8)
    U = L.random_gauge(shape, seed=2)
    n = 2 if quick else 5
    t0 = time.perf_counter()
    hmc.run_hmc(Wilson(5.7), U, n, tau=1.0, n_steps=10, progress=False)
    dt = (time.perf_counter() - t0) / n
    recs.append({"name": "HMC Wilson 8^4 (tau=1, 10 Omelyan steps)", "seconds": dt,
                 "traj_per_min": 60.0 / dt})
    return recs
