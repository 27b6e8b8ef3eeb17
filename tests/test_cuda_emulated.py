"""The CuPy paths of the kernel layer without a GPU: lattice/kernels/_cupy.py (colour-first
products, closed-form 3x3 eigensystems and polar factors), _cupy_exp.py (exp of su(3), phi(ad X)
and its adjoint) and _cupy_lines.py (line sums and
their adjoint), wrappers and CUDA source, run on the CPU by tests/cuda_emulation.py (the CUDA
source compiled with std::complex, one loop iteration per thread) and compared with the
array-API references. (_cupy_hopping.py: tests/test_kernels_hopping.py.) What this does not
check -- NVRTC, CuPy's launch, thrust, atomics -- ``make test-gpu`` checks on a GPU."""
import numpy as np
import pytest

import cuda_emulation
from lattice import kernels
from flows.residual import family_paths

pytestmark = pytest.mark.skipif(cuda_emulation.CXX is None, reason="no C++ compiler on this machine")
TOL = {np.complex128: 1e-12, np.complex64: 5e-5}


def _rand(rng, shape, dtype=np.complex128):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_colour_first_products(monkeypatch, dtype):
    cu = cuda_emulation.load(monkeypatch, "_cupy")
    rng = np.random.default_rng(0)
    A, B = _rand(rng, (3, 3, 4, 5), dtype), _rand(rng, (3, 3, 1, 5), dtype)
    for da in (False, True):
        for db in (False, True):
            C = cu.mul(A, B, da, db, None)
            want = kernels.mul_reference(A, B, da=da, db=db)
            assert C.dtype == dtype and np.max(np.abs(C - want)) < TOL[dtype] * np.max(np.abs(want))
            out = np.zeros((3, 3, 8, 5), dtype)[:, :, ::2]            # a strided output
            cu.mul(A, B, da, db, out)
            assert np.max(np.abs(out - want)) < TOL[dtype] * np.max(np.abs(want))


