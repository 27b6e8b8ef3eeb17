"""Exact determinants and the exact Nf=2 force on small lattices."""
import numpy as np
import pytest

import lattice as L
from lattice import su_n
import fermions as F

from fermion_reference import free_log_det, fd_group_derivative, pair_force, naive_tm_apply


@pytest.mark.parametrize("shape,kappa,mu", [((4, 2, 2, 4), 0.124, 0.2), ((4, 4, 2, 2), 0.2, 0.05),
                                             ((4, 2, 4, 2), 0.15, -0.3)])
def test_free_field_log_det_momentum_space(shape, kappa, mu):
    got = float(F.dense_log_det(L.unit_gauge(shape), kappa, mu))
    want = free_log_det(shape, kappa, mu)
    assert abs(got - want) < 1e-11 * max(1.0, abs(want))


def test_schur_log_det_equals_full_log_det_batched():
    shape = (4, 2, 2, 4)
    U = L.random_gauge(shape, seed=3, batch=(2,))
    ld = F.dense_log_det(U, 0.18, 0.1)
    assert ld.shape == (2,) and ld.dtype == np.float64
    for b in range(2):
        M = F.dense_M(U[b], 0.18, 0.1)
        assert abs(ld[b] - 2 * np.linalg.slogdet(M)[1]) < 1e-10


@pytest.mark.parametrize("bc", ["antiperiodic", (1, np.exp(0.4j), 1, -1)])
def test_exact_force_matches_finite_differences(bc):
    shape = (4, 2, 2, 4)
    kappa, mu = 0.17, 0.08
    U = L.random_gauge(shape, seed=5, batch=(2,))
    ld, Fr = F.dense_log_det_force(U, kappa, mu, bc=bc)
    assert Fr.shape == U.shape
    assert np.allclose(ld, F.dense_log_det(U, kappa, mu, bc=bc), rtol=1e-13)
    # the force is in su(N)
    assert np.abs(Fr + np.conj(np.swapaxes(Fr, -1, -2))).max() < 1e-14
    assert np.abs(np.trace(Fr, axis1=-2, axis2=-1)).max() < 1e-14
    for seed in (1, 2):
        X = su_n.random_algebra(L.Rng(seed), 3, lead=U.shape[:-2])
        fd = fd_group_derivative(lambda V: F.dense_log_det(V, kappa, mu, bc=bc), U, X)
        an = pair_force(Fr, X)
        assert abs(fd - an) < 1e-8 * abs(an), (fd, an)
    # a single link direction (localised perturbation)
    X = np.zeros(U.shape, complex)
    X[1, 3, 2, 1, 0, 3] = su_n.random_algebra(L.Rng(9), 3)
    fd = fd_group_derivative(lambda V: F.dense_log_det(V, kappa, mu, bc=bc), U, X)
    assert abs(fd - pair_force(Fr, X)) < 1e-8 * abs(fd)


def test_dense_matrix_is_the_operator():
    shape = (4, 2, 2, 2)
    U = L.random_gauge(shape, seed=2)
    op = F.TwistedMassWilson(U, 0.15, 0.1)
    M = F.dense_M(U, 0.15, 0.1)
    psi = L.Rng(3).complex_normal(layout=op.layout, inner=(4, 3))
    assert np.abs(M @ psi.ravel() - op.apply(psi).ravel()).max() < 1e-14
    S = F.dense_schur(U, 0.15, 0.1)
    x = L.Rng(4).complex_normal(layout=op.half_layout, inner=(4, 3))
    assert np.abs(S @ x.ravel() - op.apply_schur(x).ravel()).max() < 1e-14


def test_dense_inverse_blocks_are_blocks_of_the_inverse():
    shape = (4, 2, 2, 2)
    U = L.random_gauge(shape, seed=8)
    op = F.TwistedMassWilson(U, 0.2, 0.1)
    _, blk = F.dense_inverse_blocks(op)
    Minv = np.linalg.inv(F.dense_M(U, 0.2, 0.1))
    # permutation full-lattice index -> (parity, packed index)
    n = Minv.shape[0]
    idx = np.arange(n).reshape(shape + (4, 3))
    ie, io = (a.ravel() for a in op.pack(idx))
    assert np.abs(Minv[np.ix_(io, io)] - blk["oo"]).max() < 1e-12
    assert np.abs(Minv[np.ix_(ie, io)] - blk["eo"]).max() < 1e-12
    assert np.abs(Minv[np.ix_(io, ie)] - blk["oe"]).max() < 1e-12


