"""Stochastic determinant ratio vs exact dense determinants."""
import math

import numpy as np
import pytest

import lattice as L
from lattice import su_n
import fermions as F

SHAPE = (4, 2, 2, 4)
KAPPA, MU = 0.17, 0.1


def _near(U, eps, seed):
    X = su_n.random_algebra(L.Rng(seed), 3, lead=U.shape[:-2], scale=eps)
    return su_n.expm(X) @ U


def test_log_mean_exp():
    x = np.array([[1000.0, -3.0], [1001.0, -5.0]])
    got = F.log_mean_exp(x, axis=0)
    want = [1000.0 + math.log((1 + math.e) / 2), math.log((math.exp(-3) + math.exp(-5)) / 2)]
    assert np.allclose(got, want, rtol=1e-15)


def test_stochastic_ratio_agrees_with_dense_ratio():
    """U' = exp(eps F^) U along the (normalised) exact force: a ratio of order e^2.5 that the
    estimator must resolve to a few percent."""
    U = L.random_gauge(SHAPE, seed=1, batch=(2,))
    _, Fr = F.dense_log_det_force(U, KAPPA, MU)
    Up = su_n.expm(0.02 * Fr / np.sqrt(np.mean(su_n.inner(Fr, Fr)))) @ U
    lam = F.ratio_variance_condition(U, Up, KAPPA, MU)
    assert np.all(lam > 0.5)                                  # finite-variance regime
    exact = F.dense_log_det(Up, KAPPA, MU) - F.dense_log_det(U, KAPPA, MU)
    r = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=100, seed=3)
    assert r.log_weights.shape == (100, 2) and r.log_weights.dtype == np.float64
    assert np.all(np.abs(exact) > 1.0)                        # a non-trivial ratio (guard)
    assert np.all(np.abs(r.log_W - exact) < 4 * r.log_W_err), (r.log_W, exact, r.log_W_err)
    assert np.all(r.log_W_err < 0.05)
    assert r.cg.converged and r.cg.residual <= 1e-10


def _relative_variance(U, Up):
    """Exact var(w)/E[w]^2 = det(B^dag B)^2 / det(2 B^dag B - 1) - 1 of the identity-map
    estimator, B = M^[U']^{-dag} M^[U]^dag (dense, per batch element)."""
    S, Sp = F.dense_schur(U, KAPPA, MU), F.dense_schur(Up, KAPPA, MU)
    dag = lambda A: np.conj(np.swapaxes(A, -1, -2))
    B = np.linalg.solve(dag(Sp), dag(S))
    BB = dag(B) @ B
    l1 = np.linalg.slogdet(BB)[1]
    l2 = np.linalg.slogdet(2 * BB - np.eye(BB.shape[-1]))[1]
    return np.exp(2 * l1 - l2) - 1


def test_stochastic_ratio_random_direction():
    """A random nearby U' (smaller signal-to-noise): agreement within the estimated error, and
    an estimated error of the size the exact variance predicts."""
    U = L.random_gauge(SHAPE, seed=1, batch=(2,))
    Up = _near(U, 0.06, 2)
    exact = F.dense_log_det(Up, KAPPA, MU) - F.dense_log_det(U, KAPPA, MU)
    r = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=100, seed=3)
    assert np.all(np.abs(r.log_W - exact) < 4 * r.log_W_err), (r.log_W, exact, r.log_W_err)
    predicted = np.sqrt(_relative_variance(U, Up) / 100)          # delta method, exact variance
    assert np.all(predicted < 0.35)                              # a resolvable ratio (guard)
    assert np.all((r.log_W_err > 0.4 * predicted) & (r.log_W_err < 2.0 * predicted)), (r.log_W_err, predicted)


def test_ratio_is_exactly_one_for_identical_fields():
    U = L.random_gauge(SHAPE, seed=4)
    r = F.log_det_ratio(U, U, KAPPA, MU, n_shots=3, seed=1)
    # each exponent is a difference of two numbers ~ 2 N V = 384; it cancels to rounding
    assert np.abs(r.log_weights).max() < 1e-9


