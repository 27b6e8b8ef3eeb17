"""Pseudofermion monomial: heatbath, action, force vs finite differences."""
import numpy as np
import pytest

import lattice as L
from lattice import su_n
import fermions as F

from fermion_reference import fd_group_derivative, pair_force

SHAPE = (4, 2, 2, 4)


@pytest.mark.parametrize("precision,bc", [("double", "antiperiodic"), ("mixed", "antiperiodic"), ("double", "periodic"),
                                          ("double", (np.exp(-0.3j), 1.0, 1j, np.exp(2.1j)))])
def test_force_matches_finite_differences(precision, bc):
    U = L.random_gauge(SHAPE, seed=1, batch=(2,))
    pf = F.PseudofermionNf2(0.17, 0.1, bc=bc, action_tol=1e-13, force_tol=1e-12, precision=precision)
    pf.refresh(U, L.Rng(3))
    Fr = pf.force(U)
    assert Fr.shape == U.shape
    assert np.abs(Fr + np.conj(np.swapaxes(Fr, -1, -2))).max() < 1e-13
    for seed in (1, 2):
        X = su_n.random_algebra(L.Rng(seed), 3, lead=U.shape[:-2])
        fd = fd_group_derivative(pf.action, U, X)
        an = pair_force(Fr, X)
        assert abs(fd - an) < 1e-7 * abs(an), (fd, an)


def test_schur_omega_is_the_derivative_of_re_y_mhat_x():
    U = L.random_gauge(SHAPE, seed=2)
    op = F.TwistedMassWilson(U, 0.2, -0.15)
    x = L.Rng(1).complex_normal(layout=op.half_layout, inner=(4, 3))
    y = L.Rng(2).complex_normal(layout=op.half_layout, inner=(4, 3))
    Fr = F.force_from_omega(op.schur_omega(y, x))
    X = su_n.random_algebra(L.Rng(3), 3, lead=U.shape[:-2])
    f = lambda V: np.real(np.vdot(y, F.TwistedMassWilson(V, 0.2, -0.15, check=False).apply_schur(x)))
    assert abs(fd_group_derivative(f, U, X) - pair_force(Fr, X)) < 1e-8 * abs(pair_force(Fr, X))
    # and the full-lattice hopping derivative
    a = L.Rng(4).complex_normal(layout=op.layout, inner=(4, 3))
    b = L.Rng(5).complex_normal(layout=op.layout, inner=(4, 3))
    Fh = F.force_from_omega(op.hopping_omega(a, b))
    g = lambda V: np.real(np.vdot(a, F.TwistedMassWilson(V, 0.2, -0.15, check=False).hopping(b)))
    assert abs(fd_group_derivative(g, U, X) - pair_force(Fh, X)) < 1e-8 * abs(pair_force(Fh, X))


def test_heatbath_and_action():
    U = L.random_gauge(SHAPE, seed=3, batch=(2,))
    pf = F.PseudofermionNf2(0.17, 0.1, action_tol=1e-12)
    rng = L.Rng(5)
    pf.refresh(U, rng)
    s_ref = pf.action(U)                                   # |eta|^2 (no solve)
    cg = F.PseudofermionNf2(0.17, 0.1, action_tol=1e-12)
    cg.phi = pf.phi                                        # never refreshed: always solves
    s_cg = cg.action(U)                                    # through CG and the energy functional
    assert np.allclose(s_ref, s_cg, rtol=1e-12)
    assert np.array_equal(pf.action(U.copy()), s_ref)      # an equal field is the refresh field
    # a field changed in place after the refresh is not: its action is solved for
    V = L.random_gauge(SHAPE, seed=4, batch=(2,))
    U[...] = V
    s_new = pf.action(U)
    assert np.allclose(s_new, cg.action(V), rtol=1e-12) and not np.allclose(s_new, s_ref, rtol=1e-3)
    n = 2 * 3 * np.prod(SHAPE)                             # complex components on the odd sites
    assert np.all(np.abs(s_ref - n) < 6 * np.sqrt(n))      # E|eta|^2 = n, Var = n
    # the pseudofermion is phi = M^dag eta, i.e. (M^dag M^)^{-1/2}-distributed: check the covariance
    # E[phi phi^dag] = M^dag M^ through E[|v^dag phi|^2] = v^dag M^dag M^ v for a fixed v
    op = pf.operator(U)
    v = L.Rng(7).complex_normal(lead=(2,), layout=op.half_layout, inner=(4, 3))
    samples = []
    for k in range(300):
        pf.refresh(U, L.Rng(100 + k))
        samples.append(np.abs(np.sum(np.conj(v) * pf.phi, axis=(1, 2, 3, 4, 5, 6))) ** 2)
    samples = np.array(samples)
    want = np.real(np.sum(np.conj(v) * op.apply_schur_normal(v), axis=(1, 2, 3, 4, 5, 6)))
    assert np.all(np.abs(samples.mean(0) - want) < 4 * samples.std(0) / np.sqrt(len(samples)))


def test_monomial_needs_refresh():
    pf = F.PseudofermionNf2(0.17, 0.1)
    U = L.random_gauge(SHAPE, seed=3)
    with pytest.raises(RuntimeError, match="refresh"):
        pf.action(U)
    pf.refresh(U, L.Rng(1))
    with pytest.raises(ValueError, match="batch"):
        pf.force(L.random_gauge(SHAPE, seed=3, batch=(2,)))
