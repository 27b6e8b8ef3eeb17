"""Arithmetic on Estimate with error propagation, ensembles by name, indexing (analysis.estimate)."""
import warnings

import numpy as np
import pytest
from scipy.signal import lfilter

import analysis as an
from analysis.estimate import Estimate


def _ar1(rho, n, seed, mean=0.0):
    eps = np.random.default_rng(seed).normal(size=n)
    return mean + lfilter([1.0], [1.0, -rho], eps)


@pytest.fixture(scope="module")
def chains():
    """Two correlated autocorrelated series on ensemble A and an independent one on B."""
    x = _ar1(0.7, 4000, 1, mean=2.0)
    y = 0.5 * x + _ar1(0.4, 4000, 2, mean=1.0)
    z = _ar1(0.6, 2500, 3, mean=3.0)
    return x, y, z


# ----------------------------------------------------------------------------- same ensemble
def test_jackknife_arithmetic_equals_resampling_the_function(chains):
    x, y, _ = chains
    a, b = an.jackknife(x, bin_size=20), an.jackknife(y, bin_size=20)
    f = np.log(a) * b ** 2 - 3.0 / a
    ref = an.jackknife((x, y), func=lambda u, v: np.log(u) * v ** 2 - 3.0 / u, bin_size=20)
    assert f.mean == pytest.approx(ref.mean, rel=1e-13)
    np.testing.assert_allclose(f.replicas, ref.replicas, rtol=1e-13)
    assert f.err == pytest.approx(ref.err, rel=1e-12)
    assert f.method == "jackknife" and f.ensembles == ("",)
    # derive() and the operators agree
    assert an.derive(lambda u, v: np.log(u) * v ** 2 - 3.0 / u, a, b).err == pytest.approx(f.err, rel=1e-12)


def test_gamma_arithmetic_is_exact_linear_propagation(chains):
    """δf = ∂f/∂a δa + ∂f/∂b δb with the exact derivatives, then the Γ-method of δf."""
    x, y, _ = chains
    S = 2.0
    a = an.Estimate.from_samples(x, "A", S=S)
    b = an.Estimate.from_samples(y, "A", S=S)
    f = a * b / (1.0 + a)
    am, bm = x.mean(), y.mean()
    dfa, dfb = bm / (1 + am) ** 2, am / (1 + am)
    delta = dfa * (x - am) + dfb * (y - bm)
    ref = an.gamma_method(delta, S=S)
    assert f.mean == pytest.approx(am * bm / (1 + am), rel=1e-14)
    np.testing.assert_allclose(f.replicas, delta, rtol=1e-12, atol=1e-15)
    assert f.err == pytest.approx(ref.err, rel=1e-10)
    details = f.gamma_details()["A"]
    assert details.tau_int == pytest.approx(ref.tau_int, rel=1e-10) and details.window == ref.window
    # gamma_method with func linearises by central differences of step h = sqrt(Var/N): exact in
    # b (f is linear in it), relative error h²/6·|∂³f/∂a³|/|∂f/∂a| = h²/(1+ā)² ≈ 6e-5 in a
    num = an.gamma_method((x, y), func=lambda u, v: u * v / (1 + u), S=S)
    assert f.err == pytest.approx(num.err, rel=x.var() / len(x) / (1 + am) ** 2)
    # simple exact cases
    assert (3 * a).err == pytest.approx(3 * a.err, rel=1e-12)
    assert (a + a).err == pytest.approx(2 * a.err, rel=1e-12)
    assert (a - a).err == 0.0
    assert (a ** 0.5).err == pytest.approx(0.5 / np.sqrt(am) * a.err, rel=1e-12)
    assert (2.0 ** a).err == pytest.approx(2.0 ** am * np.log(2.0) * a.err, rel=1e-12)
    assert np.sqrt(a).err == pytest.approx((a ** 0.5).err, rel=1e-14)


def test_derive_with_gamma_matches_the_operators(chains):
    x, y, _ = chains
    a, b = an.Estimate.from_samples(x, "A"), an.Estimate.from_samples(y, "A")
    by_ops = np.log(a) / b ** 2
    by_derive = an.derive(lambda u, v: np.log(u) / v ** 2, a, b)
    assert by_derive.mean == by_ops.mean
    # central differences, step h = sqrt(Var/N): relative truncation h²/6·|f'''/f'| per input,
    # h_u²/(3ū²) for u and 2h_v²/v̄² for v
    tol = max(x.var() / len(x) / (3 * x.mean() ** 2), 2 * y.var() / len(y) / y.mean() ** 2)
    assert by_derive.err == pytest.approx(by_ops.err, rel=tol)


