"""Under mpiexec (2 and 4 ranks), on grids that split time, space and axis 0 (the even-odd
packing axis):

* random numbers do not depend on the rank count: Haar links, HMC momenta, Gaussian and
  complex-Gaussian noise on the full and on the packed half lattice (pseudofermion heatbath)
  equal the single-process draws (the serial reference *is* the 1-rank result) bit for bit,
  for successive draws of one generator;
* the Dirac operator M, its hopping term H and the even-odd M^ (and M^dag) applied to a
  vector equal the single-process results, and the halo traffic per application is the
  documented surface model (half spinors only);
* one Nf=2 HMC trajectory (pseudofermion heatbath, CG forces, nested integrator, Metropolis)
  is bit for bit the single-process one.
"""
import numpy as np
import pytest

import lattice as L
from lattice import hmc
from lattice.actions import Wilson
import fermions as F
from fermions.evenodd import even_odd

pytestmark = pytest.mark.mpi
MPI = pytest.importorskip("mpi4py.MPI")
COMM = MPI.COMM_WORLD

SHAPE = (8, 4, 4, 8)            # default tile (2, 2, 2, 2)
GRIDS = {1: [(1, 1, 1, 1)],
         2: [(2, 1, 1, 1), (1, 1, 1, 2), (1, 2, 1, 1)],
         4: [(2, 1, 1, 2), (1, 2, 2, 1), (2, 2, 1, 1), (1, 1, 1, 4)]}
KAPPA, MU = 0.13, 0.1


def _grids():
    return GRIDS.get(COMM.Get_size(), [None])


@pytest.fixture(scope="module")
def serial():
    return L.Layout(SHAPE)


@pytest.mark.parametrize("grid", _grids())
def test_random_numbers_independent_of_rank_count(grid, serial):
    lay = L.Layout(SHAPE, comm=COMM, grid=grid)
    rl, rs = L.Rng(11), L.Rng(11)
    for _ in range(2):                                   # successive draws (call counter) too
        assert np.array_equal(rl.haar(3, lead=(2, 4), layout=lay), lay.local_part(rs.haar(3, lead=(2, 4), layout=serial), 2))
        assert np.array_equal(rl.normal(lead=(3,), layout=lay, inner=(8,)),
                              lay.local_part(rs.normal(lead=(3,), layout=serial, inner=(8,)), 1))
        assert np.array_equal(rl.uniform(layout=lay), lay.local_part(rs.uniform(layout=serial), 0))
        assert np.array_equal(rl.complex_normal(lead=(2,), layout=lay, inner=(4, 3)),
                              lay.local_part(rs.complex_normal(lead=(2,), layout=serial, inner=(4, 3)), 2))
    # HMC momenta and child streams (trajectory i uses Rng(seed).child(i))
    U, Ug = L.random_gauge(SHAPE, seed=2, layout=lay), L.random_gauge(SHAPE, seed=2, layout=serial)
    assert np.array_equal(U, lay.local_part(Ug, 2))
    P = hmc.draw_momenta(L.Rng(5).child(3), U, lay)
    Pg = hmc.draw_momenta(L.Rng(5).child(3), Ug, serial)
    assert np.array_equal(P, lay.local_part(Pg, 2))
    assert np.array_equal(hmc.kinetic_energy(P, lay), hmc.kinetic_energy(Pg, serial))
    # noise on the packed even-odd half lattice, and the pseudofermion heatbath phi = M^dag eta
    half, half_g = even_odd(lay).half, even_odd(serial).half
    assert np.array_equal(L.Rng(6).complex_normal(lead=(2,), layout=half, inner=(4, 3)),
                          half.local_part(L.Rng(6).complex_normal(lead=(2,), layout=half_g, inner=(4, 3)), 2))
    pl, pg = F.PseudofermionNf2(KAPPA, MU), F.PseudofermionNf2(KAPPA, MU)
    pl.refresh(U, L.Rng(7), layout=lay)
    pg.refresh(Ug, L.Rng(7), layout=serial)
    assert np.array_equal(pl.phi, half.local_part(pg.phi, 2))