def test_eigh_and_polar(monkeypatch):
    """Closed forms on random, nearly degenerate and ill-conditioned matrices (the flagged ones
    go to the LAPACK stand-in): H V = V diag(w), V unitary, w ascending; M = W diag(s) Vh."""
    cu = cuda_emulation.load(monkeypatch, "_cupy")
    rng = np.random.default_rng(1)
    X = _rand(rng, (60, 3, 3))
    H = X + np.conj(np.swapaxes(X, -1, -2))
    H[:10] = np.eye(3) + 1e-9 * H[:10]                                  # nearly degenerate
    w, V = cu.eigh3(H)
    assert np.all(np.diff(w, axis=-1) >= -1e-12)
    np.testing.assert_allclose(H @ V, V * w[:, None, :], atol=1e-10)
    np.testing.assert_allclose(np.conj(np.swapaxes(V, -1, -2)) @ V, np.broadcast_to(np.eye(3), V.shape), atol=1e-10)
    np.testing.assert_allclose(w, np.linalg.eigvalsh(H), atol=1e-10)
    M = _rand(rng, (40, 3, 3))
    M[:5, :, 2] = M[:5, :, 1] * (1 + 1e-13)                             # ill-conditioned
    W, s, Vh = cu.polar3(M)
    np.testing.assert_allclose((W * s[:, None, :]) @ Vh, M, atol=1e-10)
    np.testing.assert_allclose(s, np.linalg.svd(M, compute_uv=False), atol=1e-10)


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_line_sums_and_adjoint(monkeypatch, dtype):
    """Residual loop families at chosen sites, one and two lead axes, accumulation into L_bar;
    paths longer than the kernel holds go back to the caller (None)."""
    cl = cuda_emulation.load(monkeypatch, "_cupy_lines")
    rng = np.random.default_rng(2)
    shape, V = (4, 3, 4, 6), 288
    for family, lead, n in (("rectangle", (2, 2), 96), ("plaquette", (3,), 288), ("chair", (1,), 17)):
        tb = kernels.line_table(shape, [p for p, _ in family_paths(family, 2, 4)], rng.choice(V, n, replace=False),
                                shift=(2, 1))
        L = _rand(rng, lead + (4,) + shape + (3, 3), dtype)
        Wb = _rand(rng, lead + (n, 3, 3), dtype)
        base = _rand(rng, L.shape, dtype)
        W = cl.line_sums(L, tb, len(lead))
        Lb = cl.line_sums_vjp(L, tb, Wb, len(lead), base.copy())
        with kernels.reference_only():
            W_ref, Lb_ref = kernels.line_sums(L, tb), base + kernels.line_sums_vjp(L, tb, Wb)
        assert W.dtype == dtype and Lb.dtype == dtype
        assert np.max(np.abs(W - W_ref)) < TOL[dtype] * np.max(np.abs(W_ref)), family
        assert np.max(np.abs(Lb - Lb_ref)) < TOL[dtype] * np.max(np.abs(Lb_ref)), family
    long = kernels.line_table(shape, [[(0, 1)] * (cl.MAXK + 1)], [0])
    assert cl.line_sums(_rand(rng, (4,) + shape + (3, 3)), long, 0) is None


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_expm3(monkeypatch, dtype):
    """exp of su(3) stacks from small norms to ones that need squarings, against the array-API
    Cayley-Hamilton reference; NaN input is an error."""
    from lattice import su_n
    ce = cuda_emulation.load(monkeypatch, "_cupy_exp")
    rng = np.random.default_rng(3)
    X = su_n.project_algebra(_rand(rng, (40, 3, 3)))
    X *= np.geomspace(1e-3, 6.0, 40)[:, None, None] / np.linalg.norm(X, axis=(-2, -1))[:, None, None]
    E = ce.expm3(X.astype(dtype).reshape(2, 20, 3, 3), 18)
    want = su_n.expm_reference(X, 18)
    assert E.dtype == dtype and E.shape == (2, 20, 3, 3)
    assert np.max(np.abs(E.reshape(40, 3, 3) - want)) < TOL[dtype] * 10
    bad = X.copy()
    bad[3, 0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ce.expm3(bad, 18)
    bad[3, 0, 1] = 1e200                                     # finite, but ||X||^2 overflows
    with pytest.raises(ValueError, match="overflows"):
        ce.expm3(bad, 18)
    assert ce.expm3(np.zeros((4, 3, 3)), 18) is None          # real input: the reference's job


@pytest.mark.parametrize("n", [8, 3])
@pytest.mark.parametrize("scale", [1e-3, 0.3, 1.0])
def test_phi_ad_and_adjoint(monkeypatch, n, scale):
    """phi(ad X) and its adjoint by the block-triangular Horner (no stored intermediates)
    against the reference's (D2)/(D3) with the same number of terms; n > 8 is declined."""
    from lattice.kernels.dexp import phi_terms
    ce = cuda_emulation.load(monkeypatch, "_cupy_exp")
    rng = np.random.default_rng(4)
    A = rng.normal(size=(3, 7, n, n))
    A = A - np.swapaxes(A, -1, -2)
    A *= scale / np.max(np.sqrt(np.sum(A * A, axis=(-2, -1))))
    G = rng.normal(size=A.shape)
    K = phi_terms(scale)
    phi_ref, saved = kernels.phi_ad_reference(A, K)
    np.testing.assert_allclose(ce.phi_ad(A, K), phi_ref, rtol=0, atol=1e-15)
    np.testing.assert_allclose(ce.phi_ad_vjp(A, K, G), kernels.phi_ad_vjp_reference(A, saved, G), rtol=0, atol=1e-14)
    assert ce.phi_ad(np.zeros((2, 9, 9)), K) is None and ce.phi_ad_vjp(np.zeros((2, 9, 9)), K, np.zeros((2, 9, 9))) is None


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_staple_pairs_and_adjoint(monkeypatch, dtype):
    """The fused staple-pair chain (P1)-(P3) into chosen R slots and its adjoint (A1)-(A2)
    accumulating into S_bar and T_bar with repeated slots, against the mul_gather reference;
    arrays the kernel does not take (non-contiguous, real) are declined."""
    cs = cuda_emulation.load(monkeypatch, "_cupy_staples")
    rng = np.random.default_rng(5)
    from lattice.kernels.staple_pairs import _plan
    Q = [(0, 1), (0, 2), (2, 1), (1, 0), (2, 0)]
    i_mu, i_nu = [m for m, _ in Q], [n for _, n in Q]
    E, i_mn, i_nm = _plan(i_mu, i_nu)                 # T slots: the ordered pairs the pairs need
    rest = (2, 37)
    S, T = _rand(rng, (3, 3, 3) + rest, dtype), _rand(rng, (3, 3, len(E)) + rest, dtype)
    oR = [6, 1, 7, 2, 0]
    D, R = np.zeros((3, 3, len(Q)) + rest, dtype), np.full((3, 3, 8) + rest, 7.0, dtype)
    assert cs.forward(S, T, i_mu, i_nu, i_mn, i_nm, D, R, oR)
    D_ref, R_ref = np.zeros_like(D), np.full_like(R, 7.0)
    kernels.staple_pairs_reference(S, T, i_mu, i_nu, i_mn, i_nm, D_ref, R_ref, oR)
    scale = TOL[dtype] * np.max(np.abs(R_ref))
    assert np.max(np.abs(D - D_ref)) < scale and np.max(np.abs(R - R_ref)) < scale
    Rb, Db = _rand(rng, R.shape, dtype), _rand(rng, D.shape, dtype)
    Sb0, Tb0 = _rand(rng, S.shape, dtype), _rand(rng, T.shape, dtype)
    Sb, Tb = Sb0.copy(), Tb0.copy()
    assert cs.vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb, oR, Db, Sb, Tb)
    Sb_ref, Tb_ref = kernels.staple_pairs_vjp_reference(S, T, i_mu, i_nu, i_mn, i_nm, Rb, oR, Db, Sb0.copy(),
                                                        Tb0.copy())
    scale = TOL[dtype] * max(np.max(np.abs(Sb_ref)), np.max(np.abs(Tb_ref)))
    assert np.max(np.abs(Sb - Sb_ref)) < scale and np.max(np.abs(Tb - Tb_ref)) < scale
    assert not cs.forward(S, T, i_mu, i_nu, i_mn, i_nm, D, R, [6, 1, 6, 2, 0])      # an R slot written twice
    with pytest.raises(IndexError, match="out of range"):                       # the kernel does not check
        cs.forward(S, T, i_mu, i_nu, i_mn, i_nm, D, R, [6, 1, 8, 2, 0])
    with pytest.raises(IndexError, match="out of range"):
        cs.vjp(S, T, [0, 1, 2, 3, 0], i_nu, i_mn, i_nm, Rb, oR, Db, Sb, Tb)
    assert not cs.forward(S, T, i_mu, i_nu, i_mn, i_nm, D[:, :, :, :, ::2], R, oR)
    assert not cs.forward(S.real.copy(), T.real.copy(), i_mu, i_nu, i_mn, i_nm, D.real.copy(), R.real.copy(), oR)


