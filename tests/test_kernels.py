"""lattice.kernels: every fast implementation equals its array-API reference (tolerances by
dtype) and the adjoint identities of the products pass central finite differences."""
import contextlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

from lattice import kernels
from lattice.backend import get_namespace

TOL = {np.complex128: 1e-13, np.complex64: 2e-5}


def _rand(rng, shape, dtype=np.complex128):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)


def test_numpy_arrays_get_the_compiled_path_and_reference_only_switches_it_off():
    xp = get_namespace("numpy")
    assert kernels.implementation(xp) == "numba"
    with kernels.reference_only():
        assert kernels.implementation(xp) == "reference"
    assert kernels.implementation(xp) == "numba"
    assert kernels.implementation(get_namespace("array_api_strict")) == "reference"


@given(N=st.sampled_from([2, 3, 4]), rest=st.lists(st.integers(1, 5), min_size=0, max_size=3),
       da=st.booleans(), db=st.booleans(), single=st.booleans(), seed=st.integers(0, 2**31))
def test_mul_equals_reference(N, rest, da, db, single, seed):
    """C = op(A) op(B) on colour-first stacks, every dagger combination, both precisions."""
    dtype = np.complex64 if single else np.complex128
    rng = np.random.default_rng(seed)
    A, B = _rand(rng, (N, N, *rest), dtype), _rand(rng, (N, N, *rest), dtype)
    C = kernels.mul(A, B, da=da, db=db)
    ref = kernels.mul_reference(A, B, da=da, db=db)
    assert C.dtype == dtype and C.shape == ref.shape
    scale = max(1.0, float(np.max(np.abs(ref))))
    assert np.max(np.abs(C - ref)) <= TOL[dtype] * N * scale
    # and the reference is what stacked colour-last matmul gives
    op = lambda X, d: np.conj(np.swapaxes(X, 0, 1)) if d else X  # noqa: E731
    direct = np.einsum("ik...,kj...->ij...", op(A, da), op(B, db))
    assert np.allclose(ref, direct, rtol=0, atol=TOL[dtype] * N * scale)


def test_mul_broadcasts_the_rest_axes_and_writes_into_out():
    rng = np.random.default_rng(1)
    A, B = _rand(rng, (3, 3, 4, 1, 5)), _rand(rng, (3, 3, 1, 2, 5))
    ref = kernels.mul_reference(A, B, db=True)
    assert np.allclose(kernels.mul(A, B, db=True), ref, atol=1e-13)
    out = np.empty((3, 3, 2, 4, 2, 5), dtype=np.complex128)[:, :, 1]      # non-contiguous target
    res = kernels.mul(A, B, db=True, out=out)
    assert res is out and np.allclose(out, ref, atol=1e-13)


def test_mul_rejects_mismatched_matrices():
    with pytest.raises(ValueError, match="colour-first"):
        kernels.mul(np.zeros((3, 3, 4), complex), np.zeros((2, 2, 4), complex))
    with pytest.raises(ValueError, match="colour-first"):
        kernels.mul(np.zeros((3, 2, 4), complex), np.zeros((3, 2, 4), complex))


def test_nan_and_inf_propagate_through_the_compiled_product():
    """fastmath is limited to re-association/contraction: a NaN link poisons its product."""
    A = np.ones((3, 3, 6), dtype=np.complex128)
    A[1, 2, 4] = np.nan
    A[0, 0, 1] = np.inf
    C = kernels.mul(A, A)
    assert np.isnan(C[1, :, 4]).all() and np.isnan(C[:, 2, 4]).any()
    assert not np.isfinite(C[0, :, 1]).all()
    assert np.isfinite(C[:, :, [0, 2, 3, 5]]).all()


