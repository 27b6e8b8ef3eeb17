"""Gamma matrices and the twisted-mass Wilson operator: algebra, hermiticity, covariance, spectrum."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import lattice as L
from lattice import su_n
import fermions as F
from fermions.gamma import PROJ, projector

from fermion_reference import naive_tm_apply, G, G5

SHAPE = (4, 2, 2, 4)


def _spinor(shape, seed, lead=()):
    return L.Rng(seed).complex_normal(lead=lead, layout=L.Layout(shape), inner=(4, 3))


def _vdot(a, b):
    return np.vdot(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- gamma matrices
def test_clifford_algebra_and_hermiticity():
    I4 = np.eye(4)
    for m in range(4):
        assert np.allclose(G[m], G[m].conj().T, atol=0)
        assert np.allclose(G[m] @ G5 + G5 @ G[m], 0, atol=0)
        for n in range(4):
            assert np.allclose(G[m] @ G[n] + G[n] @ G[m], 2 * (m == n) * I4, atol=0)
    assert np.array_equal(G5, np.diag([1, 1, -1, -1]))
    assert np.allclose(G[3] @ G[0] @ G[1] @ G[2], G5, atol=1e-15)          # gamma_5 = g_t g_x g_y g_z


@pytest.mark.parametrize("mu", range(4))
@pytest.mark.parametrize("s", [1, -1])
def test_half_spinor_tables_reproduce_projectors(mu, s):
    """(1 + s gamma) psi = [h; s B^dag h], h = up + s B dn, with the tabulated monomial B."""
    B, Bd = PROJ[mu]
    P = np.asarray(projector(mu, s))
    assert np.allclose(P, np.eye(4) + s * G[mu])
    psi = np.random.default_rng(mu).normal(size=4) + 1j
    Bm = np.zeros((2, 2), complex)
    Bdm = np.zeros((2, 2), complex)
    for r in range(2):
        Bm[r, B.perm[r]] = B.phase[r]
        Bdm[r, Bd.perm[r]] = Bd.phase[r]
    h = psi[:2] + s * Bm @ psi[2:]
    assert np.allclose(np.r_[h, s * Bdm @ h], P @ psi)
    assert np.allclose(Bdm, Bm.conj().T)


# ---------------------------------------------------------------- operator
@pytest.mark.parametrize("bc", ["antiperiodic", "periodic", (1j, 1, np.exp(0.3j), -1)])
def test_operator_matches_naive_reference(bc):
    U = L.random_gauge(SHAPE, seed=1)
    psi = _spinor(SHAPE, 2, lead=(2,))
    op = F.TwistedMassWilson(U, 0.137, -0.21, bc=bc)
    phases = F.wilson.normalise_bc(bc)
    ref = naive_tm_apply(U, psi, 0.137, -0.21, bc=phases)
    assert np.abs(op.apply(psi) - ref).max() < 1e-13


def test_batched_gauge_fields_broadcast_against_spinors():
    U = L.random_gauge(SHAPE, seed=4, batch=(2,))
    op = F.TwistedMassWilson(U, 0.15, 0.1)
    psi = _spinor(SHAPE, 5, lead=(3, 1))
    out = op.apply(psi)
    assert out.shape == (3, 2) + SHAPE + (4, 3)
    for b in range(2):
        ref = F.TwistedMassWilson(U[b], 0.15, 0.1).apply(psi[:, 0])
        assert np.abs(out[:, b] - ref).max() < 1e-14


def test_apply_dagger_is_the_adjoint_and_normal_is_mdagm():
    U = L.random_gauge(SHAPE, seed=3)
    op = F.TwistedMassWilson(U, 0.15, 0.3)
    a, b = _spinor(SHAPE, 1), _spinor(SHAPE, 2)
    assert abs(_vdot(a, op.apply(b)) - _vdot(op.apply_dagger(a), b)) < 1e-12
    assert np.abs(op.apply_normal(b) - op.apply_dagger(op.apply(b))).max() < 1e-13


def test_gamma5_hermiticity():
    """M(mu)^dag = gamma_5 M(-mu) gamma_5, as dense matrices."""
    U = L.random_gauge(SHAPE, seed=7)
    M = F.dense_M(U, 0.16, 0.25)
    Mm = F.dense_M(U, 0.16, -0.25)
    V = np.prod(SHAPE)
    g5 = np.kron(np.eye(V), np.kron(G5, np.eye(3)))
    assert np.abs(M.conj().T - g5 @ Mm @ g5).max() < 1e-14


def test_lambda_min_of_mdagm_bounded_by_mu_tilde_squared():
    """M = W + i mu~ gamma_5 with W = 1 - kappa H and W^dag gamma_5 = gamma_5 W, so
    M^dag M = W^dag W + mu~^2 >= mu~^2."""
    for seed, (kappa, mu) in enumerate([(0.2, 0.05), (0.25, 0.1), (0.124, 0.5)]):
        U = L.random_gauge(SHAPE, seed=seed)
        M = F.dense_M(U, kappa, mu)
        lam = np.linalg.eigvalsh(M.conj().T @ M)
        mt = 2 * kappa * mu
        assert lam.min() >= mt ** 2 * (1 - 1e-10)
    # the bound is sharp: at U = 1, periodic, kappa = 1/8 the p = 0 mode has W(p) = 0
    M = F.dense_M(L.unit_gauge((4, 2, 2, 2)), 0.125, 0.2, bc="periodic")
    lam = np.linalg.eigvalsh(M.conj().T @ M)
    assert abs(lam.min() - (2 * 0.125 * 0.2) ** 2) < 1e-12


@given(seed=st.integers(0, 10_000), mu=st.floats(-0.5, 0.5), kappa=st.floats(0.05, 0.25))
def test_gauge_covariance(seed, mu, kappa):
    """M[U^Omega] (Omega psi) = Omega (M[U] psi) for any gauge transformation Omega."""
    U = L.random_gauge(SHAPE, seed=seed)
    Om = L.random_gauge_transformation(SHAPE, seed=seed + 1)
    psi = _spinor(SHAPE, seed + 2)
    Ug = L.gauge_transform(U, Om)
    lhs = F.TwistedMassWilson(Ug, kappa, mu).apply(psi @ np.swapaxes(Om, -1, -2))
    rhs = F.TwistedMassWilson(U, kappa, mu).apply(psi) @ np.swapaxes(Om, -1, -2)
    assert np.abs(lhs - rhs).max() < 1e-12


def test_hopping_term_alone():
    U = L.random_gauge(SHAPE, seed=9)
    psi = _spinor(SHAPE, 3)
    op = F.TwistedMassWilson(U, 0.2, 0.0)
    assert np.abs(op.apply(psi) - (psi - 0.2 * op.hopping(psi))).max() < 1e-14


def test_complex64_operator_agrees_with_complex128():
    U = L.random_gauge(SHAPE, seed=2)
    psi = _spinor(SHAPE, 1)
    op = F.TwistedMassWilson(U, 0.15, 0.1)
    op32 = op.astype(np.complex64)
    out = op32.apply(psi.astype(np.complex64))
    assert out.dtype == np.complex64
    assert np.abs(out - op.apply(psi)).max() < 1e-5


def test_bad_input_fails_loudly():
    U = L.random_gauge(SHAPE, seed=1)
    with pytest.raises(ValueError, match="kappa"):
        F.TwistedMassWilson(U, -0.1, 0.1)
    with pytest.raises(ValueError, match="mu"):
        F.TwistedMassWilson(U, 0.1, float("nan"))
    with pytest.raises(su_n.InvalidGaugeField):
        F.TwistedMassWilson(U * 1.01, 0.1, 0.1)
    with pytest.raises(ValueError, match="four-dimensional"):
        F.TwistedMassWilson(L.random_gauge((4, 4), seed=1), 0.1, 0.1)
    with pytest.raises(ValueError, match="boundary"):
        F.TwistedMassWilson(U, 0.1, 0.1, bc=(1, 1, 1, 2))
    with pytest.raises(ValueError, match="boundary"):
        F.TwistedMassWilson(U, 0.1, 0.1, bc="twisted")
    op = F.TwistedMassWilson(U, 0.1, 0.1)
    with pytest.raises(ValueError):
        op.apply(np.zeros(SHAPE + (4,), complex))
    with pytest.raises(ValueError):
        op.apply(np.zeros((4, 2, 2, 2, 4, 3), complex))   # wrong lattice


def test_flavour_flip_and_with_mu_share_links():
    U = L.random_gauge(SHAPE, seed=1)
    op = F.TwistedMassWilson(U, 0.15, 0.1)
    down = op.flipped()
    assert down.mu == -0.1 and down.links is op.links
    psi = _spinor(SHAPE, 4)
    ref = F.TwistedMassWilson(U, 0.15, -0.1).apply(psi)
    assert np.abs(down.apply(psi) - ref).max() == 0
