"""flows.projection: P_U(N), P_SU(N) (eqs. 9-10), their adjoints and the rank check."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import flows
from flows.gradcheck import assert_vjp
from lattice import su_n
from lattice.backend import Rng, get_namespace

BATCHES = [(), (3,), (2, 3)]


def _unitary_phase(rng, N, lead):
    """Haar SU(N) times a random U(1) phase: a general unitary matrix."""
    g = rng.haar(N, lead)
    a = rng.uniform(lead) * 2 * math.pi
    return g * np.exp(1j * a)[..., None, None]


def _matrix(rng, N, lead, spectrum, phase=0.0):
    """M = W diag(s) V^dag with Haar W, V in SU(N) and prescribed singular values, times e^{i phase}.

    det(W V^dag) = 1, so det P_U(N)(M) = e^{i N phase}: |N phase| < pi keeps away from the
    branch cut of the N-th root.
    """
    W = rng.haar(N, lead)
    V = rng.haar(N, lead)
    s = np.asarray(spectrum, dtype=float)
    return (W * s[..., None, :]) @ su_n.dagger(V) * np.exp(1j * phase)


def _spectrum(kind, N, u):
    base = 0.3 + 1.5 * u  # in [0.3, 1.8]
    if kind == "generic":
        return [base * (1 + 0.7 * i) for i in range(N)]
    if kind == "repeated":
        return [base] * N
    if kind == "nearly-repeated":
        return [base * (1 + 1e-9 * i) for i in range(N)]
    if kind == "pair":       # one repeated pair plus a smaller value
        return [base, base, 0.4 * base][:N] if N > 2 else [base, base * (1 + 1e-12)]
    raise ValueError(kind)


@given(N=st.sampled_from([2, 3]), batch=st.sampled_from(BATCHES), seed=st.integers(0, 2**31))
def test_matches_lattice_projection(N, batch, seed):
    """flows.project_* is the project's one projection (same numbers as lattice.su_n)."""
    M = Rng(seed).complex_normal(batch + (N, N))
    np.testing.assert_array_equal(flows.project_u(M), su_n.project_u(M))
    np.testing.assert_array_equal(flows.project_su(M), su_n.project_su(M))
    P = flows.project_su(M)
    assert float(np.max(su_n.unitarity_violation(P))) < 1e-13


@given(N=st.sampled_from([2, 3]), batch=st.sampled_from(BATCHES), seed=st.integers(0, 2**31))
def test_conjugation_equivariance(N, batch, seed):
    """Eq. 2: P_SU(N)(g M g^dag) = g P_SU(N)(M) g^dag for g in SU(N)."""
    rng = Rng(seed)
    M = rng.complex_normal(batch + (N, N))
    g = rng.haar(N, batch)
    lhs = flows.project_su(g @ M @ su_n.dagger(g))
    rhs = g @ flows.project_su(M) @ su_n.dagger(g)
    np.testing.assert_allclose(lhs, rhs, atol=1e-12)


@given(N=st.sampled_from([2, 3]), batch=st.sampled_from(BATCHES), seed=st.integers(0, 2**31))
def test_left_unitary_equivariance(N, batch, seed):
    """P_U(N)(g M) = g P_U(N)(M) for unitary g (not only SU(N))."""
    rng = Rng(seed)
    M = rng.complex_normal(batch + (N, N))
    g = _unitary_phase(rng, N, batch)
    np.testing.assert_allclose(flows.project_u(g @ M), g @ flows.project_u(M), atol=1e-12)
    np.testing.assert_allclose(flows.project_u(M @ g), flows.project_u(M) @ g, atol=1e-12)


@given(N=st.sampled_from([2, 3]), batch=st.sampled_from(BATCHES), seed=st.integers(0, 2**31),
       u=st.floats(-0.99, 0.99))
def test_active_loop_identity(N, batch, seed, u):
    """docs/design.md §7: P_SU(N)(U S^dag) = U P_SU(N)(S)^dag for U in SU(N), away from the cut.

    In exact arithmetic it holds for every det phase of P_U(N)(S) except exactly pi (where the
    principal N-th root is discontinuous); det P_U(N)(S) = e^{i pi u} here."""
    rng = Rng(seed)
    S = _matrix(rng, N, batch, _spectrum("generic", N, 0.5), phase=u * math.pi / N)
    U = rng.haar(N, batch)
    lhs = flows.project_su(U @ su_n.dagger(S))
    rhs = U @ su_n.dagger(flows.project_su(S))
    np.testing.assert_allclose(lhs, rhs, atol=1e-12)


