"""Even-odd preconditioning: packing, block structure, Schur complement, determinant identity, solve."""
import numpy as np
import pytest

import lattice as L
import fermions as F
from fermions.evenodd import EvenOdd, EvenOddError, require_even_odd

SHAPE = (4, 2, 2, 4)


def _spinor(layout, seed, lead=()):
    return L.Rng(seed).complex_normal(lead=lead, layout=layout, inner=(4, 3))


def test_packing_roundtrip_and_parities():
    lay = L.Layout((6, 4, 2, 4))
    eo = EvenOdd(lay)
    assert eo.half.global_shape == (3, 4, 2, 4)
    c = lay.coords()
    # a field holding its own coordinates and parity
    X = np.stack(np.broadcast_arrays(*c), axis=-1).astype(float)           # (sites, 4)
    Xe, Xo = eo.pack(X, inner=1)
    for p, Xp in ((0, Xe), (1, Xo)):
        assert np.all(Xp.sum(axis=-1) % 2 == p)
        # x_0 = 2h + (p XOR r)
        h = np.arange(3).reshape(3, 1, 1, 1)
        r = (Xp[..., 1] + Xp[..., 2] + Xp[..., 3]) % 2
        assert np.array_equal(Xp[..., 0], 2 * h + (p ^ r.astype(int)))
    assert np.array_equal(eo.unpack(Xe, Xo, inner=1), X)


@pytest.mark.parametrize("mu", range(4))
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("target", [0, 1])
def test_packed_neighbours_are_the_lattice_neighbours(mu, sign, target):
    lay = L.Layout((4, 4, 2, 2))
    eo = EvenOdd(lay)
    F_full = L.Rng(1).normal(layout=lay, inner=(3,))
    packed = eo.pack(F_full, inner=1)
    got = eo.fetch(packed[1 - target], mu, sign, target, inner=1)
    want = eo.pack(lay.shift(F_full, mu, sign, inner=1), inner=1)[target]
    assert np.array_equal(got, want)


def test_even_odd_requires_even_L0():
    with pytest.raises(EvenOddError, match="even"):
        EvenOdd(L.Layout((3, 2, 2, 2)))
    with pytest.raises(EvenOddError, match="L_0 >= 4"):
        EvenOdd(L.Layout((2, 2, 2, 2)))
    with pytest.raises(EvenOddError, match="every direction"):
        EvenOdd(L.Layout((4, 3, 2, 2)))
    for shape in [(2, 2, 2, 2), (4, 3, 2, 2)]:                 # the message names a lattice that works
        with pytest.raises(EvenOddError, match=r"\(4, 2, 2, 2\)"):
            EvenOdd(L.Layout(shape))
    with pytest.raises(EvenOddError, match=r"^my_function needs the even-odd packing.*L_0 >= 4"):
        require_even_odd(L.Layout((2, 2, 2, 2)), "my_function")
    assert require_even_odd(L.Layout((4, 2, 2, 2)), "my_function").half.global_shape == (2, 2, 2, 2)
    op = F.TwistedMassWilson(L.random_gauge((5, 2, 2, 2), seed=1), 0.1, 0.1)   # full operator still fine
    with pytest.raises(EvenOddError):
        op.pack(np.zeros((5, 2, 2, 2, 4, 3), complex))


def test_block_decomposition_of_M():
    U = L.random_gauge(SHAPE, seed=2)
    op = F.TwistedMassWilson(U, 0.17, 0.2)
    psi = _spinor(op.layout, 3, lead=(2,))
    pe, po = op.pack(psi)
    Me, Mo = op.pack(op.apply(psi))
    assert np.abs(Me - (op.apply_ee(pe) + op.apply_eo(po))).max() < 1e-14
    assert np.abs(Mo - (op.apply_oe(pe) + op.apply_oo(po))).max() < 1e-14
    assert np.abs(op.apply_ee_inv(op.apply_ee(pe)) - pe).max() < 1e-14


def test_schur_complement_definition_and_adjoints():
    U = L.random_gauge(SHAPE, seed=5)
    op = F.TwistedMassWilson(U, 0.17, -0.3)
    x = _spinor(op.half_layout, 1)
    y = _spinor(op.half_layout, 2)
    ref = op.apply_oo(x) - op.apply_oe(op.apply_ee_inv(op.apply_eo(x)))
    assert np.abs(op.apply_schur(x) - ref).max() < 1e-14
    assert abs(np.vdot(y, op.apply_schur(x)) - np.vdot(op.apply_schur_dagger(y), x)) < 1e-12
    assert np.abs(op.apply_schur_normal(x) - op.apply_schur_dagger(op.apply_schur(x))).max() < 1e-13
    assert np.abs(op.apply_schur_mmdag(x) - op.apply_schur(op.apply_schur_dagger(x))).max() < 1e-13
    g5 = op.apply_gamma5_schur(x)
    Mx = op.apply_schur(x)
    assert np.allclose(g5[..., :2, :], Mx[..., :2, :]) and np.allclose(g5[..., 2:, :], -Mx[..., 2:, :])
    # M^dag = gamma_5 M^(-mu) gamma_5
    g = np.array([1, 1, -1, -1]).reshape(4, 1)
    assert np.abs(op.apply_schur_dagger(x) - g * op.flipped().apply_schur(g * x)).max() < 1e-14


def test_schur_determinant_identity():
    """det M = det M_ee det M^ with det M_ee = (1 + mu~^2)^(2 N V / 2), U-independent."""
    U = L.random_gauge(SHAPE, seed=11)
    kappa, mu = 0.2, 0.15
    M = F.dense_M(U, kappa, mu)
    S = F.dense_schur(U, kappa, mu)
    s1, ld_full = np.linalg.slogdet(M)
    s2, ld_schur = np.linalg.slogdet(S)
    V, N = np.prod(SHAPE), 3
    ld_ee = N * V * np.log1p((2 * kappa * mu) ** 2)
    assert abs(ld_full - (ld_ee + ld_schur)) < 1e-10 * abs(ld_full) + 1e-10
    # the phases agree as well (det M_ee is real positive)
    assert abs(s1 - s2) < 1e-10
    # dense M_ee really is that diagonal matrix
    op = F.TwistedMassWilson(U, kappa, mu)
    Mee = F.dense_matrix(op.apply_ee, op.half_layout.local_shape + (4, 3))
    assert abs(np.linalg.slogdet(Mee)[1] - ld_ee) < 1e-10


@pytest.mark.parametrize("precision", ["double", "mixed"])
def test_even_odd_solve_residual(precision):
    U = L.random_gauge(SHAPE, seed=4, batch=(2,))
    op = F.TwistedMassWilson(U, 0.2, 0.05)
    b = _spinor(op.layout, 6, lead=(3, 2))
    psi, info = op.solve(b, tol=1e-11, precision=precision)
    r = b - op.apply(psi)
    rel = np.sqrt(np.sum(np.abs(r) ** 2, axis=(2, 3, 4, 5, 6, 7)) / np.sum(np.abs(b) ** 2, axis=(2, 3, 4, 5, 6, 7)))
    assert rel.max() < 1e-9
    assert abs(info.residual - rel.max()) < 1e-12
    assert info.cg.converged and info.cg.residual <= 1e-11
    if precision == "mixed":
        assert info.cg.low_iterations > 0 and info.cg.precision == "mixed"
