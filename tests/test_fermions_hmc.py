"""Nf=2 HMC: reversibility, <exp(-dH)> = 1, and agreement with pure-gauge HMC reweighted by exact
determinants.

On the tiny 4 x 2^3 lattice the fermion determinant couples at O(kappa^2) to the length-2
Polyakov loops of the extent-2 directions (with opposite signs for the periodic spatial and
the antiperiodic time direction), so those loops are strongly shifted by the determinant
(many standard errors) while log det M^dag M fluctuates little enough for exact reweighting:
the comparison has power. Errors: chains are independent, so the spread of per-chain
means (jackknife over chains for the reweighted ratio) includes the autocorrelations.
"""
import math

import numpy as np
import pytest

import lattice as L
from lattice import hmc
from lattice.actions import Wilson, LuscherWeisz
import fermions as F

SHAPE = (4, 2, 2, 2)


def test_reversibility_nested():
    U = L.random_gauge(SHAPE, seed=3, batch=(2,))
    r = F.nf2_reversibility_check(U, LuscherWeisz(3.0, lam=0.05), 0.15, 0.1, tau=1.0, n_steps_fermion=3,
                                  n_steps_gauge=2)
    assert r["max_dU"] < 1e-10 and r["max_dP"] < 1e-10
    assert max(abs(d) for d in r["dH"]) < 1e-8


@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
def test_dH_scales_as_step_squared_nf2(integrator):
    """Pseudofermion outer level, gauge inner level (2 steps per outer one): dH(h) ~ h^2 with the
    fermion step h (ratios 3.85, 3.96 leapfrog; 3.70, 3.94 Omelyan, whose coarse steps cancel
    errors and are not yet asymptotic). A factor error between the fermion force and the
    momenta, or in the nesting, would leave dH finite as h -> 0."""
    from lattice.backend import Rng
    gauge = Wilson(3.0)
    U, _ = F.run_hmc_nf2(gauge, L.random_gauge(SHAPE, seed=3), 0.15, 0.1, n_traj=3, n_steps_fermion=2,
                         n_steps_gauge=2, seed=1, progress=False)
    pf = F.PseudofermionNf2(0.15, 0.1, action_tol=1e-13, force_tol=1e-13)
    pf.refresh(U, Rng(5))
    lay = L.Layout(SHAPE)
    P = hmc.draw_momenta(Rng(7), U, lay)
    H0 = hmc.hamiltonian(U, P, [pf, gauge], lay)
    dH = []
    for n in (8, 16, 32):
        U1, P1 = hmc.integrate(U, P, F.nf2_levels(gauge, pf, n, 2), 1.0, integrator, lay)
        dH.append(float(hmc.hamiltonian(U1, P1, [pf, gauge], lay)[()] - H0[()]))
    r1, r2 = dH[0] / dH[1], dH[1] / dH[2]
    assert 3.4 < r1 < 4.6 and 3.8 < r2 < 4.2, dH


def _short_loops(U):
    """Mean (1/N) Re tr U_mu(x) U_mu(x + mu) for mu = 1, 2 (periodic), 3 (antiperiodic time):
    the Polyakov loops of the extent-2 directions. Shape (batch, 3)."""
    out = []
    for m in (1, 2, 3):
        Um = U[:, m]
        P = Um @ np.roll(Um, -1, axis=1 + m)
        out.append(np.real(np.trace(P, axis1=-2, axis2=-1)).mean(axis=(1, 2, 3, 4)) / 3)
    return np.stack(out, axis=-1)


def _observables(U, rec):
    return np.c_[np.asarray(rec.plaquette)[:, None], _short_loops(U)]


def _pair(A, B):
    """<A, B> = -2 tr AB (docs/design.md §4) summed over links: (batch,)."""
    return -2.0 * np.real(np.einsum("...ij,...ji->...", A, B)).reshape(A.shape[0], -1).sum(axis=1)


def _schwinger_dyson_terms(U, beta, kappa, mu):
    """Integration by parts on SU(3)^links: for pi ~ exp(-S_W) (det M^dag M)^alpha and any f,
    E[Delta f - <grad f, grad S_W> + alpha <grad f, grad log det M^dag M>] = 0 (left-invariant
    derivatives, orthonormal in <,>; Haar measure). Returns (batch, 3, 2): per short loop
    f_m = sum_x Re tr U_m(x) U_m(x + m^) (m = 1, 2, 3, extent 2) the pair
    (Delta f - <grad f, grad S_W>, <grad f, grad log det>). With distinct links in a loop,
    Delta Re tr(loop) = -C_F (number of links) Re tr(loop), C_F = 4/3; on an extent-2 axis each
    link closes the loop twice, so grad f_m(x) = P(2 U_m(x) U_m(x + m^))."""
    CF = 4.0 / 3.0
    FW = np.asarray(Wilson(beta).force(U))
    ld_grad = np.asarray(F.dense_log_det_force(U, kappa, mu).grad)
    out = []
    for m in (1, 2, 3):
        Om = U[:, m] @ np.roll(U[:, m], -1, axis=1 + m)
        f = np.real(np.trace(Om, axis1=-2, axis2=-1)).sum(axis=(1, 2, 3, 4))
        g = np.zeros_like(U)
        g[:, m] = F.force_from_omega(2.0 * Om)
        out.append(np.stack([-2.0 * CF * f - _pair(g, FW), _pair(g, ld_grad)], axis=-1))
    return np.stack(out, axis=1)


