"""lattice.kernels.staple_pairs, periodic_shift and real_mix: the compiled paths equal their
references (both precisions, strided slots, repeated output slots), and the staple-pair
adjoint (A1)-(A2) passes central finite differences in float64."""
import contextlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lattice import kernels
from lattice.backend import get_namespace

TOL = {np.complex128: 1e-12, np.complex64: 5e-5}


def _rand(rng, shape, dtype=np.complex128):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)


def _pairs():
    """Pairs (mu, nu) of a 3d layer with T slots E = ordered pairs (a, b): T_e = S_b(x + a^)."""
    Q = [(0, 1), (0, 2), (2, 1), (1, 0)]
    E = []
    for mu, nu in Q:
        for e in ((mu, nu), (nu, mu)):
            if e not in E:
                E.append(e)
    i_mu, i_nu = [m for m, _ in Q], [n for _, n in Q]
    i_mn, i_nm = [E.index((m, n)) for m, n in Q], [E.index((n, m)) for m, n in Q]
    return i_mu, i_nu, i_mn, i_nm, len(E)


def _forward_by_hand(S, T, i_mu, i_nu, i_mn, i_nm):
    m = kernels.mul_reference
    D, R = [], []
    for mu, nu, mn, nm in zip(i_mu, i_nu, i_mn, i_nm):
        D.append(m(S[:, :, nu], m(S[:, :, mu], T[:, :, mn]), da=True))
        R.append(m(m(S[:, :, nu], T[:, :, nm]), T[:, :, mn], db=True))
    return np.stack(D, axis=2), np.stack(R, axis=2)


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_staple_pairs_equals_the_product_chains(dtype):
    """D_q = S_nu^dag S_mu T_mn and R_q = S_nu T_nm T_mn^dag (P1)-(P3), written into slots oR of
    a larger R, compiled and reference, against products taken one by one."""
    rng = np.random.default_rng(3)
    i_mu, i_nu, i_mn, i_nm, nE = _pairs()
    rest = (2, 3, 301)                            # 301 sites: not a multiple of the kernel's block
    S, T = _rand(rng, (3, 3, 3) + rest, dtype), _rand(rng, (3, 3, nE) + rest, dtype)
    D_want, R_want = _forward_by_hand(S, T, i_mu, i_nu, i_mn, i_nm)
    oR = [5, 1, 6, 2]
    for ref in (False, True):
        D = np.zeros((3, 3, 4) + rest, dtype)
        R = np.full((3, 3, 7) + rest, 7.0, dtype)
        if ref:
            with kernels.reference_only():
                kernels.staple_pairs(S, T, i_mu, i_nu, i_mn, i_nm, D=D, R=R, oR=oR)
        else:
            kernels.staple_pairs(S, T, i_mu, i_nu, i_mn, i_nm, D=D, R=R, oR=oR)
        scale = TOL[dtype] * np.max(np.abs(R_want))
        assert np.max(np.abs(D - D_want)) < scale
        assert np.max(np.abs(R[:, :, oR] - R_want)) < scale
        assert np.all(R[:, :, [0, 3, 4]] == 7.0)          # untouched slots stay


def test_staple_pairs_vjp_matches_central_differences_and_the_reference():
    """f = Re sum conj(W_D) D + Re sum conj(W_R) R: the accumulated cotangents of S and T from
    (A1)-(A2) against central differences, compiled and reference, on top of nonzero starts."""
    rng = np.random.default_rng(4)
    i_mu, i_nu, i_mn, i_nm, nE = _pairs()
    rest = (2, 37)
    S, T = _rand(rng, (3, 3, 3) + rest), _rand(rng, (3, 3, nE) + rest)
    W_D, W_R = _rand(rng, (3, 3, 4) + rest), _rand(rng, (3, 3, 6) + rest)
    iR = [5, 0, 3, 1]

    def f(S, T):
        D, R = _forward_by_hand(S, T, i_mu, i_nu, i_mn, i_nm)
        return float(np.sum(np.real(np.conj(W_D) * D)) + np.sum(np.real(np.conj(W_R[:, :, iR]) * R)))

    S0, T0 = _rand(rng, S.shape), _rand(rng, T.shape)
    grads = []
    for ref in (False, True):
        Sb, Tb = S0.copy(), T0.copy()
        if ref:
            with kernels.reference_only():
                kernels.staple_pairs_vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb=W_R, iR=iR, Db=W_D, S_bar=Sb, T_bar=Tb)
        else:
            kernels.staple_pairs_vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb=W_R, iR=iR, Db=W_D, S_bar=Sb, T_bar=Tb)
        grads.append((Sb - S0, Tb - T0))
    for a, b in zip(*grads):
        assert np.max(np.abs(a - b)) < 1e-12 * np.max(np.abs(b))
    Sb, Tb = grads[0]
    h = 1e-6
    for which in (0, 1):
        X, X_bar = (S, Sb) if which == 0 else (T, Tb)
        dX = _rand(rng, X.shape)
        args_p, args_m = [S, T], [S, T]
        args_p[which], args_m[which] = X + h * dX, X - h * dX
        fd = (f(*args_p) - f(*args_m)) / (2 * h)
        an = float(np.sum(np.real(np.conj(X_bar) * dX)))
        assert abs(fd - an) <= 1e-8 * max(1.0, abs(an)), (which, fd, an)


