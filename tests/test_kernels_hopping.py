"""lattice.kernels.hopping: the compiled Wilson hopping term (full lattice and even-odd blocks,
and the adjoint gamma_5 H gamma_5) equals its array-API reference on random fields, for both
precisions, non-cubic lattices, batch axes and any boundary phases; the adjoint relation holds;
on layouts with split axes (ghost layers) it is bit for bit the one-process result; inputs the
compiled paths do not cover (other spin tables, N != 3) get the reference; the CUDA source is
checked as C++ where no GPU is present."""

import numpy as np
import pytest

import lattice as L
from lattice import kernels
from lattice.kernels import hopping, _numba_hopping
import fermions as F
from fermions.gamma import PROJ
from fermions.wilson import WilsonLinks, to_soa

TOL = {np.complex128: 1e-13, np.complex64: 3e-6}
BCS = ["periodic", "antiperiodic", (1j, 1, np.exp(0.3j), -1)]


def _links(shape, dtype=np.complex128, batch=(), bc="antiperiodic", seed=1):
    U = L.random_gauge(shape, seed=seed, batch=batch)
    return WilsonLinks(U.astype(dtype), L.Layout(shape), bc)


def _spinor(layout, lead=(), dtype=np.complex128, seed=2):
    psi = L.Rng(seed).complex_normal(lead=lead, layout=layout, inner=(4, 3)).astype(dtype)
    return to_soa(psi)


@pytest.fixture
def fast_calls(monkeypatch):
    """Counts the calls of the compiled path that returned a result (no silent fallback)."""
    calls = []
    orig = _numba_hopping.wilson_hop

    def counting(*args, **kw):
        res = orig(*args, **kw)
        calls.append(res is not None)
        return res
    monkeypatch.setattr(_numba_hopping, "wilson_hop", counting)
    return calls


def _close(fast, ref, dtype):
    for a, b in zip(fast, ref):
        assert a.shape == b.shape and a.dtype == b.dtype == dtype
        scale = max(1.0, float(np.max(np.abs(b))))
        assert float(np.max(np.abs(a - b))) <= TOL[dtype] * scale


def _both(fn):
    fast = fn()
    with kernels.reference_only():
        ref = fn()
    return fast, ref


def test_numpy_spinors_get_the_compiled_path():
    assert kernels.implementation(np) == "numba"
    assert hopping._fast_basis(PROJ)


@pytest.mark.parametrize("shape", [(4, 2, 2, 4), (4, 6, 2, 8), (6, 4, 4, 2), (3, 2, 5, 3)])
@pytest.mark.parametrize("bc", BCS)
@pytest.mark.parametrize("dagger", [False, True])
@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_full_lattice_equals_reference(shape, bc, dagger, dtype, fast_calls):
    links = _links(shape, dtype, bc=bc)
    psi = _spinor(links.layout, lead=(2,), dtype=dtype)
    fast, ref = _both(lambda: links.hop(psi, dagger=dagger))
    assert fast_calls == [True]
    _close(fast, ref, dtype)


@pytest.mark.parametrize("shape", [(4, 2, 2, 4), (4, 6, 2, 8), (8, 2, 4, 2)])
@pytest.mark.parametrize("bc", BCS)
@pytest.mark.parametrize("dagger", [False, True])
@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_even_odd_blocks_equal_reference(shape, bc, dagger, dtype, fast_calls):
    links = _links(shape, dtype, bc=bc)
    half = links.eo.half
    for target in (0, 1):
        psi = _spinor(half, lead=(2,), dtype=dtype, seed=3 + target)
        fast, ref = _both(lambda: links.hop_eo(psi, target, dagger=dagger))
        _close(fast, ref, dtype)
    assert fast_calls == [True, True]


