"""lattice.kernels.line_sums / line_sums_vjp: sums of Wilson lines at chosen start sites equal
the whole-field products of flows.paths (shift-based, an independent formulation) at those
sites, for arbitrary paths (hypothesis); compiled equals reference in both precisions; the
adjoint (L2) passes central finite differences in float64 and accumulates into L_bar; bad
tables and shapes are refused with a message."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lattice import kernels, Layout
from lattice.backend import get_namespace
from flows.paths import paths_fwd
from flows.residual import family_paths

TOL = {np.complex128: 1e-12, np.complex64: 5e-5}


def _rand(rng, shape, dtype=np.complex128):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)


def _whole_field(L, paths, layout, starts, nl):
    """sum_p W_p(x) by flows.paths (layout.shift per step) at the start sites."""
    Nd = layout.Nd
    Ws, _ = paths_fwd([L[(slice(None),) * nl + (m,)] for m in range(Nd)], paths, layout)
    W = sum(Ws)
    lead = W.shape[:nl]
    return W.reshape(lead + (-1, W.shape[-2], W.shape[-1]))[(slice(None),) * nl + (starts,)]


_step = st.tuples(st.integers(0, 2), st.sampled_from([1, -1]))


@settings(max_examples=25, deadline=None)
@given(paths=st.integers(1, 5).flatmap(lambda K: st.lists(st.lists(_step, min_size=K, max_size=K), min_size=1,
                                                          max_size=3)),
       seed=st.integers(0, 2**16))
def test_line_sums_equal_whole_field_products(paths, seed):
    """Any paths (backtracking, winding, length 1) on a 3d block with unequal extents."""
    rng = np.random.default_rng(seed)
    shape = (3, 4, 5)
    lay = Layout(shape)
    V = int(np.prod(shape))
    L = _rand(rng, (2, 3) + shape + (3, 3))
    starts = rng.choice(V, size=int(rng.integers(1, V + 1)), replace=False)
    tb = kernels.line_table(shape, paths, starts)
    want = _whole_field(L, paths, lay, starts, 1)
    got = kernels.line_sums(L, tb)
    with kernels.reference_only():
        ref = kernels.line_sums(L, tb)
    scale = TOL[np.complex128] * max(1.0, np.max(np.abs(want)))
    assert np.max(np.abs(got - want)) < scale
    assert np.max(np.abs(ref - want)) < scale


def _residual_paths():
    return {fam: [p for p, _ in family_paths(fam, 1, 4)] for fam in ("plaquette", "rectangle", "chair")}


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
@pytest.mark.parametrize("family", ["plaquette", "rectangle", "chair"])
def test_line_sums_compiled_equals_reference(dtype, family):
    """4d, two lead axes, 300 of 324 sites (not a multiple of the kernel's block), forward and
    adjoint."""
    rng = np.random.default_rng(5)
    shape = (3, 3, 6, 6)
    L = _rand(rng, (2, 2, 4) + shape + (3, 3), dtype)
    starts = rng.choice(324, size=300, replace=False)
    tb = kernels.line_table(shape, _residual_paths()[family], starts)
    W = kernels.line_sums(L, tb)
    Wb = _rand(rng, W.shape, dtype)
    Lb = kernels.line_sums_vjp(L, tb, Wb)
    with kernels.reference_only():
        Wr = kernels.line_sums(L, tb)
        Lbr = kernels.line_sums_vjp(L, tb, Wb)
    assert W.dtype == dtype and Lb.dtype == dtype and Lb.shape == L.shape
    assert np.max(np.abs(W - Wr)) < TOL[dtype] * np.max(np.abs(Wr))
    assert np.max(np.abs(Lb - Lbr)) < TOL[dtype] * np.max(np.abs(Lbr))


@pytest.mark.parametrize("reference", [False, True])
def test_line_sums_vjp_finite_differences(reference):
    """d/dt Re <W_bar, W(L + t dL)> = Re <L_bar, dL> (design §7 complex cotangents), float64,
    paths with dagger factors, repeated links across paths and a length-1 path set."""
    rng = np.random.default_rng(7)
    shape = (4, 3, 3, 2)
    for paths in (_residual_paths()["rectangle"][:4] + [[(1, 1), (1, 1), (1, -1), (0, -1), (0, 1)]],
                  [[(2, -1)], [(0, 1)]]):
        L = _rand(rng, (3, 4) + shape + (3, 3))
        starts = rng.choice(72, size=50, replace=False)
        tb = kernels.line_table(shape, paths, starts)
        Wb = _rand(rng, (3, 50, 3, 3))
        dL = _rand(rng, L.shape)

        def f(t):
            return np.real(np.vdot(Wb, kernels.line_sums(L + t * dL, tb)))
        if reference:
            with kernels.reference_only():
                Lb = kernels.line_sums_vjp(L, tb, Wb)
                num = (f(1e-6) - f(-1e-6)) / 2e-6
        else:
            Lb = kernels.line_sums_vjp(L, tb, Wb)
            num = (f(1e-6) - f(-1e-6)) / 2e-6
        assert abs(np.real(np.vdot(Lb, dL)) - num) < 1e-7 * abs(num)


@pytest.mark.parametrize("reference", [False, True])
def test_line_sums_vjp_accumulates(reference):
    rng = np.random.default_rng(8)
    shape = (4, 4)
    L = _rand(rng, (2, 2) + shape + (3, 3))
    tb = kernels.line_table(shape, [[(0, 1), (1, 1), (0, -1)]], np.arange(0, 16, 3))
    Wb = _rand(rng, (2, 6, 3, 3))
    base = _rand(rng, L.shape)
    ctx = kernels.reference_only() if reference else _null()
    with ctx:
        alone = kernels.line_sums_vjp(L, tb, Wb)
        acc = kernels.line_sums_vjp(L, tb, Wb, L_bar=base.copy())
    np.testing.assert_allclose(acc, base + alone, atol=1e-13)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_line_sums_array_api_strict():
    """The reference runs on array_api_strict arrays (no NumPy-only indexing) and agrees."""
    xps = get_namespace("array_api_strict")
    rng = np.random.default_rng(9)
    shape = (4, 4)
    L = _rand(rng, (2,) + shape + (3, 3))
    tb = kernels.line_table(shape, [[(0, 1), (1, -1)], [(1, 1), (0, -1)]], [1, 5, 6, 12])
    Wb = _rand(rng, (4, 3, 3))
    W = kernels.line_sums(xps.asarray(L), tb)
    Lb = kernels.line_sums_vjp(xps.asarray(L), tb, xps.asarray(Wb))
    np.testing.assert_allclose(np.asarray(W), kernels.line_sums(L, tb), atol=1e-13)
    np.testing.assert_allclose(np.asarray(Lb), kernels.line_sums_vjp(L, tb, Wb), atol=1e-13)


def test_line_table_and_shapes_refused():
    with pytest.raises(ValueError, match="equal length"):
        kernels.line_table((4, 4), [[(0, 1)], [(0, 1), (1, 1)]], [0])
    with pytest.raises(ValueError, match="bad step"):
        kernels.line_table((4, 4), [[(2, 1)]], [0])
    with pytest.raises(ValueError, match="flat indices"):
        kernels.line_table((4, 4), [[(0, 1)]], [16])
    with pytest.raises(ValueError, match="distinct"):
        kernels.line_table((4, 4), [[(0, 1)]], [3, 3])
    tb = kernels.line_table((4, 4), [[(0, 1)]], [0, 1])
    L = np.zeros((2, 4, 4, 3, 3), complex)
    with pytest.raises(ValueError, match="do not match the table"):
        kernels.line_sums(np.zeros((2, 4, 2, 3, 3), complex), tb)
    with pytest.raises(ValueError, match="cotangent of shape"):
        kernels.line_sums_vjp(L, tb, np.zeros((3, 3, 3), complex))
    with pytest.raises(ValueError, match="accumulator"):
        kernels.line_sums_vjp(L, tb, np.zeros((2, 3, 3), complex), L_bar=np.zeros((2, 4, 4, 3, 3), np.complex64))


@pytest.mark.parametrize("split", [(0,), (1, 2), (0, 1, 2)])
def test_ghost_tables_equal_periodic_tables(split):
    """ghost_line_tables on a block extended by Layout.with_ghosts (on one process: the
    periodic extension) gives the periodic tables' sums, and the adjoint through ghost_sum
    the periodic adjoint; the widths are exactly the planes the paths reach; None where they
    exceed the block."""
    rng = np.random.default_rng(11)
    shape = (4, 3, 5)
    lay = Layout(shape)
    sets = [[p for p, _ in family_paths("rectangle", 0, 3)], [p for p, _ in family_paths("plaquette", 0, 3)]]
    starts = rng.permutation(60)                              # every site, in a shuffled order
    tabs, below, above = kernels.ghost_line_tables(shape, sets, starts, shift=(0, 1), split_axes=split)
    for a in range(3):          # rectangles reach 2 planes along nu; along mu = 0 from x + 0^: x - 1 .. x + 2
        assert (below[a], above[a]) == (((1, 2) if a == 0 else (2, 2)) if a in split else (0, 0))
    L = _rand(rng, (2, 3) + shape + (3, 3))
    Le = lay.with_ghosts(L, below, above, inner=2)
    for tb, paths in zip(tabs, sets):
        per = kernels.line_table(shape, paths, starts, shift=(0, 1))
        np.testing.assert_allclose(kernels.line_sums(Le, tb), kernels.line_sums(L, per), atol=1e-12)
        Wb = _rand(rng, (2, 60, 3, 3))
        got = lay.ghost_sum(kernels.line_sums_vjp(Le, tb, Wb), below, above, inner=2)
        np.testing.assert_allclose(got, kernels.line_sums_vjp(L, per, Wb), atol=1e-12)
    assert kernels.ghost_line_tables((1, 3, 5), sets, None, split_axes=(0,)) is None