def _alpha(terms):
    """alpha = -E[A]/E[B] per loop, jackknife over chains: terms (traj, chains, 3, 2)."""
    A, B = terms[..., 0].mean(axis=0), terms[..., 1].mean(axis=0)          # (chains, 3)
    c = A.shape[0]
    est = -A.mean(axis=0) / B.mean(axis=0)
    jk = np.array([-np.delete(A, k, 0).mean(axis=0) / np.delete(B, k, 0).mean(axis=0) for k in range(c)])
    return est, np.sqrt((c - 1) / c * np.sum((jk - jk.mean(axis=0)) ** 2, axis=0))


def _nf2_and_reweighted(beta, kappa, mu, chains, n_pure, n_nf2, n_therm=5, n_steps_fermion=2):
    act = Wilson(beta)
    U0 = L.random_gauge(SHAPE, seed=1, batch=(chains,))
    # pure gauge, reweighted with the exact determinant
    obs, logdet, sd_pure, sd_nf2 = [], [], [], []

    def cb_pure(i, U, rec):
        if i >= n_therm:
            obs.append(_observables(U, rec))
            logdet.append(F.dense_log_det(U, kappa, mu))
            sd_pure.append(_schwinger_dyson_terms(U, beta, kappa, mu))
    hmc.run_hmc(act, U0, n_pure, n_steps=4, seed=2, progress=False, callback=cb_pure)
    obs, logdet = np.array(obs), np.array(logdet)               # (traj, chains, 4), (traj, chains)
    w = np.exp(logdet - logdet.max())

    def rw(idx):
        return np.sum(w[:, idx, None] * obs[:, idx], axis=(0, 1)) / np.sum(w[:, idx])
    rw_mean = rw(np.arange(chains))
    jk = np.array([rw(np.delete(np.arange(chains), c)) for c in range(chains)])
    rw_err = np.sqrt((chains - 1) / chains * np.sum((jk - jk.mean(0)) ** 2, axis=0))
    pure_mean = obs.mean(axis=(0, 1))
    pure_err = obs.mean(axis=0).std(axis=0, ddof=1) / math.sqrt(chains)
    # Nf = 2 HMC
    obs2 = []

    def cb_nf2(i, U, rec):
        if i >= n_therm:
            obs2.append(_observables(U, rec))
            sd_nf2.append(_schwinger_dyson_terms(U, beta, kappa, mu))
    pf = F.PseudofermionNf2(kappa, mu, force_tol=1e-9)
    _, hist = F.run_hmc_nf2(act, U0, kappa, mu, n_traj=n_nf2, n_steps_fermion=n_steps_fermion, n_steps_gauge=2,
                            seed=1, progress=False, pseudofermion=pf, callback=cb_nf2)
    obs2 = np.array(obs2)
    nf2_mean = obs2.mean(axis=(0, 1))
    nf2_err = obs2.mean(axis=0).std(axis=0, ddof=1) / math.sqrt(chains)
    e = np.array([r.exp_minus_dH for r in hist[n_therm:]])      # equilibrium only
    acc = np.mean([r.accepted for r in hist])
    return dict(rw=(rw_mean, rw_err), pure=(pure_mean, pure_err), nf2=(nf2_mean, nf2_err), exp_mdH=e, acc=acc,
                logdet_std=float(logdet.std()), hist=hist, alpha_pure=_alpha(np.array(sd_pure)),
                alpha_nf2=_alpha(np.array(sd_nf2)))


def _check_alpha(res):
    """The Nf = 2 chain samples (det M^dag M)^alpha with alpha = 1, the pure-gauge one alpha = 0,
    each to 4 sigma per loop, and the check resolves alpha to better than 0.15 (det^(1/2) or
    det^2 are excluded at > 3 sigma per loop)."""
    for key, want in (("alpha_nf2", 1.0), ("alpha_pure", 0.0)):
        a, e = res[key]
        assert np.all(np.abs(a - want) < 4 * e) and np.all(e < 0.15), (key, a, e)


def _check(res):
    (a, ea), (b, eb), (p, ep) = res["rw"], res["nf2"], res["pure"]
    sig = np.sqrt(ea ** 2 + eb ** 2)
    assert np.all(np.abs(a - b) < 4 * sig), (a, b, sig)
    # the test has power: the Polyakov loops of the extent-2 directions move by many sigma
    # (observed 5.5 - 10 sigma each in the fast run, ~20 sigma in the slow one)
    shift = np.abs(b - p)[1:] / np.sqrt(eb ** 2 + ep ** 2)[1:]
    assert np.all(shift > 4) and np.sqrt(np.sum(shift ** 2)) > 10, shift
    e = res["exp_mdH"]
    per_chain = e.mean(axis=0)
    assert abs(per_chain.mean() - 1) < 4 * per_chain.std(ddof=1) / math.sqrt(len(per_chain)) + 1e-3
    assert res["acc"] > 0.7