@given(da=st.booleans(), db=st.booleans(), seed=st.integers(0, 2**31))
def test_mul_gather_equals_take_then_mul(da, db, seed):
    rng = np.random.default_rng(seed)
    A, B = _rand(rng, (3, 3, 4, 2, 3)), _rand(rng, (3, 3, 5, 2, 3))
    ia, ib = list(rng.integers(0, 4, size=6)), list(rng.integers(0, 5, size=6))
    C = kernels.mul_gather(A, B, ia, ib, da=da, db=db)
    ref = kernels.mul_reference(A[:, :, ia], B[:, :, ib], da=da, db=db)
    assert np.max(np.abs(C - ref)) < 1e-13
    with kernels.reference_only():
        assert np.max(np.abs(kernels.mul_gather(A, B, ia, ib, da=da, db=db) - ref)) < 1e-13
    with pytest.raises(ValueError, match="indices"):
        kernels.mul_gather(A, B, ia, ib[:-1])


def test_real_inner_equals_reference():
    rng = np.random.default_rng(3)
    A, B = _rand(rng, (3, 3, 2, 4, 7)), _rand(rng, (3, 3, 2, 5, 7))
    G = kernels.real_inner(A, B)
    with kernels.reference_only():
        R = kernels.real_inner(A, B)
    assert G.dtype == np.float64 and G.shape == (3, 3, 2, 4, 5)
    assert np.max(np.abs(G - R)) < 1e-12
    assert np.allclose(G, np.real(np.einsum("...km,...lm->...kl", np.conj(A), B)))


@pytest.mark.parametrize("da", [False, True])
@pytest.mark.parametrize("db", [False, True])
def test_product_adjoints_match_central_differences(da, db):
    """f = Re sum conj(W) C with C = op(A) op(B): the cotangents the VJPs of the staple network
    use, A_bar and B_bar written as products of the same kernel, against central differences."""
    rng = np.random.default_rng(7 + 2 * da + db)
    A, B, W = (_rand(rng, (3, 3, 4)) for _ in range(3))
    f = lambda A, B: float(np.sum(np.real(np.conj(W) * kernels.mul(A, B, da=da, db=db))))  # noqa: E731
    # C = a b with a = op(A), b = op(B): a_bar = W b^dag, b_bar = a^dag W; op = dagger maps back by dagger
    a_bar = kernels.mul(W, B, db=not db)
    b_bar = kernels.mul(A, W, da=not da)
    A_bar = np.conj(np.swapaxes(a_bar, 0, 1)) if da else a_bar
    B_bar = np.conj(np.swapaxes(b_bar, 0, 1)) if db else b_bar
    h = 1e-6
    for X, X_bar, which in ((A, A_bar, 0), (B, B_bar, 1)):
        dX = _rand(rng, X.shape)
        args_p = [A, B]
        args_m = [A, B]
        args_p[which] = X + h * dX
        args_m[which] = X - h * dX
        fd = (f(*args_p) - f(*args_m)) / (2 * h)
        an = float(np.sum(np.real(np.conj(X_bar) * dX)))
        assert abs(fd - an) <= 1e-7 * max(1.0, abs(an)), (which, fd, an)


def test_colour_first_round_trip_is_contiguous():
    rng = np.random.default_rng(2)
    M = _rand(rng, (2, 4, 3, 3))
    X = kernels.colour_first(M)
    assert X.shape == (3, 3, 2, 4) and X.flags.c_contiguous
    assert np.array_equal(X[1, 2], M[..., 1, 2])
    assert np.array_equal(kernels.colour_last(X), M) and kernels.colour_last(X).flags.c_contiguous


def test_array_api_strict_runs_the_reference():
    xs = get_namespace("array_api_strict")
    rng = np.random.default_rng(4)
    A, B = _rand(rng, (3, 3, 2, 3)), _rand(rng, (3, 3, 2, 3))
    C = kernels.mul(xs.asarray(A), xs.asarray(B), da=True)
    assert np.allclose(np.asarray(C), kernels.mul(A, B, da=True), atol=1e-13)
    G = kernels.mul_gather(xs.asarray(A), xs.asarray(B), [1, 0], [0, 0], db=True)
    assert np.allclose(np.asarray(G), kernels.mul_gather(A, B, [1, 0], [0, 0], db=True), atol=1e-13)


