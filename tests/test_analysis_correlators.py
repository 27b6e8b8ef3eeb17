"""Folding and effective masses (analysis.correlators)."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import analysis as an


def test_symmetrize_and_fold_by_hand():
    C = np.array([10.0, 6.0, 4.0, 3.0, 5.0, 7.0])          # T = 6
    np.testing.assert_allclose(an.symmetrize(C), [10.0, 6.5, 4.5, 3.0, 4.5, 6.5])
    np.testing.assert_allclose(an.fold(C), [10.0, 6.5, 4.5, 3.0])
    np.testing.assert_allclose(an.fold(C, parity=-1), [0.0, -0.5, -0.5, 0.0])
    C5 = np.arange(1.0, 6.0)                                 # odd T = 5: pairs (1,4), (2,3)
    np.testing.assert_allclose(an.fold(C5), [1.0, 3.5, 3.5])
    with pytest.raises(ValueError):
        an.symmetrize(C, parity=2)


@given(st.integers(2, 40), st.integers(0, 3))
def test_symmetrize_is_idempotent_projection(T, seed):
    C = np.random.default_rng(seed).normal(size=(3, T))
    S = an.symmetrize(C)
    np.testing.assert_allclose(an.symmetrize(S), S, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(S[..., 1:], S[..., 1:][..., ::-1], rtol=1e-14, atol=1e-15)   # S(t) = S(T-t)
    A = an.symmetrize(C, parity=-1)
    np.testing.assert_allclose(S + A, C, rtol=1e-13, atol=1e-14)


@given(st.floats(0.05, 2.0), st.floats(0.1, 10.0), st.integers(4, 64))
def test_cosh_effective_mass_exact_for_one_state(E, A, T):
    t = np.arange(T)
    C = an.cosh_model(t, T, [E], [A])
    m = an.effective_mass(C, "cosh")
    middle = np.abs(T / 2 - t[:-1] - 0.5) < 1e-9               # pair straddling T/2 (odd T) has no info
    assert np.all(np.isnan(m[middle]))
    ok = ~middle
    # far from the middle cosh(E(T/2-t)) is huge; bisection reaches full double precision
    np.testing.assert_allclose(m[ok], E, rtol=1e-9)
    # folded input with T given: same numbers on the first half
    mf = an.effective_mass(an.fold(C), "cosh", T=T)
    np.testing.assert_allclose(mf[: (T // 2)][~middle[: T // 2]], E, rtol=1e-9)


def test_log_effective_mass_and_offsets():
    t = np.arange(30)
    C = 2.0 * np.exp(-0.4 * t)
    np.testing.assert_allclose(an.effective_mass(C, "log"), 0.4, rtol=1e-12)
    T = 24
    Cc = an.cosh_model(np.arange(T), T, [0.3, 0.9], [1.0, 0.5])
    full = an.effective_mass(Cc, "cosh")
    np.testing.assert_allclose(an.effective_mass(Cc[5:], "cosh", T=T, t0=5), full[5:], rtol=1e-12)
    # two states: m_eff decreases towards E0 from above on the first half
    assert np.all(np.diff(full[: T // 2 - 1]) < 0) and np.all(full[: T // 2] > 0.3)


def test_effective_mass_is_vectorised_and_nan_on_bad_data():
    T = 16
    C = an.cosh_model(np.arange(T), T, [0.5], [1.0]) * np.ones((4, 3, 1))
    m = an.effective_mass(C)
    assert m.shape == (4, 3, T - 1)
    C2 = C[0, 0].copy()
    C2[3] = -1.0                                                # negative correlator
    C2[6] = C2[7] * 0.9                                         # rising where it should decay
    m2 = an.effective_mass(C2)
    assert np.isnan(m2[2]) and np.isnan(m2[3]) and np.isnan(m2[6])
    assert np.isfinite(m2[0]) and np.isfinite(m2[8])
    C3 = C[0, 0].copy()
    C3[5] = 0.0                                                 # a vanishing slice
    m3 = an.effective_mass(C3, kind="log")
    assert np.isnan(m3[4]) and np.isnan(m3[5])                  # not +inf
    np.testing.assert_allclose(m3[:4], np.log(C3[:4] / C3[1:5]))
    assert np.isnan(an.effective_mass(C2, kind="log")[2])       # a sign change
    with pytest.raises(ValueError):
        an.effective_mass(C2, kind="acosh")
    with pytest.raises(TypeError):
        an.effective_mass(C2 + 0j)


def test_cosh_effective_mass_of_several_states_solves_its_equation():
    """Against an independent root solve (SciPy's brentq) of
    C(t)/C(t+1) = cosh(m(T/2 - t))/cosh(m(T/2 - t - 1)), on both halves, odd and even T, with a
    negative excited-state amplitude."""
    from scipy.optimize import brentq
    for T in (16, 25):
        C = an.cosh_model(np.arange(T), T, [0.25, 0.8, 1.5], [1.0, 0.6, -0.2])
        m = an.effective_mass(C, "cosh")
        for t in range(T - 1):
            if abs(T / 2 - t - 0.5) < 1e-9:
                assert np.isnan(m[t])
                continue
            r = C[t] / C[t + 1]
            g = lambda x: np.cosh(x * (T / 2 - t)) / np.cosh(x * (T / 2 - t - 1)) - r
            ref = brentq(g, 1e-6, 5.0, xtol=1e-15, rtol=1e-15) if t + 0.5 < T / 2 else \
                brentq(lambda x: np.cosh(x * (t + 1 - T / 2)) / np.cosh(x * (t - T / 2)) - 1 / r, 1e-6, 5.0,
                       xtol=1e-15, rtol=1e-15)
            assert m[t] == pytest.approx(ref, rel=1e-11), t
