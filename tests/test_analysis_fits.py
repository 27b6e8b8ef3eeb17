"""Correlated cosh fits: recovery, coverage, replica fits, covariance options (analysis.fits)."""
import numpy as np
import pytest
from scipy import optimize, stats

import analysis as an

T = 24
E_TRUE, A_TRUE = 0.3, 1.0


def _data(n, seed, energies=(E_TRUE,), amplitudes=(A_TRUE,), noise=0.05, correlation=0.8):
    return an.synthetic_correlators(n, T, energies, amplitudes, noise=noise, correlation=correlation, seed=seed)


def test_single_state_fit_recovers_energy():
    C = _data(500, seed=1)
    fit = an.fit_correlator(C, 5, 12, T)
    assert abs(fit.energies[0] - E_TRUE) < 3 * fit.energies_err[0]
    assert abs(fit.amplitudes[0] - A_TRUE) < 3 * fit.amplitudes_err[0]
    assert fit.dof == 8 - 2 and 0 < fit.p_value < 1
    assert fit.chi2_dof == pytest.approx(fit.chi2 / fit.dof)
    mean, err = fit.mass
    assert (mean, err) == (fit.energies[0], fit.energies_err[0])
    assert "chi2/dof" in repr(fit) and "E0 = " in fit.summary()
    # jackknife and Hessian errors agree for independent configurations
    h = an.fit_correlator(C, 5, 12, T, errors="hessian")
    assert h.energies[0] == pytest.approx(fit.energies[0], rel=1e-9)
    assert h.energies_err[0] == pytest.approx(fit.energies_err[0], rel=0.15)


def test_two_state_fit_with_priors_recovers_both_energies():
    C = _data(2000, seed=2, energies=(0.3, 0.8), amplitudes=(1.0, 0.6), noise=0.02)
    fit = an.fit_correlator(C, 2, 12, T, n_states=2, priors={"E1": (1.0, 0.5), "A1": (0.5, 1.0)})
    assert abs(fit.energies[0] - 0.3) < 3 * fit.energies_err[0]
    assert abs(fit.energies[1] - 0.8) < 3 * fit.energies_err[1]
    assert fit.dof == 11 + 2 - 4
    one = an.fit_correlator(C, 2, 12, T)                    # a 1-state fit from t=2 is bad
    assert one.p_value < 1e-6 < fit.p_value


def test_fit_errors_cover_truth_at_68_percent():
    """200 synthetic data sets: the 1σ interval covers E_true in ≈68% of them.

    The count is Binomial(200, 0.6827) if the errors are right; accept its 3σ band
    [117, 156]. Wrong errors by a factor 1.25 give ≈ 55% or ≈ 79% coverage and fail.
    """
    n_sets, p = 200, 0.6827
    lo, hi = stats.binom.ppf([0.00135, 0.99865], n_sets, p)
    hits = {"corr_jk": 0, "uncorr_hessian_sandwich": 0}
    small_p = 0
    for k in range(n_sets):
        C = _data(400, seed=1000 + k)
        f = an.fit_correlator(C, 6, 12, T)
        hits["corr_jk"] += abs(f.energies[0] - E_TRUE) < f.energies_err[0]
        small_p += f.p_value < 0.05
        g = an.fit_correlator(C, 6, 12, T, correlated=False, errors="hessian")
        hits["uncorr_hessian_sandwich"] += abs(g.energies[0] - E_TRUE) < g.energies_err[0]
    for name, h in hits.items():
        assert lo <= h <= hi, (name, h, (lo, hi))
    # p-values of correlated fits: P(p < 0.05) ≈ 5%; binomial 3σ band
    assert small_p <= stats.binom.ppf(0.99865, n_sets, 0.05), small_p


def test_uncorrelated_fit_hessian_errors_use_the_sandwich():
    C = an.synthetic_correlators(3000, 24, noise=0.05, correlation=0.5, seed=8)
    jk = an.fit_correlator(C, 4, 12, 24, correlated=False)
    h = an.fit_correlator(C, 4, 12, 24, correlated=False, errors="hessian")
    assert h.energies_err[0] == pytest.approx(jk.energies_err[0], rel=0.03)      # naive (JᵀD⁻¹J)⁻¹: 25% low