def _dirac_halo_model(lay, batch, itemsize=16, N=3):
    """Bytes received per application (docs/design.md §8: half spinors, 2 spin x N colour, cross faces).

    H / M: per split axis mu, two hops (forward, backward) of a face of V_loc / l_mu sites.
    M^ = A_oo - kappa^2 H_oe A_ee^-1 H_eo: two half-lattice hops; for mu != 0 each moves
    faces of V_loc / (2 l_mu) sites, for the packed axis 0 the packed face V_loc / l_0 (the
    fetch then keeps half of it), so M^ costs as much as M on mu != 0 and twice on mu = 0.
    """
    V = int(np.prod(lay.local_shape))
    half_spinor = 2 * N * itemsize * batch
    full = sum(2 * V // l * half_spinor for l, g in zip(lay.local_shape, lay.grid) if g > 1)
    schur = 0
    for mu, (l, g) in enumerate(zip(lay.local_shape, lay.grid)):
        if g > 1:
            schur += 2 * (2 * V // l if mu == 0 else 2 * (V // 2) // l) * half_spinor
    return full, schur


@pytest.mark.parametrize("grid", _grids())
def test_dirac_operator_and_halo_traffic(grid, serial):
    lay = L.Layout(SHAPE, comm=COMM, grid=grid)
    Ug = L.random_gauge(SHAPE, seed=3, layout=serial)
    psig = L.Rng(4).complex_normal(lead=(2,), layout=serial, inner=(4, 3))
    Ul, psil = lay.local_part(Ug, 2), lay.local_part(psig, 2)
    opg = F.TwistedMassWilson(Ug, KAPPA, MU, layout=serial)
    opl = F.TwistedMassWilson(Ul, KAPPA, MU, layout=lay)
    half = opl.half_layout
    model_full, model_schur = _dirac_halo_model(lay, batch=2)
    lay.reset_halo_stats(), half.reset_halo_stats()
    assert np.array_equal(opl.apply(psil), lay.local_part(opg.apply(psig), 2))
    assert lay.halo_bytes == model_full and half.halo_bytes == 0
    assert np.array_equal(opl.hopping(psil), lay.local_part(opg.hopping(psig), 2))
    eg, og = opg.pack(psig)
    ol = half.local_part(og, 2)
    lay.reset_halo_stats(), half.reset_halo_stats()
    assert np.array_equal(opl.apply_schur(ol), half.local_part(opg.apply_schur(og), 2))
    assert half.halo_bytes == model_schur and lay.halo_bytes == 0
    assert np.array_equal(opl.apply_schur_dagger(ol), half.local_part(opg.apply_schur_dagger(og), 2))
    # complex64 (the inner-solver precision) ships half the bytes
    op32 = opl.astype(np.complex64)
    lay.reset_halo_stats()
    r32 = op32.apply(psil.astype(np.complex64))
    assert lay.halo_bytes == model_full // 2
    assert np.array_equal(r32, lay.local_part(opg.astype(np.complex64).apply(psig.astype(np.complex64)), 2))


def test_nf2_hmc_trajectory_bitwise():
    shape = (4, 4, 4, 4)
    grid = {1: None, 2: (1, 1, 1, 2), 4: (1, 1, 2, 2)}.get(COMM.Get_size())
    lay, ser = L.Layout(shape, comm=COMM, grid=grid), L.Layout(shape)
    Ug = L.random_gauge(shape, seed=8, layout=ser)
    Ug = L.su_n.project_su(L.unit_gauge(shape, layout=ser) + 0.3 * Ug)   # smooth enough for a cheap CG
    out = []
    for layout, U0 in ((ser, Ug), (lay, lay.local_part(Ug, 2))):
        pf = F.PseudofermionNf2(0.12, 0.05, action_tol=1e-10)
        levels = F.nf2_levels(Wilson(5.5), pf, n_steps_fermion=2, n_steps_gauge=2)
        U, hist = hmc.run_hmc(None, U0, 1, tau=0.5, seed=4, levels=levels, layout=layout, progress=False)
        out.append((U, hist[0].dH, hist[0].accepted, pf.cg_iterations))
    (Us, dHs, acs, its), (Ud, dHd, acd, itd) = out
    assert np.array_equal(dHd, dHs) and np.array_equal(acd, acs) and itd == its
    assert np.array_equal(Ud, lay.local_part(Us, 2))
