"""Spectral maps of SU(N) (flows.spectral): fused adjoint = finite differences (forward and
inverse, w.r.t. W and cond), conjugation equivariance, invertibility, exact identity at cond = 0,
continuity across eigenvalue ties, log-Jacobian = numerical Jacobian in su(N) coordinates."""
import math

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from flows.eig import eigen_angles
from flows.spectral import SpectralMap, haar_log_density
from lattice import su_n
from lattice.backend import Rng
from flow_testing import assert_vjp as _assert_vjp, y_margin as _y_margin

TWO_PI = 2 * math.pi
MAPS = [dict(kind="spline", K=4), dict(kind="spline", K=8), dict(kind="sine")]


def _cond(sm, lead, seed, scale):
    if sm.angle_map.kind == "sine":
        scale = min(scale, 0.6)
    return np.random.default_rng(seed).normal(size=tuple(lead) + (sm.n_cond,)) * scale


def _conj_diag(g, angles):
    D = np.exp(1j * np.asarray(angles, dtype=float))
    return (g * D[..., None, :]) @ su_n.dagger(g)


def _smooth(ctx):
    """Matrices whose cell coordinates are > 1e-3 away from every interior spline knot (log s' is only
    continuous at knots: a finite-difference stencil must not straddle one)."""
    ok = True
    for c in ctx["actx"]["ictx"]:
        if "xi" in c:
            lo = np.where(c["first"], np.inf, c["xi"])          # x = 0, 1 are faces, not knots
            hi = np.where(c["last"], np.inf, 1.0 - c["xi"])
            ok = ok & (c["w"] * np.minimum(lo, hi) > 1e-3)
    return np.broadcast_to(ok, ctx["W"].shape[:-2])


def _logm_coords(U):
    """su(N) coordinates of log U for U near the identity (eigen-decomposition)."""
    th, V = eigen_angles(U)
    return su_n.to_coords((V * (1j * th)[..., None, :]) @ su_n.dagger(V))


# ------------------------------------------------------------------------------------------
# adjoints
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", MAPS)
@given(N=st.sampled_from([2, 3]), seed=st.integers(0, 2**31), batch=st.sampled_from([(1,), (4,), (2, 3)]),
       scale=st.floats(0.05, 1.0))
def test_forward_vjp(kw, N, seed, batch, scale):
    sm = SpectralMap(N, **kw)
    W = Rng(seed).haar(N, lead=batch)
    cond = _cond(sm, batch, seed, scale)
    ok = _smooth(sm.forward({}, W, cond)[1])
    assume(np.any(ok))
    W, cond = W[ok], cond[ok]
    _assert_vjp(sm.forward, sm.vjp, {}, (W, cond), group=(0,), h=1e-5, rtol=1e-6, seed=seed % 991)


@pytest.mark.parametrize("kw", MAPS)
@given(N=st.sampled_from([2, 3]), seed=st.integers(0, 2**31), batch=st.sampled_from([(1,), (4,), (2, 3)]),
       scale=st.floats(0.05, 0.6))
def test_inverse_vjp(kw, N, seed, batch, scale):
    sm = SpectralMap(N, **kw)
    cond = _cond(sm, batch, seed, scale)
    (Wn, _), ctx = sm.forward({}, Rng(seed).haar(N, lead=batch), cond)
    ok = _smooth(ctx)
    assume(np.any(ok))
    Wn, cond = Wn[ok], cond[ok]
    (_, _), ctx = sm.forward({}, sm.inverse({}, Wn, cond)[0][0], cond)
    # the inverse moves x by (step / slope): keep that well inside the bin. (Parameter scales
    # beyond ~0.6 make slopes ~1e-4 possible, where the stencil, not the VJP, fails.)
    h = min(1e-5, 1e-3 * _y_margin(ctx["actx"]["ictx"]))
    _assert_vjp(sm.inverse, sm.inverse_vjp, {}, (Wn, cond), group=(0,), h=h, rtol=1e-6, seed=seed % 991)


