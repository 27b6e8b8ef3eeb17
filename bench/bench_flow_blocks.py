"""Flow building blocks: projection, staple network, context network (forward and forward+VJP).

Per-site times on an 8^4 lattice (4^4 with --quick), complex128 and complex64, with references
measured in the same run:

* ``copy``: copying the gauge field (memory bandwidth: GB/s = 2 x bytes / time);
* ``svd``: a plain ``xp.linalg.svd`` of the batch of 3x3 matrices that the projection sees;
  ``svd_share`` of a projection record is t_svd / t_record;
* ``matmul``: one stacked 3x3 product per site (``U_0 @ U_0``); ``matmul_equiv`` of a record is
  its time in units of that product (the staple net and the loops are chains of such products).

Staple net: N_l = 2 mixing layers, N_h = 8, active direction 0 on the even sites.
Residual layers (complex128): one M2 layer with plaquette terms and one M4 layer with plaquette,
rectangle and chair terms (constants), forward and forward+VJP, and the per-link 8 x 8
algebra alone (X, ad X, phi(ad X) by 20 Horner terms, D, J, J^-1, log det J) on the M2
layer's active links; ``algebra_share`` of a residual record is t_algebra / t_record (the rest
is the staple path products on the whole lattice).
Context net: plaquette + rectangle features, hidden (16, 16), kernel 3, 16 outputs per site.
Time per site = time / (batch x volume); ``ratio`` = time / time of the copy reference.
"""
from __future__ import annotations

import time

import flows
from lattice import Layout, random_gauge
from lattice.backend import Rng, default_xp


def _best(fn, reps):
    fn()  # warm-up (allocations, caches)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _best_interleaved(fns, reps):
    """Best-of-``reps`` times of several functions, called in turn (robust to load drift)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def run(quick: bool = False):
    xp = default_xp()
    shape = (4, 4, 4, 4) if quick else (8, 8, 8, 8)
    batch = 1
    reps = 2 if quick else 5
    lay = Layout(shape)
    V = lay.volume
    sites = batch * V
    recs = []
    for dname in ("complex128", "complex64"):
        dt = getattr(xp, dname)
        U = xp.astype(random_gauge(shape, N=3, batch=(batch,), seed=1), dt)
        M = xp.astype(Rng(2).complex_normal((batch,) + shape + (3, 3)), dt)
        mask = xp.zeros((4,) + shape)
        mask[0, ...] = xp.astype(lay.parity() == 0, xp.float64)

        t_copy = _best(lambda: xp.asarray(U, copy=True), reps)
        nbytes = U.size * U.itemsize
        recs.append({"name": f"copy U [{dname}]", "seconds": t_copy, "us_per_site": 1e6 * t_copy / sites,
                     "GB_per_s": 2 * nbytes / t_copy / 1e9, "reference": "memory bandwidth"})

        U0 = U[:, 0, ...]
        t_mm = _best(lambda: U0 @ U0, reps)
        recs.append({"name": f"matmul 3x3 per site (reference) [{dname}]", "seconds": t_mm,
                     "us_per_site": 1e6 * t_mm / sites, "ratio": t_mm / t_copy, "reference": "copy U"})

        def rec(name, t, t_svd=None):
            r = {"name": f"{name} [{dname}]", "seconds": t, "us_per_site": 1e6 * t / sites,
                 "ratio": t / t_copy, "reference": "copy U", "matmul_equiv": t / t_mm}
            if t_svd is not None:
                r["svd_share"] = t_svd / t
            recs.append(r)

        # projection (on one 3x3 matrix per site)
        def proj_fb():
            P, ctx = flows.project_su_fwd(M)
            flows.project_su_vjp(ctx, P)
        t_svd, t_f, t_fb = _best_interleaved(
            [lambda: xp.linalg.svd(M, full_matrices=False), lambda: flows.project_su_fwd(M), proj_fb], 2 * reps)
        rec("svd 3x3 per site (reference)", t_svd, t_svd)
        rec("project_su forward", t_f, t_svd)
        rec("project_su forward+vjp", t_fb, t_svd)

        # staple net
        net = flows.StapleNet(4, 0, width=8, n_layers=2)
        p = net.init(Rng(3))
        t_f = _best(lambda: net.forward(p, U, mask, layout=lay), reps)

        def staple_fb():
            (S,), ctx = net.forward(p, U, mask, layout=lay)
            net.vjp(p, ctx, S)
        t_fb = _best(staple_fb, reps)
        rec("staple net (N_l=2, N_h=8) forward", t_f)
        rec("staple net (N_l=2, N_h=8) forward+vjp", t_fb)

        # context net
        cn = flows.ContextNet(4, 16, hidden=(16, 16), kernel_size=3, loops=("plaquette", "rectangle"))
        pc = cn.init(Rng(4))
        t_feat = _best(lambda: cn.features(U, mask, lay), reps)
        t_f = _best(lambda: cn.forward(pc, U, mask, layout=lay), reps)

        def ctx_fb():
            (o,), c = cn.forward(pc, U, mask, layout=lay)
            cn.vjp(pc, c, o + 1.0)
        t_fb = _best(ctx_fb, reps)
        rec("context features (18 loops, 36 features)", t_feat)
        rec("context net (16,16) k=3 forward", t_f)
        rec("context net (16,16) k=3 forward+vjp", t_fb)

        if dname == "complex128":
            _residual(U, lay, reps, rec, recs)
    return recs


def _residual(U, lay, reps, rec, recs):
    from flows.residual import link_algebra
    from lattice import su_n
    xp = default_xp()
    t_alg = None
    for modulus, fams in ((2, ("plaquette",)), (4, ("plaquette", "rectangle", "chair"))):
        mask = flows.LayerMask("checker", mu=1, parity=0, modulus=modulus)
        layer = flows.ResidualLayer(mask, 4, 3, fams)
        p = layer.init(Rng(5))
        p["coef"] = xp.asarray([0.5] * len(layer.terms))
        if t_alg is None:
            (_, _), ctx = layer.forward(p, U, layout=lay)
            M = ctx["U"] @ su_n.dagger(ctx["fr"]["Xi"])
            t_alg = _best(lambda: link_algebra(M), reps)
            rec(f"residual 8x8 link algebra ({M.shape[-3]} links)", t_alg)
        t_f = _best(lambda: layer.forward(p, U, layout=lay), reps)

        def fb():
            (V, ld), c = layer.forward(p, U, layout=lay)
            layer.vjp(p, c, V, ld)
        t_fb = _best(fb, reps)
        for name, t in ((f"residual M{modulus} {'+'.join(fams)} forward", t_f),
                        (f"residual M{modulus} {'+'.join(fams)} forward+vjp", t_fb)):
            rec(name, t)
            recs[-1]["algebra_share"] = t_alg / t
