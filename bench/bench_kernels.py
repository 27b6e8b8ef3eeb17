"""The kernel layer (issue 14): fast implementations against their references, and the
training steps that use them against the code they replaced, interleaved in one run.

Records (thread count in every record, ``--threads``, default 1):

* ``su3 product``: ``kernels.mul`` (colour-first, compiled) against stacked colour-last ``@``
  (the reference), and as a fraction of the copy-bandwidth roofline (27 complex numbers moved
  per product: 18 read, 9 written);
* ``eigh 3x3`` / ``polar 3x3``: closed forms against LAPACK ``eigh`` / ``svd``; ``expm su(3)``:
  the compiled per-matrix exponential against the array-API reference; ``phi(ad X)``: the
  derivative map of exp (8 x 8 per link) and its adjoint, compiled against the Horner series
  with stacked ``@``, with peak memory (the compiled adjoint recomputes the intermediates);
* ``transported staples``: one staple layer's S^L, S^R (and the adjoint) with the fused
  one-process kernel against the array-API reference, and its GFLOP/s;
* ``staple output layer``: the last layer of a staple network (direction mu, 8 channels mixed
  into one) with :func:`lattice.kernels.transported_mix` fused (staples mixed as they are
  formed) against the composition it replaced (the augmented vector written by the fused
  staple kernel, then ``real_mix``; adjoint with the coefficient gradient), with peak memory;
* ``staple net fwd+vjp``: the colour-first pair-batched network against the colour-last one it
  replaced (``bench/reference/staples_colour_last.py``);
* ``train step``: the learned-loop path-gradient step (4^4 SU(3) Wilson beta = 2, 16 layers,
  batch 16; ``--quick``: 2^3x4, 4 layers, batch 2) with today's code against the previous
  code (old staple network, reference kernels), interleaved A B A B, the ratio per pair, and
  the peak NumPy memory of each (tracemalloc);
* ``line sums``: a residual layer's rectangle staple sum at an M4 layer's active links
  (:func:`lattice.kernels.line_sums` and its adjoint) against the whole-field shifted products
  of :mod:`flows.paths`, and its GFLOP/s;
* ``residual train step``: the residual flow (M2 M4, plaquette + rectangle, field-dependent)
  against the previous mechanism (whole-field shifted Wilson lines, shifted-copy convolutions,
  20-term phi series, reference kernels), interleaved, with peak memory.
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np

from .common import best_time, copy_bandwidth


def _pairs(fa, fb, n):
    """Interleaved timings A B A B ...: (median ratio b/a, best a, best b)."""
    ta, tb = [], []
    fa(), fb()
    for _ in range(n):
        t0 = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t0)
    ratios = [b / a for a, b in zip(ta, tb)]
    return float(np.median(ratios)), min(ta), min(tb), ratios


def _peak(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def _primitive_records(quick):
    from lattice import kernels
    rng = np.random.default_rng(0)
    M = 4096 if quick else 65536
    A = rng.normal(size=(3, 3, M)) + 1j * rng.normal(size=(3, 3, M))
    B = A.copy()
    Al = np.ascontiguousarray(np.moveaxis(A, (0, 1), (-2, -1)))
    bw = copy_bandwidth(64 * 2**20 if quick else 256 * 2**20)
    n = 3 if quick else 7
    r, t_ref, t_fast, _ = _pairs(lambda: Al @ Al, lambda: kernels.mul(A, B, da=True), n)
    recs = [{"name": f"su3 product x{M} (A^dag B)", "seconds": t_fast, "reference": "stacked colour-last @",
             "ratio": r, "speedup": 1 / r, "roofline_fraction": 27 * 16 * M / bw / t_fast}]
    X = rng.normal(size=(M // 4, 3, 3)) + 1j * rng.normal(size=(M // 4, 3, 3))
    H = X + np.conj(np.swapaxes(X, -1, -2))
    r, _, t_fast, _ = _pairs(lambda: np.linalg.eigh(H), lambda: kernels.eigh(H), n)
    recs.append({"name": f"eigh 3x3 x{M // 4}", "seconds": t_fast, "reference": "LAPACK eigh", "ratio": r,
                 "speedup": 1 / r})
    r, _, t_fast, _ = _pairs(lambda: np.linalg.svd(X), lambda: kernels.polar(X), n)
    recs.append({"name": f"polar 3x3 x{M // 4}", "seconds": t_fast, "reference": "LAPACK svd", "ratio": r,
                 "speedup": 1 / r})
    from lattice import su_n
    P = su_n.project_algebra(X)

    def expm_ref():
        with kernels.reference_only():
            su_n.expm(P)
    r, _, t_fast, _ = _pairs(expm_ref, lambda: kernels.expm(P), n)
    recs.append({"name": f"expm su(3) x{M // 4}", "seconds": t_fast, "reference": "array-API Cayley-Hamilton series",
                 "ratio": r, "speedup": 1 / r})
    # phi(ad X) (8 x 8) at ||ad X||_F = 0.3 (a trained residual layer), and with its adjoint:
    # compiled (no saved intermediates) against the reference's stacked @ (K intermediates kept)
    Ad = rng.normal(size=(M // 16, 8, 8))
    Ad = Ad - np.swapaxes(Ad, -1, -2)
    Ad *= 0.3 / np.max(np.sqrt(np.sum(Ad * Ad, axis=(-2, -1))))
    G = rng.normal(size=Ad.shape)

    def both():
        phi, saved = kernels.phi_ad(Ad)
        return kernels.phi_ad_vjp(Ad, saved, G)

    def both_ref():
        with kernels.reference_only():
            return both()
    K = kernels.phi_ad(Ad)[1].terms
    for tag, ref, fast in ((f"phi(ad X) x{M // 16} (K = {K})", lambda: kernels.phi_ad_reference(Ad),
                            lambda: kernels.phi_ad(Ad)),
                           (f"phi(ad X) + adjoint x{M // 16} (K = {K})", both_ref, both)):
        r, _, t_fast, _ = _pairs(ref, fast, n)
        recs.append({"name": tag, "seconds": t_fast, "reference": "array-API Horner series (stacked @)",
                     "ratio": r, "speedup": 1 / r, "peak_MB": _peak(fast), "peak_MB_reference": _peak(ref)})
    return recs


def _staple_records(quick):
    import flows
    from bench.reference.staples_colour_last import StapleNet as ColourLast
    from lattice import Layout, random_gauge
    shape = (2, 2, 2, 4) if quick else (4, 4, 4, 4)
    batch = 2 if quick else 16
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(batch,), seed=1)
    mask = np.zeros((4,) + shape)
    mask[0] = np.asarray(lay.parity()) == 0
    new, old = flows.StapleNet(4, 0, width=8, n_layers=2), ColourLast(4, 0, width=8, n_layers=2)
    from lattice.backend import Rng
    p = new.init(Rng(0))
    Sb = np.ones(U.shape[:1] + shape + (3, 3), complex)

    def step(net):
        (S,), ctx = net.forward(p, U, mask, layout=lay)
        net.vjp(p, ctx, Sb)
    r, t_old, t_new, _ = _pairs(lambda: step(old), lambda: step(new), 3 if quick else 5)
    tag = f"{'x'.join(map(str, shape))} B={batch} (width 8, 2 layers)"
    return _transported_records(quick) + _mix_records(quick) + [{"name": f"staple net fwd+vjp {tag}",
             "seconds": t_new, "reference": "colour-last staple net (previous code)", "ratio": r,
             "speedup": 1 / r, "peak_MB": _peak(lambda: step(new)), "peak_MB_reference": _peak(lambda: step(old))}]


def _mix_records(quick):
    """The output layer of a staple network: ``transported_mix`` (and its adjoint with the
    coefficient gradient) fused, against the augment-then-``real_mix`` composition (the
    compiled staple kernel writes the augmented vector, 7 K staple fields, which the
    composition's adjoint gets from its forward as the previous code kept it)."""
    import importlib
    from lattice import Layout, kernels
    sm = importlib.import_module("lattice.kernels.staple_mix")
    shape = (2, 2, 2, 4) if quick else (4, 4, 4, 4)
    K, batch = (2, 2) if quick else (8, 16)
    lay = Layout(shape)
    rng = np.random.default_rng(4)
    S = rng.normal(size=(3, 3, 4, K, batch) + shape) + 1j * rng.normal(size=(3, 3, 4, K, batch) + shape)
    c = rng.normal(size=(1, 7 * K))
    ob = rng.normal(size=(3, 3, 1, batch) + shape) + 1j * rng.normal(size=(3, 3, 1, batch) + shape)

    def fwd():
        kernels.transported_mix(S, lay, 0, c)

    def vjp(aug=None):
        kernels.transported_mix_vjp(S, lay, 0, c, ob, S_bar=np.zeros_like(S), aug=aug)

    def composed(fn):
        def run():
            local, sm._compiled = sm._compiled, (lambda *a: False)
            try:
                if fn is vjp:                       # the previous code kept aug from its forward
                    fn(kept)
                else:
                    fn()
            finally:
                sm._compiled = local
        return run
    local, sm._compiled = sm._compiled, (lambda *a: False)
    try:
        kept = kernels.transported_mix(S, lay, 0, c, keep=True)[1]
    finally:
        sm._compiled = local
    recs = []
    for what, fn in (("forward", fwd), ("adjoint with c_bar", vjp)):
        r, _, t, _ = _pairs(composed(fn), fn, 2 if quick else 5)
        recs.append({"name": f"staple output layer {what} {'x'.join(map(str, shape))} K={K} B={batch} (3 pairs)",
                     "seconds": t, "reference": "augmented vector written, then real_mix (previous code)",
                     "ratio": r, "speedup": 1 / r, "peak_MB": _peak(fn), "peak_MB_reference": _peak(composed(fn))})
    return recs


def _transported_records(quick):
    """One hidden staple layer's transported staples (all 12 ordered pairs of a 4d lattice, 8
    channels) and their adjoint: the fused one-process kernel against the array-API reference
    (materialised shifts, composed products), with the achieved GFLOP/s of the fused kernel
    (6 products of 216 flop per pair of partners forward, 14 in the adjoint)."""
    from lattice import Layout, kernels
    shape = (2, 2, 2, 4) if quick else (4, 4, 4, 4)
    K, batch = (2, 2) if quick else (8, 16)
    lay = Layout(shape)
    rng = np.random.default_rng(3)
    S = rng.normal(size=(3, 3, 4, K, batch) + shape) + 1j * rng.normal(size=(3, 3, 4, K, batch) + shape)
    Q = [(m, n) for m in range(4) for n in range(4) if m != n]
    i_mu, i_nu = [m for m, _ in Q], [n for _, n in Q]
    i_L = [7 * m + 1 + k % 3 for k, (m, _) in enumerate(Q)]
    i_R = [7 * m + 4 + k % 3 for k, (m, _) in enumerate(Q)]
    aug = np.zeros((3, 3, 28) + S.shape[3:], complex)
    Sb = np.zeros_like(S)

    def fwd():
        kernels.transported_staples(S, lay, i_mu, i_nu, aug=aug, i_L=i_L, i_R=i_R)

    def vjp():
        kernels.transported_staples_vjp(S, lay, i_mu, i_nu, aug_bar=aug, i_L=i_L, i_R=i_R, S_bar=Sb)

    def ref(fn):
        def run():
            with kernels.reference_only():
                fn()
        return run
    sites = S[0, 0, 0].size
    recs = []
    for what, fn, n_prod in (("forward", fwd, 6), ("adjoint", vjp, 14)):
        r, _, t, _ = _pairs(ref(fn), fn, 2 if quick else 5)
        recs.append({"name": f"transported staples {what} {'x'.join(map(str, shape))} K={K} B={batch} (12 pairs)",
                     "seconds": t, "reference": "array-API reference (shifted copies, composed products)",
                     "ratio": r, "speedup": 1 / r, "gflops": 6 * n_prod * 216 * sites / t / 1e9})
    return recs


def _train_records(quick):
    import flows
    import flows.layers
    from bench.reference.staples_colour_last import StapleNet as ColourLast
    from flows.train import sample_loss_and_grad
    from lattice import Layout, kernels
    from lattice.actions import Wilson
    from lattice.backend import Rng
    shape = (2, 2, 2, 4) if quick else (4, 4, 4, 4)
    n_layers, batch = (4, 2) if quick else (16, 16)
    lay = Layout(shape)
    kw = dict(schedule="simple", context_hidden=(16, 16), context_kernel=1)
    new = flows.SpectralFlow(4, 3, n_layers, "learned", **kw)
    current = flows.layers.StapleNet
    flows.layers.StapleNet = ColourLast
    try:
        old = flows.SpectralFlow(4, 3, n_layers, "learned", **kw)
    finally:
        flows.layers.StapleNet = current
    p = new.init(0)
    rng = np.random.default_rng(0)
    p = {k: v + 0.01 * rng.normal(size=v.shape) for k, v in p.items()}
    base, target = flows.HaarBase(shape, 3, layout=lay), flows.GaugeTarget(Wilson(2.0))
    z = base.sample(batch, Rng(1))

    def step_new():
        return sample_loss_and_grad(new, p, base, target, z, "path", lay)

    def step_old():
        with kernels.reference_only():
            return sample_loss_and_grad(old, p, base, target, z, "path", lay)
    ln, lo = step_new(), step_old()
    tag = f"{'x'.join(map(str, shape))}, {n_layers} layers, B={batch}"
    r, t_old, t_new, ratios = _pairs(step_old, step_new, 1 if quick else 3)
    recs = [{"name": f"train step learned path ({tag})", "seconds": t_new, "seconds_reference": t_old,
             "reference": "previous code (colour-last staple net, LAPACK eigh/svd)", "ratio": r, "speedup": 1 / r,
             "ratios": [round(x, 3) for x in ratios], "loss_diff": abs(float(ln[0]) - float(lo[0])),
             "peak_MB": _peak(step_new), "peak_MB_reference": _peak(step_old)}]
    # residual flow: today's code against the previous mechanism
    pattern = ("M2",) if quick else ("M2", "M4")          # M4 needs extents divisible by 4
    res = flows.residual_flow(4, 3, pattern, ("plaquette", "rectangle"), field_dependent=True)
    pr = res.init(0)
    pr = {k: v + 0.01 * rng.normal(size=v.shape) for k, v in pr.items()}

    def rstep():
        return sample_loss_and_grad(res, pr, base, target, z, "path", lay)

    def rstep_old():
        with _previous_residual(), kernels.reference_only():
            return rstep()
    ln, lo = rstep(), rstep_old()
    r, t_old, t_new, ratios = _pairs(rstep_old, rstep, 1 if quick else 3)
    recs.append({"name": f"residual train step path ({' '.join(pattern)}, {'x'.join(map(str, shape))}, B={batch})",
                 "seconds": t_new, "seconds_reference": t_old,
                 "reference": "previous code (whole-field shifted Wilson lines, shifted-copy convolutions, 20-term "
                              "phi series, reference kernels)", "ratio": r, "speedup": 1 / r,
                 "ratios": [round(x, 3) for x in ratios], "loss_diff": abs(float(ln[0]) - float(lo[0])),
                 "peak_MB": _peak(rstep), "peak_MB_reference": _peak(rstep_old)})
    return recs


class _previous_residual:
    """Inside: residual layers and context networks take the whole-field path of
    :mod:`flows.paths` (shifted copies) and shifted-copy convolutions, and phi(ad X) uses the
    fixed 20-term series -- the mechanism before :func:`lattice.kernels.line_sums`."""

    def __enter__(self):
        import flows.residual as R
        import flows.context as C
        import lattice.kernels.dexp as D
        self._saved = (R.ResidualLayer._line_set, C.ContextNet._line_set, C.ContextNet._gathers, D.phi_terms)
        R.ResidualLayer._line_set = lambda layer, layout, s: None
        C.ContextNet._line_set = lambda net, layout: None
        C.ContextNet._gathers = staticmethod(lambda layout: False)
        D.phi_terms = lambda a, *args, **kw: 20
        return self

    def __exit__(self, *exc):
        import flows.residual as R
        import flows.context as C
        import lattice.kernels.dexp as D
        R.ResidualLayer._line_set, C.ContextNet._line_set, gathers, D.phi_terms = self._saved
        C.ContextNet._gathers = staticmethod(gathers)
        return False


def _lines_records(quick):
    """The staple sum of a residual layer's rectangle term (spatial plane, mu = 0: 12 paths of
    5 links) at a quarter of the sites (an M4 layer's active links): kernels.line_sums through
    neighbour tables against the whole-field products of flows.paths (a shift and a product
    per step on every site) followed by the gather, forward and adjoint; GFLOP/s counts 4
    products of 216 flop per path and site forward, 3 (K - 1) + (K - 2) = 15 in the adjoint."""
    from lattice import Layout, kernels
    from flows.paths import paths_fwd, paths_vjp
    from flows.residual import residual_terms
    shape = (4, 4, 4, 4) if not quick else (2, 2, 2, 4)
    batch = 2 if quick else 16
    lay = Layout(shape)
    V = int(np.prod(shape))
    rng = np.random.default_rng(4)
    X = rng.normal(size=(batch, 4) + shape + (3, 3)) + 1j * rng.normal(size=(batch, 4) + shape + (3, 3))
    term = [t for t in residual_terms(0, 4, ("rectangle",)) if "spatial-plane" in t["key"]][0]
    starts = np.arange(0, V, 4)
    tb = kernels.line_table(shape, term["paths"], starts)
    Wb = rng.normal(size=(batch, starts.size, 3, 3)) + 0j

    def fwd():
        return kernels.line_sums(X, tb)

    def vjp():
        return kernels.line_sums_vjp(X, tb, Wb)

    def fwd_old():
        Ws, ctx = paths_fwd([X[:, m] for m in range(4)], term["paths"], lay)
        return sum(Ws).reshape(batch, V, 3, 3)[:, starts], ctx

    def vjp_old():
        _, ctx = fwd_old()
        full = np.zeros((batch, V, 3, 3), complex)
        full[:, starts] = Wb
        return paths_vjp(ctx, [full.reshape((batch,) + shape + (3, 3))] * len(term["paths"]))

    n = batch * starts.size * len(term["paths"])
    recs = []
    for what, a, b, flops in (("forward", fwd_old, fwd, 4 * 216), ("adjoint (with forward)", vjp_old, vjp, 15 * 216)):
        r, _, t, _ = _pairs(a, b, 2 if quick else 5)
        recs.append({"name": f"line sums {what} {'x'.join(map(str, shape))} B={batch} (12 rectangles, V/4 sites)",
                     "seconds": t, "reference": "flows.paths whole-field shifted products + gather",
                     "ratio": r, "speedup": 1 / r, "gflops": n * flops / t / 1e9})
    return recs


def run(quick: bool = False):
    return _primitive_records(quick) + _staple_records(quick) + _lines_records(quick) + _train_records(quick)