def _near_tie_cases():
    d = 1e-4
    return [
        (3, [0.4 + d, 0.4 - d, -0.8]),                          # theta_1 ~ theta_2
        (3, [2.5, TWO_PI - 5.0 - d, 2.5 - TWO_PI + d]),         # theta_2 ~ theta_3
        (3, [2.5 - d, TWO_PI - 5.0, 2.5 - TWO_PI + d]),         # e^{i theta_1} ~ e^{i theta_3} (wrap)
        (3, [math.pi - d, -math.pi + 3 * d, -2 * d]),           # two eigenvalues near -1
        (2, [d, -d]),                                           # near +1
        (2, [math.pi - d, -math.pi + d]),                       # near -1
    ]


@pytest.mark.parametrize("kw", MAPS)
@pytest.mark.parametrize("N,angles", _near_tie_cases())
def test_vjp_near_ties(kw, N, angles):
    """Gap 2e-4: the adjoint agrees with a stencil whose step (1e-7) stays inside the cell."""
    sm = SpectralMap(N, **kw)
    g = Rng(5).haar(N, lead=(2,))
    W = _conj_diag(g, np.broadcast_to(np.asarray(angles), (2, N)))
    cond = _cond(sm, (2,), 5, 0.6)
    _assert_vjp(sm.forward, sm.vjp, {}, (W, cond), group=(0,), h=1e-7, rtol=1e-6)
    (Wn, _), _ = sm.forward({}, W, cond)
    _assert_vjp(sm.inverse, sm.inverse_vjp, {}, (Wn, cond), group=(0,), h=1e-7, rtol=1e-6)


@pytest.mark.parametrize("kw", MAPS)
def test_adjoints_finite_at_exact_ties_and_centre(kw):
    rng = np.random.default_rng(2)
    w = TWO_PI / 3
    cases = [(3, [0.4, 0.4, -0.8]), (3, [2.5, TWO_PI - 5.0, 2.5 - TWO_PI]), (3, [0.0, 0.0, 0.0]),
             (3, [w, w, -2 * w]), (3, [math.pi, -math.pi, 0.0]), (2, [0.0, 0.0]), (2, [math.pi, -math.pi])]
    for N, ang in cases:
        sm = SpectralMap(N, **kw)
        W = _conj_diag(Rng(1).haar(N), np.asarray(ang))[None]
        cond = _cond(sm, (1,), 3, 0.8)
        (Wn, ld), ctx = sm.forward({}, W, cond)
        Wb, cb = sm.vjp({}, ctx, rng.normal(size=W.shape) + 1j * rng.normal(size=W.shape), np.ones(1))[0]
        (Wr, ldi), ctxi = sm.inverse({}, Wn, cond)
        Wrb, cbi = sm.inverse_vjp({}, ctxi, Wb, np.ones(1))[0]
        for a in (Wn, ld, Wb, cb, Wr, ldi, Wrb, cbi):
            assert np.all(np.isfinite(a))
        np.testing.assert_allclose(Wr, W, atol=1e-13)
        su_n.check_su_n(Wn, tol=1e-13)


# ------------------------------------------------------------------------------------------
# symmetry, invertibility, identity
# ------------------------------------------------------------------------------------------
def _perm_su(N, perm):
    P = np.eye(N)[list(perm)].astype(complex)
    if round(np.linalg.det(P).real) < 0:
        P[0] *= -1
    return P


@pytest.mark.parametrize("kw", MAPS)
@given(N=st.sampled_from([2, 3]), seed=st.integers(0, 2**31), scale=st.floats(0.0, 1.5))
def test_conjugation_equivariance(kw, N, seed, scale):
    sm = SpectralMap(N, **kw)
    W = Rng(seed).haar(N, lead=(6,))
    cond = _cond(sm, (6,), seed, scale)
    (Wn, ld), _ = sm.forward({}, W, cond)
    gs = [Rng(seed + 1).haar(N, lead=(6,)), _perm_su(N, np.random.default_rng(seed).permutation(N))]
    for g in gs:
        (Wg, ldg), _ = sm.forward({}, g @ W @ su_n.dagger(g), cond)
        np.testing.assert_allclose(Wg, g @ Wn @ su_n.dagger(g), atol=1e-13)
        np.testing.assert_allclose(ldg, ld, atol=1e-12)


