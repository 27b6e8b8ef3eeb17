"""Eigen-decomposition and spectral map of SU(3) matrices, one per site of an 8^4 lattice
(4096 matrices), in complex128 and complex64: forward, forward + VJP, inverse + inverse VJP,
per site, with two references measured in the same run:

* ``eigh``: a plain batched ``xp.linalg.eigh`` of Hermitian matrices of the same shape (the
  one LAPACK call inside :func:`flows.eigen_angles`); ``eigh_share`` = t(eigh) / t(piece);
* ``copy``: copying the batch (read + write of 4096 x 9 complex numbers), the bandwidth floor.

The spectral map uses the default angle map (rational-quadratic splines, K = 8, n_basis = 3,
100 conditioning numbers per matrix) with random conditioning of scale 0.5.
"""
from __future__ import annotations

import numpy as np

from lattice.backend import Rng
from lattice import su_n
from flows.eig import eigen_angles
from flows.spectral import SpectralMap

from .common import best_time


def run(quick: bool = False):
    shape = (4, 4, 4, 4) if quick else (8, 8, 8, 8)
    nsite = int(np.prod(shape))
    tag = "x".join(map(str, shape))
    sm = SpectralMap(3)
    recs = []
    repeat = 2 if quick else 3
    for dt, rdt in ((np.complex128, np.float64), (np.complex64, np.float32)):
        name = np.dtype(dt).name
        W = Rng(1).haar(3, lead=shape).astype(dt)
        H = 0.5 * (W + su_n.dagger(W))                      # a generic Hermitian batch
        cond = (np.random.default_rng(0).normal(size=shape + (sm.n_cond,)) * 0.5).astype(rdt)
        G = (Rng(2).complex_normal(shape + (3, 3))).astype(dt)
        lbar = np.ones(shape)

        t_copy = best_time(lambda: W.copy(), repeat=5)
        t_eigh = best_time(lambda: np.linalg.eigh(H), repeat=repeat)
        recs.append({"name": f"copy {tag} SU(3) {name} (reference)", "seconds": t_copy,
                     "us_per_site": 1e6 * t_copy / nsite, "GB_per_s": 2 * W.nbytes / t_copy / 1e9})
        recs.append({"name": f"eigh {tag} 3x3 {name} (reference)", "seconds": t_eigh,
                     "us_per_site": 1e6 * t_eigh / nsite, "ratio": t_eigh / t_copy, "reference": "copy"})

        def fwd():
            return sm.forward({}, W, cond)

        def fwd_vjp():
            (Wn, ld), ctx = sm.forward({}, W, cond)
            return sm.vjp({}, ctx, G, lbar)

        (Wn, _), _ = sm.forward({}, W, cond)

        def inv_vjp():
            (Wr, ld), ctx = sm.inverse({}, Wn, cond)
            return sm.inverse_vjp({}, ctx, G, lbar)

        for label, fn in (("eigen_angles", lambda: eigen_angles(W)), ("spectral forward", fwd),
                          ("spectral forward+VJP", fwd_vjp), ("spectral inverse+VJP", inv_vjp)):
            t = best_time(fn, repeat=repeat)
            recs.append({"name": f"{label} {tag} {name}", "seconds": t, "us_per_site": 1e6 * t / nsite,
                         "eigh_share": t_eigh / t, "ratio": t / t_eigh, "reference": "eigh"})
    return recs


if __name__ == "__main__":  # pragma: no cover
    for r in run():
        print(r)