@given(N=st.sampled_from([2, 3]), batch=st.sampled_from(BATCHES), seed=st.integers(0, 2**31),
       kind=st.sampled_from(["generic", "repeated", "nearly-repeated", "pair"]),
       u=st.floats(0.0, 1.0), phase=st.floats(-0.8, 0.8))
def test_vjp_matches_finite_differences(N, batch, seed, kind, u, phase):
    """Both adjoints against central differences, including (nearly) repeated singular values."""
    M = _matrix(Rng(seed), N, batch, _spectrum(kind, N, u), phase=phase * math.pi / N)
    for mod in (flows.ProjectU(), flows.ProjectSU()):
        assert_vjp(mod.forward, mod.vjp, {}, (M,), h=1e-4, seed=seed % 1000, n_dirs=3)


def test_vjp_at_exactly_unitary_input():
    """M unitary (all singular values equal 1): the adjoint is finite and correct."""
    M = Rng(4).haar(3, (5,))
    for mod in (flows.ProjectU(), flows.ProjectSU()):
        assert_vjp(mod.forward, mod.vjp, {}, (M,), h=1e-4, n_dirs=3)


def test_vjp_is_only_the_antihermitian_part():
    """Scaling M by a positive number does not change P: the adjoint is orthogonal to M."""
    rng = Rng(11)
    M = rng.complex_normal((4, 3, 3))
    P, ctx = flows.project_su_fwd(M)
    Mb = flows.project_su_vjp(ctx, rng.complex_normal((4, 3, 3)))
    assert abs(np.sum(np.real(np.conj(Mb) * M))) < 1e-12 * np.sum(np.abs(Mb) * np.abs(M))


@pytest.mark.parametrize("s_min", [0.0, 1e-15])
def test_rank_deficiency_raises(s_min):
    rng = Rng(2)
    M = rng.complex_normal((2, 4, 3, 3))
    bad = _matrix(rng, 3, (), [1.0, 0.5, s_min])
    M[1, 2] = bad
    with pytest.raises(flows.ProjectionError, match=r"index \(1, 2\)"):
        flows.project_su(M)
    with pytest.raises(flows.ProjectionError, match="rank"):
        flows.project_u(M)


def test_zero_and_nan_matrices_raise():
    M = np.zeros((2, 3, 3), complex)
    M[0] = np.eye(3)
    with pytest.raises(flows.ProjectionError):
        flows.project_su(M)
    M[1] = np.eye(3)
    M[1, 0, 0] = np.nan
    with pytest.raises(flows.ProjectionError, match=r"NaN.*index \(1,\)"):
        flows.project_su(M)


def test_rank_threshold_is_adjustable():
    M = _matrix(Rng(3), 3, (), [1.0, 1.0, 1e-8])
    flows.project_su(M)                           # fine at the default threshold
    with pytest.raises(flows.ProjectionError):
        flows.project_su(M, rank_rtol=1e-6)


def test_complex64():
    M = Rng(5).complex_normal((6, 3, 3))
    P64 = flows.project_su(M.astype(np.complex64))
    assert P64.dtype == np.complex64
    np.testing.assert_allclose(P64, flows.project_su(M), atol=2e-5)
    P, ctx = flows.project_su_fwd(M.astype(np.complex64))
    Mb = flows.project_su_vjp(ctx, P)
    assert Mb.dtype == np.complex64


def test_array_api_strict():
    xs = get_namespace("array_api_strict")
    rng = Rng(7, xp=xs)
    M = rng.complex_normal((4, 3, 3))
    Mh = np.asarray(M)
    for fwd, vjp in ((flows.project_u_fwd, flows.project_u_vjp), (flows.project_su_fwd, flows.project_su_vjp)):
        P, ctx = fwd(M)
        G = rng.complex_normal((4, 3, 3))
        Mb = vjp(ctx, G)
        Ph, ctxh = fwd(Mh)
        np.testing.assert_allclose(np.asarray(P), Ph, atol=1e-14)
        np.testing.assert_allclose(np.asarray(Mb), vjp(ctxh, np.asarray(G)), atol=1e-13)
