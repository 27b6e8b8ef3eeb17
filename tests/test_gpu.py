"""CuPy on a GPU (issue 14): every kernel against its array-API reference on random inputs
(complex64 and complex128), and the flow, HMC, CG and determinant ratio on CuPy equal to NumPy
to rounding. Collected everywhere, skipped with the reason where there is no usable GPU;
``make test-gpu`` runs this file alone and sets GAUGEFLOW_REQUIRE_GPU=1, which turns the skip
into a failure."""
import os

import numpy as np
import pytest

import lattice as L
from lattice import kernels


def _cupy_or_skip():
    try:
        import cupy
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:   # ImportError, CUDARuntimeError (no driver), ...
        reason = f"no usable GPU: {type(exc).__name__}: {exc}"
    else:
        if n > 0:
            return cupy
        reason = "no usable GPU: CuPy sees 0 CUDA devices"
    if os.environ.get("GAUGEFLOW_REQUIRE_GPU") == "1":
        pytest.fail(f"GAUGEFLOW_REQUIRE_GPU=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cp():
    return _cupy_or_skip()


@pytest.fixture(scope="module")
def xcp(cp):
    return L.get_namespace("cupy")


TOL = {"complex128": 1e-12, "complex64": 5e-5}


def _rand(shape, dtype, seed=0):
    r = np.random.default_rng(seed)
    return (r.normal(size=shape) + 1j * r.normal(size=shape)).astype(dtype)


def _close(a, b, tol):
    a, b = L.to_host(a), L.to_host(b)
    return float(np.max(np.abs(a - b))) <= tol * max(1.0, float(np.max(np.abs(b))))


@pytest.mark.parametrize("dtype", ["complex128", "complex64"])
@pytest.mark.parametrize("da,db", [(False, False), (True, False), (False, True), (True, True)])
def test_mul_kernels_on_the_device(cp, xcp, dtype, da, db):
    assert kernels.implementation(xcp) == "cupy"
    A, B = _rand((3, 3, 5, 7), dtype, 1), _rand((3, 3, 5, 7), dtype, 2)
    C = kernels.mul(cp.asarray(A), cp.asarray(B), da=da, db=db)
    assert C.dtype == A.dtype
    assert _close(C, kernels.mul_reference(A, B, da=da, db=db), TOL[dtype])
    G = kernels.mul_gather(cp.asarray(A), cp.asarray(B), [4, 0, 2], [1, 1, 3], da=da, db=db)
    assert _close(G, kernels.mul_reference(A[:, :, [4, 0, 2]], B[:, :, [1, 1, 3]], da=da, db=db), TOL[dtype])
    with kernels.reference_only():
        R = kernels.mul(cp.asarray(A), cp.asarray(B), da=da, db=db)
    assert _close(C, R, TOL[dtype])


@pytest.mark.parametrize("dtype", ["complex128", "complex64"])
def test_eigh_polar_real_inner_on_the_device(cp, dtype):
    X = _rand((64, 3, 3), dtype, 3)
    H = X + np.conj(np.swapaxes(X, -1, -2))
    w, V = kernels.eigh(cp.asarray(H))
    Hd = cp.asarray(H)
    assert _close(Hd @ V, V * w[:, None, :], 10 * TOL[dtype])
    W, s, Vh = kernels.polar(cp.asarray(X))
    assert _close((W * s[:, None, :]) @ Vh, X, 10 * TOL[dtype])
    A, B = _rand((3, 3, 4, 9), dtype, 4), _rand((3, 3, 5, 9), dtype, 5)
    assert _close(kernels.real_inner(cp.asarray(A), cp.asarray(B)), kernels.real_inner(A, B), TOL[dtype])


@pytest.mark.parametrize("dtype", ["complex128", "complex64"])
def test_expm_and_phi_ad_on_the_device(cp, dtype):
    """kernels.expm (one thread per matrix, squarings included) and kernels.phi_ad /
    phi_ad_vjp (block-triangular Horner adjoint) against the references on the same arrays."""
    from lattice import su_n
    X = su_n.project_algebra(_rand((50, 3, 3), "complex128", 7))
    X *= np.geomspace(1e-3, 6.0, 50)[:, None, None] / np.linalg.norm(X, axis=(-2, -1))[:, None, None]
    Xd = cp.asarray(X.astype(dtype))
    E = kernels.expm(Xd)
    with kernels.reference_only():
        E_ref = kernels.expm(Xd)
    assert E.dtype == Xd.dtype and _close(E, E_ref, 10 * TOL[dtype])
    r = np.random.default_rng(8)
    A = r.normal(size=(300, 8, 8))
    A = 0.5 * (A - np.swapaxes(A, -1, -2)) / np.max(np.linalg.norm(A, axis=(-2, -1)))
    G = cp.asarray(r.normal(size=A.shape))
    Ad = cp.asarray(A)
    phi, saved = kernels.phi_ad(Ad)
    Ab = kernels.phi_ad_vjp(Ad, saved, G)
    with kernels.reference_only():
        phi_ref, saved_ref = kernels.phi_ad(Ad)
        Ab_ref = kernels.phi_ad_vjp(Ad, saved_ref, G)
    assert saved.P is None and saved.terms == saved_ref.terms
    assert _close(phi, phi_ref, 1e-14) and _close(Ab, Ab_ref, 1e-13)


@pytest.mark.parametrize("dtype", ["complex128", "complex64"])
def test_staple_pairs_on_the_device(cp, dtype):
    """The fused staple-pair chain and its adjoint (no atomics) against the mul_gather
    reference on the same CuPy arrays."""
    from lattice.kernels.staple_pairs import _plan
    Q = [(0, 1), (0, 2), (2, 1), (1, 0)]
    i_mu, i_nu = [m for m, _ in Q], [n for _, n in Q]
    E, i_mn, i_nm = _plan(i_mu, i_nu)
    rest = (2, 301)
    S, T = cp.asarray(_rand((3, 3, 3) + rest, dtype, 9)), cp.asarray(_rand((3, 3, len(E)) + rest, dtype, 10))
    oR = [5, 1, 6, 2]
    outs = []
    for ref in (False, True):
        D, R = cp.zeros((3, 3, len(Q)) + rest, dtype), cp.zeros((3, 3, 7) + rest, dtype)
        Rb, Db = cp.asarray(_rand(R.shape, dtype, 11)), cp.asarray(_rand(D.shape, dtype, 12))
        Sb, Tb = cp.zeros(S.shape, dtype), cp.zeros(T.shape, dtype)
        if ref:
            with kernels.reference_only():
                kernels.staple_pairs(S, T, i_mu, i_nu, i_mn, i_nm, D=D, R=R, oR=oR)
                kernels.staple_pairs_vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb=Rb, iR=oR, Db=Db, S_bar=Sb, T_bar=Tb)
        else:
            kernels.staple_pairs(S, T, i_mu, i_nu, i_mn, i_nm, D=D, R=R, oR=oR)
            kernels.staple_pairs_vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb=Rb, iR=oR, Db=Db, S_bar=Sb, T_bar=Tb)
        outs.append((D, R, Sb, Tb))
    for a, b in zip(*outs):
        assert _close(a, b, 10 * TOL[dtype])


