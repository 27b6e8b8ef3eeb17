"""Charged-pion correlator: free field vs momentum space, point vs dense propagator, one-end trick."""
import numpy as np
import pytest

import lattice as L
import fermions as F

from fermion_reference import free_pion_correlator


@pytest.mark.parametrize("shape,kappa,mu", [((4, 4, 4, 8), 0.13, 0.05), ((4, 2, 2, 6), 0.16, -0.2)])
def test_free_point_correlator_momentum_space(shape, kappa, mu):
    C = F.pion_correlator(L.unit_gauge(shape), kappa, mu, n_sources=2, method="point", seed=1)
    want = free_pion_correlator(shape, kappa, mu)
    assert C.shape == (shape[3],) and C.dtype == np.float64
    assert np.abs(C - want).max() < 1e-9 * want.max()
    assert np.allclose(C[1:], C[1:][::-1], rtol=1e-9)        # time reflection symmetry C(t) = C(T - t)


def _dense_C(U, kappa, mu, shape):
    """c[t0, t] = (1/V_s) sum_{x,y spatial} |S(x, t0 + t; y, t0)|^2 from the dense inverse."""
    S = np.linalg.inv(F.dense_M(U, kappa, mu)).reshape(shape + (12,) + shape + (12,))
    A = np.sum(np.abs(S) ** 2, axis=(4, 9))                  # (x0,x1,x2,t ; y0,y1,y2,t0)
    A = A.sum(axis=(0, 1, 2, 4, 5, 6))                        # (t, t0)
    T = shape[3]
    Vs = np.prod(shape[:3])
    return np.array([[A[(t0 + t) % T, t0] for t in range(T)] for t0 in range(T)]) / Vs, S


def test_point_sources_equal_the_dense_propagator():
    shape = (4, 2, 2, 4)
    U = L.random_gauge(shape, seed=3)
    kappa, mu = 0.17, 0.1
    res = F.PionCorrelator.measure(U, kappa, mu, n_sources=3, method="point", seed=5)
    _, S = _dense_C(U, kappa, mu, shape)
    for k, p in enumerate(res.source_points):
        Sy = S[(slice(None),) * 5 + tuple(p)]                # (x0..x3, 12, 12): columns of source p
        c = np.sum(np.abs(Sy) ** 2, axis=(0, 1, 2, 4, 5))    # (t)
        want = np.roll(c, -p[3])
        assert np.abs(res.C_sources[k] - want).max() < 1e-10 * want.max()
    assert np.allclose(res.C, res.C_sources.mean(axis=0))
    assert res.residual < 1e-8 and res.params["method"] == "point"


def test_stochastic_timeslice_sources_are_unbiased():
    shape = (4, 2, 2, 4)
    U = L.random_gauge(shape, seed=4)
    kappa, mu = 0.17, 0.1
    c_exact, _ = _dense_C(U, kappa, mu, shape)
    res = F.PionCorrelator.measure(U, kappa, mu, n_sources=48, seed=2)
    want = np.mean([c_exact[t0] for t0 in res.source_times], axis=0)
    # per-source fluctuations around the exact per-timeslice values give the error
    dev = res.C_sources - np.array([c_exact[t0] for t0 in res.source_times])
    err = dev.std(axis=0, ddof=1) / np.sqrt(len(dev))
    assert np.all(np.abs(res.C - want) < 4 * err + 1e-12), (res.C, want, err)
    assert np.all(err < 0.2 * want)
    assert len(set(res.source_times)) > 1                   # random timeslices
    rec = res.as_record()
    assert rec["params"]["n_sources"] == 48 and "normalisation" in rec["params"]