def _dag(X):
    return np.conj(np.swapaxes(X, -1, -2))


def _hermitian_with_spectrum(rng, lam):
    X = _rand(rng, (len(lam), 3, 3))
    Q, _ = np.linalg.qr(X)
    return Q @ (np.asarray(lam)[..., None] * _dag(Q))


@pytest.mark.parametrize("kind", ["random", "near-degenerate", "degenerate", "scalar", "shifted"])
def test_eigh_closed_form_equals_reference(kind):
    """Closed-form 3x3 eigensystem (E1)-(E4): eigenvalues as LAPACK's, V unitary, A V = V diag(w),
    including nearly and exactly repeated eigenvalues (the flagged fallback) and a spread tiny
    against the trace (ill-conditioned shift)."""
    rng = np.random.default_rng(["random", "near-degenerate", "degenerate", "scalar", "shifted"].index(kind))
    n = 400
    if kind == "random":
        X = _rand(rng, (n, 3, 3))
        H = X + _dag(X)
    else:
        base = rng.normal(size=(n, 3))
        if kind == "near-degenerate":
            base[:, 1] = base[:, 0] + 10.0 ** rng.uniform(-12, -1, size=n)
        elif kind == "degenerate":
            base[:, 1] = base[:, 0]
        elif kind == "scalar":
            base[:, :] = base[:, :1]
        else:
            base = 1e4 + 1e-2 * base
        H = _hermitian_with_spectrum(rng, base)
        H = 0.5 * (H + _dag(H))
    w, V = kernels.eigh(H)
    with kernels.reference_only():
        wr, _ = kernels.eigh(H)
    scale = np.max(np.abs(H), axis=(-2, -1))[:, None]
    assert np.all(np.abs(w - wr) <= 1e-13 * np.maximum(scale, 1.0))
    assert np.all(np.diff(w, axis=-1) >= -1e-13 * scale)                    # ascending
    assert np.max(np.abs(_dag(V) @ V - np.eye(3))) < 1e-13
    assert np.max(np.abs(H @ V - V * w[:, None, :])) < 1e-12 * max(1.0, float(np.max(scale)))


def test_eigh_single_precision_and_nonfinite_input():
    rng = np.random.default_rng(9)
    X = _rand(rng, (50, 3, 3))
    H = (X + _dag(X)).astype(np.complex64)
    w, V = kernels.eigh(H)
    assert w.dtype == np.float32 and V.dtype == np.complex64
    assert np.max(np.abs(H @ V - V * w[:, None, :])) < 1e-5 * float(np.max(np.abs(H)))
    Hn = (X + _dag(X)).copy()
    Hn[3, 0, 0] = np.nan
    # a NaN matrix is flagged and handed to LAPACK, which fails loudly as the reference does
    with pytest.raises(np.linalg.LinAlgError):
        kernels.eigh(Hn)
    with kernels.reference_only(), pytest.raises(np.linalg.LinAlgError):
        kernels.eigh(Hn)


@pytest.mark.parametrize("cond", [1.0, 10.0, 1e3, 1e8])
def test_polar_closed_form_equals_svd(cond):
    """M = W diag(s) Vh with s descending and W, Vh unitary, equal to the SVD's polar factor
    W Vh; s_max/s_min beyond POLAR_MAX_COND takes the SVD (ill-conditioned staples)."""
    rng = np.random.default_rng(int(np.log10(cond)))
    A, B = (np.linalg.qr(_rand(rng, (200, 3, 3)))[0] for _ in range(2))
    s_true = np.stack([np.ones(200), 10.0 ** rng.uniform(-np.log10(cond), 0, 200), np.full(200, 1.0 / cond)], -1)
    M = (A * s_true[:, None, :]) @ _dag(B)
    W, s, Vh = kernels.polar(M)
    Wr, sr, Vhr = np.linalg.svd(M)
    np.testing.assert_allclose(s, sr, rtol=1e-12, atol=1e-14)
    assert np.all(np.diff(s, axis=-1) <= 0)
    assert np.max(np.abs(W @ Vh - Wr @ Vhr)) < 1e-12
    assert np.max(np.abs(_dag(W) @ W - np.eye(3))) < 1e-12
    assert np.max(np.abs((W * s[:, None, :]) @ Vh - M)) < 1e-13


