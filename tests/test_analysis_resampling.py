"""Resampling, reweighting, Γ-method and ESS (analysis.resampling, analysis.estimate)."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import analysis as an
from analysis.estimate import Estimate


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


# ----------------------------------------------------------------------------- jackknife basics
@given(hnp.arrays(np.float64, st.integers(2, 60), elements=finite),
       st.floats(-5, 5), st.floats(-5, 5))
def test_jackknife_of_linear_function_is_standard_error(x, a, b):
    est = an.jackknife(x, func=lambda m: a * m + b)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert est.mean == pytest.approx(a * x.mean() + b, rel=1e-12, abs=1e-9)
    assert est.err == pytest.approx(abs(a) * se, rel=1e-8, abs=1e-9)


@given(st.integers(2, 12), st.integers(1, 6), st.integers(0, 5))
def test_binned_jackknife_is_standard_error_of_bin_means(n_bins, b, extra):
    rng = np.random.default_rng(n_bins * 100 + b)
    x = rng.normal(size=n_bins * b + min(extra, b - 1))       # remainder is dropped
    est = an.jackknife(x, bin_size=b)
    bins = x[: n_bins * b].reshape(n_bins, b).mean(axis=1)
    assert est.mean == pytest.approx(bins.mean(), rel=1e-12, abs=1e-14)
    assert est.err == pytest.approx(bins.std(ddof=1) / np.sqrt(n_bins), rel=1e-10)
    assert est.replicas.shape == (n_bins,)


def test_jackknife_of_square_removes_bias_exactly():
    # for f(m) = m², the bias-corrected jackknife is the unbiased x̄² - s²/N
    x = np.random.default_rng(3).normal(0.3, 1.0, size=57)
    est = an.jackknife(x, func=lambda m: m ** 2)
    assert est.bias_corrected == pytest.approx(x.mean() ** 2 - x.var(ddof=1) / len(x), rel=1e-10)


def test_jackknife_nonlinear_agrees_with_delta_method():
    rng = np.random.default_rng(11)
    n = 200_000
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    xy = rng.multivariate_normal([1.5, 2.0], cov, size=n)
    est = an.jackknife((xy[:, 0], xy[:, 1]), func=lambda a, b: a / b * np.exp(a / 4))
    ma, mb = xy.mean(axis=0)
    f = ma / mb * np.exp(ma / 4)
    grad = np.array([f * (1 / ma + 0.25), -f / mb])
    sigma = np.sqrt(grad @ np.cov(xy.T) @ grad / n)
    assert est.mean == pytest.approx(f, rel=1e-12)
    assert est.err == pytest.approx(sigma, rel=2e-3)          # agree up to O(1/N) terms


def test_bootstrap_agrees_with_jackknife_and_is_seeded():
    rng = np.random.default_rng(5)
    x = rng.exponential(size=4000)
    jk = an.jackknife(x, func=np.log)
    bs = an.bootstrap(x, func=np.log, n_boot=2000, seed=42)
    assert bs.mean == jk.mean
    assert bs.err == pytest.approx(jk.err, rel=0.08)          # bootstrap error noise ~ 1/sqrt(2 n_boot)
    again = an.bootstrap(x, func=np.log, n_boot=2000, seed=42)
    np.testing.assert_array_equal(bs.replicas, again.replicas)
    other = an.bootstrap(x, func=np.log, n_boot=2000, seed=43)
    assert not np.array_equal(bs.replicas, other.replicas)


def test_vectorized_func_matches_loop():
    rng = np.random.default_rng(0)
    C = np.exp(-0.3 * np.arange(12)) * (1 + 0.05 * rng.normal(size=(80, 12)))
    a = an.jackknife(C, func=lambda c: an.effective_mass(c, "log"))
    b = an.jackknife(C, func=lambda c: an.effective_mass(c, "log"), vectorized=True)
    np.testing.assert_allclose(a.replicas, b.replicas, rtol=1e-14)
    np.testing.assert_allclose(a.err, b.err, rtol=1e-12)


# ----------------------------------------------------------------------------- reweighting
def _naive_reweighted_jackknife(x, lw, b):
    nb = len(x) // b
    x, lw = x[: nb * b], lw[: nb * b]
    w = np.exp(lw - lw.max())
    reps = []
    for k in range(nb):
        keep = np.ones(len(x), bool)
        keep[k * b:(k + 1) * b] = False
        reps.append(np.sum(w[keep] * x[keep]) / np.sum(w[keep]))
    reps = np.array(reps)
    return np.sum(w * x) / np.sum(w), np.sqrt((nb - 1) / nb * np.sum((reps - reps.mean()) ** 2)), reps


@pytest.mark.parametrize("b", [1, 3])
def test_reweighted_jackknife_deletes_numerator_and_denominator_together(b):
    rng = np.random.default_rng(b)
    x = rng.normal(size=301)
    lw = 2.0 * rng.normal(size=301)
    est = an.jackknife(x, log_weights=lw, bin_size=b)
    mean, err, reps = _naive_reweighted_jackknife(x, lw, b)
    assert est.mean == pytest.approx(mean, rel=1e-12)
    assert est.err == pytest.approx(err, rel=1e-10)
    np.testing.assert_allclose(est.replicas, reps, rtol=1e-12)


def test_reweighted_average_agrees_with_direct_sampling():
    # x ~ N(0,1) reweighted by w = exp(a x) is exactly N(a, 1)
    rng = np.random.default_rng(7)
    a = 0.7
    x = rng.normal(size=40_000)
    y = rng.normal(a, 1.0, size=40_000)                        # direct samples of the target
    rw = an.jackknife(x, func=lambda m: m, log_weights=a * x + 17.0)
    direct = an.jackknife(y)
    assert abs(rw.mean - direct.mean) < 4 * np.hypot(rw.err, direct.err)
    assert abs(rw.mean - a) < 4 * rw.err
    # a nonlinear function of two reweighted averages: the variance ⟨x²⟩ - ⟨x⟩² = 1
    var_rw = an.jackknife((x, x ** 2), func=lambda m1, m2: m2 - m1 ** 2, log_weights=a * x)
    var_direct = an.jackknife((y, y ** 2), func=lambda m1, m2: m2 - m1 ** 2)
    assert abs(var_rw.mean - var_direct.mean) < 4 * np.hypot(var_rw.err, var_direct.err)
    assert abs(var_rw.mean - 1.0) < 4 * var_rw.err
    # exact error ratio: Var_rw/Var_direct = E[w²(x-a)²]/E[w]² = e^{a²}(1 + a²)
    ratio = rw.err / direct.err
    assert ratio == pytest.approx(np.sqrt(np.exp(a * a) * (1 + a * a)), rel=0.1)


def test_reweighted_jackknife_matches_delta_method():
    rng = np.random.default_rng(8)
    x = rng.normal(size=50_000)
    lw = 0.5 * rng.normal(size=50_000) + 0.2 * x
    w = np.exp(lw - lw.max())
    m = np.sum(w * x) / np.sum(w)
    sigma = np.sqrt(np.sum(w ** 2 * (x - m) ** 2)) / np.sum(w)        # linearised ⟨wx⟩/⟨w⟩
    est = an.jackknife(x, log_weights=lw)
    assert est.err == pytest.approx(sigma, rel=2e-3)
    g = an.gamma_method(x, log_weights=lw)
    assert g.mean == pytest.approx(m, rel=1e-12)
    assert g.err == pytest.approx(sigma, rel=0.03)                   # iid: window W ~ 1


def test_log_sum_exp_survives_huge_log_weights():
    rng = np.random.default_rng(9)
    x = rng.normal(size=500)
    lw = 3.0 * rng.normal(size=500)
    ref = an.jackknife(x, log_weights=lw)
    for shift in (1e5, -1e5, 700.0):
        est = an.jackknife(x, log_weights=lw + shift)
        assert est.mean == pytest.approx(ref.mean, rel=1e-9)
        assert est.err == pytest.approx(ref.err, rel=1e-7)
    spread = np.where(np.arange(500) % 2 == 0, 0.0, -900.0)          # e^-900 underflows, must not break
    est = an.jackknife(x, log_weights=spread)
    assert est.mean == pytest.approx(x[::2].mean(), rel=1e-12)
    boot = an.bootstrap(x, log_weights=lw + 1e5, seed=1)
    assert np.isfinite(boot.err)


def test_per_observable_log_weights():
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(2, 200))
    lw = rng.normal(size=200)
    est = an.jackknife((x, y), func=lambda a, b: b - a, log_weights=(None, lw))
    w = np.exp(lw - lw.max())
    reps = [np.delete(y, k) @ np.delete(w, k) / np.delete(w, k).sum() - np.delete(x, k).mean()
            for k in range(200)]
    np.testing.assert_allclose(est.replicas, reps, rtol=1e-10, atol=1e-14)
    assert est.mean == pytest.approx(y @ w / w.sum() - x.mean(), rel=1e-12)


# ----------------------------------------------------------------------------- ESS
@given(hnp.arrays(np.float64, st.integers(1, 200), elements=st.floats(-50, 50)), st.floats(-1e4, 1e4))
def test_ess_in_unit_interval_and_shift_invariant(lw, c):
    e = an.ess(lw)
    assert 0.0 < e <= 1.0 + 1e-12
    assert an.ess(lw + c) == pytest.approx(e, rel=1e-9)
    w = np.exp(lw - lw.max())
    assert e == pytest.approx(w.sum() ** 2 / (len(w) * np.sum(w * w)), rel=1e-12)


@given(st.integers(1, 500), st.floats(-1e5, 1e5))
def test_ess_is_one_for_equal_weights(n, c):
    assert an.ess(np.full(n, c)) == pytest.approx(1.0, rel=1e-14)


def test_ess_edge_cases():
    assert an.ess(np.array([0.0] + [-np.inf] * 9)) == pytest.approx(0.1)   # one surviving weight
    e1 = np.exp(-1.0)                                                        # exp(1000) would overflow
    assert an.ess(np.array([1000.0, 999.0])) == pytest.approx((1 + e1) ** 2 / (2 * (1 + e1 ** 2)), rel=1e-14)
    np.testing.assert_allclose(an.ess(np.zeros((3, 7))), np.ones(3))
    with pytest.raises(ValueError):
        an.ess(np.array([0.0, np.nan]))
    with pytest.raises(ValueError):
        an.ess(np.array([0.0, np.inf]))
    with pytest.raises(ValueError):
        an.ess(np.full(3, -np.inf))


# ----------------------------------------------------------------------------- Γ-method
def _ar1(rho, n, seed):
    rng = np.random.default_rng(seed)
    eps = rng.normal(size=n)
    x = np.empty(n)
    x[0] = eps[0] / np.sqrt(1 - rho ** 2)                      # start in equilibrium
    # x_t = rho x_{t-1} + eps_t, vectorised via a linear filter
    from scipy.signal import lfilter
    x[1:] = lfilter([1.0], [1.0, -rho], eps[1:], zi=[rho * x[0]])[0]
    return x


@pytest.mark.parametrize("rho,seed", [(0.5, 1), (0.8, 2), (0.9, 3)])
def test_gamma_method_ar1_recovers_tau_int(rho, seed):
    n = 100_000
    x = _ar1(rho, n, seed)
    res = an.gamma_method(x)
    mean, err, tau = res
    tau_true = (1 + rho) / (2 * (1 - rho))
    assert abs(tau - tau_true) < 3 * res.tau_int_err, res
    err_true = np.sqrt(2 * tau_true / (1 - rho ** 2) / n)        # sqrt(2 τ Var / N)
    assert abs(err - err_true) < 3 * res.err_err + 0.02 * err_true
    assert abs(mean) < 4 * err
    # a binned jackknife with bins ≫ τ gives the same error
    jk = an.jackknife(x, bin_size=int(40 * tau_true))
    assert jk.err == pytest.approx(err, rel=0.25)


def test_autocorrelation_fft_equals_direct_sums():
    from analysis.resampling import autocorrelation
    a = np.random.default_rng(2).normal(size=(37, 2))
    g = autocorrelation(a)
    direct = np.array([[a[: 37 - t, c] @ a[t:, c] / (37 - t) for c in range(2)] for t in range(37)])
    np.testing.assert_allclose(g, direct, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("rho", [0.3, 0.9, 0.995])
def test_gamma_method_direct_and_fft_paths_agree(rho):
    # short windows use direct lag sums, long ones the FFT; both must equal the FFT reference
    from analysis.resampling import autocorrelation, _wolff_window
    x = _ar1(rho, 20_000, 7)
    res = an.gamma_method(x)
    a = x - x.mean()
    g = autocorrelation(a[:, None], t_max=10_001)[:, 0]
    W = _wolff_window(g[:10_001], len(x), 1.5)
    cf = g[0] + 2 * g[1:W + 1].sum()
    g = g + cf / len(x)
    cf = g[0] + 2 * g[1:W + 1].sum()
    assert res.window == W
    assert res.tau_int == pytest.approx(cf / (2 * g[0]), rel=1e-10)
    assert res.err == pytest.approx(np.sqrt(cf / len(x)), rel=1e-10)


@pytest.mark.filterwarnings("ignore:gamma_method. the estimated error.2 is <= 0:RuntimeWarning")
def test_gamma_method_bias_correction_on_short_chains():
    """Mean of err² over many short AR(1) chains vs the exact Var(x̄) at finite N (2 of the
    2000 chains have err² <= 0 at W = 10 and fall back to W = 0).

    Without the Γ(t) → Γ(t) + C_F/N correction the fixed-window estimate is ≈ 9% low here.
    """
    rho, n, m = 0.5, 200, 2000
    rng = np.random.default_rng(21)
    from scipy.signal import lfilter
    eps = rng.normal(size=(n, m))
    x = np.empty((n, m))
    x[0] = eps[0] / np.sqrt(1 - rho ** 2)
    x[1:] = lfilter([1.0], [1.0, -rho], eps[1:], axis=0, zi=rho * x[0][None, :])[0]
    k = np.arange(1, n)
    exact = (1 + 2 * np.sum((1 - k / n) * rho ** k)) / (1 - rho ** 2) / n
    err2 = an.gamma_method(x, window=10).err ** 2                  # one analysis per column
    assert abs(err2.mean() / exact - 1) < 3 * err2.std() / exact / np.sqrt(m)


def test_gamma_method_never_reports_a_zero_error_on_short_chains():
    """On a short chain the automatic window can close where the bias-corrected C_F <= 0
    (Wolff's "Gamma pathological"); the error then falls back to W = 0 with a warning, instead
    of err = 0 (seen in 11% of iid chains of 10 measurements, |z| < 1 in 54% of them)."""
    import warnings
    rng = np.random.default_rng(1)
    z, windows, n_warned = [], [], 0
    for _ in range(2000):
        x = rng.normal(size=10)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            r = an.gamma_method(x)
        n_warned += any("error^2 is <= 0" in str(m.message) for m in w)
        assert r.err > 0
        z.append(r.mean / r.err)
        windows.append(r.window)
    assert n_warned > 100                                # the fallback did happen, and said so
    assert 0.57 < np.mean(np.abs(z) < 1) < 0.75          # t with 9 dof: 0.66; naive W=0: 0.63
    with pytest.warns(RuntimeWarning, match="error\\^2 is <= 0"):
        r = an.gamma_method(np.array([1.0, 2.0, 0.5, 1.5]))
    assert r.err == pytest.approx(np.sqrt(np.var([1.0, 2.0, 0.5, 1.5]) * (1 + 1 / 4) / 4))   # Γ(0)(1 + 1/N)/N
    assert r.window == 0


def test_gamma_method_iid_and_derived():
    rng = np.random.default_rng(4)
    x = rng.normal(2.0, 1.0, size=20_000)
    res = an.gamma_method(x)
    assert abs(res.tau_int - 0.5) < 3 * res.tau_int_err + 0.02
    lin = an.gamma_method(x, func=lambda m: -3 * m + 1)
    assert lin.err == pytest.approx(3 * res.err, rel=1e-6)
    assert lin.mean == pytest.approx(-3 * x.mean() + 1, rel=1e-12)
    sq = an.gamma_method(x, func=lambda m: m ** 2)
    assert sq.err == pytest.approx(2 * x.mean() * res.err, rel=1e-3)
    vec = an.gamma_method(np.stack([x, 2 * x], axis=1))
    np.testing.assert_allclose(vec.err, [res.err, 2 * res.err], rtol=1e-10)


# ----------------------------------------------------------------------------- records
def test_estimate_unpacks_formats_and_derives():
    rng = np.random.default_rng(12)
    x, y = rng.normal([1.0, 2.0], 0.1, size=(500, 2)).T
    ex = an.jackknife(x, label="x")
    ey = an.jackknife(y)
    mean, err = ex
    assert (mean, err) == (ex.mean, ex.err)
    assert str(an.Estimate(0.27613, 0.00214)) == "0.2761(21)"
    assert an.format_value(1.2345e-5, 5.6e-8) == "1.2345(56)e-05"
    assert an.format_value(1234.5, 56) == "1234(56)"
    assert an.format_value(0.5, 0.0996) == "0.50(10)"
    assert "x:" in repr(ex) and "jackknife" in repr(ex)
    ratio = an.derive(lambda a, b: a / b, ex, ey)
    direct = an.jackknife((x, y), func=lambda a, b: a / b)
    assert ratio.err == pytest.approx(direct.err, rel=1e-12)
    bs = an.bootstrap(x, seed=0)
    with pytest.raises(ValueError, match="different resamplings"):
        an.derive(lambda a, b: a + b, ex, bs)


def test_align_ensembles_adds_variances():
    rng = np.random.default_rng(13)
    a = an.jackknife(rng.normal(size=300))
    b = an.jackknife(rng.normal(size=170))
    a2, b2 = an.align_ensembles(a, b)
    diff = an.derive(lambda u, v: u - v, a2, b2)
    assert diff.err == pytest.approx(np.hypot(a.err, b.err), rel=1e-12)
    assert a2.err == pytest.approx(a.err, rel=1e-12)
    assert diff.blocks == (300, 170)


def test_bad_input_fails_loudly():
    x = np.ones(10)
    with pytest.raises(TypeError, match="complex"):
        an.jackknife(x + 1j)
    with pytest.raises(ValueError, match="NaN"):
        an.jackknife(np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="shape"):
        an.jackknife(x, log_weights=np.zeros(9))
    with pytest.raises(ValueError, match="2 bins"):
        an.jackknife(x, bin_size=6)
    with pytest.raises(ValueError, match="bin_size"):
        an.jackknife(x, bin_size=0)
    with pytest.raises(ValueError, match="same configurations"):
        an.jackknife((x, np.ones(11)), func=lambda a, b: a)
    with pytest.raises(ValueError, match="func"):
        an.jackknife((x, x))


def test_analysis_imports_nothing_else_from_the_project():
    code = ("import sys, analysis, analysis.plots; "
            "bad = [m for m in ('lattice', 'flows', 'fermions', 'run') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