def test_dense_refuses_distributed_layouts():
    class FakeDistributed(L.Layout):
        @property
        def is_distributed(self):
            return True
    lay = FakeDistributed((4, 2, 2, 2))
    with pytest.raises(ValueError, match="single process"):
        F.dense_log_det(L.random_gauge((4, 2, 2, 2), seed=1), 0.1, 0.1, layout=lay)


@pytest.mark.parametrize("shape", [(2, 2, 2, 4), (2, 2, 2, 2), (3, 2, 2, 4)])
def test_dense_log_det_without_even_odd_packing(shape):
    """L_0 = 2 or an odd extent: no even-odd packing, dense_log_det factorises the full M."""
    kappa, mu = 0.15, 0.1
    got = float(F.dense_log_det(L.unit_gauge(shape), kappa, mu))
    want = free_log_det(shape, kappa, mu)
    assert abs(got - want) < 1e-11 * max(1.0, abs(want))
    U = L.random_gauge(shape, seed=4, batch=(2,))
    ld = F.dense_log_det(U, kappa, mu)
    assert ld.shape == (2,) and ld.dtype == np.float64
    for b in range(2):
        # the full matrix on this lattice is the operator of the independent reference
        M = F.dense_M(U[b], kappa, mu)
        psi = L.Rng(5 + b).complex_normal(layout=L.Layout(shape), inner=(4, 3))
        assert np.abs(M @ psi.ravel() - naive_tm_apply(U[b], psi, kappa, mu).ravel()).max() < 1e-13
        assert abs(ld[b] - 2 * np.linalg.slogdet(M)[1]) < 1e-10


def test_full_matrix_fallback_equals_the_schur_path(monkeypatch):
    """On (4, 2, 2, 2), where both work, the full-matrix log det equals the even-odd one."""
    U = L.random_gauge((4, 2, 2, 2), seed=6, batch=(2,))
    schur = F.dense_log_det(U, 0.17, -0.05, bc=(1, np.exp(0.3j), 1, -1))

    def no_packing(self):
        raise F.EvenOddError("packing disabled by the test")
    monkeypatch.setattr(F.TwistedMassWilson, "even_odd", property(no_packing))
    full = F.dense_log_det(U, 0.17, -0.05, bc=(1, np.exp(0.3j), 1, -1))
    assert np.abs(full - schur).max() < 1e-11 * np.abs(schur).max()


def test_even_odd_entry_points_say_what_they_need():
    """Where the packing is required, the error names the function and a lattice that works."""
    U = L.random_gauge((2, 2, 2, 2), seed=1)
    for fn, name in [(F.dense_log_det_force, "dense_log_det_force"), (F.dense_schur, "dense_schur")]:
        with pytest.raises(F.EvenOddError, match=rf"{name} needs the even-odd packing.*L_0 >= 4.*\(4, 2, 2, 2\)"):
            fn(U, 0.15, 0.1)
    with pytest.raises(F.EvenOddError, match="dense_inverse_blocks"):
        F.dense_inverse_blocks(F.TwistedMassWilson(U, 0.15, 0.1))
    with pytest.raises(F.EvenOddError, match=r"even extents in every direction.*\(4, 2, 2, 2\)"):
        F.dense_log_det_force(L.random_gauge((4, 3, 2, 2), seed=1), 0.15, 0.1)


def test_log_det_force_is_a_named_tuple():
    U = L.random_gauge((4, 2, 2, 2), seed=12)
    res = F.dense_log_det_force(U, 0.15, 0.1)
    assert isinstance(res, F.LogDetForce) and isinstance(res, tuple) and len(res) == 2
    ld, grad = res                                            # unpacks as before
    assert res.log_det is ld and res.grad is grad and grad.shape == U.shape


def test_exact_nf2_determinant_term_and_deprecated_dense_force():
    shape = (4, 2, 2, 4)
    kappa, mu = 0.15, 0.1
    U = L.random_gauge(shape, seed=11)
    term = F.ExactNf2Determinant(kappa, mu)
    ld, grad = F.dense_log_det_force(U, kappa, mu)
    assert np.allclose(term.log_prob(U), ld, rtol=1e-13)
    assert np.allclose(term.force(U), -grad, rtol=1e-13, atol=1e-15)   # grad S_F, S_F = -log det
    with pytest.warns(DeprecationWarning, match="dense_log_det_force"):
        ld2, grad2 = F.dense_force(U, kappa, mu)
    assert np.array_equal(ld2, ld) and np.array_equal(grad2, grad)