def test_polar_feeds_the_projection_with_the_same_numbers():
    """lattice.su_n.polar_svd goes through kernels.polar: the U(N) and SU(N) projections on the
    compiled path equal those on the reference (the SVD) to rounding."""
    from lattice import su_n
    rng = np.random.default_rng(5)
    M = _rand(rng, (300, 3, 3))
    Q, P = su_n.project_u(M), su_n.project_su(M)
    with kernels.reference_only():
        Qr, Pr = su_n.project_u(M), su_n.project_su(M)
    assert np.max(np.abs(Q - Qr)) < 1e-12 and np.max(np.abs(P - Pr)) < 1e-12


@given(lead=st.lists(st.integers(1, 4), min_size=0, max_size=3), da=st.booleans(), db=st.booleans(),
       single=st.booleans(), seed=st.integers(0, 2**31))
def test_colour_last_matmul_equals_reference(lead, da, db, single, seed):
    dtype = np.complex64 if single else np.complex128
    rng = np.random.default_rng(seed)
    A, B = _rand(rng, (*lead, 3, 3), dtype), _rand(rng, (*lead, 3, 3), dtype)
    op = lambda X, d: np.conj(np.swapaxes(X, -1, -2)) if d else X  # noqa: E731
    C = kernels.matmul(A, B, da=da, db=db)
    assert C.dtype == dtype
    assert np.max(np.abs(C - op(A, da) @ op(B, db))) <= TOL[dtype] * 3 * max(1.0, float(np.max(np.abs(C))))
    with kernels.reference_only():
        assert np.max(np.abs(kernels.matmul(A, B, da=da, db=db) - C)) <= TOL[dtype] * 3 * max(1.0, float(np.max(np.abs(C))))
    # broadcasting over leading axes, and the N != 3 fallback
    assert np.allclose(kernels.matmul(A[None], B, db=db), A[None] @ op(B, db))
    assert np.allclose(kernels.matmul(A[..., :1, :, :] if lead else A, B, da=da), op(A[..., :1, :, :] if lead else A, da) @ B)
    A2 = _rand(rng, (*lead, 2, 2))
    assert np.allclose(kernels.matmul(A2, A2, da=True), op(A2, True) @ A2)


@pytest.mark.parametrize("accumulate", [False, True])
def test_mul_gather_scatters_into_out(accumulate):
    """out[:, :, oc[q]] (+)= op(A[ia[q]]) op(B[ib[q]]), repeated slots adding up in order."""
    rng = np.random.default_rng(12)
    A, B = _rand(rng, (3, 3, 4, 2, 5)), _rand(rng, (3, 3, 5, 2, 5))
    ia, ib, oc = [0, 3, 1, 2], [4, 0, 0, 2], [1, 0, 1, 2]
    start = _rand(rng, (3, 3, 3, 2, 5))
    want = start.copy()
    for q in range(4):
        P = kernels.mul_reference(A[:, :, ia[q]], B[:, :, ib[q]], da=True)
        want[:, :, oc[q]] = want[:, :, oc[q]] + P if accumulate else P
    for ref in (False, True):
        out = start.copy()
        if ref:
            with kernels.reference_only():
                res = kernels.mul_gather(A, B, ia, ib, da=True, out=out, oc=oc, accumulate=accumulate)
        else:
            res = kernels.mul_gather(A, B, ia, ib, da=True, out=out, oc=oc, accumulate=accumulate)
        assert res is out
        assert np.max(np.abs(out - want)) < 1e-13
    with pytest.raises(ValueError, match="same number"):
        kernels.mul_gather(A, B, ia, ib, out=start.copy(), oc=oc[:-1])