# ----------------------------------------------------------------------------- independent ensembles
@pytest.mark.parametrize("method", ["gamma", "jackknife", "bootstrap"])
def test_independent_ensembles_add_in_quadrature(chains, method):
    x, _, z = chains
    kw = {"bin_size": 20} if method == "jackknife" else ({"bin_size": 20, "seed": 1} if method == "bootstrap" else {})
    kwb = dict(kw, seed=2) if method == "bootstrap" else kw
    a = an.Estimate.from_samples(x, "A", method, **kw)
    b = an.Estimate.from_samples(z, "B", method, **kwb)
    s, p, q = a + b, a * b, a / b
    assert s.ensembles == ("A", "B") and s.blocks == (a.n_replicas, b.n_replicas)
    assert s.err == pytest.approx(np.hypot(a.err, b.err), rel=1e-12)
    assert p.err == pytest.approx(np.hypot(b.mean * a.err, a.mean * b.err), rel=1e-12)
    # a/b is nonlinear in b: the replica methods resample ā/b̄ on B exactly, the Γ-method linearises
    if method == "gamma":
        err_b = a.mean * b.err / b.mean ** 2
    else:
        resample = an.jackknife if method == "jackknife" else an.bootstrap
        err_b = resample(z, func=lambda m: a.mean / m, **kwb).err
    assert q.err == pytest.approx(np.hypot(a.err / b.mean, err_b), rel=1e-12)
    # a combination that depends on A twice: ∂(ab + a)/∂a = b + 1
    r = p + a
    assert r.err == pytest.approx(np.hypot((b.mean + 1) * a.err, a.mean * b.err), rel=1e-12)
    # the same with derive(), and the order of the arguments does not matter for the error
    d = an.derive(lambda u, v: u * v + v, b, a)              # bilinear: central differences exact
    assert d.ensembles == ("B", "A") and d.err == pytest.approx(r.err, rel=1e-10 if method == "gamma" else 1e-12)


def test_align_ensembles_names_and_legacy_numbering():
    rng = np.random.default_rng(13)
    a = an.jackknife(rng.normal(size=300), ensemble="A")
    b = an.jackknife(rng.normal(size=170), ensemble="B")
    a2, b2 = an.align_ensembles(a, b)
    assert a2.ensembles == b2.ensembles == ("A", "B")
    assert (a2 - b2).err == pytest.approx((a - b).err, rel=1e-14)
    u2, v2 = an.align_ensembles(an.jackknife(rng.normal(size=50)), an.jackknife(rng.normal(size=50)))
    assert u2.ensembles == ("#0", "#1")


# ----------------------------------------------------------------------------- errors that must be loud
def test_mismatches_raise_clear_errors(chains):
    x, y, _ = chains
    a = an.jackknife(x, ensemble="A")
    with pytest.raises(ValueError, match="ensemble 'A' has 4000 jackknife replicas in one estimate and 2000"):
        a + an.jackknife(y[:2000], ensemble="A")
    with pytest.raises(ValueError, match="different ensemble names"):
        an.derive(lambda u, v: u - v, an.jackknife(x), an.jackknife(y, bin_size=2))
    with pytest.raises(ValueError, match="different resamplings"):
        a * an.Estimate.from_samples(x, "A")
    with pytest.raises(ValueError, match="different S"):
        an.Estimate.from_samples(x, "A", S=1.5) + an.Estimate.from_samples(y, "A", S=2.0)
    with pytest.raises(ValueError, match="cannot be propagated"):
        an.fit_correlator(an.synthetic_correlators(100, 24, seed=1), 5, 12, errors="hessian").mass * 2
    with pytest.raises(TypeError):
        np.floor(a)                                             # no derivative rule: refused
    with pytest.raises(TypeError):
        a + "text"


# ----------------------------------------------------------------------------- NumPy interplay
def test_ufuncs_methods_and_constants(chains):
    x, _, _ = chains
    C = np.exp(-0.3 * np.arange(6)) * (1 + 0.05 * np.random.default_rng(4).normal(size=(500, 6)))
    c = an.jackknife(C)
    for name in ("exp", "log", "sqrt", "sin", "cos", "tan", "arctan", "sinh", "cosh", "tanh", "arcsinh"):
        u, v = getattr(np, name)(c), getattr(c, name)()
        np.testing.assert_array_equal(u.mean, v.mean)
        np.testing.assert_array_equal(u.err, v.err)
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    for prod in (w * c, c * w, np.float64(2.0) * c, 2 * c):
        assert isinstance(prod, Estimate) and prod.shape == (6,)
    ratio = c[:-1] / c[1:]                                     # components keep their replicas
    ref = an.jackknife(C, func=lambda m: m[:-1] / m[1:])
    np.testing.assert_allclose(ratio.err, ref.err, rtol=1e-12)
    s = an.jackknife(x)
    outer = s * w                                               # scalar estimate × array constant
    assert outer.shape == (6,) and outer.err == pytest.approx(w * s.err, rel=1e-12)
    assert (-s).err == s.err and abs(-s).mean == s.mean and (+s).mean == s.mean


