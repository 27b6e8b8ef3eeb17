"""Peer cross-check against pyerrors (optional extra `analysis`): Γ-method, error propagation,
export/import, correlated fit.

Both packages implement Wolff's Γ-method (hep-lat/0306017) with the same automatic window (first
W with g(W) < 0 for the parameter S) and the same bias-corrected error
err² = C_F(W)(1 + (2W+1)/N)/N. They print different bias-corrected τ_int:

    ours (UWerr):  τ = C_F'/(2Γ'(0)),             Γ' = Γ + C_F/N, C_F' = C_F(1 + (2W+1)/N)
    pyerrors:      τ = τ(W)(1 + (2W+1)/N)/(1 + 1/N)  = C_F'/(2Γ(0)(1 + 1/N))

so τ_pyerrors = τ_ours·Γ'(0)/(Γ(0)(1 + 1/N)) with Γ'(0) = Γ(0) + C_F/N and
C_F = N err²/(1 + (2W+1)/N), a 1 + O(τ_int/N) factor. Second difference: when the summed
autocorrelation is negative at the window, τ(W) = C_F(W)/(2Γ(0)) ≤ 1/2 (common for uncorrelated
data), pyerrors raises τ(W) to 1/2 — its error is never below the naive standard error — while
this package keeps C_F(W) (Wolff's UWerr; err² stays unbiased, see test_analysis_resampling).
The tests compare like with like through these identities (exact up to rounding), not with a
loosened tolerance.
"""
import numpy as np
import pytest
from scipy.signal import lfilter

import analysis as an

pe = pytest.importorskip("pyerrors")
anp = pytest.importorskip("autograd.numpy")            # pyerrors' fit functions use autograd


def _ar1(rho, n, seed, mean=0.0):
    """AR(1) chain x_t = ρ x_{t-1} + ε_t, τ_int = (1+ρ)/(2(1-ρ)), started in equilibrium."""
    eps = np.random.default_rng(seed).normal(size=n)
    x0 = eps[0] / np.sqrt(1 - rho ** 2)
    return mean + np.concatenate([[x0], lfilter([1.0], [1.0, -rho], eps[1:], zi=[rho * x0])[0]])


def _as_pyerrors_reports(res, gamma0, n):
    """(err, τ_int) that pyerrors reports for the data of our one-component GammaResult ``res``."""
    corr = 1 + (2 * res.window + 1) / n
    c_f = n * res.err ** 2 / corr                          # C_F(W) before the bias correction
    if c_f / (2 * gamma0) > 0.5:
        return res.err, res.tau_int * (gamma0 + c_f / n) / (gamma0 * (1 + 1 / n))
    tau = (0.5 + np.finfo(float).eps) * corr / (1 + 1 / n)   # pyerrors' floor τ(W) ≥ 1/2
    return np.sqrt(2 * tau * gamma0 * (1 + 1 / n) / n), tau


@pytest.mark.parametrize("S", [2.0, 1.5])
def test_gamma_method_agrees_with_pyerrors_on_ar1(S):
    rho, n = 0.8, 20_000
    x = _ar1(rho, n, seed=17, mean=1.0)
    ours = an.gamma_method(x, S=S)
    obs = pe.Obs([x], ["A"])
    obs.gamma_method(S=S)
    assert ours.mean == pytest.approx(obs.value, rel=1e-14)
    assert ours.window == obs.e_windowsize["A"]
    assert ours.err == pytest.approx(obs.dvalue, rel=1e-10)
    err_pe, tau_pe = _as_pyerrors_reports(ours, np.mean((x - x.mean()) ** 2), n)
    assert err_pe == ours.err                               # τ(W) ≫ 1/2 here: no floor
    assert tau_pe == pytest.approx(obs.e_tauint["A"], rel=1e-10)
    tau_true = (1 + rho) / (2 * (1 - rho))                 # 4.5; the data are what they claim to be
    assert abs(ours.tau_int - tau_true) < 3 * ours.tau_int_err
    # the same through an Estimate and its export
    est = an.Estimate.from_samples(x, "A", S=S)
    assert est.err == ours.err
    exported = est.to_pyerrors()
    assert exported.value == pytest.approx(obs.value, rel=1e-14)
    assert exported.dvalue == pytest.approx(obs.dvalue, rel=1e-10)


def test_derived_quantity_over_two_ensembles_agrees_with_pyerrors():
    """f = log(a)/b² + a·c, a and c correlated on ensemble A, b on an independent ensemble B."""
    S = 2.0
    xa = _ar1(0.7, 8000, seed=1, mean=2.0)
    xc = 0.3 * xa + _ar1(0.5, 8000, seed=2, mean=1.0)
    xb = _ar1(0.6, 5000, seed=3, mean=3.0)
    a, c = an.Estimate.from_samples(xa, "A", S=S), an.Estimate.from_samples(xc, "A", S=S)
    b = an.Estimate.from_samples(xb, "B", S=S)
    f = np.log(a) / b ** 2 + a * c
    oa, oc, ob = pe.Obs([xa], ["A"]), pe.Obs([xc], ["A"]), pe.Obs([xb], ["B"])
    g = np.log(oa) / ob ** 2 + oa * oc
    g.gamma_method(S=S)
    assert f.mean == pytest.approx(g.value, rel=1e-13)
    assert f.err == pytest.approx(g.dvalue, rel=1e-10)
    details = f.gamma_details()
    for name, n in (("A", 8000), ("B", 5000)):
        d = details[name]
        err_pe, tau_pe = _as_pyerrors_reports(d, np.mean(d.deltas ** 2), n)
        assert d.window == g.e_windowsize[name]
        assert d.err == err_pe == pytest.approx(g.e_dvalue[name], rel=1e-10)
        assert tau_pe == pytest.approx(g.e_tauint[name], rel=1e-10)
    # round trip through pyerrors keeps the ensembles and the fluctuations
    back = an.from_pyerrors(g)
    assert back.ensembles == ("A", "B") and back.S == S
    assert back.mean == g.value and back.err == pytest.approx(f.err, rel=1e-10)
    np.testing.assert_allclose(back.replicas, f.replicas, rtol=1e-9, atol=1e-14)