def test_environment_forces_the_reference(monkeypatch):
    xp = get_namespace("numpy")
    monkeypatch.setenv("GAUGEFLOW_KERNELS", "reference")
    assert kernels.implementation(xp) == "reference"
    monkeypatch.setenv("GAUGEFLOW_KERNELS", "fast")
    with pytest.raises(ValueError, match="GAUGEFLOW_KERNELS"):
        kernels.implementation(xp)
    monkeypatch.setenv("GAUGEFLOW_KERNELS", "auto")
    assert kernels.implementation(xp) == "numba"


@pytest.mark.parametrize("single", [False, True])
def test_colour_last_matmul_reads_strided_views_in_place(single):
    """Link slices U[:, mu], transposed and step-sliced views go through the strided kernel
    (no copy) and equal the stacked product, every dagger combination."""
    dtype = np.complex64 if single else np.complex128
    rng = np.random.default_rng(13)
    U = _rand(rng, (3, 4, 2, 5, 3, 3), dtype)
    views = [(U[:, 1], U[:, 2]), (np.swapaxes(U[:, 3], -1, -2), U[:, 0]), (U[::2, 0, :, ::2], U[1:, 1, :, ::2]),
             (U[:, 2, 1], np.ascontiguousarray(U[:, 3, 0]))]
    for A, B in views:
        assert not (A.flags.c_contiguous and B.flags.c_contiguous)
        for da in (False, True):
            for db in (False, True):
                a = np.conj(np.swapaxes(A, -1, -2)) if da else A
                b = np.conj(np.swapaxes(B, -1, -2)) if db else B
                got = kernels.matmul(A, B, da=da, db=db)
                assert got.dtype == dtype and got.shape == (a @ b).shape
                assert np.max(np.abs(got - a @ b)) < TOL[dtype] * 10


@pytest.mark.parametrize("scale", [1e-3, 0.5, 3.0, 40.0])
@pytest.mark.parametrize("kind", ["su3", "general"])
def test_expm_closed_form_equals_reference_and_scipy(scale, kind):
    """kernels.expm (compiled N = 3 path) against the array-API reference and against
    scipy.linalg.expm, for su(3) elements (the HMC's case: result in SU(3)) and general complex
    matrices, small to large norms (scaling and squaring)."""
    import scipy.linalg
    from lattice import su_n
    rng = np.random.default_rng(int(scale * 1000) + len(kind))
    X = _rand(rng, (5, 7, 3, 3))
    if kind == "su3":
        X = su_n.project_algebra(X)
    X = scale * X / np.sqrt(np.sum(np.abs(X) ** 2, axis=(-2, -1), keepdims=True))
    E = kernels.expm(X)
    with kernels.reference_only():
        R = su_n.expm(X)
    S = np.stack([scipy.linalg.expm(x) for x in X.reshape(-1, 3, 3)]).reshape(X.shape)
    tol = 1e-13 * max(1.0, float(np.max(np.abs(S))))
    assert np.max(np.abs(E - S)) < tol
    assert np.max(np.abs(E - R)) < tol
    if kind == "su3":
        assert float(np.max(su_n.unitarity_violation(E))) < 1e-13


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")   # the reference's norm, then its error
def test_expm_single_precision_and_nonfinite_input():
    from lattice import su_n
    rng = np.random.default_rng(21)
    X = su_n.project_algebra(_rand(rng, (50, 3, 3)))
    E = kernels.expm(X.astype(np.complex64))
    assert E.dtype == np.complex64
    with kernels.reference_only():
        assert np.max(np.abs(E - su_n.expm(X))) < 2e-5
    # NaN, and a finite entry whose ||X||_F^2 overflows (no garbage scaling s): refused on both paths
    for bad in (np.nan, 1e200):
        X[3, 1, 2] = bad
        for ctx in (contextlib.nullcontext, kernels.reference_only):
            with ctx(), pytest.raises(ValueError, match="NaN or inf"):
                kernels.expm(X)