def test_staple_pairs_rejects_mismatched_index_lists():
    rng = np.random.default_rng(5)
    S, T = _rand(rng, (3, 3, 3, 4)), _rand(rng, (3, 3, 2, 4))
    with pytest.raises(ValueError, match="one entry per pair"):
        kernels.staple_pairs(S, T, [0, 1], [1], [0], [1], D=np.empty((3, 3, 1, 4), complex),
                             R=np.empty((3, 3, 1, 4), complex), oR=[0])
    with pytest.raises(ValueError, match="stacking axis 2"):
        kernels.staple_pairs(S, T[..., :3], [0], [1], [0], [1], D=np.empty((3, 3, 1, 4), complex),
                             R=np.empty((3, 3, 1, 4), complex), oR=[0])


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=5), data=st.data(),
       single=st.booleans(), into_slot=st.booleans())
def test_periodic_shift_equals_roll(shape, data, single, into_slot):
    """out[..., x, ...] = F[..., x + k, ...] for any axis and k, into a fresh array or into a
    strided slot of a stack (the staple network's use), compiled path against xp.roll."""
    dtype = np.complex64 if single else np.complex128
    axis = data.draw(st.integers(0, len(shape) - 1))
    k = data.draw(st.integers(-7, 7))
    rng = np.random.default_rng(len(shape) + axis)
    stack = _rand(rng, (2, 3) + tuple(shape), dtype)
    F = stack[:, 1]                                   # a strided view, like S[:, :, src]
    want = np.roll(F, -k, axis=axis + 1)
    got = kernels.periodic_shift(F, axis + 1, k)
    assert np.array_equal(got, want)
    if into_slot:
        dst = np.zeros_like(stack)
        res = kernels.periodic_shift(F, axis + 1, k, out=dst[:, 2])
        assert np.array_equal(dst[:, 2], want) and np.all(dst[:, :2] == 0)
        assert np.shares_memory(res, dst)
    with kernels.reference_only():
        assert np.array_equal(kernels.periodic_shift(F, axis + 1, k), want)


def test_periodic_shift_checks_axis_and_out():
    F = np.zeros((2, 4))
    with pytest.raises(ValueError, match="axis 2 out of range"):
        kernels.periodic_shift(F, 2, 1)
    with pytest.raises(ValueError, match="need the same shape"):
        kernels.periodic_shift(F, 1, 1, out=np.zeros((2, 5)))


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("K,L", [(5, 6), (5, 1), (1, 6)])
def test_real_mix_equals_the_complex_product(dtype, transpose, K, L):
    """Every shape, including one input channel (an outer product: the adjoint of a last
    layer with one output channel) and one output channel."""
    rng = np.random.default_rng(6)
    c = rng.normal(size=(4, K, L))
    A = _rand(rng, (3, 3, 4, L if not transpose else K, 11), dtype)
    cc = np.swapaxes(c, -1, -2) if transpose else c
    want = cc.astype(np.complex128) @ A.astype(np.complex128)
    for ref in (False, True):
        if ref:
            with kernels.reference_only():
                got = kernels.real_mix(c, A, transpose=transpose)
        else:
            got = kernels.real_mix(c, A, transpose=transpose)
        assert got.dtype == dtype and got.shape == want.shape
        assert np.max(np.abs(got - want)) < TOL[dtype] * np.max(np.abs(want))


def test_real_mix_refuses_mismatched_shapes_on_every_path():
    """c (..., K, 1) against A (..., L, M) with L != 1 is an error, also where the compiled path
    writes one input channel as a broadcast product."""
    A = _rand(np.random.default_rng(9), (2, 5, 7))
    for ref in (False, True):
        with kernels.reference_only() if ref else contextlib.nullcontext():
            with pytest.raises(ValueError):
                kernels.real_mix(np.ones((2, 5, 1)), A)