def test_jackknife_export_is_pyerrors_import_jackknife():
    x = np.random.default_rng(5).normal(1.0, 0.3, size=400)
    est = an.jackknife(x, func=np.log)
    obs = est.to_pyerrors(S=0.0)                            # S=0: no autocorrelation, the sample standard error
    ref = pe.import_jackknife(np.concatenate([[est.mean], est.replicas]), "ensemble")
    ref.gamma_method(S=0.0)
    np.testing.assert_allclose(obs.deltas["ensemble"], ref.deltas["ensemble"], rtol=1e-10, atol=1e-15)
    assert obs.value == pytest.approx(est.mean, rel=1e-14)
    assert obs.dvalue == pytest.approx(est.err, rel=1e-10)    # exact identity of the two conventions


def test_array_export_import_and_refusals():
    """Independent configurations: several components close the window with τ(W) < 1/2, where
    pyerrors applies its floor (module docstring)."""
    C = an.synthetic_correlators(300, 12, seed=4)
    est = an.Estimate.from_samples(C, "C", S=2.0)
    obs = est.to_pyerrors()
    assert obs.shape == (12,) and isinstance(obs[3], pe.Obs)
    floored = 0
    for k in range(12):
        res = an.gamma_method(C[:, k], S=2.0)
        assert res.err == pytest.approx(est.err[k], rel=1e-14)
        err_pe, tau_pe = _as_pyerrors_reports(res, np.var(C[:, k]), 300)
        floored += err_pe != res.err
        assert obs[k].value == pytest.approx(est.mean[k], rel=1e-14)
        assert obs[k].e_windowsize["C"] == res.window
        assert obs[k].dvalue == pytest.approx(err_pe, rel=1e-10)
        assert obs[k].e_tauint["C"] == pytest.approx(tau_pe, rel=1e-10)
    assert 0 < floored < 12                                 # both branches of the convention are compared
    back = an.from_pyerrors(obs)
    assert back.shape == (12,) and back.ensembles == ("C",)
    np.testing.assert_allclose(back.err, est.err, rtol=1e-10)
    with pytest.raises(ValueError, match="bootstrap"):
        an.bootstrap(C[:, 0]).to_pyerrors()
    with pytest.raises(ValueError, match="cov_Obs"):
        an.from_pyerrors(pe.Obs([C[:, 0]], ["C"]) + pe.cov_Obs(1.0, 0.01, "external"))


def test_correlated_fit_agrees_with_pyerrors_least_squares():
    """1-state cosh fit of 1000 independent synthetic correlators on t = 5..12.

    Like with like: the data are independent configurations, so the pyerrors inputs are
    analysed with S=0 (no autocorrelation: the sample standard error). Then pyerrors' χ²
    covariance, diag(dy)·corr·diag(dy), is exactly this package's jackknife covariance of the
    mean, and both minimise the same χ² (agreement to the minimisers' tolerance, 1e-8).
    Parameter errors: pyerrors propagates the fluctuations linearly through the minimum
    (dp/dy from the exact χ² Hessian), this package refits every jackknife replica at fixed
    covariance; the two agree up to the jackknife's higher-order terms, O(1/N) = 1e-3 relative.
    """
    T, N = 24, 1000
    C = an.synthetic_correlators(N, T, (0.3,), (1.0,), noise=0.05, correlation=0.8, seed=1)
    fit = an.fit_correlator(C, 5, 12, T)                   # correlated, jackknife errors
    t = np.arange(5, 13)
    y = [pe.Obs([C[:, k]], ["ens"]) for k in t]
    for o in y:
        o.gamma_method(S=0.0)
    res = pe.fits.least_squares(t, y, lambda p, x: p[1] * (anp.exp(-p[0] * x) + anp.exp(-p[0] * (T - x))),
                                correlated_fit=True, silent=True)
    E, A = res.fit_parameters
    for p in (E, A):
        p.gamma_method(S=0.0)
    assert fit.chi2 == pytest.approx(res.chisquare, rel=1e-8)
    assert fit.dof == res.dof
    assert fit.energies[0] == pytest.approx(E.value, rel=1e-8)
    assert fit.amplitudes[0] == pytest.approx(A.value, rel=1e-8)
    assert fit.energies_err[0] == pytest.approx(E.dvalue, rel=1e-3)
    assert fit.amplitudes_err[0] == pytest.approx(A.dvalue, rel=1e-3)
    assert fit.param_cov[0, 1] == pytest.approx(pe.covariance([E, A])[0, 1], rel=1e-3)
