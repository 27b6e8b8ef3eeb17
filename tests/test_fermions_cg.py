"""The one CG: true residual, batching, failure reporting, mixed precision."""
import warnings

import numpy as np
import pytest

import lattice as L
import fermions as F
from fermions.cg import CGNotConverged, CGWarning, CGBreakdown

SHAPE = (4, 2, 2, 4)


@pytest.fixture(scope="module")
def op():
    return F.TwistedMassWilson(L.random_gauge(SHAPE, seed=1, batch=(2,)), 0.2, 0.02)


def _rhs(op, seed, lead):
    return L.Rng(seed).complex_normal(lead=lead, layout=op.half_layout, inner=(4, 3))


def _true_rel(A, x, b):
    r = b - A(x)
    ax = tuple(range(b.ndim - 6, b.ndim))
    return np.sqrt(np.sum(np.abs(r) ** 2, axis=ax) / np.sum(np.abs(b) ** 2, axis=ax))


@pytest.mark.parametrize("tol", [1e-6, 1e-10, 1e-12])
def test_true_residual_below_tolerance(op, tol):
    b = _rhs(op, 2, (3, 2))
    x, info = F.cg(op.apply_schur_normal, b, tol=tol, layout=op.half_layout)
    rel = _true_rel(op.apply_schur_normal, x, b)
    assert rel.max() <= tol
    assert info.converged and info.residual <= tol
    assert np.allclose(sorted(info.residuals), sorted(rel.ravel()), rtol=1e-6, atol=1e-30)
    assert info.iterations > 0


def test_batch_elements_have_their_own_coefficients(op):
    """Solving a batch gives the same solutions as solving each element alone."""
    b = _rhs(op, 3, (2, 2))
    b = b * np.array([1.0, 1e3]).reshape(2, 1, 1, 1, 1, 1, 1, 1)      # very different scales
    x, _ = F.cg(op.apply_schur_normal, b, tol=1e-11)
    for i in range(2):
        for j in range(2):
            A = F.TwistedMassWilson(op.U[j], op.kappa, op.mu).apply_schur_normal
            xi, _ = F.cg(A, b[i, j], tol=1e-11)
            assert np.abs(x[i, j] - xi).max() <= 1e-8 * np.abs(xi).max()


def test_zero_rhs_and_initial_guess(op):
    b = _rhs(op, 4, (2,))
    b[0] = 0
    x, info = F.cg(op.apply_schur_normal, b, tol=1e-10)
    assert np.all(x[0] == 0) and info.converged
    x2, info2 = F.cg(op.apply_schur_normal, b, tol=1e-10, x0=x)
    assert info2.iterations <= 2


def test_non_convergence_raises_with_the_residual(op):
    b = _rhs(op, 5, (2,))
    with pytest.raises(CGNotConverged, match=r"true relative residual \d\.\d+e[-+]\d+ > tol 1\.0e-10 after 3 iterations") as exc:
        F.cg(op.apply_schur_normal, b, tol=1e-10, maxiter=3)
    info = exc.value.info
    assert not info.converged and info.iterations == 3 and info.residual > 1e-10


def test_non_convergence_can_warn_and_flag(op):
    b = _rhs(op, 5, (2,))
    with pytest.warns(CGWarning, match="did not converge"):
        x, info = F.cg(op.apply_schur_normal, b, tol=1e-10, maxiter=3, on_failure="warn")
    assert not info.converged and info.residual > 1e-10
    assert np.isfinite(x).all()


def test_non_hermitian_positive_operator_is_a_breakdown(op):
    b = _rhs(op, 6, (2,))
    with pytest.raises(CGBreakdown, match="not Hermitian positive definite"):
        F.cg(lambda x: -op.apply_schur_normal(x), b)
    bad = b.copy()
    bad[0, 0, 0, 0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        F.cg(op.apply_schur_normal, bad, maxiter=20)
    with pytest.raises((CGBreakdown, CGNotConverged)):          # NaN produced by the operator
        F.cg(lambda x: op.apply_schur_normal(x) * np.nan, b, maxiter=20)


def test_bad_arguments(op):
    b = _rhs(op, 6, ())
    with pytest.raises(ValueError, match="tol"):
        F.cg(op.apply_schur_normal, b, tol=0)
    with pytest.raises(ValueError, match="maxiter"):
        F.cg(op.apply_schur_normal, b, maxiter=0)
    with pytest.raises(ValueError, match="on_failure"):
        F.cg(op.apply_schur_normal, b, on_failure="ignore")


def test_mixed_precision_defect_correction_reaches_double_accuracy(op):
    b = _rhs(op, 7, (2,))
    low = op.astype(np.complex64)
    x, info = F.cg(op.apply_schur_normal, b, tol=1e-12, apply_A_low=low.apply_schur_normal)
    assert x.dtype == np.complex128
    assert _true_rel(op.apply_schur_normal, x, b).max() <= 1e-12
    assert info.precision == "mixed" and info.restarts >= 2 and info.low_iterations > 0


def test_reliable_update_recovers_from_a_drifting_residual(op):
    """An operator whose first application is slightly wrong makes the recursive residual drift;
    CG must notice through the true residual and still converge."""
    calls = {"n": 0}

    def A(x):
        calls["n"] += 1
        y = op.apply_schur_normal(x)
        return y * (1 + 1e-6) if calls["n"] == 3 else y

    b = _rhs(op, 8, (2,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, info = F.cg(A, b, tol=1e-11)
    assert _true_rel(op.apply_schur_normal, x, b).max() <= 1e-11
    assert info.restarts >= 1
