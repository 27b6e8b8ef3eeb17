"""Layout: shift semantics, reproducible reductions, coordinates, parity, errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import lattice as L
from lattice.layout import Layout, LayoutError


@given(st.sampled_from([(4, 6), (2, 4, 6), (4, 2, 2, 6)]), st.integers(-7, 7), st.integers(0, 3))
def test_shift_semantics(shape, n, mu):
    mu = mu % len(shape)
    lay = Layout(shape)
    F = np.arange(np.prod(shape) * 2, dtype=float).reshape((2,) + shape)
    G = lay.shift(F, mu, n, inner=0)
    x = tuple(np.random.default_rng(0).integers(0, s) for s in shape)
    y = list(x)
    y[mu] = (y[mu] + n) % shape[mu]
    assert G[(1,) + x] == F[(1,) + tuple(y)]


def test_sums_and_slice_sums():
    lay = Layout((4, 4, 4, 8))
    x = np.random.default_rng(1).normal(size=(3, 4, 4, 4, 8, 4, 3))
    assert np.allclose(lay.sum(x, inner=2), x.sum(axis=(1, 2, 3, 4, 5, 6)), rtol=1e-13)
    assert np.allclose(lay.slice_sum(x, 3, inner=2), x.sum(axis=(1, 2, 3, 5, 6)), rtol=1e-13)
    assert np.allclose(lay.slice_sum(x, 1, inner=2), x.sum(axis=(1, 3, 4, 5, 6)), rtol=1e-13)


def test_coords_and_parity():
    lay = Layout((2, 4, 6))
    c = lay.coords()
    assert [a.shape for a in c] == [(2, 1, 1), (4, 1), (6,)]
    p = lay.parity()
    assert p.shape == (2, 4, 6) and p[1, 2, 3] == (1 + 2 + 3) % 2


def test_bad_geometry_errors():
    with pytest.raises(LayoutError, match="2, 3 or 4"):
        Layout((4,))
    with pytest.raises(LayoutError, match="at least 2"):
        Layout((4, 1, 4, 4))
    with pytest.raises(LayoutError, match="does not fit"):
        Layout((4, 4)).check_sites(np.zeros((4, 3)), 0)


def test_grid_choice_and_divisibility_messages():
    lay = Layout((12, 12, 12, 24))
    assert lay.tile == (3, 3, 3, 3)
    assert lay._choose_grid(4) == (1, 1, 2, 2) or np.prod(lay._choose_grid(4)) == 4
    with pytest.raises(LayoutError, match="cannot decompose|does not divide"):
        lay._choose_grid(7)
