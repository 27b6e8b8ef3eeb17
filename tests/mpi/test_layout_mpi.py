"""Decomposed Layout under mpiexec (2 and 4 ranks): halo exchange for every shift distance on
grids that split one, two or three axes (time, space and axis 0, the even-odd packing axis),
halo-traffic accounting, reproducible reductions, gather/scatter, and errors on every rank."""
import numpy as np
import pytest

import lattice as L
from lattice.layout import Layout, LayoutError

pytestmark = pytest.mark.mpi
MPI = pytest.importorskip("mpi4py.MPI")
COMM = MPI.COMM_WORLD

SHAPE = (4, 6, 4, 8)
# tile 1: any grid that divides the lattice (the shift does not depend on the tile)
SHIFT_GRIDS = {1: [(1, 1, 1, 1)],
               2: [(2, 1, 1, 1), (1, 2, 1, 1), (1, 1, 1, 2)],
               4: [(4, 1, 1, 1), (1, 2, 1, 2), (2, 1, 2, 1), (1, 1, 1, 4), (2, 2, 1, 1)]}
# default tile (2, 3, 2, 2): 2 ranks at most along axes 0-2, 4 along time
SUM_GRIDS = {1: [(1, 1, 1, 1)], 2: [(2, 1, 1, 1), (1, 1, 1, 2)], 4: [(1, 1, 1, 4), (2, 1, 2, 1), (1, 2, 1, 2)]}


def _grids(table):
    return table.get(COMM.Get_size(), [None])


def _field(shape, lead=(2,), inner=(3,), complex_=True, seed=0):
    """A global field whose entries are distinct (so a wrong neighbour cannot go unnoticed)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=lead + shape + inner)
    return x + 1j * rng.normal(size=x.shape) if complex_ else x


def _remote_slices(lay, mu, n):
    """Number of local slices x_mu whose neighbour x_mu + n lies in another rank's block."""
    loc, off, L_ = lay.local_shape[mu], lay.offset[mu], lay.global_shape[mu]
    return sum(1 for x in range(loc) if not off <= (off + x + n) % L_ < off + loc)


@pytest.mark.parametrize("grid", _grids(SHIFT_GRIDS))
def test_shift_every_distance_and_halo_accounting(grid):
    lay = Layout(SHAPE, comm=COMM, grid=grid, tile=(1, 1, 1, 1))
    ser = Layout(SHAPE, tile=(1, 1, 1, 1))
    Fg = _field(SHAPE)
    F = lay.local_part(Fg, inner=1)          # a strided view: faces must be copied to buffers
    for mu in range(4):
        Lm = SHAPE[mu]
        for n in range(-Lm - 2, Lm + 3):
            lay.reset_halo_stats()
            got = lay.shift(F, mu, n, inner=1)
            assert got.shape == F.shape and (n % Lm == 0 or got.flags.c_contiguous)
            assert np.array_equal(got, lay.local_part(ser.shift(Fg, mu, n, inner=1), inner=1)), (mu, n)
            # exactly the slices that live elsewhere are received, in at most two messages
            slice_bytes = F.nbytes // lay.local_shape[mu]
            remote = _remote_slices(lay, mu, n) if lay.grid[mu] > 1 else 0
            assert lay.halo_bytes == remote * slice_bytes, (mu, n, lay.halo_stats())
            assert lay.halo_messages <= 2 and (lay.halo_messages > 0) == (remote > 0)
    # density fields (no inner axes), real dtype, several lead axes
    q = _field(SHAPE, lead=(2, 3), inner=(), complex_=False, seed=1)
    for mu in range(4):
        for n in (1, -1, 3):
            assert np.array_equal(lay.shift(lay.local_part(q, inner=0), mu, n, inner=0),
                                  lay.local_part(ser.shift(q, mu, n, inner=0), inner=0))