@pytest.mark.parametrize("dtype", [np.complex128, np.complex64])
def test_hopping_kernel_equals_reference(cp, dtype):
    """The fused CUDA kernel (lattice/kernels/_cupy_hopping.py) against the reference, full
    lattice and both even-odd blocks, with the adjoint flag."""
    from test_kernels_hopping import WilsonLinks, _both, _close, _spinor
    shape = (4, 6, 2, 4)
    U = L.random_gauge(shape, seed=1, batch=(2,)).astype(dtype)
    links = WilsonLinks(cp.asarray(U), L.Layout(shape), (1j, 1, np.exp(0.3j), -1))
    assert kernels.implementation(cp) == "cupy"
    psi = cp.asarray(_spinor(links.layout, lead=(3, 1), dtype=dtype))
    for dagger in (False, True):
        fast, ref = _both(lambda: links.hop(psi, dagger=dagger))
        _close([cp.asnumpy(a) for a in fast], [cp.asnumpy(b) for b in ref], dtype)
        for target in (0, 1):
            e = cp.asarray(_spinor(links.eo.half, lead=(3, 1), dtype=dtype, seed=4 + target))
            fast, ref = _both(lambda: links.hop_eo(e, target, dagger=dagger))
            _close([cp.asnumpy(a) for a in fast], [cp.asnumpy(b) for b in ref], dtype)