def _naive_jackknife_fit(C, t_min, t_max):
    """Reference: delete one configuration, refit with SciPy at fixed full-sample covariance."""
    n = C.shape[0]
    t = np.arange(t_min, t_max + 1)
    y = C[:, t_min:t_max + 1]
    ybar = y.mean(axis=0)
    cov = np.cov(y.T) / n
    L = np.linalg.cholesky(cov)

    def fit(yb):
        def res(p):
            m = p[1] * (np.exp(-p[0] * t) + np.exp(-p[0] * (T - t)))
            return np.linalg.solve(L, yb - m)
        return optimize.least_squares(res, [0.3, 1.0], xtol=1e-15, ftol=1e-15, gtol=1e-15).x

    central = fit(ybar)
    reps = np.array([fit((ybar * n - y[k]) / (n - 1)) for k in range(n)])
    err = np.sqrt((n - 1) / n * np.sum((reps - reps.mean(axis=0)) ** 2, axis=0))
    return central, reps, err


def test_vectorised_replica_fits_match_naive_loop():
    C = _data(60, seed=3, noise=0.03)
    central, reps, err = _naive_jackknife_fit(C, 6, 11)
    fit = an.fit_correlator(C, 6, 11, T)
    assert fit.energies[0] == pytest.approx(central[0], rel=1e-9)
    np.testing.assert_allclose(fit.energies_replicas[:, 0], reps[:, 0], rtol=1e-8)
    np.testing.assert_allclose(fit.amplitudes_replicas[:, 0], reps[:, 1], rtol=1e-8)
    assert fit.energies_err[0] == pytest.approx(err[0], rel=1e-6)
    assert fit.n_failed_replicas == 0


def test_reweighted_fit_and_covariance_options():
    C = _data(300, seed=4)
    plain = an.fit_correlator(C, 5, 12, T)
    same = an.fit_correlator(C, 5, 12, T, log_weights=np.full(300, 3.0))
    assert same.energies[0] == pytest.approx(plain.energies[0], rel=1e-12)
    assert same.energies_err[0] == pytest.approx(plain.energies_err[0], rel=1e-9)
    lw = np.random.default_rng(0).normal(size=300) * 0.3
    rw = an.fit_correlator(C, 5, 12, T, log_weights=lw)
    np.testing.assert_allclose(rw.data, an.reweighted_mean(C, lw)[5:13], rtol=1e-12)
    # shrinkage 0 = plain, shrinkage 1 = uncorrelated; svd cut can only lower chi2
    s0 = an.fit_correlator(C, 5, 12, T, shrinkage=0.0)
    s1 = an.fit_correlator(C, 5, 12, T, shrinkage=1.0)
    unc = an.fit_correlator(C, 5, 12, T, correlated=False)
    assert s0.chi2 == pytest.approx(plain.chi2, rel=1e-10)
    assert s1.chi2 == pytest.approx(unc.chi2, rel=1e-10)
    svd = an.fit_correlator(C, 5, 12, T, svd_cut=0.05)
    assert svd.chi2 <= plain.chi2 * (1 + 1e-10)
    ev = np.linalg.eigvalsh(an.regularize_covariance(plain.data_cov, svd_cut=0.05) /
                           np.sqrt(np.outer(np.diag(plain.data_cov), np.diag(plain.data_cov))))
    assert ev.min() >= 0.05 * ev.max() * (1 - 1e-10)
    boot = an.fit_correlator(C, 5, 12, T, errors="bootstrap", n_boot=400, seed=1)
    assert boot.energies_err[0] == pytest.approx(plain.energies_err[0], rel=0.2)
    folded = an.fit_correlator(C, 5, 12, T, fold=True)
    assert folded.energies_err[0] < plain.energies_err[0]        # averaging t and T-t helps