@pytest.mark.parametrize("kw", MAPS)
@given(N=st.sampled_from([2, 3]), seed=st.integers(0, 2**31), scale=st.floats(0.0, 1.5))
def test_invertible(kw, N, seed, scale):
    sm = SpectralMap(N, **kw)
    W = Rng(seed).haar(N, lead=(20,))
    cond = _cond(sm, (20,), seed, scale)
    (Wn, ld), _ = sm.forward({}, W, cond)
    su_n.check_su_n(Wn, tol=1e-13)
    (Wr, ldi), _ = sm.inverse({}, Wn, cond)
    (Wn2, _), _ = sm.forward({}, Wr, cond)
    np.testing.assert_allclose(Wn2, Wn, atol=5e-12)               # backward error
    if scale <= 0.6:                                              # forward error (conditioning)
        np.testing.assert_allclose(Wr, W, atol=1e-12)
        np.testing.assert_allclose(ldi, -ld, atol=1e-11)


@pytest.mark.parametrize("kw", MAPS)
def test_identity_at_zero_cond_is_exact(kw):
    for N in (2, 3):
        sm = SpectralMap(N, **kw)
        W = Rng(N).haar(N, lead=(30,))
        cond = np.zeros((30, sm.n_cond))
        (Wn, ld), ctx = sm.forward({}, W, cond)
        assert np.array_equal(Wn, W) and not np.any(ld) and ld.dtype == np.float64
        (Wr, ldi), _ = sm.inverse({}, W, cond)
        assert np.array_equal(Wr, W) and not np.any(ldi)
        # the adjoint is the identity on forces and the log-det has no W-gradient
        rng = np.random.default_rng(0)
        G = rng.normal(size=W.shape) + 1j * rng.normal(size=W.shape)
        (Wb, _), _ = sm.vjp({}, ctx, G, None)
        np.testing.assert_allclose(su_n.force_from_cotangent(W, Wb), su_n.force_from_cotangent(W, G), atol=1e-14)
        (Wb, _), _ = sm.vjp({}, ctx, None, np.ones(30))
        np.testing.assert_allclose(Wb, 0.0, atol=1e-13)


# ------------------------------------------------------------------------------------------
# continuity across ties
# ------------------------------------------------------------------------------------------
def _paths():
    a = 0.4
    return [
        ("SU3 tie 1-2", 3, lambda t: [a + t, a - t, -2 * a]),
        ("SU3 tie across the wrap", 3, lambda t: [2.5 + t, TWO_PI - 5.0, 2.5 - TWO_PI - t]),
        ("SU3 through the identity", 3, lambda t: [t, 0.3 * t, -1.3 * t]),
        ("SU3 through a centre element", 3, lambda t: [TWO_PI / 3 + t, TWO_PI / 3 - 0.4 * t, -2 * TWO_PI / 3 - 0.6 * t]),
        ("SU2 through -1", 2, lambda t: [math.pi + t, -math.pi - t]),
        ("SU2 through +1", 2, lambda t: [t, -t]),
    ]


def _no_jump(f):
    """Every step of a sampled path is within a factor 3 of one of its neighbours (a jump
    would stand out by a factor ~1/dt; kinks and smooth variation pass)."""
    s = np.abs(np.diff(f, axis=0)).reshape(f.shape[0] - 1, -1).max(axis=-1)
    return np.all(s[1:-1] <= 3 * np.maximum(s[:-2], s[2:]) + 1e-13), s


