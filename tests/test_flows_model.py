"""Spectral flow models (flows.model): identity at initialisation, invertibility, gauge
equivariance, VJPs of the whole stack, the fused path-gradient pass, save/load and use on
other volumes."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import flows
from flows.gradcheck import assert_vjp
from lattice import Layout, su_n, random_gauge, gauge_transform, random_gauge_transformation
from lattice.backend import Rng

from flow_testing import perturbed, small_layer_kw, model_harness

SHAPE4 = (2, 2, 2, 2)


def _model(Nd, loops, n_layers=3, kind="spline", direction_layers=2, **kw):
    return flows.SpectralFlow(Nd, 3, n_layers, loops, schedule="paper", direction_layers=direction_layers,
                              **{**small_layer_kw(Nd, kind), **kw})


def _setup(Nd, loops, seed=1, kind="spline", scale=0.2, **kw):
    m = _model(Nd, loops, kind=kind, **kw)
    return m, perturbed(m.init(0), scale, seed)


def test_schedule_and_config():
    m = flows.SpectralFlow(4, 3, 64, "learned")
    kinds = [l.mask.kind for l in m.layers]
    assert kinds == ["direction"] * 48 + ["location"] * 16          # the paper's 48 + 16 block
    m2 = flows.SpectralFlow.from_config(m.config())
    assert m2.config() == m.config()
    assert m.param_shapes() == m2.param_shapes()
    mp = flows.SpectralFlow(4, 3, 64, "learned", location_loops="plaquette")
    assert [l.loops for l in mp.layers] == ["learned"] * 48 + ["plaquette"] * 16


@pytest.mark.parametrize("loops", ["learned", "plaquette", "rectangle"])
def test_identity_at_initialisation(loops):
    for Nd, shape in [(2, (4, 4)), (4, SHAPE4)]:
        m = _model(Nd, loops)
        U = random_gauge(shape, N=3, batch=(2,), seed=1)
        V, logJ = m.forward(m.init(5), U)
        np.testing.assert_array_equal(V, U)            # bit for bit, through every layer
        assert np.all(logJ == 0.0)


@pytest.mark.parametrize("loops", ["learned", "plaquette", "rectangle"])
@pytest.mark.parametrize("Nd", [2, 4])
def test_inverse_of_forward(loops, Nd):
    shape = (4, 4) if Nd == 2 else SHAPE4
    m, p = _setup(Nd, loops)
    U = random_gauge(shape, N=3, batch=(3,), seed=2)
    V, logJ = m.forward(p, U)
    assert np.abs(V - U).max() > 1e-2 and np.all(np.abs(logJ) > 1e-3)
    U2, logJi = m.inverse(p, V)
    np.testing.assert_allclose(U2, U, atol=1e-10)
    np.testing.assert_allclose(logJi, -logJ, atol=1e-10)
    su_n.check_su_n(V, tol=1e-12)


@given(seed=st.integers(0, 2**16), Nd=st.sampled_from([2, 4]), loops=st.sampled_from(["learned", "plaquette"]))
def test_gauge_equivariance(seed, Nd, loops):
    """f(U^Omega) = f(U)^Omega and unchanged log-det, for the whole stack (direction and
    location layers)."""
    shape = (4, 4) if Nd == 2 else SHAPE4
    lay = Layout(shape)
    m, p = _setup(Nd, loops, seed=seed)
    U = random_gauge(shape, N=3, batch=(1,), seed=seed)
    Om = random_gauge_transformation(shape, N=3, batch=(1,), seed=seed + 7)
    V, logJ = m.forward(p, U)
    Vg, logJg = m.forward(p, gauge_transform(U, Om, lay))
    np.testing.assert_allclose(Vg, gauge_transform(V, Om, lay), atol=1e-10)
    np.testing.assert_allclose(logJg, logJ, atol=1e-9)


@pytest.mark.parametrize("loops", ["learned", "plaquette"])
@pytest.mark.parametrize("Nd", [2, 4])
def test_model_vjps(loops, Nd):
    """VJPs of the stack (forward and inverse; links and all parameters) vs finite differences
    (smooth angle maps)."""
    shape = (4, 4) if Nd == 2 else SHAPE4
    m, p = _setup(Nd, loops, kind="sine", scale=0.3)
    U = random_gauge(shape, N=3, batch=(2,), seed=3)
    for fwd, bwd in ((m.forward_ctx, m.vjp), (m.inverse_ctx, m.inverse_vjp)):
        assert_vjp(*model_harness(fwd, bwd), p, (U,), group=(0,), h=2e-5, rtol=1e-6)



@pytest.mark.parametrize("loops", ["learned", "plaquette"])
def test_fused_path_pass_equals_inverse_vjp(loops):
    """forward_path's gq equals inverse_ctx + inverse_vjp at x = f(z); recompute=False
    (internals kept) gives the same gradients as recomputation."""
    m, p = _setup(2, loops, scale=0.3)
    z = random_gauge((4, 4), N=3, batch=(2,), seed=4)
    r = Rng(2)
    zb, lb = r.complex_normal(z.shape), r.normal((2,))
    x, logJ, ctx, gq = m.forward_path(p, z, zb, lb)
    x2, logJi, ictx = m.inverse_ctx(p, x)
    gq2, _ = m.inverse_vjp(p, ictx, zb, lb)
    np.testing.assert_allclose(gq, gq2, atol=1e-9 * np.abs(gq2).max())
    np.testing.assert_allclose(logJi, -logJ, atol=1e-10)
    xb = r.complex_normal(z.shape)
    g1 = m.vjp(p, ctx, xb, lb)
    m_keep = flows.SpectralFlow.from_config({**m.config(), "recompute": False})
    x3, _, ctx3 = m_keep.forward_ctx(p, z)
    g2 = m_keep.vjp(p, ctx3, xb, lb)
    np.testing.assert_array_equal(x3, x)
    np.testing.assert_allclose(g1[0], g2[0], atol=1e-12)
    for k in g1[1]:
        np.testing.assert_allclose(g1[1][k], g2[1][k], atol=1e-12)


def test_save_load_roundtrip(tmp_path):
    m, p = _setup(2, "learned")
    path = tmp_path / "flow.h5"
    flows.save(path, m, p)
    m2, p2 = flows.load(path)
    assert isinstance(m2, flows.SpectralFlow) and m2.config() == m.config()
    U = random_gauge((4, 4), N=3, batch=(2,), seed=5)
    V, l = m.forward(p, U)
    V2, l2 = m2.forward(p2, U)
    np.testing.assert_array_equal(V, V2)
    np.testing.assert_array_equal(l, l2)
    # a file of other parameters is rejected with the key named
    flows.save_params(tmp_path / "other.h5", {"w": np.zeros(3)}, {"class": "SpectralFlow", "config": m.config()})
    with pytest.raises(flows.ParamFileError, match="missing keys"):
        flows.load(tmp_path / "other.h5")
    flows.save_params(tmp_path / "plain.h5", {"w": np.zeros(3)}, {"anything": 1})
    with pytest.raises(flows.ParamFileError, match="no flow model"):
        flows.load(tmp_path / "plain.h5")


def test_trained_on_4x4x4x4_applies_to_4x4x4x8(tmp_path):
    """Train a small 4d model on 4^4 for a few steps, save, load, and apply it to 4^3 x 8:
    on a 4^3 x 8 field made of two copies of a 4^4 field the result is the two copies of
    the 4^4 result and log J doubles (the parameters are volume independent, the masks are
    rebuilt per layout); invertible on the new volume."""
    from lattice.actions import Wilson
    m = flows.SpectralFlow(4, 3, 2, "learned", schedule="simple", **small_layer_kw(4, "spline"))
    base = flows.HaarBase((4, 4, 4, 4), 3)
    target = flows.GaugeTarget(Wilson(1.0))
    p, hist = flows.train(m, m.init(0), target, base, steps=2, batch_size=2, lr=0.05, progress=False)
    assert any(np.abs(v).max() > 0 for k, v in p.items() if "context.w1" in k)
    flows.save(tmp_path / "m.h5", m, p)
    m2, p2 = flows.load(tmp_path / "m.h5")
    U4 = random_gauge((4, 4, 4, 4), N=3, batch=(1,), seed=6)
    U8 = np.concatenate([U4, U4], axis=-3)                       # time is the last site axis
    V4, l4 = m2.forward(p2, U4)
    V8, l8 = m2.forward(p2, U8)
    np.testing.assert_allclose(V8, np.concatenate([V4, V4], axis=-3), atol=1e-12)
    np.testing.assert_allclose(l8, 2 * l4, atol=1e-9)
    W8 = random_gauge((4, 4, 4, 8), N=3, batch=(1,), seed=7)
    X8, lx = m2.forward(p2, W8)
    Y8, ly = m2.inverse(p2, X8)
    np.testing.assert_allclose(Y8, W8, atol=1e-10)
    np.testing.assert_allclose(ly, -lx, atol=1e-10)


def test_complex64_compute():
    m, p = _setup(2, "learned")
    m32 = flows.SpectralFlow.from_config({**m.config(), "dtype": "complex64"})
    U = random_gauge((4, 4), N=3, batch=(2,), seed=8)
    V, l = m.forward(p, U)
    V32, l32 = m32.forward(p, U)
    assert V32.dtype == np.complex128 and l32.dtype == np.float64     # returned in the input dtype
    np.testing.assert_allclose(V32, V, atol=1e-4)
    np.testing.assert_allclose(l32, l, atol=1e-2)


def test_ambiguous_batch_shapes_are_read_with_the_model_nd():
    """A batch of three 2d fields (3, 2, L, L, N, N) also reads as one 3d field; the model
    knows its Nd."""
    m, p = _setup(2, "plaquette")
    U = random_gauge((4, 4), N=3, batch=(3,), seed=9)
    V, l = m.forward(p, U)
    assert l.shape == (3,)
    with pytest.raises(Exception, match="expected a gauge field"):
        m.forward(p, random_gauge((4, 4, 4), N=3, seed=1)[0])


@pytest.mark.parametrize("loops", ["learned", "plaquette"])
def test_array_api_strict(loops):
    """The whole model (forward, fused path pass, VJP) runs on array_api_strict arrays and
    gives the NumPy numbers bit for bit on the array-API reference kernels, and to rounding on
    the compiled ones (lattice.kernels)."""
    from lattice import kernels
    xs = pytest.importorskip("array_api_strict")
    m, p = _setup(2, loops)
    lay = Layout((4, 4))
    U = random_gauge((4, 4), N=3, batch=(2,), seed=1)
    r = Rng(4)
    zb, lb = r.complex_normal(U.shape), r.normal((2,))
    ps = {k: xs.asarray(v) for k, v in p.items()}
    x, lj, ctx, gq = m.forward_path(ps, xs.asarray(U), xs.asarray(zb), xs.asarray(lb), lay)
    zbar, g = m.vjp(ps, ctx, xs.asarray(zb), xs.asarray(lb))
    xf, ljf, ctxf, gqf = m.forward_path(p, U, zb, lb, lay)
    zbarf, gf = m.vjp(p, ctxf, zb, lb)
    with kernels.reference_only():
        xn, ljn, ctxn, gqn = m.forward_path(p, U, zb, lb, lay)
        zbarn, gn = m.vjp(p, ctxn, zb, lb)
    for a, b, f in ((x, xn, xf), (lj, ljn, ljf), (gq, gqn, gqf), (zbar, zbarn, zbarf)):
        np.testing.assert_array_equal(np.asarray(a), b)
        np.testing.assert_allclose(f, b, rtol=1e-11, atol=1e-11)
    for k in gn:
        np.testing.assert_allclose(gf[k], gn[k], rtol=1e-10, atol=1e-10)
    for k in gn:
        np.testing.assert_array_equal(np.asarray(g[k]), gn[k])