def test_hopping_core_then_rest_on_a_split_layout_is_bit_for_bit(cp):
    """The hopping kernel on a block with ghost layers, core launched before the faces arrive
    and the rest after (asynchronous launches, the faces copied on the same stream), equals one
    launch on the whole block bit for bit -- full lattice and a packed even-odd block."""
    from test_kernels_hopping import PROJ, _Split, _links, _spinor, hopping
    from lattice.kernels import _cupy_hopping as ch
    shape = (4, 6, 4, 8)
    links = _links(shape, batch=(2,), bc=(1j, 1, np.exp(0.3j), -1))
    U = [cp.asarray(u) for u in links.U]
    psi = cp.asarray(_spinor(links.layout, lead=(3, 1)))
    for dagger in (False, True):
        split = hopping._ghost_hop(ch, psi, U, U, _Split(links.layout, (1, 2, 1, 2)), (1, 3), PROJ, dagger, {},
                                   "full")
        for a, b in zip(split, ch.wilson_hop(psi, U, U, dagger=dagger)):
            assert bool(cp.array_equal(a, b))
    Ueo, _ = links._eo_links()
    Ueo = [[cp.asarray(u) for u in side] for side in Ueo]
    e = cp.asarray(_spinor(links.eo.half, lead=(3, 1), seed=3))
    half = _Split(links.eo.half, (2, 1, 2, 1))
    for target in (0, 1):
        split = hopping._ghost_hop(ch, e, Ueo[target], Ueo[1 - target], half, (0, 2), PROJ, False, {}, None,
                                   target=target, row_parity=hopping._block_row_parity(half, (0, 2)))
        for a, b in zip(split, ch.wilson_hop(e, Ueo[target], Ueo[1 - target], target=target)):
            assert bool(cp.array_equal(a, b))


@pytest.mark.parametrize("dtype", ["complex128", "complex64"])
def test_line_sums_on_the_device(cp, xcp, dtype):
    """kernels.line_sums / line_sums_vjp (CUDA chain, atomic adjoint) against the array-API
    reference on the same CuPy arrays: residual rectangles at a third of the sites, two lead
    axes, accumulation into L_bar."""
    from flows.residual import family_paths
    shape = (4, 3, 4, 6)
    tb = kernels.line_table(shape, [p for p, _ in family_paths("rectangle", 2, 4)],
                            np.random.default_rng(3).choice(288, size=96, replace=False), shift=(2, 1))
    Ld = cp.asarray(_rand((2, 2, 4) + shape + (3, 3), dtype, 4))
    Wb = cp.asarray(_rand((2, 2, 96, 3, 3), dtype, 5))
    base = cp.asarray(_rand((2, 2, 4) + shape + (3, 3), dtype, 6))
    W = kernels.line_sums(Ld, tb)
    Lb = kernels.line_sums_vjp(Ld, tb, Wb, L_bar=base.copy())
    with kernels.reference_only():
        W_ref = kernels.line_sums(Ld, tb)
        Lb_ref = base + kernels.line_sums_vjp(Ld, tb, Wb)
    assert W.dtype == Ld.dtype and Lb.dtype == Ld.dtype
    assert _close(W, W_ref, TOL[dtype]) and _close(Lb, Lb_ref, TOL[dtype])


@pytest.mark.parametrize("dtype", ["complex128", "complex64"])
def test_staple_output_layer_on_the_device_equals_numpy(cp, dtype):
    """kernels.transported_mix and its adjoint on CuPy (the composition of the fused pair chain
    and real_mix) against the fused one-process NumPy kernel: out, S_bar and c_bar."""
    sites = (3, 4, 3, 5)
    lay = L.Layout(sites)
    S = _rand((3, 3, 4, 2, 2) + sites, dtype, 13)
    c = np.random.default_rng(14).normal(size=(1, 14))
    ob = _rand((3, 3, 1, 2) + sites, dtype, 15)
    got = []
    for xp_arr in (np.asarray, cp.asarray):
        Sx = xp_arr(S)
        out, _ = kernels.transported_mix(Sx, lay, 2, xp_arr(c))
        Sb = xp_arr(np.zeros_like(S))
        cb = kernels.transported_mix_vjp(Sx, lay, 2, xp_arr(c), xp_arr(ob), S_bar=Sb)
        got.append((out, Sb, cb))
    for a, b in zip(got[1], got[0]):
        assert _close(a, b, 10 * TOL[dtype])


