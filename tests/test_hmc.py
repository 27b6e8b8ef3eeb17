"""Pure-gauge HMC: reversibility, integrator order, <exp(-dH)> = 1, exact 2d plaquettes."""
import math

import numpy as np
import pytest

import lattice as L
from lattice import hmc
from lattice.actions import Wilson, LuscherWeisz
from lattice.backend import Rng

from physics_reference import wilson_2d_plaquette


@pytest.mark.parametrize("integrator", ["omelyan", "leapfrog"])
@pytest.mark.parametrize("action", [Wilson(5.5, lam=0.05), LuscherWeisz(3.8, lam=-0.02)])
def test_reversibility(integrator, action):
    U = L.random_gauge((4, 4, 4, 4), seed=3)
    r = hmc.reversibility_check(U, action, tau=1.0, n_steps=8, integrator=integrator, seed=1)
    assert r["max_dU"] < 1e-10 and r["max_dP"] < 1e-10
    assert abs(r["dH"][0]) < 1e-8


def test_reversibility_nested_levels():
    U = L.random_gauge((4, 4, 4, 4), seed=4)
    levels = [([Wilson(2.0, lam=0.1)], 3), ([LuscherWeisz(3.0)], 2)]
    r = hmc.reversibility_check(U, None, tau=1.0, levels=levels)
    assert r["max_dU"] < 1e-10 and r["max_dP"] < 1e-10


@pytest.mark.parametrize("integrator", ["omelyan", "leapfrog"])
def test_dH_scales_as_step_squared(integrator):
    """Both integrators are second order: dH(h) ~ h^2 for fixed momenta and field."""
    lay = L.Layout((4, 4, 4, 4))
    act = Wilson(5.5)
    U, _ = hmc.run_hmc(act, L.random_gauge((4, 4, 4, 4), seed=2), 4, n_steps=10, progress=False)
    P = hmc.draw_momenta(Rng(7), U, lay)
    H0 = hmc.hamiltonian(U, P, [act], lay)
    dH = []
    for n in (16, 32, 64):
        U1, P1 = hmc.integrate(U, P, [([act], n)], 1.0, integrator, lay)
        dH.append(float(hmc.hamiltonian(U1, P1, [act], lay)[()] - H0[()]))
    r1, r2 = dH[0] / dH[1], dH[1] / dH[2]
    assert 3.6 < r1 < 4.4 and 3.8 < r2 < 4.2, dH


@pytest.mark.parametrize("integrator", ["omelyan", "leapfrog"])
def test_dH_scales_as_step_squared_with_nested_levels(integrator):
    """Nested levels (Wilson outer, Luscher-Weisz inner, 2 inner steps per outer one) stay second
    order: a nesting that integrated the inner level over the wrong time, or a wrong outer kick
    coefficient, would leave dH(h) finite as h -> 0 (reversibility and <exp(-dH)> = 1 hold for
    any reversible, area-preserving scheme and cannot see that)."""
    lay = L.Layout((4, 4, 2, 2))
    outer, inner = Wilson(2.0, lam=0.1), LuscherWeisz(3.0)
    U, _ = hmc.run_hmc(None, L.random_gauge((4, 4, 2, 2), seed=2), 2, levels=[([outer], 4), ([inner], 2)],
                       progress=False)
    P = hmc.draw_momenta(Rng(7), U, lay)
    H0 = hmc.hamiltonian(U, P, [outer, inner], lay)
    dH = []
    for n in ((4, 8, 16) if integrator == "omelyan" else (8, 16, 32)):
        U1, P1 = hmc.integrate(U, P, [([outer], n), ([inner], 2)], 1.0, integrator, lay)
        dH.append(float(hmc.hamiltonian(U1, P1, [outer, inner], lay)[()] - H0[()]))
    r1, r2 = dH[0] / dH[1], dH[1] / dH[2]
    assert 3.5 < r1 < 4.5 and 3.8 < r2 < 4.2, dH


def test_exp_minus_dH_averages_to_one():
    """Creutz equality <exp(-dH)> = 1 on an equilibrated batch of chains."""
    shape = (4, 4, 4, 4)
    act = Wilson(5.0)
    U = L.random_gauge(shape, batch=(8,), seed=11)
    U, _ = hmc.run_hmc(act, U, 15, tau=1.0, n_steps=8, seed=1, progress=False)
    _, hist = hmc.run_hmc(act, U, 12, tau=1.0, n_steps=6, seed=2, start_traj=100, progress=False)
    e = np.array([r.exp_minus_dH for r in hist])           # (traj, chains)
    per_chain = e.mean(axis=0)                             # chains are independent
    mean, err = per_chain.mean(), per_chain.std(ddof=1) / math.sqrt(len(per_chain))
    assert abs(mean - 1.0) < 4 * err + 1e-3, (mean, err)
    assert np.mean([r.accepted for r in hist]) > 0.5


def _plaquette_2d_hmc(N, beta, n_chains=32, n_therm=20, n_meas=40, seed=0):
    act = Wilson(beta)
    U = L.random_gauge((8, 8), N=N, batch=(n_chains,), seed=seed)
    U, _ = hmc.run_hmc(act, U, n_therm, tau=1.0, n_steps=6, seed=seed, progress=False)
    _, hist = hmc.run_hmc(act, U, n_meas, tau=1.0, n_steps=6, seed=seed, start_traj=10_000, progress=False)
    p = np.array([r.plaquette for r in hist])            # (traj, chains)
    # independent chains: the spread of the chain means carries the autocorrelations
    per_chain = p.mean(axis=0)
    return per_chain.mean(), per_chain.std(ddof=1) / math.sqrt(n_chains)