def test_strict_namespace_takes_the_references():
    xs = get_namespace("array_api_strict")
    rng = np.random.default_rng(8)
    i_mu, i_nu, i_mn, i_nm, nE = _pairs()
    S, T = _rand(rng, (3, 3, 3, 5)), _rand(rng, (3, 3, nE, 5))
    D_want, R_want = _forward_by_hand(S, T, i_mu, i_nu, i_mn, i_nm)
    D, R = xs.zeros((3, 3, 4, 5), dtype=xs.complex128), xs.zeros((3, 3, 4, 5), dtype=xs.complex128)
    kernels.staple_pairs(xs.asarray(S), xs.asarray(T), i_mu, i_nu, i_mn, i_nm, D=D, R=R, oR=[0, 1, 2, 3])
    assert np.max(np.abs(np.asarray(D) - D_want)) < 1e-12 * np.max(np.abs(D_want))
    assert np.max(np.abs(np.asarray(R) - R_want)) < 1e-12 * np.max(np.abs(R_want))
    F = xs.asarray(_rand(rng, (2, 4, 3)))
    assert np.array_equal(np.asarray(kernels.periodic_shift(F, 1, 1)), np.roll(np.asarray(F), -1, axis=1))


def _transported_by_hand(S, i_mu, i_nu, nd):
    """S^L and S^R of design §7 with np.roll on the trailing nd site axes."""
    m = kernels.mul_reference

    def sh(F, d, s):                      # F(x + s d^)
        return np.roll(F, -s, axis=F.ndim - nd + d)
    L, R = [], []
    for mu, nu in zip(i_mu, i_nu):
        Smu, Snu = S[:, :, mu], S[:, :, nu]
        R.append(m(m(Snu, sh(Smu, nu, 1)), sh(Snu, mu, 1), db=True))
        L.append(sh(m(m(Snu, Smu, da=True), sh(Snu, mu, 1)), nu, -1))
    return L, R


def _generic(monkeypatch, fn):
    import importlib
    sp = importlib.import_module("lattice.kernels.staple_pairs")   # the module (the package exports the function)
    with monkeypatch.context() as mp:
        mp.setattr(sp, "_local", lambda *a: False)
        return fn()


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_transported_staples_one_process_path_equals_the_generic_path(monkeypatch, dtype):
    """aug slots = S^L, S^R of design §7 (against np.roll products), from the neighbour-table
    path and from the generic path (materialised shifts); pairs with and without partner, a
    non-cubic lattice whose volume is not a multiple of the kernel's block."""
    from lattice import Layout
    rng = np.random.default_rng(9)
    sites = (4, 3, 25)                   # V = 300
    lay = Layout(sites)
    S = _rand(rng, (3, 3, 3, 2) + sites, dtype)
    i_mu, i_nu = [0, 1, 2, 1], [1, 0, 1, 2]
    i_L, i_R = [0, 2, 4, 6], [1, 3, 5, 7]
    L, R = _transported_by_hand(S, i_mu, i_nu, 3)
    got = []
    for fn in (lambda: kernels.transported_staples(S, lay, i_mu, i_nu, aug=aug, i_L=i_L, i_R=i_R),
               lambda: _generic(monkeypatch, lambda: kernels.transported_staples(S, lay, i_mu, i_nu, aug=aug,
                                                                                 i_L=i_L, i_R=i_R))):
        aug = np.zeros((3, 3, 8, 2) + sites, dtype)
        fn()
        got.append(aug.copy())
    scale = TOL[dtype] * max(np.max(np.abs(x)) for x in L + R)
    for aug in got:
        for q in range(4):
            assert np.max(np.abs(aug[:, :, i_L[q]] - L[q])) < scale
            assert np.max(np.abs(aug[:, :, i_R[q]] - R[q])) < scale


