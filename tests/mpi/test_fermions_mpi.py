"""Distributed fermions: operator, even-odd pieces, CG, determinant ratio, correlator and the
pseudofermion force on R ranks equal the single-process results bit for bit."""
import numpy as np
import pytest

import lattice as L
import fermions as F

pytestmark = pytest.mark.mpi

SHAPE = (8, 4, 4, 8)
KAPPA, MU = 0.15, 0.1


def _grids(size):
    return {1: [None], 2: [(1, 1, 1, 2), (2, 1, 1, 1)], 4: [(2, 1, 1, 2), (1, 2, 1, 2)]}.get(size, [None])


@pytest.fixture(scope="module", params=[0, 1])
def lay(comm, request):
    grids = _grids(comm.Get_size())
    if request.param >= len(grids):
        pytest.skip("one grid only")
    return L.Layout(SHAPE, comm=comm, grid=grids[request.param])


@pytest.fixture(scope="module")
def serial():
    return L.Layout(SHAPE)


@pytest.fixture(scope="module")
def fields(serial):
    Ug = L.random_gauge(SHAPE, seed=3, layout=serial)
    psi = L.Rng(4).complex_normal(lead=(2,), layout=serial, inner=(4, 3))
    return Ug, psi


def test_operator_and_even_odd(lay, serial, fields):
    Ug, psig = fields
    Ul, psil = L.scatter(lay, Ug), L.scatter(lay, psig, inner=2)
    opg = F.TwistedMassWilson(Ug, KAPPA, MU, layout=serial)
    opl = F.TwistedMassWilson(Ul, KAPPA, MU, layout=lay)
    assert np.array_equal(opl.apply(psil), L.scatter(lay, opg.apply(psig), inner=2))
    assert np.array_equal(opl.apply_dagger(psil), L.scatter(lay, opg.apply_dagger(psig), inner=2))
    eg, og = opg.pack(psig)
    el, ol = opl.pack(psil)
    hl = opl.half_layout
    assert np.array_equal(el, L.scatter(hl, eg, inner=2)) and np.array_equal(ol, L.scatter(hl, og, inner=2))
    assert np.array_equal(opl.unpack(el, ol), psil)
    assert np.array_equal(opl.apply_schur_normal(ol), L.scatter(hl, opg.apply_schur_normal(og), inner=2))
    assert np.array_equal(opl.hop_eo(ol), L.scatter(hl, opg.hop_eo(og), inner=2))


def test_cg_and_solve_bitwise(lay, serial, fields):
    Ug, psig = fields
    Ul, psil = L.scatter(lay, Ug), L.scatter(lay, psig, inner=2)
    opg = F.TwistedMassWilson(Ug, KAPPA, MU, layout=serial)
    opl = F.TwistedMassWilson(Ul, KAPPA, MU, layout=lay)
    xg, ig = opg.solve(psig)
    xl, il = opl.solve(psil)
    assert il.cg.iterations == ig.cg.iterations and il.cg.residuals == ig.cg.residuals
    assert np.array_equal(xl, L.scatter(lay, xg, inner=2))


def test_det_ratio_correlator_force_bitwise(lay, serial, fields):
    Ug, _ = fields
    Upg = L.random_gauge(SHAPE, seed=5, layout=serial)
    Upg = L.su_n.project_su(Ug + 0.05 * Upg)
    Ul, Upl = L.scatter(lay, Ug), L.scatter(lay, Upg)
    rg = F.log_det_ratio(Ug, Upg, KAPPA, MU, n_shots=2, seed=1, layout=serial)
    rl = F.log_det_ratio(Ul, Upl, KAPPA, MU, n_shots=2, seed=1, layout=lay)
    assert np.array_equal(rl.log_weights, rg.log_weights)
    Cg = F.pion_correlator(Ug, KAPPA, MU, n_sources=2, seed=2, layout=serial)
    Cl = F.pion_correlator(Ul, KAPPA, MU, n_sources=2, seed=2, layout=lay)
    assert np.array_equal(Cl, Cg)
    Cpg = F.pion_correlator(Ug, KAPPA, MU, n_sources=1, seed=2, layout=serial, method="point")
    Cpl = F.pion_correlator(Ul, KAPPA, MU, n_sources=1, seed=2, layout=lay, method="point")
    assert np.array_equal(Cpl, Cpg)
    pg, pl = F.PseudofermionNf2(KAPPA, MU), F.PseudofermionNf2(KAPPA, MU)
    pg.refresh(Ug, L.Rng(6), layout=serial)
    pl.refresh(Ul, L.Rng(6), layout=lay)
    assert np.array_equal(pl.force(Ul, layout=lay), L.scatter(lay, pg.force(Ug, layout=serial)))
    assert np.array_equal(pl.action(Upl, layout=lay), pg.action(Upg, layout=serial))


def test_emulated_cuda_hopping_overlaps_real_halo_exchange(lay, serial, fields, monkeypatch):
    """The CuPy hopping kernel, its CUDA source compiled for the CPU (tests/cuda_emulation.py),
    on this rank's block: faces sent by MPI, the core launched before they are waited for, the
    sites next to the ghosts after -- bit for bit the one-process launch (full lattice and an
    even-odd block)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import cuda_emulation
    if cuda_emulation.CXX is None:
        pytest.skip("no C++ compiler")
    from fermions.gamma import PROJ
    from fermions.wilson import WilsonLinks, to_soa
    from lattice.kernels import hopping
    ch = cuda_emulation.load(monkeypatch, "_cupy_hopping")
    Ug, psig = fields
    bc = (1j, 1, np.exp(0.3j), -1)
    whole_links, local_links = WilsonLinks(Ug, serial, bc), WilsonLinks(L.scatter(lay, Ug), lay, bc)
    psi_g, psi_l = to_soa(psig), to_soa(L.scatter(lay, psig, inner=2))
    split = hopping._split_axes(lay)
    for dagger in (False, True):
        whole = ch.wilson_hop(psi_g, whole_links.U, whole_links.U, dagger=dagger)
        mine = hopping._ghost_hop(ch, psi_l, local_links.U, local_links.U, lay, split, PROJ, dagger, {}, "full")
        for a, b in zip(mine, whole):
            assert np.array_equal(a, L.scatter(lay, b, inner=0))
    half_g, half_l = whole_links.eo.half, local_links.eo.half
    Ug_eo, _ = whole_links._eo_links()
    Ul_eo, _ = local_links._eo_links()
    e_g = to_soa(L.Rng(6).complex_normal(lead=(2,), layout=half_g, inner=(4, 3)))
    e_l = L.scatter(half_l, e_g, inner=0)
    hsplit = hopping._split_axes(half_l)
    for target in (0, 1):
        whole = ch.wilson_hop(e_g, Ug_eo[target], Ug_eo[1 - target], target=target)
        mine = hopping._ghost_hop(ch, e_l, Ul_eo[target], Ul_eo[1 - target], half_l, hsplit, PROJ, False, {}, None,
                                  target=target, row_parity=hopping._block_row_parity(half_l, hsplit))
        for a, b in zip(mine, whole):
            assert np.array_equal(a, L.scatter(half_l, b, inner=0))