@pytest.mark.parametrize("kw", MAPS)
@pytest.mark.parametrize("label,N,path", _paths())
def test_continuous_across_ties(kw, label, N, path):
    """Along a smooth path W(t) that crosses a tie at t = 0 the images h(W(t)) and the
    log-dets have no jump (in particular not at the tie) and h(W(+-1e-9)) -> h(W(0))."""
    sm = SpectralMap(N, **kw)
    n, T = 201, 1e-2
    t = np.linspace(-T, T, n)                                  # t[100] == 0 exactly
    dt = t[1] - t[0]
    g = Rng(7).haar(N)
    cond1 = _cond(sm, (), 4, 0.8)
    W = _conj_diag(g, np.array([path(s) for s in t]))
    (Wn, ld), _ = sm.forward({}, W, np.broadcast_to(cond1, (n, sm.n_cond)))
    ok, steps = _no_jump(Wn)
    assert ok, label
    # at the tie itself: |f(+-d) - f(0)| shrinks with d (a jump would not), and is tiny
    # compared with the variation along the path (the map can be steep near a wall when a
    # spline's end-point slope is small, so no fixed Lipschitz bound is assumed)
    ds = np.array([1e-7, 1e-9])
    tt = np.concatenate([-ds, [0.0], ds])
    (Wt, ldt), _ = sm.forward({}, _conj_diag(g, np.array([path(s) for s in tt])),
                              np.broadcast_to(cond1, (5, sm.n_cond)))
    checks = [(Wt, np.abs(Wn).max())]
    if "centre" not in label and "identity" not in label:
        # a single tie: the log-det is continuous across it as well (at a centre element it
        # stays bounded but depends on the direction of approach)
        ok, _ = _no_jump(ld)
        assert ok, label
        checks.append((ldt, ld.max() - ld.min()))
    for f, scale in checks:
        dev = np.abs(f - f[2:3]).reshape(5, -1).max(axis=-1)     # |f(t) - f(0)|
        for lo, hi in ((1, 0), (4, 3)):                           # d = 1e-9 vs d = 1e-7
            assert dev[lo] <= 1e-4 * scale + 1e-12, (label, dev)
            assert dev[lo] <= 0.1 * dev[hi] + 1e-12, (label, dev)


# ------------------------------------------------------------------------------------------
# log-Jacobian
# ------------------------------------------------------------------------------------------
def _numerical_logdet(sm, W, cond, eps=1e-5):
    """log|det| of the Jacobian of W -> h(W) in su(N) coordinates: W -> exp(sum e_a T^a) W,
    coordinates of log(h(W') h(W)^dag) (fourth-order central differences)."""
    N = W.shape[-1]
    T = su_n.generators(N)
    A = N * N - 1
    (H, _), _ = sm.forward({}, W, cond)
    J = np.zeros(W.shape[:-2] + (A, A))
    for a in range(A):
        f = {}
        for s in (-2, -1, 1, 2):
            (Hs, _), _ = sm.forward({}, su_n.expm(s * eps * T[a]) @ W, cond)
            f[s] = _logm_coords(Hs @ su_n.dagger(H))
        J[..., :, a] = (-f[2] + 8 * f[1] - 8 * f[-1] + f[-2]) / (12 * eps)
    return np.linalg.slogdet(J)[1]


@pytest.mark.parametrize("kw", MAPS)
@pytest.mark.parametrize("N", [2, 3])
def test_log_jacobian_equals_numerical_jacobian(kw, N):
    sm = SpectralMap(N, **kw)
    W = Rng(17 + N).haar(N, lead=(6,))
    # add points near ties and near -1 (gap 2e-3; the stencil moves angles by ~2e-5)
    g = Rng(3).haar(N, lead=(2,))
    extra = [[0.3 + 1e-3, 0.3 - 1e-3, -0.6], [math.pi - 1e-3, -math.pi + 2e-3, -1e-3]] if N == 3 else \
        [[1e-3, -1e-3], [math.pi - 1e-3, -math.pi + 1e-3]]
    W = np.concatenate([W, _conj_diag(g, np.asarray(extra))], axis=0)
    cond = _cond(sm, (8,), 11, 0.7)
    ok = _smooth(sm.forward({}, W, cond)[1])
    assert ok[-2:].all() and ok.sum() >= 5
    W, cond = W[ok], cond[ok]
    (_, ld), ctx = sm.forward({}, W, cond)
    np.testing.assert_allclose(ld, _numerical_logdet(sm, W, cond), atol=1e-8)
    # and the formula: Haar-term difference + angle Jacobian
    th, _ = eigen_angles(W)
    o, _ = sm.angle_map.forward(th, cond)
    np.testing.assert_allclose(ld, haar_log_density(o["theta"]) - haar_log_density(th) + o["logdet_angles"],
                               atol=1e-9)


