"""The finite-difference harness itself: it must fail on wrong adjoints and accept exact zeros."""
import numpy as np
import pytest

from flows.gradcheck import assert_vjp, check_vjp


def _square(conjugate: bool):
    """f(z) = a z^2; for L = Re sum conj(v) f the cotangent is z_bar = 2 a conj(z) v."""
    def fwd(p, z):
        return (p["a"] * z * z,), z

    def vjp(p, z, zb):
        zz = np.conj(z) if conjugate else z
        return (2 * p["a"] * zz * zb,), {"a": np.array(np.real(np.sum(np.conj(zb) * z * z)))}
    return fwd, vjp


def test_accepts_correct_and_rejects_wrong_adjoints():
    z = np.array([1 + 2j, -0.5 + 0.1j, 0.3 - 1j])
    p = {"a": np.array(1.7)}
    assert_vjp(*_square(True), p, (z,), h=1e-4)
    with pytest.raises(AssertionError, match="finite differences"):
        assert_vjp(*_square(False), p, (z,), h=1e-4)     # missing conjugation


def test_exact_zero_derivative_passes_with_rounding_floor():
    """A loss that does not depend on the input: the numerical derivative is pure rounding."""
    def fwd(p, x):
        return (np.sin(p["w"]) * 1e3 + 0.0 * x[:2],), None

    def vjp(p, ctx, ob):
        return (np.zeros(3),), {"w": np.cos(p["w"]) * 1e3 * ob}

    p = {"w": np.array([0.3, 1.1])}
    r = check_vjp(fwd, vjp, p, (np.ones(3),), h=1e-4)
    assert r.ok(1e-7)
    assert max(r.noise) > 0
