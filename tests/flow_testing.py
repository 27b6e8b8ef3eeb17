"""Helpers shared by the flow-layer, flow-model and training tests (host-side NumPy)."""
from __future__ import annotations

import numpy as np

from lattice import su_n
from lattice.backend import Rng
from flows.gradcheck import check_vjp


def perturbed(params, scale=0.2, seed=1, only=None):
    """Parameters plus Gaussian noise (all, or the keys containing ``only``): a generic,
    non-identity flow (the context heads start at zero)."""
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.normal(size=v.shape) if only is None or only in k else v)
            for k, v in params.items()}


def small_layer_kw(Nd, kind="sine"):
    """Cheap coupling-layer settings for tests (``kind="sine"`` gives a smooth angle map, so
    finite differences never cross a spline knot, where log s' has a kink)."""
    return dict(staple_width=3, context_hidden=(3,), context_kernel=3 if Nd == 2 else 1,
                spline_bins=4, spline_basis=2, spline_kind=kind)


def algebra_response(Y, Y0):
    """su(N) coordinates of the anti-Hermitian traceless part of Y Y0^dag (per link)."""
    return su_n.to_coords(su_n.project_algebra(Y @ su_n.dagger(Y0)))


def jacobian_columns(fn, U, positions, gens, h=1e-5):
    """Numerical directional derivatives of a link map in su(N) coordinates.

    ``fn`` maps a batch of fields (B, Nd, *sites, N, N) to fields of the same shape.
    ``positions`` is a list of boolean link masks (Nd, *sites); for each mask p and generator
    b the links in p are moved together, U -> exp(t T^b) U, and the response of every link,
    d/dt coords(P_alg(f(U(t)) f(U)^dag)) at t = 0 (fourth-order stencil), is returned as an
    array (len(positions), len(gens), Nd, *sites, N^2 - 1).
    """
    N = U.shape[-1]
    T = su_n.generators(N)
    batch = []
    for p in positions:
        for b in gens:
            for s in (-2, -1, 1, 2):
                g = su_n.expm(s * h * T[b])
                V = U.copy()
                V[p] = g @ U[p]
                batch.append(V)
    Y = fn(np.stack(batch))
    Y0 = fn(U[None])[0]
    r = algebra_response(Y, Y0)
    r = r.reshape((len(positions), len(gens), 4) + r.shape[1:])
    return (-r[:, :, 3] + 8 * r[:, :, 2] - 8 * r[:, :, 1] + r[:, :, 0]) / (12 * h)


def full_jacobian_logdet(fn, U, h=1e-5):
    """log |det J| of a map of all links, J in su(N) coordinates (unbatched U, small lattices)."""
    N = U.shape[-1]
    n_gen = N * N - 1
    link_shape = U.shape[:-2]
    pos = []
    for flat in range(int(np.prod(link_shape))):
        p = np.zeros(link_shape, dtype=bool)
        p[np.unravel_index(flat, link_shape)] = True
        pos.append(p)
    cols = jacobian_columns(fn, U, pos, range(n_gen), h=h)       # (links, gens, *links, n_gen)
    D = len(pos) * n_gen
    J = cols.reshape(D, D).T                                      # rows: outputs, cols: inputs
    sign, logdet = np.linalg.slogdet(J)
    return logdet


def random_field(shape, N, batch=(), seed=0):
    from lattice import random_gauge
    return random_gauge(shape, N=N, batch=batch, seed=seed)


def rng(seed=0):
    return Rng(seed)


def assert_vjp(forward, vjp, params, inputs, rtol=1e-6, **kw):
    """:func:`flows.gradcheck.check_vjp` with relative errors measured against
    max(|analytic|, |numeric|, 1e-3 x the largest directional derivative of the check): a
    random direction whose contributions cancel to a tiny total would otherwise compare the
    stencil's rounding noise with that tiny number."""
    r = check_vjp(forward, vjp, params, inputs, **kw)
    floor = 1e-3 * max(abs(a) for a in r.analytic)
    err = r.max_rel_error(floor=floor)
    assert err <= rtol, f"VJP disagrees with finite differences (max rel. error {err:.2e} > {rtol:.0e}):\n{r}"


def y_margin(ictx):
    """min over samples and sticks of slope x distance to the nearest knot (for the inverse)."""
    m = 1.0
    for c in ictx:
        d = c["w"] * np.minimum(c["xi"], 1.0 - c["xi"]) if "xi" in c else 1.0
        m = min(m, float(np.min(c["dy"] * d)))
    return m


def model_harness(fwd, bwd):
    """Adapt a model's (x, logJ, ctx) = fwd(p, U) and (U_bar, grads) = bwd(p, ctx, x_bar, logJ_bar)
    to the module contract of flows.gradcheck: ((x, logJ), ctx) and ((U_bar,), grads)."""
    def f(p, U):
        x, l, c = fwd(p, U)
        return (x, l), c

    def b(p, c, xb, lb):
        ub, g = bwd(p, c, xb, lb)
        return (ub,), g
    return f, b


def assert_layer_gauge_equivariant(layer, p, U, Om, lay, atol=1e-11):
    """f(U^Omega) = f(U)^Omega with the same log-det, and the inverse of f(U)^Omega is U^Omega."""
    from lattice import gauge_transform
    (V, ld), _ = layer.forward(p, U, layout=lay)
    (Vg, ldg), _ = layer.forward(p, gauge_transform(U, Om, lay), layout=lay)
    np.testing.assert_allclose(Vg, gauge_transform(V, Om, lay), atol=atol)
    np.testing.assert_allclose(ldg, ld, atol=10 * atol)
    (W, _), _ = layer.inverse(p, gauge_transform(V, Om, lay), layout=lay)
    np.testing.assert_allclose(W, gauge_transform(U, Om, lay), atol=10 * atol)
