"""The fermion operator, its even-odd pieces, CG and the determinant/correlator paths run on
array_api_strict arrays (no NumPy-only calls) and agree with NumPy."""
import numpy as np
import pytest

xs = pytest.importorskip("array_api_strict")

import lattice as L
import fermions as F

SHAPE = (4, 2, 2, 2)


@pytest.fixture(scope="module")
def fields():
    Un = L.random_gauge(SHAPE, seed=1)
    psi = L.Rng(2).complex_normal(layout=L.Layout(SHAPE), inner=(4, 3))
    return Un, xs.asarray(Un), psi, xs.asarray(psi)


def _close(a, b, tol=1e-13):
    return np.abs(np.asarray(a) - np.asarray(b)).max() <= tol * max(1.0, np.abs(np.asarray(b)).max())


def test_operator_and_even_odd_pieces(fields):
    Un, Us, pn, ps = fields
    opn = F.TwistedMassWilson(Un, 0.17, 0.1)
    ops = F.TwistedMassWilson(Us, 0.17, 0.1)
    for name in ("apply", "apply_dagger", "apply_normal", "hopping"):
        out = getattr(ops, name)(ps)
        assert isinstance(out, type(ps))
        assert _close(out, getattr(opn, name)(pn))
    en, on = opn.pack(pn)
    es, os_ = ops.pack(ps)
    assert _close(es, en, 0) and _close(os_, on, 0)
    assert _close(ops.unpack(es, os_), pn, 0)
    for name in ("apply_ee", "apply_ee_inv", "hop_oe", "apply_oe"):
        assert _close(getattr(ops, name)(es), getattr(opn, name)(en))
    for name in ("hop_eo", "apply_eo", "apply_schur", "apply_schur_dagger", "apply_schur_normal",
                 "apply_gamma5_schur"):
        assert _close(getattr(ops, name)(os_), getattr(opn, name)(on))
    an = opn.hopping_omega(pn, 2 * pn)
    as_ = ops.hopping_omega(ps, 2 * ps)
    assert _close(as_, an)


def test_cg_and_solve(fields):
    Un, Us, pn, ps = fields
    ops = F.TwistedMassWilson(Us, 0.17, 0.1)
    opn = F.TwistedMassWilson(Un, 0.17, 0.1)
    x, info = F.cg(ops.apply_schur_normal, ops.pack(ps)[1], tol=1e-11, layout=ops.half_layout)
    assert isinstance(x, type(ps)) and info.converged
    xn, _ = F.cg(opn.apply_schur_normal, opn.pack(pn)[1], tol=1e-11)
    assert _close(x, xn, 1e-9)
    psi, sinfo = ops.solve(ps, tol=1e-11)
    assert sinfo.residual < 1e-9
    xm, minfo = F.cg(ops.apply_schur_normal, ops.pack(ps)[1], tol=1e-11,
                     apply_A_low=ops.astype(xs.complex64).apply_schur_normal)
    assert minfo.converged and _close(xm, xn, 1e-9)


def test_dense_det_ratio_correlator_pseudofermion(fields):
    Un, Us, _, _ = fields
    assert abs(float(F.dense_log_det(Us, 0.17, 0.1)) - float(F.dense_log_det(Un, 0.17, 0.1))) < 1e-10
    ld, Fs = F.dense_log_det_force(Us, 0.17, 0.1)
    _, Fn = F.dense_log_det_force(Un, 0.17, 0.1)
    assert _close(Fs, Fn, 1e-11)
    rs = F.log_det_ratio(Us, Us, 0.17, 0.1, n_shots=2, seed=1)
    assert np.abs(np.asarray(rs.log_weights)).max() < 1e-9
    Cs = F.pion_correlator(Us, 0.17, 0.1, n_sources=2, seed=3)
    Cn = F.pion_correlator(Un, 0.17, 0.1, n_sources=2, seed=3)
    assert _close(Cs, Cn, 1e-9)
    Cs3 = F.pion_correlator(Us, 0.17, 0.1, n_sources=3, seed=3, batch_sources=2)
    assert _close(Cs3, F.pion_correlator(Un, 0.17, 0.1, n_sources=3, seed=3, batch_sources=2), 1e-9)
    Cp = F.pion_correlator(Us, 0.17, 0.1, n_sources=1, seed=3, method="point")
    assert _close(Cp, F.pion_correlator(Un, 0.17, 0.1, n_sources=1, seed=3, method="point"), 1e-9)
    pf = F.PseudofermionNf2(0.17, 0.1)
    pf.refresh(Us, L.Rng(4, xp=xs))
    pn_ = F.PseudofermionNf2(0.17, 0.1)
    pn_.refresh(Un, L.Rng(4))
    assert _close(pf.force(Us), pn_.force(Un), 1e-8)
    assert abs(float(pf.action(Us * 1)) - float(pn_.action(Un * 1))) < 1e-8
