"""The core lattice operations run on array_api_strict arrays (no NumPy-only calls)."""
import numpy as np
import pytest

array_api_strict = pytest.importorskip("array_api_strict")

import lattice as L
from lattice import su_n
from lattice.actions import Wilson, LuscherWeisz
from lattice.backend import Rng


@pytest.fixture
def fields():
    xs = array_api_strict
    lay = L.Layout((2, 2, 2, 4))
    Un = L.random_gauge((2, 2, 2, 4), seed=1)
    return lay, Un, xs.asarray(Un)


def test_rng_and_haar_on_strict():
    xs = array_api_strict
    r = Rng(3, xp=xs)
    U = r.haar(3, lead=(5,))
    assert isinstance(U, type(xs.asarray(1.0)))
    Un = Rng(3).haar(3, lead=(5,))
    assert np.allclose(np.asarray(U), Un, atol=1e-15)


def test_core_operations_on_strict(fields):
    lay, Un, Us = fields
    xs = array_api_strict
    assert np.allclose(np.asarray(lay.shift(Us, 3, 1)), lay.shift(Un, 3, 1))
    assert np.isclose(float(L.plaquette(Us, lay)), float(L.plaquette(Un, lay)), atol=1e-14)
    for S in (Wilson(5.0, lam=0.1), LuscherWeisz(3.8)):
        assert np.isclose(float(S.action(Us, lay)), float(S.action(Un, lay)), rtol=1e-13)
        assert np.allclose(np.asarray(S.force(Us, lay)), S.force(Un, lay), atol=1e-13)
    X = su_n.random_algebra(Rng(2, xp=xs), 3, lead=(4,))
    assert np.allclose(np.asarray(su_n.expm(X)), su_n.expm(np.asarray(X)), atol=1e-15)
    assert np.isclose(complex(L.polyakov_loop(Us, lay)), complex(L.polyakov_loop(Un, lay)))
    su_n.check_su_n(Us)