@pytest.mark.parametrize("chunk_sites", [8, 16, 24])
@pytest.mark.parametrize("dagger", [False, True])
def test_chunks_of_planes(chunk_sites, dagger, monkeypatch, fast_calls):
    """The compiled kernel works on chunks of consecutive x1-planes (at most _CHUNK_SITES sites):
    one plane per chunk, chunks that do and do not contain the x1 wrap, and whole slabs."""
    monkeypatch.setattr(_numba_hopping, "_CHUNK_SITES", chunk_sites)
    links = _links((4, 6, 2, 4), bc=(1, 1j, 1, -1))           # planes of 8 sites: 1, 2, 3 planes per chunk
    psi = _spinor(links.layout, lead=(2,))
    fast, ref = _both(lambda: links.hop(psi, dagger=dagger))
    _close(fast, ref, np.complex128)
    for target in (0, 1):
        e = _spinor(links.eo.half, seed=6 + target)             # half planes of 8 sites as well
        fast, ref = _both(lambda: links.hop_eo(e, target, dagger=dagger))
        _close(fast, ref, np.complex128)
    assert fast_calls == [True] * 3


@pytest.mark.parametrize("ubatch, pbatch", [((), (3,)), ((2,), ()), ((2,), (3, 1)), ((2, 1), (1, 2))])
def test_batch_axes_broadcast(ubatch, pbatch, fast_calls):
    shape = (4, 2, 4, 2)
    links = _links(shape, batch=ubatch)
    psi = _spinor(links.layout, lead=pbatch)
    fast, ref = _both(lambda: links.hop(psi))
    _close(fast, ref, np.complex128)
    e = _spinor(links.eo.half, lead=pbatch, seed=5)
    fast, ref = _both(lambda: links.hop_eo(e, 1, dagger=True))
    _close(fast, ref, np.complex128)
    assert fast_calls == [True, True]


def test_mixed_precision_inputs_promote():
    """complex64 spinor, complex128 links: the compiled path computes in double precision."""
    links = _links((4, 2, 2, 4), np.complex128)
    psi = _spinor(links.layout, dtype=np.complex64)
    fast = links.hop(psi)
    with kernels.reference_only():
        ref = links.hop(psi.astype(np.complex128))
    _close(fast, ref, np.complex128)


def test_complex64_fast_path_is_accurate_against_double():
    shape = (4, 4, 2, 4)
    lo, hi = _links(shape, np.complex64), _links(shape, np.complex128)
    psi = _spinor(lo.layout)
    up, dn = lo.hop(psi.astype(np.complex64))
    with kernels.reference_only():
        ru, rd = hi.hop(psi)
    assert up.dtype == np.complex64
    assert max(np.abs(up - ru).max(), np.abs(dn - rd).max()) < 2e-5 * np.abs(ru).max()


def _inner(a, b):
    return complex(np.vdot(np.asarray(a).ravel(), np.asarray(b).ravel()))


def _cat(h):
    return np.concatenate(h, axis=-6)


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_adjoint_relation(impl):
    """<chi, H psi> = <H^dag chi, psi> on the full lattice and <chi_e, H_eo psi_o> =
    <(H_eo)^dag chi_e, psi_o>, (H_eo)^dag = gamma_5 H_oe gamma_5 (the dagger flag of target 1)."""
    links = _links((4, 2, 4, 6), bc=(1j, 1, np.exp(0.7j), -1))
    psi, chi = _spinor(links.layout, seed=7), _spinor(links.layout, seed=8)
    pe, po = _spinor(links.eo.half, seed=9), _spinor(links.eo.half, seed=10)

    def run():
        full = (_inner(chi, _cat(links.hop(psi))), _inner(_cat(links.hop(chi, dagger=True)), psi))
        eo = (_inner(pe, _cat(links.hop_eo(po, 0))), _inner(_cat(links.hop_eo(pe, 1, dagger=True)), po))
        return full, eo

    if impl == "fast":
        full, eo = run()
    else:
        with kernels.reference_only():
            full, eo = run()
    for lhs, rhs in (full, eo):
        assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_even_odd_blocks_are_blocks_of_the_full_term():
    """The compiled packed kernels against the compiled full-lattice kernel (independent of
    EvenOdd.fetch): H_{p,1-p} psi = the parity-p part of H applied to psi on parity 1-p."""
    shape = (4, 2, 6, 4)
    links = _links(shape, bc=(1, 1j, 1, -1))
    eo = links.eo
    for target in (0, 1):
        src = _spinor(eo.half, seed=11 + target)
        zero = np.zeros_like(src)
        full = eo.unpack(src, zero, inner=0) if target == 1 else eo.unpack(zero, src, inner=0)
        want = eo.pack(_cat(links.hop(full)), inner=0)[target]
        assert np.abs(_cat(links.hop_eo(src, target)) - want).max() < 1e-13


