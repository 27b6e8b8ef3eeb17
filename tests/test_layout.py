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


def test_grid_chooser_minimises_the_halo_surface():
    lay = Layout((12, 12, 12, 24))               # tile (3, 3, 3, 3): up to 4 ranks on space, 8 on time
    assert lay._choose_grid(1) == (1, 1, 1, 1)
    assert lay._choose_grid(2) == (1, 1, 1, 2)   # split the longest axis first
    assert lay._choose_grid(4) == (1, 1, 1, 4)   # face 12^3 beats 12^3 + 12^2 * 6 for (1, 1, 2, 2)
    assert lay._choose_grid(16) == (1, 1, 2, 8)  # ties on the surface: fewest split axes, then later axes
    assert lay._choose_grid(256) == (2, 4, 4, 8)
    sq = Layout((8, 8, 8, 8))
    assert sq._choose_grid(4) == (1, 1, 1, 4)
    assert sq._choose_grid(16) == (1, 1, 4, 4)   # local 8x8x2x2: surface 2*128 < 8x8x8x1's 512
    with pytest.raises(LayoutError, match=r"possible per axis: \[\[1, 2\], \[1, 2\], \[1, 2\], \[1, 2, 4\]\]; possible rank counts: \[1, 2, 4, 8, 16, 32\]"):
        Layout((6, 6, 6, 12))._choose_grid(5)


def test_explicit_grid_errors_name_the_axis():
    lay = Layout((4, 4, 4, 6))
    with pytest.raises(LayoutError, match="possible rank counts"):
        lay._choose_grid(7)
    with pytest.raises(LayoutError, match="does not match 1 ranks"):
        Layout((4, 4, 4, 6), grid=(1, 1, 1, 2))
    with pytest.raises(LayoutError, match="does not match 1 ranks"):
        Layout((4, 4, 4, 6), grid=(1, 1, 1))


@pytest.mark.parametrize("n", [-5, -1, 0, 1, 2, 7])
def test_shift_into_out_equals_shift(n):
    """Layout.shift(..., out=) writes the shifted field into a given array (a slot of a stack)."""
    lay = Layout((4, 3, 2, 6))
    F = np.arange(2 * 4 * 3 * 2 * 6 * 3, dtype=float).reshape(2, 4, 3, 2, 6, 3)
    for mu in range(4):
        stack = np.zeros((3,) + F.shape)
        res = lay.shift(F, mu, n, inner=1, out=stack[1])
        assert res is stack[1] or np.shares_memory(res, stack)
        np.testing.assert_array_equal(stack[1], lay.shift(F, mu, n, inner=1))
        assert not stack[0].any() and not stack[2].any()
    with pytest.raises(Exception, match="out of shape"):
        lay.shift(F, 0, 1, inner=1, out=np.zeros(F.shape[1:]))


def test_device_buffer_mode_is_validated_and_detected(monkeypatch):
    from lattice import layout as lay_mod
    try:
        assert lay_mod.set_device_buffers("host") is False
        assert lay_mod.set_device_buffers("device") is True
        for k in lay_mod._CUDA_AWARE_ENV:
            monkeypatch.delenv(k, raising=False)
        assert lay_mod.set_device_buffers("auto") is False
        monkeypatch.setenv("MPICH_GPU_SUPPORT_ENABLED", "1")
        assert lay_mod.device_buffers() is True
        with pytest.raises(ValueError, match="'auto', 'device' or 'host'"):
            lay_mod.set_device_buffers("gpu")
    finally:
        lay_mod.set_device_buffers("auto")


@given(below=st.tuples(*[st.integers(0, 3)] * 3), above=st.tuples(*[st.integers(0, 3)] * 3))
def test_with_ghosts_periodic_and_ghost_sum_adjoint(below, above):
    """On one process with_ghosts is the periodic extension (np.take with wrapped indices)
    and ghost_sum its adjoint; widths above the local extent are refused."""
    shape = (3, 4, 5)
    lay = Layout(shape)
    rng = np.random.default_rng(sum(below) + 7 * sum(above))
    F = rng.normal(size=(2,) + shape + (3, 3)) + 1j * rng.normal(size=(2,) + shape + (3, 3))
    E = lay.with_ghosts(F, below, above, inner=2)
    want = F
    for a in range(3):
        want = np.take(want, np.arange(-below[a], shape[a] + above[a]) % shape[a], axis=1 + a)
    assert np.array_equal(E, want)
    Eb = rng.normal(size=E.shape) + 1j * rng.normal(size=E.shape)
    assert abs(np.vdot(lay.ghost_sum(Eb, below, above, inner=2), F) - np.vdot(Eb, E)) < 1e-10 * np.abs(Eb).sum()
    with pytest.raises(LayoutError, match="ghost widths"):
        lay.with_ghosts(F, (4, 0, 0), (0, 0, 0), inner=2)
    with pytest.raises(LayoutError, match="does not fit"):
        lay.ghost_sum(F, (1, 0, 0), (0, 0, 0), inner=2)


def test_with_ghosts_on_array_api_strict():
    """with_ghosts / ghost_sum use only array-API operations (concat, slices, in-place adds)."""
    xps = L.get_namespace("array_api_strict")
    lay = Layout((2, 3, 4))
    rng = np.random.default_rng(0)
    F = rng.normal(size=(2, 3, 4, 3)) + 0j
    E = lay.with_ghosts(xps.asarray(F), (1, 0, 2), (2, 1, 0), inner=1)
    np.testing.assert_array_equal(np.asarray(E), lay.with_ghosts(F, (1, 0, 2), (2, 1, 0), inner=1))
    back = lay.ghost_sum(E, (1, 0, 2), (2, 1, 0), inner=1)
    np.testing.assert_allclose(np.asarray(back), lay.ghost_sum(np.asarray(E), (1, 0, 2), (2, 1, 0), inner=1))