# ----------------------------------------------------------------------------- indexing and unpacking
def test_indexing_is_by_component_and_unpacking_is_for_scalars(chains):
    x, _, _ = chains
    C = np.random.default_rng(5).normal(size=(200, 4)) + np.arange(4)
    est = an.jackknife(C)
    comp = est[2]
    assert isinstance(comp, Estimate) and comp.mean == pytest.approx(C[:, 2].mean())
    assert comp.err == pytest.approx(an.jackknife(C[:, 2]).err, rel=1e-12)
    assert len(est) == 4 and est[1:3].shape == (2,)
    scalar = an.jackknife(x)
    with pytest.raises(TypeError, match="no components"):
        scalar[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, err = scalar                                      # the pair: not deprecated
    assert (mean, err) == (scalar.mean, scalar.err)
    with pytest.warns(DeprecationWarning, match="est.mean and est.err"):
        m, e = est                                              # array estimate: deprecated, still works
    np.testing.assert_array_equal(m, est.mean)


def test_gamma_covariance_and_details(chains):
    x, y, z = chains
    v = an.Estimate.from_samples(np.stack([x, y], axis=1), "A")
    cov = v.cov()
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), v.err, rtol=1e-12)
    corr = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    assert corr == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-10)
    w = v[0] * an.Estimate.from_samples(z, "B")
    det = w.gamma_details()
    assert set(det) == {"A", "B"}
    assert w.err == pytest.approx(np.hypot(det["A"].err, det["B"].err), rel=1e-12)
    assert "ensembles=A, B" in repr(w)


# ----------------------------------------------------------------------------- formatting
@pytest.mark.parametrize("spec,text", [
    ("", "1.2341(49)"),                  # the default: two significant digits of the error
    ("3", "1.23412(490)"),               # an integer: significant digits of the error (as before)
    (".3f", "1.234(5)"),                 # a float spec: the value's decimals, the error in its last digit
    (".1f", "1.2(0)"),
    ("+.3f", "+1.234(5)"),
    (".2e", "1.23(0)e+00"),
    (".4e", "1.2341(49)e+00"),
    (".4g", "1.234(5)"),
    (".4", "1.234(5)"),
    (".1%", "123.4(5)%"),
    (">12.3f", "    1.234(5)"),
    ("<12.3f", "1.234(5)    "),
    ("*^12.3f", "**1.234(5)**"),
    ("012.3f", "00001.234(5)"),
])
def test_format_specs_of_a_scalar_estimate(spec, text):
    e = Estimate(1.23412, 0.0049)
    assert format(e, spec) == text
    assert f"{e:{spec}}" == text


def test_float_format_of_a_jackknife_estimate_and_of_small_and_large_numbers():
    x = np.arange(10.0)
    est = an.jackknife(x)
    # the reported failure: f"{est:.3f}" raised ValueError (int('.3f'))
    assert f"{est:.3f}" == f"{est.mean:.3f}({round(est.err * 1e3)})"
    assert f"{Estimate(12.34, 1.5):.1f}" == "12.3(15)"                 # error wider than one digit
    assert f"{Estimate(-1.2345e-5, 5.6e-8):.3e}" == "-1.234(6)e-05"     # error on the value's exponent
    assert f"{Estimate(1.2345e-5, 5.6e-8):.4g}" == "1.234(6)e-05"       # g: exponent form below 1e-4
    assert f"{Estimate(-0.5, 0.01):=+10.2f}" == "-  0.50(1)"            # '=' pads after the sign
    assert f"{Estimate(1.0, 0.0):.2f}" == "1.00(0)"
    assert f"{Estimate(1.0, float('nan')):.2f}" == "1.00(nan)"


@pytest.mark.parametrize("spec", ["d", "x", ".3q", "+", "s"])
def test_an_invalid_format_spec_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="format spec"):
        format(Estimate(1.0, 0.1), spec)


def test_format_spec_of_an_array_estimate_formats_every_component():
    est = Estimate(np.array([1.23412, 2.5]), np.array([0.0049, 0.01]))
    assert f"{est:.3f}" == "[1.234(5) 2.500(10)]"
    assert f"{est}" == repr(est)
    with pytest.raises(ValueError, match="format spec"):
        f"{est:d}"