class _Split:
    """A one-process layout that claims a split process grid: the kernels then exchange the
    ghost faces through its ``start_swap`` / ``finish_swap``, here the periodic block's own
    planes (the block is its own neighbour)."""

    def __init__(self, lay, grid, offset=(0, 0, 0, 0)):
        self.grid = grid
        self.local_shape = lay.local_shape
        self.offset = offset
        self.shift = lay.shift

    def start_swap(self, a, send_up, send_down):
        return send_up, send_down             # from below comes what the block sends up, and so on

    def finish_swap(self, handle):
        return handle


class _SplitEO:
    def __init__(self, eo, grid, offset):
        self.half = _Split(eo.half, grid, offset)
        self.fetch = eo.fetch


@pytest.mark.parametrize("grid", [(1, 1, 2, 1), (2, 1, 1, 1), (1, 2, 1, 2), (2, 2, 2, 2)])
@pytest.mark.parametrize("offset", [(0, 0, 0, 0), (0, 1, 0, 0), (2, 1, 1, 1)])
def test_split_axes_use_ghost_layers_bit_for_bit(grid, offset, fast_calls):
    """On a layout with axes split over ranks the compiled kernel runs on the local block with
    ghost layers from the halo exchange: bit for bit the one-process result (docs/design.md §3:
    results do not depend on the decomposition), full lattice and both even-odd blocks. The
    row-parity offset of the block (odd offsets along axes 1..3) is what the packed kernel must
    take into account: a block at an odd offset is checked against the correspondingly
    shifted one-process field."""
    shape = (4, 2, 4, 6)
    links = _links(shape, batch=(2,), bc=(1j, 1, np.exp(0.3j), -1))
    psi = _spinor(links.layout, lead=(3, 1))
    for dagger in (False, True):
        serial = links.hop(psi, dagger=dagger)
        split = hopping.wilson_hop(psi, links.U, links.Udag, _Split(links.layout, grid), PROJ, dagger=dagger,
                                   cache={})
        for a, b in zip(split, serial):
            assert np.array_equal(a, b)
    if sum(offset[1:]) % 2 == 0:
        eo = links.eo
        U, Udag = links._eo_links()
        for target in (0, 1):
            e = _spinor(eo.half, lead=(3, 1), seed=5 + target)
            serial = links.hop_eo(e, target, dagger=True)
            split = hopping.wilson_hop_eo(e, U, Udag, _SplitEO(eo, grid, offset), target, PROJ, dagger=True,
                                          cache={})
            for a, b in zip(split, serial):
                assert np.array_equal(a, b)
    assert all(fast_calls)


def test_packed_block_row_parity_offset():
    """A packed block whose first site has odd x_1 + x_2 + x_3: with row_parity = 1 the kernel
    reproduces the corresponding block of the one-process result (the case of a rank whose
    block starts at an odd offset)."""
    shape = (4, 4, 4, 4)
    links = _links(shape)
    eo = links.eo
    U, _ = links._eo_links()
    e = _spinor(eo.half, seed=9)
    roll = lambda F: np.roll(F, -1, axis=-3)                    # the block starting at x_1 = 1  # noqa: E731
    for target in (0, 1):
        want = [roll(x) for x in links.hop_eo(e, target)]
        got = _numba_hopping.wilson_hop(roll(e), [roll(u) for u in U[target]], [roll(u) for u in U[1 - target]],
                                        target=target, row_parity=1)
        for a, b in zip(got, want):
            assert np.array_equal(a, b)