def _global_block(Fg, lay, below, above, inner):
    """The extended block of this rank cut from the periodic global field (np.take wraps)."""
    nl = Fg.ndim - inner - lay.Nd
    E = Fg
    for a in range(lay.Nd):
        idx = np.arange(lay.offset[a] - below[a], lay.offset[a] + lay.local_shape[a] + above[a]) % SHAPE[a]
        E = np.take(E, idx, axis=nl + a)
    return E


@pytest.mark.parametrize("grid", _grids(SHIFT_GRIDS))
def test_with_ghosts_and_its_adjoint(grid):
    """with_ghosts = the periodic global field cut around the block (edges and corners of
    several split axes included, widths up to the local extent), and ghost_sum is its
    adjoint: <ghost_sum(E), F> = <E, with_ghosts(F)> summed over the ranks."""
    lay = Layout(SHAPE, comm=COMM, grid=grid, tile=(1, 1, 1, 1))
    Fg = _field(SHAPE, inner=(3, 3), seed=2)
    F = np.ascontiguousarray(lay.local_part(Fg, inner=2))
    for below, above in (((1, 1, 1, 1), (1, 1, 1, 1)), ((0, 2, 0, 1), (2, 0, 1, 2)),
                         (tuple(lay.local_shape), (0, 0, 0, 0)), ((0, 0, 0, 0), tuple(lay.local_shape))):
        below = tuple(min(w, L_) for w, L_ in zip(below, lay.local_shape))
        above = tuple(min(w, L_) for w, L_ in zip(above, lay.local_shape))
        E = lay.with_ghosts(F, below, above, inner=2)
        assert np.array_equal(E, _global_block(Fg, lay, below, above, 2)), (below, above)
        Eb = np.random.default_rng(COMM.Get_rank()).normal(size=E.shape) + 0j
        lhs = COMM.allreduce(complex(np.vdot(lay.ghost_sum(Eb, below, above, inner=2), F)))
        rhs = COMM.allreduce(complex(np.vdot(Eb, E)))
        assert abs(lhs - rhs) < 1e-9 * abs(rhs), (below, above)
    with pytest.raises(LayoutError, match="ghost widths"):
        lay.with_ghosts(F, (lay.local_shape[0] + 1, 0, 0, 0), (0, 0, 0, 0), inner=2)


def test_shift_rejects_bad_axes():
    lay = Layout(SHAPE, comm=COMM, grid=_grids(SHIFT_GRIDS)[0], tile=(1, 1, 1, 1))
    F = np.zeros(lay.local_shape)
    with pytest.raises(LayoutError, match="no site axis 4"):
        lay.shift(F, 4, 1, inner=0)
    with pytest.raises(LayoutError, match="no site axis"):
        lay.shift(np.zeros(lay.local_shape[1:]), 0, 1, inner=0)


@pytest.mark.parametrize("grid", _grids(SUM_GRIDS))
def test_reductions_bitwise_and_gather_scatter(grid):
    lay, ser = Layout(SHAPE, comm=COMM, grid=grid), Layout(SHAPE)
    x = _field(SHAPE, lead=(3,), inner=(4, 3), seed=2)
    xl = lay.local_part(x, inner=2)
    assert np.array_equal(lay.sum(xl, inner=2), ser.sum(x, inner=2))
    assert np.array_equal(lay.sum(np.real(xl), inner=2), ser.sum(np.real(x), inner=2))
    for mu in range(4):
        assert np.array_equal(lay.slice_sum(xl, mu, inner=2), ser.slice_sum(x, mu, inner=2))
    assert lay.mean(np.real(xl[..., 0, 0]), inner=0).shape == (3,)
    # gather to every rank / to one rank, scatter from any root
    assert np.array_equal(L.gather(lay, xl, inner=2), x)
    root = COMM.Get_size() - 1
    g = lay.gather_field(xl, inner=2, root=root)
    assert (g is None) == (COMM.Get_rank() != root)
    if g is not None:
        assert np.array_equal(g, x)
    got = lay.scatter_field(x if COMM.Get_rank() == root else None, inner=2, root=root)
    assert np.array_equal(got, xl)
    # a non-contiguous local view gathers correctly too
    xt = np.swapaxes(x, -1, -2)
    assert np.array_equal(L.gather(lay, lay.local_part(xt, inner=2), inner=2), xt)
    # allreduce_sum: rank-order sum, identical on every rank
    s = lay.allreduce_sum(np.full((2, 2), COMM.Get_rank() + 1.0))
    assert np.array_equal(s, np.full((2, 2), COMM.Get_size() * (COMM.Get_size() + 1) / 2))


