"""Eigen-angles of SU(N) matrices via the Cayley transform (flows.eig): accuracy, branch
convention, robustness at exactly and nearly repeated eigenvalues and at eigenvalue -1."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from flows.eig import eigen_angles, eigen_angles_vjp, cayley_phase_index
from flows.gradcheck import assert_vjp
from lattice import su_n
from lattice.backend import Rng

TWO_PI = 2 * math.pi


def _check_decomposition(W, theta, V, atol=1e-13):
    N = W.shape[-1]
    assert theta.shape == W.shape[:-1] and V.shape == W.shape
    rec = (V * np.exp(1j * theta)[..., None, :]) @ su_n.dagger(V)
    np.testing.assert_allclose(rec, W, rtol=0, atol=atol)
    np.testing.assert_allclose(su_n.dagger(V) @ V, np.broadcast_to(np.eye(N), V.shape), rtol=0, atol=atol)
    # branch convention: descending, spread <= 2 pi, sum exactly zero (in index order)
    assert np.all(np.diff(theta, axis=-1) <= 0)
    assert np.all(theta[..., 0] - theta[..., -1] <= TWO_PI + 1e-13)
    s = theta[..., 0]
    for k in range(1, N):
        s = s + theta[..., k]
    assert np.all(s == 0.0)


def _conj_diag(g, angles):
    """g diag(e^{i angles}) g^dag for angles (..., N)."""
    D = np.exp(1j * np.asarray(angles))
    return (g * D[..., None, :]) @ su_n.dagger(g)


def _same_angles(theta, expected, atol):
    """theta equals the expected angles as multisets on the circle."""
    a = np.sort(np.angle(np.exp(1j * theta)), axis=-1)
    b = np.sort(np.angle(np.exp(1j * np.asarray(expected))), axis=-1)
    d = np.abs(np.exp(1j * a) - np.exp(1j * b))
    assert d.max() <= atol, d.max()


@given(N=st.sampled_from([2, 3, 4]), seed=st.integers(0, 2**31), batch=st.sampled_from([(), (1,), (7,), (3, 2)]))
def test_random_haar_matrices(N, seed, batch):
    W = Rng(seed).haar(N, lead=batch)
    theta, V = eigen_angles(W)
    _check_decomposition(W, theta, V)
    _same_angles(theta, np.angle(np.linalg.eigvals(W)), 1e-13)


def _special_spectra():
    eps = [0.0, 1e-15, 1e-12, 1e-8, 1e-4]
    out = []
    w = TWO_PI / 3
    for e in eps:
        out += [
            ("SU3 double tie", 3, [0.4 + e, 0.4 - e, -0.8]),
            ("SU3 double -1", 3, [math.pi - e, -math.pi + 2 * e, -e]),
            ("SU3 tie across the wrap", 3, [2.5 - e, TWO_PI - 5.0, 2.5 - TWO_PI + e]),
            ("SU3 centre 1", 3, [e, -0.3 * e, -0.7 * e]),
            ("SU3 centre w", 3, [w + e, w - 0.4 * e, -2 * w - 0.6 * e]),
            ("SU3 centre w^2", 3, [-w + e, -w + 0.5 * e, 2 * w - 1.5 * e]),
            ("SU2 near +1", 2, [e, -e]),
            ("SU2 near -1", 2, [math.pi - e, -math.pi + e]),
        ]
    return out


@pytest.mark.parametrize("label,N,angles", _special_spectra())
def test_degenerate_and_minus_one_spectra(label, N, angles):
    g = Rng(11).haar(N, lead=(4,))
    W = _conj_diag(g, np.broadcast_to(np.asarray(angles), (4, N)))
    theta, V = eigen_angles(W)
    _check_decomposition(W, theta, V, atol=2e-14)
    _same_angles(theta, np.broadcast_to(np.asarray(angles), (4, N)), 1e-14)
    # the alcove representative is the one with gaps >= 0; a gap of zero is an exact tie
    gaps = np.concatenate([-np.diff(theta, axis=-1), (TWO_PI - (theta[..., 0] - theta[..., -1]))[..., None]], -1)
    assert np.all(gaps >= -1e-14)


def test_exact_centre_elements_and_diagonal_input():
    for N in (2, 3, 4):
        for k in range(N):
            z = np.exp(1j * TWO_PI * k / N)
            W = np.broadcast_to(z * np.eye(N), (2, N, N)).copy()
            theta, V = eigen_angles(W)
            _check_decomposition(W, theta, V, atol=1e-15)
            np.testing.assert_allclose(np.exp(1j * theta), z, atol=1e-15)


@given(seed=st.integers(0, 2**31))
def test_cayley_phase_is_well_conditioned(seed):
    """The chosen c keeps min_i |c + lambda_i| >= 1/4 for SU(3) (>= 1 for SU(2)), also for
    spectra placed right on the poles of the other roots."""
    rng = np.random.default_rng(seed)
    for N, bound in ((2, 1.0), (3, 0.25)):
        g = Rng(seed).haar(N, lead=(64,))
        ang = rng.uniform(-math.pi, math.pi, (64, N))
        ang[:, -1] = -ang[:, :-1].sum(-1)
        # adversarial: eigenvalues at -c_k for several k
        ang[:8, : N - 1] = math.pi + TWO_PI * rng.integers(0, N, (8, N - 1)) / N
        ang[:8, -1] = -ang[:8, :-1].sum(-1)
        W = _conj_diag(g, ang)
        k = cayley_phase_index(W)
        c = np.exp(1j * TWO_PI * k / N)
        dist = np.abs(c[:, None] + np.exp(1j * ang)).min(-1)
        assert dist.min() >= bound * (1 - 1e-12)


def test_complex64():
    W = Rng(5).haar(3, lead=(50,))
    theta, V = eigen_angles(W.astype(np.complex64))
    assert theta.dtype == np.float32 and V.dtype == np.complex64
    rec = (V * np.exp(1j * theta)[..., None, :]) @ su_n.dagger(V)
    np.testing.assert_allclose(rec, W, atol=5e-6)
    t64, _ = eigen_angles(W)
    np.testing.assert_allclose(theta, t64, atol=5e-6)


@given(N=st.sampled_from([2, 3]), seed=st.integers(0, 2**31))
def test_eigen_angles_vjp(N, seed):
    """Gradient of a smooth function of the angles, L = sum_k w_k theta_k (distinct eigenvalues)."""
    W = Rng(seed).haar(N, lead=(5,))
    w = np.random.default_rng(seed).normal(size=(5, N))

    def fwd(p, W):
        theta, V = eigen_angles(W)
        return (theta,), (W, V)

    def vjp(p, ctx, tb):
        return (eigen_angles_vjp(ctx[0], ctx[1], tb),), {}

    assert_vjp(fwd, vjp, {}, (W,), group=(0,), cotangents=(w,), h=1e-4, rtol=1e-7)


def test_bad_input_fails_loudly():
    with pytest.raises(ValueError, match="square"):
        eigen_angles(np.zeros((3, 2), complex))
    with pytest.raises(ValueError, match="complex"):
        eigen_angles(np.eye(3))


def test_runs_on_array_api_strict():
    xs = pytest.importorskip("array_api_strict")
    Wn = Rng(2).haar(3, lead=(6,))
    from lattice import kernels
    theta, V = eigen_angles(xs.asarray(Wn))
    with kernels.reference_only():
        tn, Vn = eigen_angles(Wn)
    np.testing.assert_allclose(np.asarray(theta), tn, atol=1e-15)
    np.testing.assert_allclose(np.asarray(V), Vn, atol=1e-14)
    # the compiled closed-form eigensystem: same angles, eigenvectors equal up to a phase each
    tf, Vf = eigen_angles(Wn)
    np.testing.assert_allclose(tf, tn, atol=1e-14)
    overlap = np.abs(np.einsum("...ik,...il->...kl", np.conj(Vf), Vn))
    np.testing.assert_allclose(overlap, np.broadcast_to(np.eye(3), overlap.shape), atol=1e-12)


def test_named_result_unpacks_and_has_fields():
    """eigen_angles returns EigenAngles(theta, V): a named tuple, so old unpacking still works."""
    import flows
    from flows.eig import EigenAngles
    W = Rng(3).haar(3, lead=(4,))
    res = eigen_angles(W)
    assert isinstance(res, EigenAngles) and isinstance(res, tuple) and len(res) == 2
    assert flows.EigenAngles is EigenAngles
    theta, V = res
    assert res.theta is theta and res.V is V and res[0] is theta and res[1] is V
    _check_decomposition(W, res.theta, res.V)