@pytest.mark.parametrize("kw", MAPS)
def test_density_normalisation_monte_carlo(kw):
    """h is a bijection of SU(3): E_Haar[exp(log J(W))] = vol(h(SU(3))) = 1 and
    E_Haar[exp(log J_inv(W'))] = 1 (Monte Carlo, 5 sigma)."""
    sm = SpectralMap(3, **kw)
    n = 4000
    W = Rng(123).haar(3, lead=(n,))
    cond = np.broadcast_to(_cond(sm, (), 9, 0.5), (n, sm.n_cond))
    for out in (sm.forward({}, W, cond)[0][1], sm.inverse({}, W, cond)[0][1]):
        w = np.exp(out)
        assert abs(w.mean() - 1.0) <= 5 * w.std() / math.sqrt(n)


# ------------------------------------------------------------------------------------------
# dtypes, broadcasting, errors, array API
# ------------------------------------------------------------------------------------------
def test_complex64_and_broadcast_cond():
    sm = SpectralMap(3)
    W = Rng(1).haar(3, lead=(2, 5))
    cond = _cond(sm, (), 1, 0.5)                           # one cond for the whole batch
    (Wn, ld), ctx = sm.forward({}, W, cond)
    (W32, ld32), ctx32 = sm.forward({}, W.astype(np.complex64), cond.astype(np.float32))
    assert W32.dtype == np.complex64 and ld32.dtype == np.float64
    np.testing.assert_allclose(W32, Wn, atol=2e-5)
    np.testing.assert_allclose(ld32, ld, atol=2e-4)
    (Wb, cb), _ = sm.vjp({}, ctx32, W32, ld32)
    assert Wb.dtype == np.complex64 and cb.shape == cond.shape and cb.dtype == np.float32
    _assert_vjp(sm.forward, sm.vjp, {}, (W, cond), group=(0,), h=1e-5, rtol=1e-6)


def test_bad_input_fails_loudly():
    sm = SpectralMap(3, K=4)
    W = Rng(1).haar(3, lead=(2,))
    with pytest.raises(ValueError, match="52 entries"):
        sm.forward({}, W, np.zeros((2, 51)))
    with pytest.raises(ValueError, match="3 x 3"):
        sm.forward({}, Rng(1).haar(2, lead=(2,)), np.zeros((2, 52)))
    with pytest.raises(ValueError, match="complex"):
        sm.forward({}, np.eye(3)[None], np.zeros((1, 52)))
    with pytest.raises(ValueError, match="broadcast"):
        sm.forward({}, W, np.zeros((3, 52)))


def test_runs_on_array_api_strict():
    xs = pytest.importorskip("array_api_strict")
    for N in (2, 3):
        sm = SpectralMap(N, K=4)
        Wn = Rng(3).haar(N, lead=(6,))
        cn = _cond(sm, (6,), 0, 0.5)
        rng = np.random.default_rng(1)
        Gn = rng.normal(size=Wn.shape) + 1j * rng.normal(size=Wn.shape)
        res = []
        for W, c, G, l1 in ((xs.asarray(Wn), xs.asarray(cn), xs.asarray(Gn), xs.ones(6, dtype=xs.float64)),
                            (Wn, cn, Gn, np.ones(6))):
            (O, ld), ctx = sm.forward({}, W, c)
            (Ob, cb), _ = sm.vjp({}, ctx, G, l1)
            (R, ldi), ctxi = sm.inverse({}, O, c)
            (Rb, cbi), _ = sm.inverse_vjp({}, ctxi, G, l1)
            res.append([np.asarray(a) for a in (O, ld, Ob, cb, R, ldi, Rb, cbi)])
        assert isinstance(O, np.ndarray)
        for a, b in zip(*res):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