def test_batched_configurations_and_reproducibility():
    shape = (4, 2, 2, 4)
    U = L.random_gauge(shape, seed=5, batch=(2,))
    # point sources: the source points depend on the seed only, so a batch equals single solves
    C = F.pion_correlator(U, 0.15, 0.1, n_sources=2, seed=9, method="point")
    assert C.shape == (2, 4)
    for b in range(2):
        Cb = F.pion_correlator(U[b], 0.15, 0.1, n_sources=2, seed=9, method="point")
        assert np.allclose(C[b], Cb, rtol=1e-10)
    # stochastic: independent noise per batch element, reproducible from the seed
    Cs = F.pion_correlator(U, 0.15, 0.1, n_sources=4, seed=9)
    assert Cs.shape == (2, 4) and np.all(Cs > 0)
    assert np.array_equal(Cs, F.pion_correlator(U, 0.15, 0.1, n_sources=4, seed=9))
    assert not np.array_equal(Cs, F.pion_correlator(U, 0.15, 0.1, n_sources=4, seed=10))


def test_array_and_record_entry_points():
    """pion_correlator always returns the array; PionCorrelator.measure the record with the same
    numbers; full_output=True still returns the record, with a DeprecationWarning."""
    import warnings
    U = L.random_gauge((4, 2, 2, 4), seed=6)
    kw = dict(n_sources=2, seed=4)
    C = F.pion_correlator(U, 0.15, 0.1, **kw)
    rec = F.PionCorrelator.measure(U, 0.15, 0.1, **kw)
    assert isinstance(rec, F.PionCorrelator) and isinstance(C, np.ndarray) and C.shape == (4,)
    assert np.array_equal(C, rec.C)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # full_output=False is not deprecated
        assert np.array_equal(F.pion_correlator(U, 0.15, 0.1, full_output=False, **kw), C)
    with pytest.warns(DeprecationWarning, match="PionCorrelator.measure"):
        old = F.pion_correlator(U, 0.15, 0.1, full_output=True, **kw)
    assert isinstance(old, F.PionCorrelator)
    assert np.array_equal(old.C, rec.C) and np.array_equal(old.C_sources, rec.C_sources)
    assert old.source_times == rec.source_times and old.params == rec.params


def test_bad_arguments():
    U = L.random_gauge((4, 2, 2, 4), seed=5)
    with pytest.raises(ValueError, match="method"):
        F.pion_correlator(U, 0.15, 0.1, method="wall")
    with pytest.raises(ValueError, match="n_sources"):
        F.pion_correlator(U, 0.15, 0.1, n_sources=0)
    with pytest.raises(ValueError, match="method"):
        F.PionCorrelator.measure(U, 0.15, 0.1, method="wall")
    with pytest.raises(F.EvenOddError, match=r"pion_correlator needs the even-odd packing.*\(4, 2, 2, 2\)"):
        F.pion_correlator(L.random_gauge((2, 2, 2, 4), seed=5), 0.15, 0.1)


def test_correlator_store_roundtrip(tmp_path):
    pytest.importorskip("h5py")
    from lattice.io import RecordStore
    shape = (4, 2, 2, 4)
    res = [F.PionCorrelator.measure(L.random_gauge(shape, seed=s), 0.15, 0.1, n_sources=3, seed=s)
           for s in (1, 2)]
    params = dict(res[0].params)
    params.pop("seed")                                        # per-configuration seeds vary
    path = tmp_path / "pion.h5"
    with F.create_correlator_store(path, T=4, n_sources=3, params=params, lattice_shape=shape) as st:
        for k, r in enumerate(res):
            F.append_correlator(st, r, config=k)
        bad = F.PionCorrelator.measure(L.random_gauge(shape, seed=3), 0.16, 0.1, n_sources=3)
        with pytest.raises(ValueError, match="kappa"):
            F.append_correlator(st, bad, config=2)
    with RecordStore.open(path, "r", kind="pion_correlators", expect={"params": params}) as st:
        assert len(st) == 2
        assert np.allclose(st.read("C", 1), res[1].C)
        assert list(st.read("source_times", 0)) == res[0].source_times
        assert st.attrs["params"]["normalisation"].startswith("C(t) = (1/V_s)")