def test_narrow_prior_pins_parameter_and_scan():
    C = _data(200, seed=5)
    fit = an.fit_correlator(C, 5, 12, T, priors={"E0": (0.31, 1e-6)})
    assert fit.energies[0] == pytest.approx(0.31, abs=1e-5)
    scan = an.scan_t_min(C, range(3, 10), 12, T)
    assert list(scan.t_min) == list(range(3, 10))
    E, dE = scan.energy(0)
    assert E.shape == dE.shape == (7,)
    assert "t_min" in repr(scan)
    with pytest.warns(RuntimeWarning, match="skipped"):
        partial = an.scan_t_min(C, [5, 12], 12, T)          # t_min = t_max is not a fit range
    assert list(partial.t_min) == [5]


def test_fit_input_errors():
    C = _data(50, seed=6)
    with pytest.raises(ValueError, match="singular"):
        an.fit_correlator(C[:5], 2, 12, T)
    with pytest.raises(ValueError, match="t_min"):
        an.fit_correlator(C, 12, 12, T)
    with pytest.raises(ValueError, match="time slices"):
        an.fit_correlator(C[:, :20], 3, 10, T)
    with pytest.raises(ValueError, match="prior keys"):
        an.fit_correlator(C, 3, 12, T, priors={"E3": (1, 1)})
    with pytest.raises(ValueError, match="cannot determine"):
        an.fit_correlator(C, 10, 12, T, n_states=2)
    with pytest.raises(ValueError, match="errors"):
        an.fit_correlator(C, 3, 12, T, errors="magic")


def test_folded_input_bands_and_derived_quantities():
    C = _data(300, seed=7)
    Cf = an.fold(C)                                         # (N, T//2 + 1)
    a = an.fit_correlator(Cf, 5, 12, T)
    b = an.fit_correlator(C, 5, 12, T, fold=True)
    assert a.energies[0] == pytest.approx(b.energies[0], rel=1e-12)
    band = a.model_estimate(np.arange(5, 13))
    assert band.shape == (8,) and np.all(band.err > 0)
    np.testing.assert_allclose(band.mean, a.model(), rtol=1e-12)
    # Z-factor-like derived quantity from the same jackknife: A·E keeps correlations
    az = an.derive(lambda A, E: A * E, a.amplitude(0), a.energy(0))
    assert az.n_replicas == 300 and az.err > 0
    boot = an.fit_correlator(C, 5, 12, T, errors="bootstrap", n_boot=200, seed=3)
    ratio = an.derive(lambda A, E: A / E, boot.amplitude(0), boot.energy(0))
    assert ratio.method == "bootstrap"
    with pytest.raises(ValueError, match="different resamplings"):
        an.derive(lambda x, y: x + y, a.energy(0), boot.energy(0))


def test_error_method_and_the_deprecated_errors_alias():
    C = _data(200, seed=9)
    fit = an.fit_correlator(C, 5, 12, T)
    assert fit.error_method == "jackknife"
    assert an.fit_correlator(C, 5, 12, T, errors="hessian").error_method == "hessian"
    with pytest.warns(DeprecationWarning, match="error_method"):
        assert fit.errors == "jackknife"                    # old name: still the method, with a warning
    assert "errors: jackknife" in fit.summary()


def test_fits_on_named_ensembles_combine_as_independent():
    fa = an.fit_correlator(_data(300, seed=10), 5, 12, T, ensemble="A")
    fb = an.fit_correlator(_data(200, seed=11), 5, 12, T, ensemble="B")
    diff = fa.mass - fb.mass
    assert diff.ensembles == ("A", "B")
    assert diff.err == pytest.approx(np.hypot(fa.energies_err[0], fb.energies_err[0]), rel=1e-12)
    same = fa.amplitude(0) * fa.energy(0)                   # one jackknife: correlated
    ref = an.derive(lambda x, y: x * y, fa.amplitude(0), fa.energy(0))
    assert same.err == pytest.approx(ref.err, rel=1e-14) and same.ensembles == ("A",)
    assert fa.model_estimate(np.arange(5, 8)).ensembles == ("A",)
