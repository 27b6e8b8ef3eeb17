"""Canonical-cell angle maps (flows.torus): cell and ties preserved, invertible, exact identity
at cond = 0, log-Jacobian = numerical Jacobian, VJPs (forward and inverse) = finite differences."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from flows.eig import eigen_angles
from flows.spectral import haar_log_density, n_params
from flows.torus import CellAngleMap
from lattice.backend import Rng
from flow_testing import assert_vjp as _assert_vjp, y_margin as _y_margin

TWO_PI = 2 * math.pi
KINDS = [("spline", 4), ("spline", 8), ("sine", 0)]


def _setup(N, kind, K, seed, scale, n=12):
    am = CellAngleMap(N, K=max(K, 1), kind=kind)
    theta, _ = eigen_angles(Rng(seed).haar(N, lead=(n,)))
    scale = min(scale, 0.6) if kind == "sine" else scale
    cond = np.random.default_rng(seed).normal(size=(n, am.n_params)) * scale
    return am, theta, cond


def _zero_sum(z):
    return z - z.mean(-1, keepdims=True)


def _smooth(ictx):
    """Samples whose cell coordinates are > 1e-3 away from every interior spline knot: log s' is only
    continuous at a knot (RQ splines are C^1), so a stencil straddling one is meaningless."""
    ok = True
    for c in ictx:
        if "xi" in c:
            lo = np.where(c["first"], np.inf, c["xi"])          # x = 0, 1 are faces, not knots
            hi = np.where(c["last"], np.inf, 1.0 - c["xi"])
            ok = ok & (c["w"] * np.minimum(lo, hi) > 1e-3)
    return ok


@pytest.mark.parametrize("kind,K", KINDS)
@given(N=st.sampled_from([2, 3, 4]), seed=st.integers(0, 2**31), scale=st.floats(0.05, 1.0))
def test_forward_vjp(kind, K, N, seed, scale):
    am, theta, cond = _setup(N, kind, K, seed, scale)
    ok = _smooth(am.forward(theta, cond)[1]["ictx"])
    assume(np.any(ok))
    theta, cond = theta[ok], cond[ok]

    def fwd(p, z, c):
        o, ctx = am.forward(theta + _zero_sum(z), c)
        return (o["theta"], o["logdet"]), ctx

    def vjp(p, ctx, tb, lb):
        a, b = am.vjp(ctx, tb, lb)
        return (_zero_sum(a), b), {}

    _assert_vjp(fwd, vjp, {}, (np.zeros_like(theta), cond), h=1e-5, rtol=1e-6, seed=seed % 997)


@pytest.mark.parametrize("kind,K", KINDS)
@given(N=st.sampled_from([2, 3]), seed=st.integers(0, 2**31), scale=st.floats(0.05, 0.6))
def test_inverse_vjp(kind, K, N, seed, scale):
    am, theta, cond = _setup(N, kind, K, seed, scale)
    ok = _smooth(am.forward(theta, cond)[1]["ictx"])
    assume(np.any(ok))
    theta, cond = theta[ok], cond[ok]
    o, ctx = am.forward(theta, cond)
    tn = o["theta"]
    # the inverse moves x by (step / slope): keep that well inside the bin. (Parameter scales
    # beyond ~0.6 make slopes ~1e-4 possible, where the stencil, not the VJP, fails.)
    h = min(1e-5, 1e-3 * _y_margin(ctx["ictx"]))

    def fwd(p, z, c):
        o, ctx = am.inverse(tn + _zero_sum(z), c)
        return (o["theta"],), ctx

    def vjp(p, ctx, tb):
        a, b = am.inverse_vjp(ctx, tb)
        return (_zero_sum(a), b), {}

    _assert_vjp(fwd, vjp, {}, (np.zeros_like(theta), cond), h=h, rtol=1e-6, seed=seed % 997)


@pytest.mark.parametrize("kind,K", KINDS)
@given(N=st.sampled_from([2, 3, 4]), seed=st.integers(0, 2**31), scale=st.floats(0.05, 1.5))
def test_inverse_vjp_is_transpose_inverse(kind, K, N, seed, scale):
    """Algebraic check without finite differences (any parameter scale): with
    (theta'_bar, c_inv) = inverse_vjp(v), the forward VJP gives J^T theta'_bar = v and
    c_inv = -g_c^T theta'_bar."""
    am, theta, cond = _setup(N, kind, K, seed, scale)
    _, ctx = am.forward(theta, cond)
    v = _zero_sum(np.random.default_rng(seed).normal(size=theta.shape))
    tnb, cinv = am.inverse_vjp(ctx, v)
    tb, cf = am.vjp(ctx, tnb, None)
    scale_v = np.abs(tnb).max(axis=-1, keepdims=True) + 1.0
    np.testing.assert_allclose(tb / scale_v, v / scale_v, atol=1e-12)
    np.testing.assert_allclose(cinv, -cf, rtol=1e-12, atol=1e-12 * np.abs(cf).max())


@pytest.mark.parametrize("kind,K", KINDS)
@given(N=st.sampled_from([2, 3, 4]), seed=st.integers(0, 2**31), scale=st.floats(0.0, 1.5))
def test_cell_preserved_and_invertible(kind, K, N, seed, scale):
    am, theta, cond = _setup(N, kind, K, seed, scale, n=40)
    o, _ = am.forward(theta, cond)
    tn = o["theta"]
    s = tn[..., 0]
    for k in range(1, N):
        s = s + tn[..., k]
    assert np.all(s == 0.0)
    assert np.all(np.diff(tn, axis=-1) <= 1e-15)
    assert np.all(tn[..., 0] - tn[..., -1] <= TWO_PI + 1e-13)
    np.testing.assert_allclose(o["dtheta"], tn - theta, atol=1e-14)
    oi, ictx = am.inverse(tn, cond)
    # Accuracy is set by conditioning: with row sums of |J| and |J^{-1}| (from the VJPs),
    # backward error <= ~10 ulp x (1 + |J|) and forward error <= ~10 ulp x (1 + |J^{-1}|).
    o2, ctx2 = am.forward(oi["theta"], cond)
    jrow = np.stack([np.abs(am.vjp(ctx2, np.eye(N)[k] + 0 * tn, None)[0]).sum(-1) for k in range(N)], -1)
    jinv = np.stack([np.abs(am.inverse_vjp(ictx, np.eye(N)[k] + 0 * tn)[0]).sum(-1) for k in range(N)], -1)
    # (N = 4: three chained conditioners add the slopes of earlier sticks to the condition)
    assert np.all(np.abs(o2["theta"] - tn) <= (2e-14 if N <= 3 else 1e-13) * (1.0 + jrow))
    assert np.all(np.abs(oi["theta"] - theta) <= 4e-14 * (1.0 + jinv))
    # hence invertible to 1e-12 wherever the map is not extremely flat
    fine = jinv.max(axis=-1) <= 10.0
    np.testing.assert_allclose(oi["theta"][fine], theta[fine], rtol=0, atol=1e-12)
    np.testing.assert_allclose(oi["logdet"][fine], o["logdet"][fine], atol=1e-11)


@pytest.mark.parametrize("kind,K", KINDS)
def test_ties_map_to_ties_exactly(kind, K):
    """A zero gap (tie) stays exactly zero, in the forward and in the inverse map."""
    rng = np.random.default_rng(3)
    for N in (2, 3, 4):
        am = CellAngleMap(N, K=max(K, 1), kind=kind)
        cond = rng.normal(size=(N, am.n_params)) * 0.5
        th = []
        for k in range(N):          # gap k is zero
            g = rng.uniform(0.1, 1.0, N)
            g[k] = 0.0
            g *= TWO_PI / g.sum()
            t0 = sum((N - 1 - j) / N * g[j] for j in range(N - 1))
            t = [t0]
            for j in range(N - 1):
                t.append(t[-1] - g[j])
            th.append(t)
        th = np.array(th)
        for o in (am.forward(th, cond)[0], am.inverse(th, cond)[0]):
            t = o["theta"]
            gaps = np.concatenate([-np.diff(t, axis=-1), (TWO_PI - (t[:, 0] - t[:, -1]))[:, None]], -1)
            for k in range(N):
                assert abs(gaps[k, k]) < 1e-14
            # the tied eigenvalues move together exactly (the wrapped gap N is implied by the
            # others, so there only to rounding)
            for k in range(N - 1):
                assert o["dtheta"][k, k] == o["dtheta"][k, k + 1]


@pytest.mark.parametrize("kind,K", KINDS)
def test_identity_at_zero_cond_is_exact(kind, K):
    for N in (2, 3, 4):
        am = CellAngleMap(N, K=max(K, 1), kind=kind)
        theta, _ = eigen_angles(Rng(N).haar(N, lead=(50,)))
        cond = np.zeros((50, am.n_params))
        o, ctx = am.forward(theta, cond)
        assert np.array_equal(o["theta"], theta)
        assert not np.any(o["dtheta"]) and not np.any(o["logdet"]) and not np.any(o["log_ratio"])
        oi, _ = am.inverse(theta, cond)
        assert np.array_equal(oi["theta"], theta)
        # the log-det has no gradient with respect to the angles at the identity
        tb, _ = am.vjp(ctx, None, np.ones(50))
        np.testing.assert_allclose(tb, 0.0, atol=1e-13)


@pytest.mark.parametrize("kind,K", KINDS)
@given(N=st.sampled_from([2, 3, 4]), seed=st.integers(0, 2**31), scale=st.floats(0.1, 0.7))
def test_log_jacobian(kind, K, N, seed, scale):
    """logdet_angles = log|det d theta'/d theta| (numerically, N-1 independent angles) and
    logdet = Haar(theta') - Haar(theta) + logdet_angles."""
    am, theta, cond = _setup(N, kind, K, seed, scale, n=6)
    ok = _smooth(am.forward(theta, cond)[1]["ictx"])
    assume(np.any(ok))
    theta, cond = theta[ok], cond[ok]
    o, _ = am.forward(theta, cond)
    # coordinates: the first N-1 angles, theta_N = -sum
    h = 1e-5
    J = np.zeros(theta.shape[:-1] + (N - 1, N - 1))
    for a in range(N - 1):
        e = np.zeros(N)
        e[a], e[N - 1] = 1.0, -1.0
        f = lambda t: am.forward(theta + t * e, cond)[0]["theta"][..., :N - 1]  # noqa: E731
        J[..., :, a] = (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)
    np.testing.assert_allclose(o["logdet_angles"], np.linalg.slogdet(J)[1], atol=1e-8)
    ref = haar_log_density(o["theta"]) - haar_log_density(theta) + o["logdet_angles"]
    np.testing.assert_allclose(o["logdet"], ref, atol=1e-10)


def test_n_params_and_errors():
    assert n_params(2, 8) == 25 and n_params(3, 8) == 100 and n_params(3, 8, n_basis=1) == 50
    assert n_params(3, kind="sine") == 4 and n_params(2, kind="sine") == 1
    am = CellAngleMap(3, K=4)
    with pytest.raises(ValueError, match="cond must have 52"):
        am.forward(np.zeros((2, 3)), np.zeros((2, 51)))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        am.forward(np.zeros((2, 2)), np.zeros((2, 52)))
    with pytest.raises(ValueError, match="N >= 2"):
        CellAngleMap(1)