def test_other_spin_tables_and_colours_get_the_reference(fast_calls):
    links = _links((4, 2, 2, 4))
    psi = _spinor(links.layout)
    swapped = (PROJ[1], PROJ[0], PROJ[2], PROJ[3])       # a different (valid) gamma assignment
    assert not hopping._fast_basis(swapped)
    out = hopping.wilson_hop(psi, links.U, links.Udag, links.layout, swapped)
    with kernels.reference_only():
        ref = hopping.wilson_hop(psi, links.U, links.Udag, links.layout, swapped)
    _close(out, ref, np.complex128)
    assert fast_calls == []
    # SU(2): the compiled path declines, the reference answers
    U2 = L.random_gauge((4, 2, 2, 4), N=2, seed=3)
    l2 = WilsonLinks(U2, L.Layout((4, 2, 2, 4)))
    p2 = to_soa(L.Rng(4).complex_normal(layout=l2.layout, inner=(4, 2)))
    out = l2.hop(p2)
    with kernels.reference_only():
        ref = l2.hop(p2)
    _close(out, ref, np.complex128)
    assert fast_calls == [False]


def test_operator_through_the_kernel_matches_reference():
    """The twisted-mass operator (full, dagger, Schur and its dagger) is the same with the
    compiled kernel and with the reference."""
    U = L.random_gauge((4, 2, 4, 4), seed=6)
    op = F.TwistedMassWilson(U, 0.15, 0.07)
    psi = L.Rng(7).complex_normal(layout=op.layout, inner=(4, 3))
    _, po = op.pack(psi)
    names = [("apply", psi), ("apply_dagger", psi), ("apply_schur", po), ("apply_schur_dagger", po),
             ("apply_schur_normal", po), ("hop_eo", po), ("hop_oe", po)]
    fast = [getattr(op, n)(x) for n, x in names]
    with kernels.reference_only():
        ref = [getattr(op, n)(x) for n, x in names]
    for (n, _), a, b in zip(names, fast, ref):
        assert np.abs(a - b).max() < 1e-13 * max(1.0, np.abs(b).max()), n


# ---------------------------------------------------------------- the CUDA source without a GPU
def test_cuda_source_compiled_as_cpp_equals_reference(monkeypatch):
    """The CUDA kernels of _cupy_hopping.py and their Python wrapper, run on the CPU by
    tests/cuda_emulation.py (the CUDA source compiled with std::complex, one loop iteration
    per thread; NumPy arrays standing in for CuPy's), against the reference: full lattice and
    both even-odd blocks, both precisions, batch axes, the adjoint flag, ghost layers. Checks
    the index arithmetic and spin algebra of the GPU path where no GPU is present."""
    import cuda_emulation
    if cuda_emulation.CXX is None:
        pytest.skip("no C++ compiler")
    ch = cuda_emulation.load(monkeypatch, "_cupy_hopping")
    for shape in [(4, 2, 2, 4), (4, 6, 2, 8), (3, 2, 5, 3)]:
        for dtype in (np.complex128, np.complex64):
            links = _links(shape, dtype, batch=(2,), bc=(1j, 1, np.exp(0.3j), -1))
            psi = _spinor(links.layout, lead=(3, 1), dtype=dtype)
            for dagger in (False, True):
                cache = {}
                fast = ch.wilson_hop(psi, links.U, links.U, dagger=dagger, cache=cache)
                with kernels.reference_only():
                    ref = links.hop(psi, dagger=dagger)
                _close(fast, ref, dtype)
                if any(s % 2 for s in shape):
                    continue
                Ueo, _ = links._eo_links()
                for target in (0, 1):
                    e = _spinor(links.eo.half, lead=(3, 1), dtype=dtype, seed=3 + target)
                    fast = ch.wilson_hop(e, Ueo[target], Ueo[1 - target], dagger=dagger, target=target, cache=cache)
                    with kernels.reference_only():
                        ref = links.hop_eo(e, target, dagger=dagger)
                    _close(fast, ref, dtype)
                    # ghost layers of a split layout (face products included): bit for bit
                    half = _Split(links.eo.half, (2, 1, 2, 1))
                    split = hopping._ghost_hop(ch, e, Ueo[target], Ueo[1 - target], half, (0, 2), PROJ, dagger, {},
                                               None, target=target, row_parity=hopping._block_row_parity(half, (0, 2)))
                    for a, b in zip(split, fast):
                        assert np.array_equal(a, b)
                split = hopping._ghost_hop(ch, psi, links.U, links.U, _Split(links.layout, (1, 2, 1, 2)), (1, 3),
                                           PROJ, dagger, {}, "full")
                for a, b in zip(split, ch.wilson_hop(psi, links.U, links.U, dagger=dagger)):
                    assert np.array_equal(a, b)