def test_log_weights_are_insensitive_to_the_solver_tolerance():
    """The energy functional makes the error quadratic in the CG residual: tol = 1e-6 already
    gives log-weights within ~1e-9 of the tol = 1e-13 ones."""
    U = L.random_gauge(SHAPE, seed=5)
    Up = _near(U, 0.1, 6)
    a = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=4, seed=7, tol=1e-13).log_weights
    b = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=4, seed=7, tol=1e-6).log_weights
    c = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=4, seed=7, tol=1e-10, precision="mixed").log_weights
    assert np.abs(a - b).max() < 1e-8
    assert np.abs(a - c).max() < 1e-10
    assert np.abs(a).max() > 0.1


def test_variance_condition_fails_for_distant_fields():
    U = L.random_gauge(SHAPE, seed=8)
    Up = L.random_gauge(SHAPE, seed=9)
    assert float(F.ratio_variance_condition(U, Up, 0.24, MU)) < 0.5


def test_bad_arguments():
    U = L.random_gauge(SHAPE, seed=8)
    with pytest.raises(ValueError, match="n_shots"):
        F.log_det_ratio(U, U, KAPPA, MU, n_shots=0, seed=1)
    with pytest.raises(ValueError, match="same shape"):
        F.log_det_ratio(U, U[None], KAPPA, MU, n_shots=1, seed=1)
    with pytest.raises(ValueError, match="precision"):
        F.log_det_ratio(U, U, KAPPA, MU, n_shots=1, seed=1, precision="half")


def test_tiny_lattice_error_says_what_is_needed():
    """L_0 = 2 has no even-odd packing: the error names the entry point and a lattice that works."""
    U = L.random_gauge((2, 2, 2, 2), seed=8)
    with pytest.raises(F.EvenOddError, match=r"log_det_ratio needs the even-odd packing.*L_0 >= 4.*\(4, 2, 2, 2\)"):
        F.log_det_ratio(U, U, KAPPA, MU, n_shots=1, seed=1)
    with pytest.raises(F.EvenOddError, match="ratio_variance_condition needs the even-odd packing"):
        F.ratio_variance_condition(U, U, KAPPA, MU)


def test_variance_condition_with_a_pseudofermion_map():
    """ratio_variance_condition(pf_map=h) = lambda_min(B^dag B), B = M^'^-dag H M^^dag: the
    identity map gives the plain value (batched too), a scaling phi -> c phi multiplies it by
    |c|^2, the ideal map h* = M^'^dag M^^-dag gives B = 1; maps that are not complex-linear
    (a cubic term, complex conjugation) are refused."""
    U = L.random_gauge(SHAPE, seed=1, batch=(2,))
    Up = su_n.expm(su_n.random_algebra(L.Rng(2), 3, lead=U.shape[:-2], scale=0.05)) @ U
    lam0 = F.ratio_variance_condition(U, Up, KAPPA, MU)
    assert lam0.shape == (2,)
    np.testing.assert_allclose(F.ratio_variance_condition(U, Up, KAPPA, MU, pf_map=lambda phi: (phi, 0.0)),
                               lam0, rtol=1e-12)
    c = 0.7 - 0.2j
    np.testing.assert_allclose(F.ratio_variance_condition(U, Up, KAPPA, MU, pf_map=lambda phi: (c * phi, 0.0)),
                               abs(c) ** 2 * lam0, rtol=1e-10)
    U1, Up1 = U[0], Up[0]
    S, Sp = F.dense_schur(U1, KAPPA, MU), F.dense_schur(Up1, KAPPA, MU)
    H = np.conj(Sp).T @ np.linalg.inv(np.conj(S).T)

    def ideal(phi):
        flat = phi.reshape(phi.shape[0], -1)
        return (flat @ H.T).reshape(phi.shape), 0.0
    assert abs(float(F.ratio_variance_condition(U1, Up1, KAPPA, MU, pf_map=ideal)) - 1.0) < 1e-9
    for bad in (lambda phi: (phi + 0.1 * phi * np.abs(phi) ** 2, 0.0), lambda phi: (np.conj(phi), 0.0)):
        with pytest.raises(ValueError, match="pf_map is not complex-linear"):
            F.ratio_variance_condition(U1, Up1, KAPPA, MU, pf_map=bad)