def test_staple_network_and_flow_equal_numpy(cp):
    import flows
    shape = (4, 4, 4, 4)
    lay = L.Layout(shape)
    m = flows.SpectralFlow(4, 3, 4, "learned", schedule="simple", context_hidden=(8,), context_kernel=1)
    p = m.init(0)
    U = L.random_gauge(shape, N=3, batch=(2,), seed=5)
    V, ld = m.forward(p, U, lay)
    pd = {k: cp.asarray(v) for k, v in p.items()}
    Vd, ldd = m.forward(pd, cp.asarray(U), lay)
    assert _close(Vd, V, 1e-11) and _close(ldd, ld, 1e-10)


def test_residual_flow_and_path_gradient_equal_numpy(cp):
    """The correlated-ensemble model on the device (line sums at the active links, adaptive
    phi series, context network): flowed field, log J and the path-gradient loss and
    parameter gradients equal NumPy's."""
    import flows
    from flows.train import sample_loss_and_grad
    from lattice.actions import Wilson
    shape = (4, 4, 4, 4)
    lay = L.Layout(shape)
    m = flows.residual_flow(4, 3, ("M2", "M4"), ("plaquette", "rectangle"), field_dependent=True,
                            context_hidden=(4,), context_kernel=3)
    rng = np.random.default_rng(0)
    p = {k: v + 0.3 * rng.normal(size=v.shape) for k, v in m.init(0).items()}
    U = L.random_gauge(shape, N=3, batch=(2,), seed=6)
    V, ld = m.forward(p, U, lay)
    pd = {k: cp.asarray(v) for k, v in p.items()}
    Vd, ldd = m.forward(pd, cp.asarray(U), lay)
    assert _close(Vd, V, 1e-11) and _close(ldd, ld, 1e-10)
    base, target = flows.HaarBase(shape, 3, layout=lay), flows.GaugeTarget(Wilson(2.0))
    loss, g, _, _ = sample_loss_and_grad(m, p, base, target, U, "path", lay)
    based = flows.HaarBase(shape, 3, layout=lay, xp=L.get_namespace("cupy"))
    lossd, gd, _, _ = sample_loss_and_grad(m, pd, based, target, cp.asarray(U), "path", lay)
    assert abs(float(lossd) - float(loss)) < 1e-9 * max(1.0, abs(float(loss)))
    for k in g:
        assert _close(gd[k], g[k], 1e-8), k


def test_hmc_cg_and_det_ratio_equal_numpy(cp, xcp):
    import fermions as F
    from lattice.actions import Wilson
    shape = (4, 2, 2, 2)
    Un = L.random_gauge(shape, seed=1)
    Ud = cp.asarray(Un)
    S = Wilson(5.0)
    lay = L.Layout(shape)
    assert _close(S.force(Ud, lay), S.force(Un, lay), 1e-12)
    opn, opd = F.TwistedMassWilson(Un, 0.17, 0.1), F.TwistedMassWilson(Ud, 0.17, 0.1)
    psi = L.Rng(2).complex_normal(layout=lay, inner=(4, 3))
    xn, _ = F.cg(opn.apply_schur_normal, opn.pack(psi)[1], tol=1e-11)
    xd, info = F.cg(opd.apply_schur_normal, opd.pack(cp.asarray(psi))[1], tol=1e-11, layout=opd.half_layout)
    assert info.converged and _close(xd, xn, 1e-9)
    rn = F.log_det_ratio(Un, Un, 0.17, 0.1, n_shots=2, seed=1)
    rd = F.log_det_ratio(Ud, Ud, 0.17, 0.1, n_shots=2, seed=1)
    assert _close(rd.log_weights, rn.log_weights, 1e-9)
    from lattice.hmc import run_hmc
    Uh, _ = run_hmc(S, Un, n_traj=2, n_steps=4, seed=3, progress=False)
    Uhd, _ = run_hmc(S, Ud, n_traj=2, n_steps=4, seed=3, progress=False)
    assert _close(Uhd, Uh, 1e-10)