def test_the_emulator_finds_a_data_race():
    """A kernel where thread i reads what thread i + 1 writes gives an order-dependent result,
    which the emulator's forwards-and-backwards launch reports; a race-free one passes."""
    racy = cuda_emulation.ElementwiseKernel("raw float64 X, int64 n", "raw float64 O",
                                            "O[i] = X[i] + (i + 1 < n ? O[i + 1] : 0.0);", "racy")
    clean = cuda_emulation.ElementwiseKernel("raw float64 X, int64 n", "raw float64 O",
                                             "O[i] = X[i] + (i + 1 < n ? X[i + 1] : 0.0);", "clean")
    X = np.arange(1.0, 9.0)
    O = np.zeros(8)
    clean(X, 8, O, size=8)
    np.testing.assert_array_equal(O, X + np.append(X[1:], 0.0))
    with pytest.raises(AssertionError, match="racy: O depends on the order of the threads"):
        racy(X, 8, np.zeros(8), size=8)


def test_the_gpu_benchmarks_run_on_the_emulated_device(monkeypatch):
    """bench/bench_gpu.py has never run on a GPU, and a device session is short: every section
    runs here against the stand-in cupy (its arrays are NumPy's, the hopping kernel's CUDA source
    is emulated, the flows run on the NumPy namespace), so a Python error in the benchmark code
    shows here, not on the device. Each section yields its records, none fails."""
    import lattice as L
    from lattice.backend import default_xp
    cuda_emulation.load(monkeypatch, "_cupy_hopping")
    monkeypatch.setattr(L, "get_namespace", lambda name=None: default_xp())
    from bench import bench_gpu
    recs = bench_gpu.run(quick=True)
    assert [r for r in recs if "error" in r] == []
    names = [r["name"] for r in recs]
    for expected in ("device copy bandwidth", "Dslash 6x6x6x12 complex128", "Dslash 6x6x6x12 complex64",
                     "Dslash 6x6x6x12 ghost block, core then rest", "CG Schur normal 6x6x6x12",
                     "flow train step learned path 4^4 4 layers B=2", "spectral flow forward 6x6x6x12 (4 layers)",
                     "eq.19 generation per config", "eq.19 reweighting per config"):
        assert expected in names, (expected, names)
    assert all(r["seconds"] > 0 for r in recs)
    cg = next(r for r in recs if r["name"].startswith("CG"))
    assert 0 < cg["iterations"] < 20000


def test_a_failing_gpu_benchmark_section_is_recorded_and_the_rest_run(monkeypatch, capsys):
    from bench import bench_gpu
    recs = []

    def broken():
        raise KeyError("no such kernel")
    bench_gpu._section(recs, "broken", broken)
    bench_gpu._section(recs, "fine", lambda: [{"name": "fine", "seconds": 1.0}])
    assert recs == [{"name": "broken FAILED", "seconds": 0.0, "error": "KeyError: 'no such kernel'"},
                    {"name": "fine", "seconds": 1.0}]
    err = capsys.readouterr().err
    assert "Traceback" in err and 'gpu bench record: {"name": "fine", "seconds": 1.0}' in err