@pytest.mark.parametrize("N,beta", [(2, 2.0), (3, 3.0)])
def test_2d_wilson_plaquette_exact(N, beta):
    mean, err = _plaquette_2d_hmc(N, beta)
    exact = wilson_2d_plaquette(beta, N)
    assert abs(mean - exact) < 3 * err, (mean, err, exact)
    assert err < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("N,beta", [(2, 1.0), (2, 4.0), (3, 1.5), (3, 6.0), (3, 9.0)])
def test_2d_wilson_plaquette_exact_more(N, beta):
    mean, err = _plaquette_2d_hmc(N, beta, n_chains=32, n_therm=50, n_meas=200, seed=5)
    exact = wilson_2d_plaquette(beta, N)
    assert abs(mean - exact) < 3 * err, (mean, err, exact)


def test_run_hmc_resume_is_exact():
    """Trajectory i uses stream child(i): resuming reproduces an uninterrupted run."""
    act = Wilson(4.0)
    U0 = L.random_gauge((4, 4), N=2, seed=0)
    Ua, _ = hmc.run_hmc(act, U0, 6, n_steps=5, seed=9, progress=False)
    Ub, _ = hmc.run_hmc(act, U0, 3, n_steps=5, seed=9, progress=False)
    Ub, _ = hmc.run_hmc(act, Ub, 3, n_steps=5, seed=9, start_traj=3, progress=False)
    assert np.array_equal(Ua, Ub)


def test_history_is_a_list_with_columns():
    """run_hmc returns an HMCHistory: a list of TrajectoryRecord (indexing, iteration and
    slicing as before) whose columns are NumPy arrays of shape (n_traj, *batch)."""
    act = Wilson(2.0)
    U0 = L.random_gauge((4, 4), N=2, seed=1, batch=(3, 2))
    _, hist = hmc.run_hmc(act, U0, 4, n_steps=4, seed=5, start_traj=10, progress=False)
    assert isinstance(hist, list) and isinstance(hist, hmc.HMCHistory) and len(hist) == 4
    assert hist.batch_shape == (3, 2)
    assert isinstance(hist[0], hmc.TrajectoryRecord) and hist[-1].traj == 13
    assert [r.traj for r in hist] == [10, 11, 12, 13]
    for name, dtype in [("dH", np.float64), ("plaquette", np.float64), ("exp_minus_dH", np.float64),
                        ("accepted", np.bool_)]:
        col = hist.column(name)
        assert col.shape == (4, 3, 2) and col.dtype == dtype, name
        assert np.array_equal(col.reshape(4, 6), np.array([getattr(r, name) for r in hist]))
    assert np.array_equal(hist.column("traj"), [10, 11, 12, 13]) and hist.column("traj").dtype == np.int64
    assert hist.column("seconds").shape == (4,)
    tail = hist[2:]
    assert isinstance(tail, hmc.HMCHistory) and tail.batch_shape == (3, 2) and len(tail) == 2
    assert np.array_equal(tail.column("dH"), hist.column("dH")[2:])
    both = hist[:2] + tail
    assert isinstance(both, hmc.HMCHistory) and np.array_equal(both.column("dH"), hist.column("dH"))
    d = hist.as_dict()
    assert set(d) == set(hmc.HMCHistory.FIELDS) and np.array_equal(d["plaquette"], hist.column("plaquette"))
    with pytest.raises(KeyError, match="columns are"):
        hist.column("plaq")
    # one unbatched chain: per-chain columns are (n_traj,)
    _, h1 = hmc.run_hmc(act, U0[0, 0], 2, n_steps=4, seed=5, progress=False)
    assert h1.batch_shape == () and h1.column("dH").shape == (2,) and h1.column("accepted").shape == (2,)
    # a history built from bare records keeps the flat chain axis of the records
    assert hmc.HMCHistory(list(hist)).column("dH").shape == (4, 6)


def test_bad_start_field_is_rejected():
    U = np.array(L.random_gauge((4, 4), N=2, seed=0))
    U[0, 1, 2] *= 1.1
    with pytest.raises(L.InvalidGaugeField, match=r"index \(0, 1, 2\)"):
        hmc.run_hmc(Wilson(1.0), U, 1, progress=False)


def test_hmc_store_kill_and_resume_gives_same_chain(tmp_path):
    """Saving every 2 trajectories after 2 thermalisation ones; a job 'killed' after 5
    trajectories resumes from its store and ends with the same chain as an uninterrupted run."""
    from lattice.io import EnsembleStore
    act = Wilson(5.0)
    U0 = L.random_gauge((4, 4, 4, 4), seed=0)
    kw = dict(tau=0.5, n_steps=4, seed=3, n_therm=2, save_every=2, progress=False)

    def store(path):
        return EnsembleStore.open_or_create(path, lattice_shape=(4, 4, 4, 4), N=3, action=act.params(),
                                            meta={"seed": 3})

    with store(tmp_path / "a.h5") as ens:
        Ua, _ = hmc.run_hmc(act, U0, 10, store=ens, **kw)
        ref = ens.scalars()
    with store(tmp_path / "b.h5") as ens:
        hmc.run_hmc(act, U0, 5, store=ens, **kw)          # killed after trajectory 4
    with store(tmp_path / "b.h5") as ens:
        U, nxt = hmc.resume_point(ens)
        assert nxt == 4                                     # trajectories 1, 3 saved; resume at 4
        Ub, _ = hmc.run_hmc(act, U, 10 - nxt, start_traj=nxt, store=ens, **kw)
        got = ens.scalars()
        assert np.array_equal(ens.read(-1), Ua)
    assert np.array_equal(Ub, Ua)
    assert list(got["trajectory"]) == list(ref["trajectory"]) == [3, 5, 7, 9]
    assert np.array_equal(got["plaquette"], ref["plaquette"])
