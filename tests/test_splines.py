"""Interval maps of [0, 1] (flows.splines): monotone, end points fixed, invertible, stable
log-derivative and log-ratios, exact identity at zero parameters, VJPs = finite differences."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from flows.splines import RQSpline, SineMap, interval_map
from flow_testing import assert_vjp as _assert_vjp

MAPS = [("spline", dict(K=1)), ("spline", dict(K=2)), ("spline", dict(K=5)), ("spline", dict(K=8)), ("sine", {})]


def _params(m, n, seed, scale):
    rng = np.random.default_rng(seed)
    if isinstance(m, SineMap):
        scale = min(scale, 1.0)
    return rng.normal(size=(n, m.n_params)) * scale


def _off_knots(ctx, margin=1e-3):
    """Samples farther than ``margin`` from every interior knot (RQ splines are C^1 there:
    s'' and hence d log s'/dx jump, so a finite-difference stencil must not straddle one)."""
    if "xi" not in ctx:
        return np.ones(ctx["x"].shape, bool)
    lo = np.where(ctx["first"], np.inf, ctx["xi"])
    hi = np.where(ctx["last"], np.inf, 1.0 - ctx["xi"])
    return ctx["w"] * np.minimum(lo, hi) > margin


def _off_elu_kink(m, u, margin=1e-3):
    """Rows whose knot-derivative parameters are farther than ``margin`` from 0, where the
    ELU that makes them positive switches branch (C^1 only: the second derivative jumps, so a
    parameter-space stencil must not straddle it)."""
    if not isinstance(m, RQSpline):
        return np.ones(u.shape[0], bool)
    return np.all(np.abs(u[:, 2 * m.K:]) > margin, axis=-1)


def _inputs(n, seed):
    rng = np.random.default_rng(seed + 1000)
    x = rng.uniform(0.0, 1.0, n)
    x[:6] = [0.0, 1.0, 1e-12, 1.0 - 1e-12, 0.5, 1e-300]
    return x


@pytest.mark.parametrize("kind,kw", MAPS)
@given(seed=st.integers(0, 2**31), scale=st.floats(0.0, 2.0))
def test_monotone_fixed_endpoints_and_ratios(kind, kw, seed, scale):
    m = interval_map(kind, **kw)
    n = 64
    u = _params(m, 1, seed, scale)
    x = np.linspace(0.0, 1.0, n)
    (y, logdy, lr0, lr1), _ = m.forward(x, np.broadcast_to(u, (n, m.n_params)))
    assert y[0] == 0.0 and y[-1] == 1.0
    assert np.all(np.diff(y) > 0)
    assert np.all(np.isfinite(logdy)) and np.all(np.isfinite(lr0)) and np.all(np.isfinite(lr1))
    inner = slice(8, n - 8)      # away from the ends the naive ratios are accurate
    np.testing.assert_allclose(np.exp(lr0[inner]), y[inner] / x[inner], rtol=1e-12)
    np.testing.assert_allclose(np.exp(lr1[inner]), (1 - y[inner]) / (1 - x[inner]), rtol=1e-12)
    # limits at the end points: s(x)/x -> s'(0), (1 - s(x))/(1 - x) -> s'(1)
    assert lr0[0] == pytest.approx(logdy[0], abs=1e-13)
    assert lr1[-1] == pytest.approx(logdy[-1], abs=1e-13)


@pytest.mark.parametrize("kind,kw", MAPS)
@given(seed=st.integers(0, 2**31), scale=st.floats(0.0, 1.5))
def test_log_derivative_equals_numerical_derivative(kind, kw, seed, scale):
    m = interval_map(kind, **kw)
    n = 40
    u = _params(m, n, seed, scale)
    x = np.random.default_rng(seed).uniform(0.01, 0.99, n)
    h = 1e-6
    keep = _off_knots(m.forward(x, u)[1])
    x, u = x[keep], u[keep]
    (_, logdy, _, _), _ = m.forward(x, u)
    f = lambda t: m.forward(x + t, u)[0][0]  # noqa: E731
    num = (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)
    np.testing.assert_allclose(np.exp(logdy), num, rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("kind,kw", MAPS)
@given(seed=st.integers(0, 2**31), scale=st.floats(0.0, 1.5))
def test_inverse(kind, kw, seed, scale):
    m = interval_map(kind, **kw)
    n = 200
    u = _params(m, n, seed, scale)
    x = _inputs(n, seed)
    (y, logdy, _, _), _ = m.forward(x, u)
    xr = m.inverse(y, u)
    (y2, _, _, _), _ = m.forward(xr, u)
    np.testing.assert_allclose(y2, y, rtol=0, atol=5e-15)                 # backward error
    # forward error = backward error / s'(x): 1e-12 wherever s' is not tiny
    ok = np.exp(logdy) > 1e-2
    np.testing.assert_allclose(xr[ok], x[ok], rtol=0, atol=1e-12)
    assert xr[0] == 0.0 and xr[1] == 1.0


@pytest.mark.parametrize("kind,kw", MAPS)
def test_identity_at_zero_parameters_is_exact(kind, kw):
    m = interval_map(kind, **kw)
    x = _inputs(100, 3)
    u = np.zeros((100, m.n_params))
    (y, logdy, lr0, lr1), _ = m.forward(x, u)
    assert np.array_equal(y, x)
    assert not np.any(logdy) and not np.any(lr0) and not np.any(lr1)
    assert np.array_equal(m.inverse(x, u), x) or np.abs(m.inverse(x, u) - x).max() < 1e-15


@pytest.mark.parametrize("kind,kw", MAPS)
@given(seed=st.integers(0, 2**31), scale=st.floats(0.1, 1.0))
def test_vjp_equals_finite_differences(kind, kw, seed, scale):
    """All four outputs w.r.t. x and u (stencil inside [0, 1] and off the knots); the
    cotangents exactly at the end points are finite. (Near an end point with a small end
    slope the log-derivative varies on the scale slope x bin width, too fast for the stencil;
    the ratios there are checked against their closed-form limits above.)"""
    m = interval_map(kind, **kw)
    n = 30
    u = _params(m, n, seed, scale)
    x = np.random.default_rng(seed).uniform(0.01, 0.99, n)
    keep = _off_knots(m.forward(x, u)[1]) & _off_elu_kink(m, u)
    x, u = x[keep], u[keep]
    fwd = lambda p, x, u: m.forward(x, u)  # noqa: E731
    vjp = lambda p, ctx, *b: (m.vjp(ctx, *b), {})  # noqa: E731
    _assert_vjp(fwd, vjp, {}, (x, u), rtol=1e-6, h=1e-5, seed=seed % 1000, n_dirs=2)
    # and finite cotangents exactly at the end points
    x[:2] = [0.0, 1.0]
    _, ctx = m.forward(x, u)
    for g in m.vjp(ctx, *[np.ones(x.shape[0])] * 4):
        assert np.all(np.isfinite(g))


def test_bad_parameters_fail_loudly():
    with pytest.raises(ValueError, match="K >= 1"):
        RQSpline(0)
    with pytest.raises(ValueError, match="min_width"):
        RQSpline(8, min_width=0.2)
    m = RQSpline(4)
    with pytest.raises(ValueError, match="13 parameters"):
        m.forward(np.zeros(3), np.zeros((3, 12)))
    with pytest.raises(ValueError, match="unknown interval map"):
        interval_map("cubic")


def test_runs_on_array_api_strict():
    xs = pytest.importorskip("array_api_strict")
    for m in (RQSpline(5), SineMap()):
        u = _params(m, 20, 1, 1.0)
        x = _inputs(20, 1)
        outs, ctx = m.forward(xs.asarray(x), xs.asarray(u))
        outn, ctxn = m.forward(x, u)
        for a, b in zip(outs, outn):
            np.testing.assert_array_equal(np.asarray(a), b)
        gs = m.vjp(ctx, *[xs.asarray(np.ones(20))] * 4)
        gn = m.vjp(ctxn, *[np.ones(20)] * 4)
        for a, b in zip(gs, gn):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(np.asarray(m.inverse(outs[0], xs.asarray(u))), x, atol=1e-12)
