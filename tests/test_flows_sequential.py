"""Sequential flows of mixed layers (flows.model.Flow) and the layer protocol
(flows.protocol): a Flow of coupling layers is SpectralFlow bit for bit, save/load of both
classes (including files in the original SpectralFlow format), unknown layer types, and a
flow mixing two layer types (a test-only layer registered here) with the fused path
gradient and finite-difference VJP checks."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import flows
from flows.layers import CouplingLayer
from lattice import random_gauge, su_n
from lattice.backend import Rng, namespace

from flow_testing import assert_vjp, perturbed, small_layer_kw, model_harness


# ---------------------------------------------------------------------- a second layer type
@flows.register_layer
class LeftMul:
    """Test layer U'_mu(x) = exp(c A) U_mu(x) on every link: A a fixed su(N) matrix
    (coordinates ``a`` on the generators of lattice.su_n), c a learnable scalar (key "c",
    shape (1,)). Left translation by a constant group element preserves the Haar measure, so
    log det = 0 exactly; the inverse is exp(-c A) V.

    VJPs (cotangent convention of flows.module): forward V = G U, G = exp(c A):
    U_bar = G^dag V_bar, c_bar = <V_bar, A V>_R; inverse U = G^dag V: V_bar = G U_bar,
    c_bar = -<U_bar, A U>_R. A context (from forward or inverse) holds the pair (U, V).
    """

    layer_type = "test-leftmul"

    def __init__(self, Nd, N, a=None):
        self.Nd, self.N = int(Nd), int(N)
        n = self.N * self.N - 1
        self.a = [float(v) for v in (a if a is not None else np.cos(np.arange(1, n + 1)))]
        if len(self.a) != n:
            raise ValueError(f"need {n} su({N}) coordinates, got {len(self.a)}")

    def config(self):
        return {"Nd": self.Nd, "N": self.N, "a": list(self.a)}

    @classmethod
    def from_config(cls, cfg):
        return cls(**cfg)

    def param_shapes(self):
        return {"c": (1,)}

    def init(self, rng, gain=0.5):
        return {"c": gain * rng.normal((1,))}

    def describe(self):
        return f"left multiplication by exp(c A), a = {np.round(self.a, 3).tolist()}"

    def _A(self, xp, dtype):
        T = su_n.generators(self.N, xp=xp, dtype=dtype)
        w = xp.astype(xp.asarray(self.a), dtype)
        return xp.sum(xp.reshape(w, (-1, 1, 1)) * T, axis=0)

    def _pair(self, params, X, inverse):
        xp = namespace(X)
        A = self._A(xp, X.dtype)
        c = xp.astype(xp.asarray(params["c"]), X.dtype)[0]
        G = su_n.expm(c * A)
        Gi = su_n.expm(-c * A)
        Y = (Gi if inverse else G) @ X
        logdet = xp.zeros(X.shape[:X.ndim - self.Nd - 3], dtype=xp.float64)
        U, V = (Y, X) if inverse else (X, Y)
        return (Y, logdet), dict(U=U, V=V, G=G, A=A)

    def forward(self, params, U, *, layout=None):
        return self._pair(params, U, inverse=False)

    def inverse(self, params, V, *, layout=None):
        return self._pair(params, V, inverse=True)

    @staticmethod
    def _inner(a, b):
        xp = namespace(a)
        return xp.reshape(xp.sum(xp.real(xp.conj(a) * b)), (1,))

    def vjp(self, params, ctx, U_out_bar=None, logdet_bar=None, *, need_params=True):
        xp = namespace(ctx["U"])
        if U_out_bar is None:
            return (xp.zeros_like(ctx["U"]),), ({"c": xp.zeros((1,), dtype=xp.float64)} if need_params else {})
        grads = {"c": self._inner(U_out_bar, ctx["A"] @ ctx["V"])} if need_params else {}
        return (su_n.dagger(ctx["G"]) @ U_out_bar,), grads

    def inverse_vjp(self, params, ctx, U_bar=None, logdet_inv_bar=None, *, need_params=True):
        xp = namespace(ctx["V"])
        if U_bar is None:
            return (xp.zeros_like(ctx["V"]),), ({"c": xp.zeros((1,), dtype=xp.float64)} if need_params else {})
        grads = {"c": -self._inner(U_bar, ctx["A"] @ ctx["U"])} if need_params else {}
        return (ctx["G"] @ U_bar,), grads


# ---------------------------------------------------------------------- helpers
def _spectral(loops="learned", n_layers=3, kind="spline", **kw):
    return flows.SpectralFlow(2, 3, n_layers, loops, schedule="paper", direction_layers=2,
                              **{**small_layer_kw(2, kind), **kw})


def _coupling_layers(model, kind="spline"):
    """The same layers as ``model``'s (built by :func:`_spectral` with ``kind``), built
    independently from its masks and the constructor arguments."""
    return [CouplingLayer(m, 2, 3, model.loops if m.kind == "direction" else model.location_loops,
                          **small_layer_kw(2, kind))
            for m in model.masks]


def _mixed(kind="sine"):
    """direction layer (learned loops), LeftMul, location layer (plaquette loops)."""
    masks = flows.build_schedule(2, 3, "paper", "plaquette", direction_layers=2)
    kw = small_layer_kw(2, kind)
    return flows.Flow([CouplingLayer(masks[0], 2, 3, "learned", **kw), LeftMul(2, 3),
                       CouplingLayer(masks[2], 2, 3, "plaquette", **kw)], Nd=2, N=3)


def _assert_same_maps(m1, p1, m2, p2, U):
    for name in ("forward", "inverse"):
        a, la = getattr(m1, name)(p1, U)
        b, lb = getattr(m2, name)(p2, U)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


# ---------------------------------------------------------------------- protocol and registry
def test_protocol_and_registry():
    m = _spectral()
    layer = m.layers[0]
    assert isinstance(layer, flows.GaugeLayer) and isinstance(LeftMul(2, 3), flows.GaugeLayer)
    assert CouplingLayer.layer_type == "spectral"
    reg = flows.registered_layers()
    assert reg["spectral"] is CouplingLayer and reg["test-leftmul"] is LeftMul
    d = {"type": "spectral", "config": layer.config()}
    json.dumps(d)                                                          # JSON-able
    rebuilt = flows.layer_from_config(d)
    assert type(rebuilt) is CouplingLayer and rebuilt.config() == layer.config()
    assert rebuilt.param_shapes() == layer.param_shapes()
    with pytest.raises(flows.UnknownLayerType, match=r"'nope'.*'spectral'"):
        flows.layer_from_config({"type": "nope", "config": {}})

    class NoType:
        pass
    with pytest.raises(TypeError, match="layer_type"):
        flows.register_layer(NoType)

    class Impostor(LeftMul):
        pass
    with pytest.raises(ValueError, match="already registered"):
        flows.register_layer(Impostor)
    NoType.layer_type = "test-incomplete"
    with pytest.raises(TypeError, match="missing"):
        flows.register_layer(NoType)


def test_flow_checks_its_layers():
    with pytest.raises(TypeError, match="missing"):
        flows.Flow([object()], Nd=2, N=3)
    with pytest.raises(ValueError, match="Nd"):
        flows.Flow([LeftMul(4, 3)], Nd=2, N=3)
    with pytest.raises(ValueError, match="N = 2"):
        flows.Flow([LeftMul(2, 2)], Nd=2, N=3)
    with pytest.raises(ValueError, match="dtype"):
        flows.Flow([], Nd=2, N=3, dtype="float32")


def test_empty_flow_is_the_identity():
    f = flows.Flow([], Nd=2, N=3)
    U = random_gauge((4, 4), N=3, batch=(2,), seed=1)
    V, l = f.forward({}, U)
    np.testing.assert_array_equal(V, U)
    assert l.shape == (2,) and np.all(l == 0)


# ---------------------------------------------------------------------- (a) Flow == SpectralFlow
@settings(max_examples=4)
@given(seed=st.integers(0, 2**16), loops=st.sampled_from(["learned", "plaquette", "rectangle"]))
def test_flow_of_coupling_layers_equals_spectral_flow(seed, loops):
    """Same masks and parameters: forward, inverse, log J, init and the fused path pass agree
    bit for bit."""
    m = _spectral(loops)
    f = flows.Flow(_coupling_layers(m), Nd=2, N=3)
    assert f.param_shapes() == m.param_shapes()
    assert f.describe() == m.describe()
    p0, q0 = m.init(seed), f.init(seed)
    assert list(p0) == list(q0)
    for k in p0:
        np.testing.assert_array_equal(p0[k], q0[k])
    p = perturbed(p0, 0.3, seed)
    U = random_gauge((4, 4), N=3, batch=(2,), seed=seed)
    _assert_same_maps(m, p, f, p, U)
    r = Rng(seed)
    zb, lb = r.complex_normal(U.shape), r.normal((2,))
    a, b = m.forward_path(p, U, zb, lb), f.forward_path(p, U, zb, lb)
    for x, y in ((a[0], b[0]), (a[1], b[1]), (a[3], b[3])):
        np.testing.assert_array_equal(x, y)
    ga, gb = m.vjp(p, a[2], zb, lb), f.vjp(p, b[2], zb, lb)
    np.testing.assert_array_equal(ga[0], gb[0])
    assert set(ga[1]) == set(gb[1])
    for k in ga[1]:
        np.testing.assert_array_equal(ga[1][k], gb[1][k])


def test_flow_config_round_trip_and_spectral_generic_config():
    m = _spectral("learned", location_loops="plaquette")
    cfg = flows.Flow.config(m)                                  # generic form of a spectral flow
    assert set(cfg) == {"Nd", "N", "dtype", "recompute", "layers"}
    assert [d["type"] for d in cfg["layers"]] == ["spectral"] * 3
    json.dumps(cfg)
    f = flows.Flow.from_config(cfg)
    assert type(f) is flows.Flow and f.config() == cfg
    p = perturbed(m.init(0), 0.2, 3)
    _assert_same_maps(m, p, f, p, random_gauge((4, 4), N=3, batch=(2,), seed=3))


# ---------------------------------------------------------------------- (b) save / load
def test_flow_save_load_round_trip(tmp_path):
    f = flows.Flow(_coupling_layers(_spectral("plaquette")), Nd=2, N=3, dtype="complex128", recompute=False)
    p = perturbed(f.init(1), 0.2, 4)
    flows.save(tmp_path / "flow.h5", f, p, extra={"note": "x"})
    stored = flows.read_config(tmp_path / "flow.h5")
    assert stored["class"] == "Flow" and stored["note"] == "x" and stored["config"] == f.config()
    f2, p2 = flows.load(tmp_path / "flow.h5")
    assert type(f2) is flows.Flow and f2.config() == f.config() and f2.recompute is False
    assert list(p2) == list(p)
    _assert_same_maps(f, p, f2, p2, random_gauge((4, 4), N=3, batch=(2,), seed=5))
    # a spectral flow is still stored in its own format
    m = _spectral()
    flows.save(tmp_path / "sf.h5", m, m.init(0))
    assert flows.read_config(tmp_path / "sf.h5") == {"class": "SpectralFlow", "config": m.config()}
    m2, _ = flows.load(tmp_path / "sf.h5")
    assert type(m2) is flows.SpectralFlow


def test_unregistered_flow_subclass_is_saved_as_flow(tmp_path):
    class MyFlow(flows.Flow):
        pass
    f = MyFlow([LeftMul(2, 3)], Nd=2, N=3)
    p = f.init(0)
    flows.save(tmp_path / "f.h5", f, p)
    f2, p2 = flows.load(tmp_path / "f.h5")
    assert type(f2) is flows.Flow
    _assert_same_maps(f, p, f2, p2, random_gauge((4, 4), N=3, batch=(1,), seed=6))


# ---------------------------------------------------------------------- (c) files of the old format
# What flows.save wrote for a SpectralFlow before flows.Flow existed:
# {"class": "SpectralFlow", "config": <the constructor arguments below>}. Spelled out so that
# this test keeps testing that format whatever flows.save writes later.
OLD_SPECTRAL_CONFIG = {
    "Nd": 2, "N": 3, "n_layers": 3, "loops": "learned", "location_loops": "plaquette",
    "masks": [
        {"kind": "direction", "mu": 0, "parity": 0, "offset": None, "orientation": [1, 1], "along": None},
        {"kind": "direction", "mu": 1, "parity": 0, "offset": None, "orientation": [1, 1], "along": None},
        {"kind": "location", "mu": None, "parity": None, "offset": [0, 0], "orientation": [1, -1], "along": None},
    ],
    "dtype": None, "recompute": True, "staple_width": 3, "staple_layers": 2, "context_hidden": [3],
    "context_kernel": 3, "context_loops": ["plaquette"], "context_activation": "tanh", "spline_bins": 4,
    "spline_basis": 2, "spline_kind": "spline", "save_memory": False,
}


def test_old_spectral_flow_files_load_unchanged(tmp_path):
    ref = flows.SpectralFlow(2, 3, 3, "learned", location_loops="plaquette", schedule="paper",
                             direction_layers=2, **small_layer_kw(2, "spline"))
    p = perturbed(ref.init(0), 0.3, 7)
    path = tmp_path / "old.h5"
    flows.save_params(path, p, {"class": "SpectralFlow", "config": OLD_SPECTRAL_CONFIG})
    m, q = flows.load(path)
    assert type(m) is flows.SpectralFlow
    assert m.masks == ref.masks and [l.loops for l in m.layers] == ["learned", "learned", "plaquette"]
    assert m.config() == OLD_SPECTRAL_CONFIG
    U = random_gauge((4, 4), N=3, batch=(2,), seed=8)
    _assert_same_maps(ref, p, m, q, U)
    V, logJ = m.forward(q, U)
    assert np.abs(V - U).max() > 1e-2 and np.all(np.abs(logJ) > 1e-3)       # a non-trivial flow


# ---------------------------------------------------------------------- (d) unknown layer types
def test_unknown_layer_type_in_a_file(tmp_path):
    cfg = {"Nd": 2, "N": 3, "dtype": None, "recompute": True,
           "layers": [{"type": "test-leftmul", "config": LeftMul(2, 3).config()},
                      {"type": "no-such-layer", "config": {}}]}
    flows.save_params(tmp_path / "u.h5", {"layer0.c": np.zeros(1)}, {"class": "Flow", "config": cfg})
    with pytest.raises(flows.ParamFileError, match=r"'no-such-layer'.*'spectral'.*'test-leftmul'"):
        flows.load(tmp_path / "u.h5")
    bad = {k: v for k, v in cfg.items() if k != "layers"}
    flows.save_params(tmp_path / "b.h5", {}, {"class": "Flow", "config": bad})
    with pytest.raises(flows.ParamFileError, match="cannot build a Flow"):
        flows.load(tmp_path / "b.h5")
    flows.save_params(tmp_path / "c.h5", {}, {"class": "NoSuchFlow", "config": bad})
    with pytest.raises(flows.ParamFileError, match="no flow model"):
        flows.load(tmp_path / "c.h5")


# ---------------------------------------------------------------------- (e) mixed layer types
def test_test_layer_vjps():
    """The test layer itself: inverse, and both VJPs against finite differences."""
    layer = LeftMul(2, 3)
    p = layer.init(Rng(1))
    U = random_gauge((4, 4), N=3, batch=(2,), seed=9)
    (V, l), _ = layer.forward(p, U)
    (U2, li), _ = layer.inverse(p, V)
    np.testing.assert_allclose(U2, U, atol=1e-13)
    assert np.all(l == 0) and np.all(li == 0)
    assert_vjp(layer.forward, layer.vjp, p, (U,), group=(0,), h=1e-4, rtol=1e-7)
    assert_vjp(layer.inverse, layer.inverse_vjp, p, (V,), group=(0,), h=1e-4, rtol=1e-7)


def test_mixed_flow_fused_path_gradient():
    """forward_path's gq equals inverse_ctx + inverse_vjp at x = f(z) for a flow mixing
    coupling layers and the test layer; recompute=False gives the same gradients."""
    f = _mixed("spline")
    p = perturbed(f.init(0), 0.3, 2)
    z = random_gauge((4, 4), N=3, batch=(2,), seed=10)
    r = Rng(5)
    zb, lb = r.complex_normal(z.shape), r.normal((2,))
    x, logJ, ctx, gq = f.forward_path(p, z, zb, lb)
    V, l = f.forward(p, z)
    np.testing.assert_array_equal(x, V)
    np.testing.assert_array_equal(logJ, l)
    z2, logJi, ictx = f.inverse_ctx(p, x)
    np.testing.assert_allclose(z2, z, atol=1e-10)
    np.testing.assert_allclose(logJi, -logJ, atol=1e-10)
    gq2, _ = f.inverse_vjp(p, ictx, zb, lb)
    np.testing.assert_allclose(gq, gq2, atol=1e-9 * np.abs(gq2).max())
    f_keep = flows.Flow.from_config({**f.config(), "recompute": False})
    xb = r.complex_normal(z.shape)
    g1 = f.vjp(p, ctx, xb, lb)
    x3, _, ctx3 = f_keep.forward_ctx(p, z)
    g2 = f_keep.vjp(p, ctx3, xb, lb)
    np.testing.assert_array_equal(x3, x)
    np.testing.assert_allclose(g1[0], g2[0], atol=1e-12)
    assert set(g1[1]) == set(p) and set(g2[1]) == set(p)              # every layer gets gradients
    for k in g1[1]:
        np.testing.assert_allclose(g1[1][k], g2[1][k], atol=1e-12)



def test_mixed_flow_vjps_and_save_load(tmp_path):
    """Model VJPs (forward and inverse; links and all parameters) vs finite differences (smooth
    angle maps), and a save/load round trip of the mixed flow."""
    f = _mixed("sine")
    p = perturbed(f.init(0), 0.3, 3)
    U = random_gauge((4, 4), N=3, batch=(2,), seed=11)
    for fwd, bwd in ((f.forward_ctx, f.vjp), (f.inverse_ctx, f.inverse_vjp)):
        assert_vjp(*model_harness(fwd, bwd), p, (U,), group=(0,), h=2e-5, rtol=1e-6)
    flows.save(tmp_path / "mixed.h5", f, p)
    f2, p2 = flows.load(tmp_path / "mixed.h5")
    assert [type(l) for l in f2.layers] == [CouplingLayer, LeftMul, CouplingLayer]
    assert "layer1.c" in p2 and f2.describe() == f.describe()
    _assert_same_maps(f, p, f2, p2, U)
