"""SU(N) algebra: generators, coordinates, exponential, projections, validity checks."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.linalg import expm as sp_expm

import lattice as L
from lattice import su_n
from lattice.backend import Rng

Ns = st.sampled_from([2, 3, 4])


@given(Ns)
def test_generators_orthonormal_traceless_antihermitian(N):
    T = su_n.generators(N)
    assert T.shape == (N * N - 1, N, N)
    assert np.allclose(T, -np.conj(np.swapaxes(T, -1, -2)))
    assert np.allclose(su_n.trace(T), 0)
    G = -2 * np.einsum("aij,bji->ab", T, T).real
    assert np.allclose(G, np.eye(N * N - 1), atol=1e-14)


@given(Ns, st.integers(0, 1000))
def test_coords_roundtrip(N, seed):
    c = Rng(seed).normal((5, N * N - 1))
    X = su_n.from_coords(c)
    assert np.allclose(su_n.to_coords(X), c, atol=1e-14)
    assert np.allclose(su_n.project_algebra(X), X, atol=1e-15)


@given(Ns, st.integers(0, 1000), st.sampled_from([1e-9, 0.1, 1.0, 3.0, 12.0]))
def test_expm_matches_reference_and_lands_in_su_n(N, seed, scale):
    X = su_n.random_algebra(Rng(seed), N, lead=(20,), scale=scale)
    E = su_n.expm(X)
    ref = np.array([sp_expm(x) for x in X])
    tol = 1e-14 if scale <= 1.0 else 1e-13 * scale
    assert np.max(np.abs(E - ref)) < tol
    assert float(su_n.unitarity_violation(E).max()) < 1e-13 * max(1.0, scale)


def test_expm_accuracy_1e14_typical_md_step():
    X = su_n.random_algebra(Rng(4), 3, lead=(2000,), scale=0.3)
    ref = np.array([sp_expm(x) for x in X])
    assert np.max(np.abs(su_n.expm(X) - ref)) < 1e-14


@given(Ns, st.integers(0, 1000))
def test_project_su_is_projection_and_equivariant(N, seed):
    r = Rng(seed)
    M = r.complex_normal((6, N, N))
    P = su_n.project_su(M)
    assert float(su_n.unitarity_violation(P).max()) < 1e-12
    g = r.haar(N, lead=(6,))
    assert np.allclose(su_n.project_su(g @ M @ su_n.dagger(g)), g @ P @ su_n.dagger(g), atol=1e-12)
    U = r.haar(N, lead=(6,))
    assert np.allclose(su_n.project_su(U), U, atol=1e-13)


def test_cotangent_force_roundtrip():
    r = Rng(1)
    U = r.haar(3, lead=(10,))
    F = su_n.random_algebra(r, 3, lead=(10,))
    assert np.allclose(su_n.force_from_cotangent(U, su_n.cotangent_from_force(U, F)), F, atol=1e-14)


def test_check_su_n_names_the_worst_link():
    U = np.array(L.random_gauge((4, 4), N=3, seed=0))
    su_n.check_su_n(U)
    U[1, 2, 3] = U[1, 2, 3] * 1.01
    with pytest.raises(L.InvalidGaugeField, match=r"index \(1, 2, 3\).*not in SU\(3\)"):
        su_n.check_su_n(U)
    U[1, 2, 3, 0, 0] = np.nan
    with pytest.raises(L.InvalidGaugeField, match="NaN"):
        su_n.check_su_n(U)
    with pytest.raises(L.InvalidGaugeField, match="complex dtype"):
        su_n.check_su_n(np.zeros((2, 3, 3)))
