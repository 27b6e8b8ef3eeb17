"""lattice.kernels.dexp: phi(ad X) = (1 - e^{-ad X})/ad X (the derivative map of exp, eqs.
(D1)-(D3)) against its closed form from an eigen-decomposition, the adaptive number of terms
against a 40-term series, the adjoint against fourth-order central differences, the compiled
path against the reference, and bad input."""
import contextlib
import math

import numpy as np
import pytest

from lattice import kernels
from lattice.kernels.dexp import phi_terms, PhiSaved

PATHS = {"compiled": contextlib.nullcontext, "reference": kernels.reference_only}


def _ad_like(shape, scale, seed):
    """Antisymmetric real matrices (like ad X) with largest Frobenius norm ``scale``."""
    A = np.random.default_rng(seed).normal(size=shape)
    A = A - np.swapaxes(A, -1, -2)
    return A * (scale / np.max(np.sqrt(np.sum(A * A, axis=(-2, -1)))))


def _fd(f, h):
    return (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)


@pytest.mark.parametrize("path", PATHS)
def test_phi_equals_its_eigen_form_and_the_vjp_its_differences(path):
    A = _ad_like((5, 8, 8), 2.5, 0)
    rng = np.random.default_rng(1)
    G, dA = rng.normal(size=A.shape), rng.normal(size=A.shape)
    with PATHS[path]():
        phi, saved = kernels.phi_ad(A)
        for a, p in zip(A, phi):                    # phi(A) = (1 - e^{-A}) A^{-1} (A invertible here)
            w, V = np.linalg.eig(a)
            ref = (V * ((1 - np.exp(-w)) / w)) @ np.linalg.inv(V)
            np.testing.assert_allclose(p, ref.real, atol=1e-13)
        Ab = kernels.phi_ad_vjp(A, saved, G)
        num = _fd(lambda t: np.sum(G * kernels.phi_ad(A + t * dA, terms=saved.terms)[0]), 1e-4)
    assert abs(np.sum(Ab * dA) - num) < 1e-9 * abs(num)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("scale", [1e-4, 1e-2, 0.1, 0.5])
def test_adaptive_terms(path, scale):
    """The adaptive degree equals a 40-term series to rounding at every norm, uses few terms
    near the identity, and the adjoint (same degree) matches fourth-order differences."""
    A = _ad_like((6, 8, 8), scale, 1)
    rng = np.random.default_rng(2)
    G, dA = rng.normal(size=A.shape), rng.normal(size=A.shape)
    with PATHS[path]():
        phi, saved = kernels.phi_ad(A)
        ref, _ = kernels.phi_ad(A, terms=40)
        Ab = kernels.phi_ad_vjp(A, saved, G)
        num = _fd(lambda t: np.sum(G * kernels.phi_ad(A + t * dA, terms=saved.terms)[0]), 1e-3)
    np.testing.assert_allclose(phi, ref, rtol=0, atol=4e-16)
    assert saved.terms == phi_terms(scale) <= 17
    assert abs(np.sum(Ab * dA) - num) < 1e-9 * abs(num)


@pytest.mark.parametrize("shape", [(8, 8), (3, 70, 8, 8), (130, 3, 3), (0, 8, 8)])
def test_compiled_equals_reference(shape):
    """Batch shapes across the compiled block size (64 matrices), any n, empty stacks; the
    compiled adjoint keeps no intermediates and still equals the reference's."""
    A = _ad_like(shape, 0.8, 3) if math.prod(shape) else np.zeros(shape)
    G = np.random.default_rng(4).normal(size=shape)
    assert kernels.implementation(np) == "numba"
    phi, saved = kernels.phi_ad(A)
    assert saved.P is None
    Ab = kernels.phi_ad_vjp(A, saved, G)
    phi_r, saved_r = kernels.phi_ad_reference(A)
    assert saved_r.terms == saved.terms and len(saved_r.P) == saved.terms
    np.testing.assert_allclose(phi, phi_r, rtol=0, atol=2e-15)
    np.testing.assert_allclose(Ab, kernels.phi_ad_vjp_reference(A, saved_r, G), rtol=0,
                               atol=2e-14 * max(1.0, float(np.max(np.abs(G))) if G.size else 1.0))
    assert phi.shape == Ab.shape == shape
    # the reference adjoint also takes the compiled path's saved record (recomputing P)
    np.testing.assert_allclose(kernels.phi_ad_vjp_reference(A, PhiSaved(saved.terms), G), Ab, rtol=0, atol=2e-14)


def test_general_real_matrices_and_broadcast_cotangents():
    """The contract is any real stack, not only antisymmetric ones (a transposition error would
    go unseen on A^T = -A for odd powers only); a cotangent that broadcasts against A takes the
    reference on every path."""
    rng = np.random.default_rng(7)
    A = 0.3 * rng.normal(size=(70, 8, 8))
    G, dA = rng.normal(size=A.shape), rng.normal(size=A.shape)
    phi, saved = kernels.phi_ad(A)
    Ab = kernels.phi_ad_vjp(A, saved, G)
    phi_r, saved_r = kernels.phi_ad_reference(A)
    np.testing.assert_allclose(phi, phi_r, rtol=0, atol=2e-15)
    np.testing.assert_allclose(Ab, kernels.phi_ad_vjp_reference(A, saved_r, G), rtol=0, atol=2e-14)
    num = _fd(lambda t: np.sum(G * kernels.phi_ad(A + t * dA, terms=saved.terms)[0]), 1e-4)
    assert abs(np.sum(Ab * dA) - num) < 1e-9 * abs(num)
    g0 = G[0]                                                # (8, 8): broadcast over the stack
    np.testing.assert_allclose(kernels.phi_ad_vjp(A, saved, g0), kernels.phi_ad_vjp_reference(A, saved_r, g0),
                               rtol=0, atol=2e-14)


def test_phi_terms():
    """Few terms near the identity, 17 at the bound ||ad X||_F = 1, more beyond; the tail bound
    holds at the chosen K; a NaN norm is an error (the input field had NaN/Inf)."""
    assert phi_terms(0.0) == 1 and phi_terms(1e-3) == 4 and phi_terms(0.01) == 6
    assert phi_terms(0.1) < phi_terms(1.0) == 17 < phi_terms(2.0)
    for a in (1e-3, 0.3, 1.0, 2.0):
        K = phi_terms(a)
        tail = sum(a ** n / math.factorial(n + 1) for n in range(K + 1, K + 60))
        assert tail < 1e-17
    with pytest.raises(ValueError, match="NaN"):
        phi_terms(float("nan"))
    A = _ad_like((2, 8, 8), 0.3, 5)
    A[1, 2, 3] = np.nan
    for ctx in PATHS.values():
        with ctx(), pytest.raises(ValueError, match="NaN"):
            kernels.phi_ad(A)
    with pytest.raises(ValueError, match="square"):
        kernels.phi_ad(np.zeros((4, 8, 7)))