def test_transported_staples_vjp_matches_central_differences_on_both_paths(monkeypatch):
    """f = Re sum conj(W) aug: the S cotangent of the one-process and the generic path (added
    to a nonzero start) agree and match central differences in float64."""
    from lattice import Layout
    rng = np.random.default_rng(10)
    sites = (3, 4, 5)
    lay = Layout(sites)
    S = _rand(rng, (3, 3, 3, 2) + sites)
    i_mu, i_nu = [0, 2, 1, 2], [2, 0, 2, 1]
    i_L, i_R = [0, 2, 4, 6], [1, 3, 5, 7]
    W = _rand(rng, (3, 3, 8, 2) + sites)

    def f(S):
        aug = np.zeros((3, 3, 8, 2) + sites, complex)
        kernels.transported_staples(S, lay, i_mu, i_nu, aug=aug, i_L=i_L, i_R=i_R)
        return float(np.sum(np.real(np.conj(W) * aug)))
    start = _rand(rng, S.shape)
    bars = []
    for generic in (False, True):
        Sb = start.copy()
        call = lambda: kernels.transported_staples_vjp(S, lay, i_mu, i_nu, aug_bar=W, i_L=i_L,  # noqa: E731
                                                       i_R=i_R, S_bar=Sb)
        _generic(monkeypatch, call) if generic else call()
        bars.append(Sb - start)
    assert np.max(np.abs(bars[0] - bars[1])) < 1e-12 * np.max(np.abs(bars[1]))
    h = 1e-6
    dS = _rand(rng, S.shape)
    fd = (f(S + h * dS) - f(S - h * dS)) / (2 * h)
    an = float(np.sum(np.real(np.conj(bars[0]) * dS)))
    assert abs(fd - an) <= 1e-8 * max(1.0, abs(an)), (fd, an)


def _generic_mix(monkeypatch, fn):
    """Run fn with the fused mixing path (and the table path under it) switched off."""
    import importlib
    sm = importlib.import_module("lattice.kernels.staple_mix")
    with monkeypatch.context() as mp:
        mp.setattr(sm, "_compiled", lambda *a: False)
        return _generic(monkeypatch, fn)


def _mix_by_hand(S, mu, c, nd):
    """out_p = sum_l c_pl aug_mu,l (M1) with aug from np.roll products."""
    nus = [nu for nu in range(nd) if nu != mu]
    L, R = _transported_by_hand(S, [mu] * len(nus), nus, nd)
    aug = np.stack([S[:, :, mu]] + L + R, axis=2)                 # (N, N, blocks, K, *rest)
    aug = aug.reshape(aug.shape[:2] + (-1,) + aug.shape[4:])      # l = block K + k
    return np.einsum("pl,ijl...->ijp...", c, aug)


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
@pytest.mark.parametrize("sites", [(4, 3, 25), (3, 5)])
def test_transported_mix_fused_path_equals_the_composition(monkeypatch, dtype, sites):
    """(M1) from the fused one-process path, the generic composition (aug, then real_mix) and
    np.roll products agree for every direction: several channels in and out, a batch axis, a
    volume that is not a multiple of the kernel's block."""
    from lattice import Layout
    rng = np.random.default_rng(11)
    nd, K, K_out = len(sites), 3, 2
    lay = Layout(sites)
    S = _rand(rng, (3, 3, nd, K, 2) + sites, dtype)
    c = rng.normal(size=(K_out, (2 * nd - 1) * K))
    for mu in range(nd):
        want = _mix_by_hand(S.astype(np.complex128), mu, c, nd)
        fused, aug = kernels.transported_mix(S, lay, mu, c, keep=True)
        assert aug is None                                       # the fused path never forms aug
        generic, aug = _generic_mix(monkeypatch, lambda: kernels.transported_mix(S, lay, mu, c, keep=True))
        assert aug.shape == (3, 3, (2 * nd - 1) * K, 2) + sites
        for got in (fused, generic):
            assert got.dtype == dtype and got.shape == (3, 3, K_out, 2) + sites
            assert np.max(np.abs(got - want)) < TOL[dtype] * np.max(np.abs(want)) * 10