@pytest.fixture(scope="module")
def fast_run():
    return _nf2_and_reweighted(beta=3.0, kappa=0.1, mu=0.1, chains=16, n_pure=30, n_nf2=20)


def test_plaquette_and_loops_agree_with_reweighted_pure_gauge(fast_run):
    _check(fast_run)


def test_nf2_hmc_samples_det_m_dag_m_by_the_schwinger_dyson_identity(fast_run):
    """Reweighting-free: the exponent alpha of det M^dag M in the sampled distribution, fitted
    from E[Delta f - <grad f, grad S_W> + alpha <grad f, grad log det>] = 0 for the three
    extent-2 loops (measured here: 0.91(8), 1.08(9), 0.81(8) for Nf = 2 HMC; -0.07(7),
    -0.08(6), 0.13(6) for pure gauge). The reweighting test above only tells Nf = 2 from
    Nf = 0; this one also excludes det^(1/2) and det^2 (found by an independent review)."""
    _check_alpha(fast_run)


def test_exp_minus_dH_is_one(fast_run):
    e = fast_run["exp_mdH"]
    assert e.shape[1] == 16
    per_chain = e.mean(axis=0)
    err = per_chain.std(ddof=1) / math.sqrt(len(per_chain))
    assert abs(per_chain.mean() - 1.0) < 4 * err + 1e-3, (per_chain.mean(), err)


def test_history_columns(fast_run):
    """run_hmc_nf2 returns an HMCHistory: the list of records, with NumPy columns (n_traj, *batch)."""
    hist = fast_run["hist"]
    assert isinstance(hist, hmc.HMCHistory) and len(hist) == 20 and hist.batch_shape == (16,)
    dH = hist.column("dH")
    assert dH.shape == (20, 16) and dH.dtype == np.float64
    assert np.array_equal(dH, np.array([r.dH for r in hist]))
    assert np.array_equal(hist.column("exp_minus_dH")[5:], fast_run["exp_mdH"])
    assert np.array_equal(hist[5:].column("exp_minus_dH"), fast_run["exp_mdH"])
    assert list(hist.column("traj")) == list(range(20))


@pytest.mark.slow
def test_plaquette_agrees_with_reweighted_pure_gauge_high_statistics():
    """At kappa = 0.12 the reweighting of the extent-2 loops is biased by its small effective
    sample size (4-6%; an independent review saw the time loop 3.9 sigma off with a correct
    HMC), so the loops are checked by the Schwinger-Dyson exponent and the plaquette by
    reweighting."""
    res = _nf2_and_reweighted(beta=3.0, kappa=0.12, mu=0.1, chains=32, n_pure=120, n_nf2=60)
    _check_alpha(res)
    (a, ea), (b, eb) = res["rw"], res["nf2"]
    assert abs(a[0] - b[0]) < 4 * math.hypot(ea[0], eb[0]), (a[0], b[0], ea[0], eb[0])
    assert ea[0] < 0.004 and eb[0] < 0.002          # the plaquette itself is resolved at the per-mille level


def test_run_hmc_nf2_store_and_resume(tmp_path):
    """Checkpoints: an Nf=2 chain written to the ensemble store resumes exactly."""
    pytest.importorskip("h5py")
    U0 = L.random_gauge(SHAPE, seed=5)
    act = Wilson(3.0)
    pf_kw = dict(force_tol=1e-10)
    path = tmp_path / "nf2.h5"
    pf = F.PseudofermionNf2(0.1, 0.1, **pf_kw)
    with F.create_nf2_store(path, lattice_shape=SHAPE, N=3, gauge_action=act, pseudofermion=pf) as st:
        F.run_hmc_nf2(act, U0, 0.1, 0.1, n_traj=2, seed=7, progress=False, pseudofermion=pf, store=st,
                      n_steps_fermion=2, n_steps_gauge=2)
    from lattice.io import EnsembleStore
    with EnsembleStore.open(path, "a") as st:
        assert st.meta["fermions"]["kappa"] == 0.1 and st.meta["Nf"] == 2
        U, start = hmc.resume_point(st)
        Ua, _ = F.run_hmc_nf2(act, U, 0.1, 0.1, n_traj=1, seed=7, start_traj=start, progress=False,
                              pseudofermion=F.PseudofermionNf2(0.1, 0.1, **pf_kw), n_steps_fermion=2,
                              n_steps_gauge=2)
    Ub, _ = F.run_hmc_nf2(act, U0, 0.1, 0.1, n_traj=3, seed=7, progress=False,
                          pseudofermion=F.PseudofermionNf2(0.1, 0.1, **pf_kw), n_steps_fermion=2, n_steps_gauge=2)
    assert np.abs(Ua - Ub).max() < 1e-12