def test_coords_parity_and_blocks_cover_the_lattice():
    lay = Layout(SHAPE, comm=COMM, grid=_grids(SHIFT_GRIDS)[-1], tile=(1, 1, 1, 1))
    c = lay.coords()
    idx = sum(ci * int(np.prod(SHAPE[m + 1:])) for m, ci in enumerate(c))   # global lexicographic index
    allidx = np.sort(np.concatenate(COMM.allgather(np.ravel(idx))))
    assert np.array_equal(allidx, np.arange(np.prod(SHAPE)))
    assert np.array_equal(lay.parity(), lay.local_part(Layout(SHAPE).parity(), inner=0))


def _raises_everywhere(fn, match):
    """fn() raises LayoutError matching ``match`` on every rank, with the same message."""
    msg = None
    try:
        fn()
    except LayoutError as exc:
        msg = str(exc)
    msgs = COMM.allgather(msg)
    assert all(m is not None for m in msgs), f"not every rank raised: {msgs}"
    assert len(set(msgs)) == 1, msgs
    assert __import__("re").search(match, msgs[0]), msgs[0]
    return msgs[0]


def test_indivisible_lattices_fail_on_every_rank_with_a_clear_message():
    size = COMM.Get_size()
    if size == 1:
        pytest.skip("needs several ranks")
    # no grid exists
    m = _raises_everywhere(lambda: Layout((3, 5, 3, 5), comm=COMM), "cannot decompose lattice")
    assert "possible rank counts: [1]" in m
    # an explicit grid that does not divide an axis
    m = _raises_everywhere(lambda: Layout((4, 4, 4, 5), comm=COMM, grid=(1, 1, 1, size)),
                           "does not divide over the process grid")
    assert "axis 3 has extent 5" in m
    # a grid whose blocks are not multiples of the reduction tile
    _raises_everywhere(lambda: Layout((4, 4, 4, 8), comm=COMM, grid=(1, 1, 1, size), tile=(1, 1, 1, 8)),
                       "multiples of the reduction tile 8")
    # a grid for another rank count
    _raises_everywhere(lambda: Layout((4, 4, 4, 8), comm=COMM, grid=(1, 1, 1, 2 * size)),
                       f"does not match {size} ranks")


def test_halo_exchange_and_reductions_on_array_api_strict():
    """Non-NumPy arrays are staged through host buffers and come back in their namespace."""
    xps = pytest.importorskip("array_api_strict")
    grid = _grids(SUM_GRIDS)[-1]
    lay, ser = Layout(SHAPE, comm=COMM, grid=grid), Layout(SHAPE)
    x = _field(SHAPE, lead=(2,), inner=(3,), seed=4)
    xl = xps.asarray(lay.local_part(x, inner=1).copy())
    for mu in range(4):
        for n in (1, -2):
            got = lay.shift(xl, mu, n, inner=1)
            assert type(got) is type(xl)
            assert np.array_equal(np.asarray(got), lay.local_part(ser.shift(x, mu, n, inner=1), inner=1))
    s = lay.sum(xps.real(xl), inner=1)
    assert type(s) is type(xl) and np.array_equal(np.asarray(s), ser.sum(np.real(x), inner=1))
    g = L.gather(lay, xl, inner=1)
    assert type(g) is type(xl) and np.array_equal(np.asarray(g), x)
