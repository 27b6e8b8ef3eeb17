"""flows.ContextNet: gauge-invariant frozen-link features, circular convolutions, adjoint."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import flows
from flows.context import context_loops, shifted_copies
from flows.gradcheck import assert_vjp
from lattice import Layout, random_gauge, random_gauge_transformation, gauge_transform, loops, su_n
from lattice.backend import Rng, get_namespace, namespace

SHAPES = {2: [(4, 4), (3, 4)], 3: [(3, 2, 4)], 4: [(2, 3, 2, 2), (3, 2, 2, 2)]}
LOOPS = [("plaquette",), ("rectangle",), ("plaquette", "rectangle")]


def _random_mask(seed, layout, p=0.3):
    return (np.asarray(Rng(seed).uniform((layout.Nd,), layout)) < p).astype(float)


def _perturbed(params, seed, scale=0.3):
    """Parameters with a non-zero head (the initial head is zero)."""
    rng = Rng(seed, xp=namespace(*params.values()))
    return {k: v + scale * rng.normal(tuple(v.shape)) for k, v in params.items()}


@given(Nd=st.sampled_from([2, 3, 4]), N=st.sampled_from([2, 3]), loops_=st.sampled_from(LOOPS),
       seed=st.integers(0, 2**31))
def test_features_and_output_gauge_invariant(Nd, N, loops_, seed):
    shape = SHAPES[Nd][seed % len(SHAPES[Nd])]
    lay = Layout(shape)
    U = random_gauge(shape, N=N, batch=(2,), seed=seed)
    mask = _random_mask(seed + 1, lay)
    net = flows.ContextNet(Nd, 3, hidden=(4,), loops=loops_)
    params = _perturbed(net.init(Rng(seed)), seed + 2)
    Om = random_gauge_transformation(shape, N=N, batch=(2,), seed=seed + 3)
    Ug = gauge_transform(U, Om, lay)
    F, _ = net.features(U, mask, lay)
    Fg, _ = net.features(Ug, mask, lay)
    assert F.shape == (2,) + shape + (net.n_features,)
    np.testing.assert_allclose(Fg, F, atol=1e-13)
    (o,), _ = net.forward(params, U, mask, layout=lay)
    (og,), _ = net.forward(params, Ug, mask, layout=lay)
    np.testing.assert_allclose(og, o, atol=1e-12)


def test_features_are_frozen_loop_traces():
    """f = (Re, Im) tr W / N for loops without masked links, and exactly 0 otherwise."""
    shape = (4, 2, 2, 4)
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(1,), seed=3)
    mask = _random_mask(5, lay, p=0.15)
    net = flows.ContextNet(4, 2, loops=("plaquette", "rectangle"))
    F, _ = net.features(U, mask, lay)
    ones = np.ones((1, 4) + shape + (3, 3))
    for l, (name, path) in enumerate(context_loops(4, net.loops)):
        W = loops.path_product(U, path, lay)
        frozen = np.real(su_n.trace(loops.path_product(ones * (1 - mask)[None, ..., None, None], path, lay))) > 0
        expect = su_n.trace(W) / 3 * frozen
        np.testing.assert_allclose(F[..., 2 * l], np.real(expect), atol=1e-14, err_msg=name)
        np.testing.assert_allclose(F[..., 2 * l + 1], np.imag(expect), atol=1e-14, err_msg=name)
    P01 = loops.plaquette_field(U, 0, 1, lay)
    np.testing.assert_allclose(net.features(U, 0 * mask, lay)[0][..., 0], np.real(su_n.trace(P01)) / 3, atol=1e-14)


@given(Nd=st.sampled_from([2, 3, 4]), N=st.sampled_from([2, 3]), loops_=st.sampled_from(LOOPS),
       activation=st.sampled_from(["tanh", "softplus"]), k=st.sampled_from([1, 3]),
       hidden=st.sampled_from([(), (3,), (3, 2)]), seed=st.integers(0, 2**31), group=st.booleans())
def test_vjp_matches_finite_differences(Nd, N, loops_, activation, k, hidden, seed, group):
    """Adjoint w.r.t. all convolution parameters and the links."""
    shape = SHAPES[Nd][seed % len(SHAPES[Nd])]
    lay = Layout(shape)
    U = random_gauge(shape, N=N, batch=(2,), seed=seed)
    mask = _random_mask(seed + 1, lay)
    net = flows.ContextNet(Nd, 2, hidden=hidden, kernel_size=k, loops=loops_, activation=activation)
    params = _perturbed(net.init(Rng(seed)), seed + 2)
    fwd = lambda p, U, m: net.forward(p, U, m, layout=lay)
    assert_vjp(fwd, net.vjp, params, (U, mask), skip=(1,), group=(0,) if group else (),
               h=1e-4, seed=seed % 991)


def test_translation_equivariance():
    shape = (4, 3, 2)
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(2,), seed=1)
    mask = _random_mask(2, lay)
    net = flows.ContextNet(3, 4, hidden=(5, 5), loops=("plaquette", "rectangle"))
    params = _perturbed(net.init(Rng(3)), 4)
    (o,), _ = net.forward(params, U, mask, layout=lay)
    for mu, n in ((0, 1), (1, -1), (2, 1), (0, 2)):
        Ut = lay.shift(U, mu, n)
        mt = lay.shift(mask, mu, n, inner=0)
        (ot,), _ = net.forward(params, Ut, mt, layout=lay)
        np.testing.assert_allclose(ot, lay.shift(o, mu, n, inner=1), atol=1e-13)


def test_output_independent_of_masked_links():
    shape = (2, 3, 2, 2)
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(2,), seed=1)
    mask = _random_mask(7, lay, p=0.4)
    net = flows.ContextNet(4, 3, hidden=(4,), loops=("plaquette", "rectangle"))
    params = _perturbed(net.init(Rng(3)), 5)
    (o,), ctx = net.forward(params, U, mask, layout=lay)
    V = random_gauge(shape, N=3, batch=(2,), seed=2)
    m = mask[None, ..., None, None]
    (o2,), _ = net.forward(params, m * V + (1 - m) * U, mask, layout=lay)
    np.testing.assert_array_equal(o, o2)
    (Ub, _), _ = net.vjp(params, ctx, Rng(1).normal(o.shape))
    assert np.all(Ub[np.broadcast_to(m, Ub.shape) == 1] == 0)
    assert np.max(np.abs(Ub)) > 0


def test_zero_head_gives_zero_output_and_head_gradient():
    shape = (4, 4)
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(3,), seed=1)
    net = flows.ContextNet(2, 6, hidden=(8, 8))
    params = net.init(Rng(0))
    (o,), ctx = net.forward(params, U, np.zeros((2,) + shape), layout=lay)
    assert o.shape == (3, 4, 4, 6)
    assert np.all(o == 0)
    (Ub, _), g = net.vjp(params, ctx, np.ones(o.shape))
    assert np.all(Ub == 0)                               # zero head: nothing flows back
    assert np.max(np.abs(g["w2"])) > 0 and np.all(g["b2"] == 3 * 16)
    assert np.all(g["w0"] == 0)


def test_convolution_matches_direct_sum():
    """The shift-tree convolution against a direct loop over offsets with np.roll."""
    import itertools
    shape = (3, 4)
    lay = Layout(shape)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2,) + shape + (3,))
    w = rng.normal(size=(9, 3, 4))
    b = rng.normal(size=(4,))
    net = flows.ContextNet(2, 4, hidden=(), kernel_size=3)
    out = net._conv(a, w, b, lay)
    ref = np.zeros((2,) + shape + (4,)) + b
    for j, d in enumerate(itertools.product(range(-1, 2), repeat=2)):
        ad = np.roll(a, shift=(-d[0], -d[1]), axis=(1, 2))   # a(x + d)
        ref += ad @ w[j]
    np.testing.assert_allclose(out, ref, atol=1e-13)
    assert [d for d, _ in shifted_copies(a, lay, 1, inner=1)] == list(itertools.product(range(-1, 2), repeat=2))


@pytest.mark.parametrize("gather_bytes", [None, 1])
def test_gathered_convolution_equals_shifted_copies_forward_and_adjoint(monkeypatch, gather_bytes):
    """The one-process (im2col) convolution and its adjoint against the shifted-copy path that
    split layouts take, in 4d with kernel 3 (81 offsets); gather_bytes=1: one site per block."""
    shape = (3, 2, 4, 2)
    lay = Layout(shape)
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2,) + shape + (3,))
    w = rng.normal(size=(81, 3, 5))
    b = rng.normal(size=(5,))
    zb = rng.normal(size=(2,) + shape + (5,))
    net = flows.ContextNet(4, 5, hidden=(), kernel_size=3)
    if gather_bytes is not None:
        monkeypatch.setattr(flows.ContextNet, "GATHER_BYTES", gather_bytes)
    assert net._gathers(lay)
    got = (net._conv(a, w, b, lay),) + net._conv_vjp(a, w, zb, lay)
    with monkeypatch.context() as mp:
        mp.setattr(flows.ContextNet, "_gathers", staticmethod(lambda layout: False))
        want = (net._conv(a, w, b, lay),) + net._conv_vjp(a, w, zb, lay)
    for g, r in zip(got, want):
        assert g.shape == r.shape
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-12 * np.max(np.abs(r)))


def test_config_and_errors():
    net = flows.ContextNet(4, 7, hidden=(16,), kernel_size=3, loops=("plaquette",))
    assert net.param_shapes() == {"w0": (81, 12, 16), "b0": (16,), "w1": (81, 16, 7), "b1": (7,)}
    assert flows.ContextNet(**net.config()).param_shapes() == net.param_shapes()
    with pytest.raises(ValueError, match="odd"):
        flows.ContextNet(4, 7, kernel_size=2)
    with pytest.raises(ValueError, match="loop"):
        flows.ContextNet(4, 7, loops=("hexagon",))


def test_complex64():
    shape = (2, 2, 2, 4)
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(2,), seed=1)
    net = flows.ContextNet(4, 3, hidden=(4,))
    params = _perturbed(net.init(Rng(0)), 1)
    mask = _random_mask(1, lay)
    (o,), _ = net.forward(params, U, mask, layout=lay)
    (o32,), ctx = net.forward(params, U.astype(np.complex64), mask, layout=lay)
    assert o32.dtype == np.float32
    np.testing.assert_allclose(o32, o, atol=1e-5 * np.max(np.abs(o)))
    (Ub, _), g = net.vjp(params, ctx, np.ones(o.shape, np.float32))
    assert Ub.dtype == np.complex64 and g["w0"].dtype == np.float64


def test_array_api_strict():
    xs = get_namespace("array_api_strict")
    shape = (4, 4)
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(2,), seed=3, xp=xs)
    mask = xs.asarray(_random_mask(1, lay))
    net = flows.ContextNet(2, 3, hidden=(4,), loops=("plaquette", "rectangle"))
    params = _perturbed(net.init(Rng(4, xp=xs)), 5)
    (o,), ctx = net.forward(params, U, mask, layout=lay)
    (Ub, _), g = net.vjp(params, ctx, o)
    ph = {k: np.asarray(v) for k, v in params.items()}
    (oh,), ctxh = net.forward(ph, np.asarray(U), np.asarray(mask), layout=lay)
    (Ubh, _), gh = net.vjp(ph, ctxh, oh)
    np.testing.assert_allclose(np.asarray(o), oh, atol=1e-13)
    np.testing.assert_allclose(np.asarray(Ub), Ubh, atol=1e-12)


def test_vjp_without_parameter_cotangents_gives_the_same_link_cotangent():
    """need_params=False (path-gradient inverse VJPs) skips the weight cotangents: the link
    cotangent is unchanged and the parameter cotangents are zeros of the right shapes."""
    shape = (3, 2, 4, 2)
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(2,), seed=5)
    mask = _random_mask(6, lay)
    net = flows.ContextNet(4, 3, hidden=(4,), loops=("plaquette",))
    params = _perturbed(net.init(Rng(7)), 8)
    (out,), ctx = net.forward(params, U, mask, layout=lay)
    ob = np.random.default_rng(9).normal(size=out.shape)
    (Ub, _), g = net.vjp(params, ctx, ob)
    (Ub2, _), g2 = net.vjp(params, ctx, ob, need_params=False)
    np.testing.assert_array_equal(Ub2, Ub)
    assert set(g2) == set(g) and all(g2[k].shape == g[k].shape and not np.any(g2[k]) for k in g)
    assert any(np.any(g[k]) for k in g)