@pytest.mark.parametrize("ghosts", [(0, 0, 0, 1), (1, 0, 1, 0), (1, 1, 1, 1)])
def test_cuda_core_then_rest_overlaps_the_fill(monkeypatch, ghosts):
    """The CuPy kernel on a block with ghost layers (emulated, as above): the core launch reads
    no ghost site and the second launch runs after ``fill()``. The ghost layers hold NaN until
    ``fill`` copies the true values in, so a ghost read before the fill would put NaN into the
    result; the non-ghost sites must equal one launch on the filled block bit for bit, and the
    fill must run exactly once, between the two launches. When ``fill`` runs, the output holds
    the core (written, and not empty) and nothing else yet. A spinor the kernel cannot use in
    place (another dtype than the links: converted first) gets ``fill`` before one launch."""
    import cuda_emulation
    if cuda_emulation.CXX is None:
        pytest.skip("no C++ compiler")
    ch = cuda_emulation.load(monkeypatch, "_cupy_hopping")
    shape = (10, 6, 6, 6)                       # a non-empty core on every axis, also on the half lattice
    links = _links(shape, batch=(2,), bc=(1j, 1, np.exp(0.3j), -1))
    psi = _spinor(links.layout, lead=(2,))
    launches, outputs = [], []
    kernel = ch._kernel()
    monkeypatch.setattr(ch, "_kernel", lambda: lambda *a, **kw: (launches.append(a[12]), kernel(*a, **kw)))
    monkeypatch.setattr(ch.cupy, "empty", lambda shape, dtype: outputs.append(np.full(shape, np.nan, dtype))
                        or outputs[-1])
    for target in (None, 0, 1):
        if target is None:
            Wt = Ws = links.U
            E = psi
            sites = shape
        else:
            Ueo, _ = links._eo_links()
            Wt, Ws = Ueo[target], Ueo[1 - target]
            E = _spinor(links.eo.half, lead=(2,), seed=7)
            sites = links.eo.half.local_shape
        inner = tuple(slice(g, L - g) for g, L in zip(ghosts, sites))
        core = tuple(slice(2 * g, L - 2 * g) for g, L in zip(ghosts, sites))
        for dagger in (False, True):
            whole = ch.wilson_hop(E, Wt, Ws, dagger=dagger, target=target, row_parity=1)
            for dtype in (np.complex128, np.complex64):
                holes = np.full_like(E, np.nan, dtype=dtype)
                holes[(...,) + inner] = E[(...,) + inner]
                fills = []

                def fill():
                    fills.append(len(launches))
                    if launches:
                        done = np.isfinite(outputs[-1])
                        assert done[(...,) + core].all() and done.sum() == done[(...,) + core].size > 0
                    holes[...] = E
                launches.clear()
                split = ch.wilson_hop(holes, Wt, Ws, dagger=dagger, target=target, row_parity=1, ghosts=ghosts,
                                      fill=fill)
                want = whole if dtype == np.complex128 else ch.wilson_hop(E.astype(dtype), Wt, Ws, dagger=dagger,
                                                                         target=target, row_parity=1)
                assert (launches, fills) == (([1, 2], [1]) if dtype == np.complex128 else ([0, 0], [0]))
                for a, b in zip(split, want):
                    assert np.array_equal(a[(...,) + inner], b[(...,) + inner])


def test_ghost_hop_waits_for_every_exchange_when_one_fails():
    """A face exchange that fails leaves no other message in flight (a stale receive would
    meet the next call's faces): every posted exchange is waited for, then the first error is
    raised."""
    links = _links((4, 2, 4, 6), batch=(2,))
    psi = _spinor(links.layout, lead=(3, 1))
    finished = []

    class Failing(_Split):
        def finish_swap(self, handle):
            finished.append(handle)
            if len(finished) == 1:
                raise RuntimeError("halo exchange failed")
            return handle
    with pytest.raises(RuntimeError, match="halo exchange failed"):
        hopping.wilson_hop(psi, links.U, links.Udag, Failing(links.layout, (2, 1, 2, 2)), PROJ, cache={})
    assert len(finished) == 3