@pytest.mark.parametrize("sites, mu", [((3, 4, 5), 1), ((3, 3, 4, 3), 0), ((3, 3, 4, 3), 3)])
def test_transported_mix_vjp_matches_central_differences_on_both_paths(monkeypatch, sites, mu):
    """f = Re sum conj(W) out: S_bar (added to a nonzero start) and c_bar of the fused path (it
    must run) and of the generic path (with aug recomputed and with aug kept from the forward)
    agree and match central differences in float64; need_c=False gives the same S_bar and no
    c_bar."""
    import importlib
    from lattice import Layout
    ns = importlib.import_module("lattice.kernels._numba_staples")
    rng = np.random.default_rng(12)
    nd, K, K_out = len(sites), 2, 2
    lay = Layout(sites)
    S = _rand(rng, (3, 3, nd, K, 2) + sites)
    c = rng.normal(size=(K_out, (2 * nd - 1) * K))
    W = _rand(rng, (3, 3, K_out, 2) + sites)

    def f(S, c):
        return float(np.sum(np.real(np.conj(W) * kernels.transported_mix(S, lay, mu, c)[0])))
    fused_runs = []
    real_local_vjp = ns.transported_mix_local_vjp
    monkeypatch.setattr(ns, "transported_mix_local_vjp",
                        lambda *a: fused_runs.append(1) or real_local_vjp(*a))
    kept = _generic_mix(monkeypatch, lambda: kernels.transported_mix(S, lay, mu, c, keep=True))[1]
    start = _rand(rng, S.shape)
    results = []
    for generic, need_c, aug in ((False, True, None), (True, True, None), (True, True, kept), (False, False, None),
                                 (True, False, None)):
        Sb = start.copy()
        call = lambda: kernels.transported_mix_vjp(S, lay, mu, c, W, S_bar=Sb, aug=aug, need_c=need_c)  # noqa: E731
        runs = len(fused_runs)
        cb = _generic_mix(monkeypatch, call) if generic else call()
        assert len(fused_runs) == runs + (not generic)         # the fused adjoint ran where expected
        assert (cb is None) == (not need_c)
        results.append((Sb - start, cb))
    ref_S, ref_c = results[1]
    for Sb, cb in results:
        assert np.max(np.abs(Sb - ref_S)) < 1e-12 * np.max(np.abs(ref_S))
        if cb is not None:
            assert cb.dtype == np.float64 and cb.shape == c.shape
            assert np.max(np.abs(cb - ref_c)) < 1e-12 * np.max(np.abs(ref_c))
    h = 1e-6
    dS, dc = _rand(rng, S.shape), rng.normal(size=c.shape)
    fd = (f(S + h * dS, c) - f(S - h * dS, c)) / (2 * h)
    an = float(np.sum(np.real(np.conj(results[0][0]) * dS)))
    assert abs(fd - an) <= 1e-8 * max(1.0, abs(an)), (fd, an)
    fd = (f(S, c + h * dc) - f(S, c - h * dc)) / (2 * h)
    an = float(np.sum(results[0][1] * dc))
    assert abs(fd - an) <= 1e-8 * max(1.0, abs(an)), (fd, an)


def test_transported_mix_vjp_single_precision_fused_equals_generic(monkeypatch):
    """complex64: the fused adjoint equals the generic one to single-precision rounding; c_bar
    is float64 on both paths."""
    from lattice import Layout
    rng = np.random.default_rng(14)
    sites = (3, 3, 4, 3)
    lay = Layout(sites)
    S = _rand(rng, (3, 3, 4, 2, 2) + sites, np.complex64)
    c = rng.normal(size=(1, 14))
    W = _rand(rng, (3, 3, 1, 2) + sites, np.complex64)
    got = []
    for generic in (False, True):
        Sb = np.zeros_like(S)
        call = lambda: kernels.transported_mix_vjp(S, lay, 2, c, W, S_bar=Sb)  # noqa: E731
        cb = _generic_mix(monkeypatch, call) if generic else call()
        got.append((Sb, cb))
    (S1, c1), (S2, c2) = got
    assert S1.dtype == np.complex64 and c1.dtype == np.float64
    assert np.max(np.abs(S1 - S2)) < TOL[np.complex64] * np.max(np.abs(S2))
    assert np.max(np.abs(c1 - c2)) < TOL[np.complex64] * np.max(np.abs(c2))


def test_transported_mix_refuses_inconsistent_shapes():
    from lattice import Layout
    rng = np.random.default_rng(13)
    sites = (3, 4)
    lay = Layout(sites)
    S = _rand(rng, (3, 3, 2, 2) + sites)
    with pytest.raises(ValueError, match="coefficients of shape"):
        kernels.transported_mix(S, lay, 0, np.ones((1, 5)))
    with pytest.raises(ValueError, match="coefficients of shape"):
        kernels.transported_mix(S, lay, 0, np.ones((0, 6)))
    with pytest.raises(ValueError, match="out of range"):
        kernels.transported_mix(S, lay, 2, np.ones((1, 6)))
    with pytest.raises(ValueError, match="staple fields of shape"):
        kernels.transported_mix(S[:, :, :1], lay, 0, np.ones((1, 6)))
    with pytest.raises(ValueError, match="cotangent of shape"):
        kernels.transported_mix_vjp(S, lay, 0, np.ones((1, 6)), S[:, :, :1], S_bar=np.zeros_like(S))
    with pytest.raises(ValueError, match="aug of shape"):                  # an aug that is not this layer's
        kernels.transported_mix_vjp(S, lay, 0, np.ones((1, 6)), S[:, :, :1, 0].copy(), S_bar=np.zeros_like(S),
                                    aug=S[:, :, :1])
    with pytest.raises(ValueError, match="S_bar of shape"):
        kernels.transported_mix_vjp(S, lay, 0, np.ones((1, 6)), S[:, :, :1, 0].copy(), S_bar=S[:, :, :1])
