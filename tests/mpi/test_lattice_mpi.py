"""Distributed lattice core: results on R ranks equal the single-process ones.

Reductions use a rank-count independent order, so plaquettes, actions and HMC
trajectories agree bit for bit; element-wise results (shifted fields, forces) agree exactly.
"""
import numpy as np
import pytest

import lattice as L
from lattice import hmc
from lattice.actions import Wilson, LuscherWeisz

pytestmark = pytest.mark.mpi

SHAPE = (4, 4, 4, 8)


@pytest.fixture(scope="module")
def lay(comm):
    return L.Layout(SHAPE, comm=comm)


@pytest.fixture(scope="module")
def serial():
    return L.Layout(SHAPE)


def test_layout_splits_the_lattice(lay, comm):
    assert np.prod(lay.grid) == comm.Get_size()
    assert tuple(l * g for l, g in zip(lay.local_shape, lay.grid)) == SHAPE


def test_random_fields_independent_of_rank_count(lay, serial):
    Ug = L.random_gauge(SHAPE, seed=7, layout=serial)
    Ul = L.random_gauge(SHAPE, seed=7, layout=lay)
    assert np.array_equal(L.scatter(lay, Ug), Ul)
    assert np.array_equal(L.gather(lay, Ul), Ug)


@pytest.mark.parametrize("mu", [0, 1, 2, 3])
@pytest.mark.parametrize("n", [1, -1, 3, -5])
def test_shift_matches_serial(lay, serial, mu, n):
    Ug = L.random_gauge(SHAPE, seed=1, layout=serial)
    Ul = L.scatter(lay, Ug)
    assert np.array_equal(lay.shift(Ul, mu, n, inner=2), L.scatter(lay, serial.shift(Ug, mu, n, inner=2)))


def test_observables_and_actions_bitwise(lay, serial):
    Ug = L.random_gauge(SHAPE, batch=(2,), seed=3, layout=serial)
    Ul = L.scatter(lay, Ug)
    assert np.array_equal(L.plaquette(Ul, lay), L.plaquette(Ug, serial))
    for S in (Wilson(5.7, lam=0.1), LuscherWeisz(3.8, lam=-0.05)):
        assert np.array_equal(S.action(Ul, lay), S.action(Ug, serial))
        assert np.array_equal(S.operator(Ul, lay), S.operator(Ug, serial))
        assert np.array_equal(S.force(Ul, lay), L.scatter(lay, S.force(Ug, serial)))
    assert np.array_equal(L.polyakov_loop(Ul, lay), L.polyakov_loop(Ug, serial))
    assert np.array_equal(L.topological_charge(Ul, lay), L.topological_charge(Ug, serial))
    x = L.Rng(2).normal(lead=(3,), layout=serial, inner=(4, 3))
    assert np.array_equal(lay.slice_sum(L.scatter(lay, x, inner=2), 3, inner=2), serial.slice_sum(x, 3, inner=2))


def test_hmc_trajectory_bitwise(lay, serial):
    Ug = L.random_gauge(SHAPE, seed=5, layout=serial)
    act = LuscherWeisz(3.8, lam=0.02)
    Us, hs = hmc.run_hmc(act, Ug, 2, tau=0.5, n_steps=4, seed=11, layout=serial, progress=False)
    Ud, hd = hmc.run_hmc(act, L.scatter(lay, Ug), 2, tau=0.5, n_steps=4, seed=11, layout=lay, progress=False)
    assert [r.dH for r in hs] == [r.dH for r in hd]
    assert np.array_equal(L.gather(lay, Ud), Us)


def test_indivisible_lattice_is_a_clear_error(comm):
    if comm.Get_size() == 1:
        pytest.skip("needs several ranks")
    with pytest.raises(L.LayoutError, match="does not divide|cannot decompose"):
        L.Layout((3, 3, 3, 3), comm=comm)
