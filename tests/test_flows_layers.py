"""Spectral coupling layers (flows.layers): fixed loops, identity at initialisation,
invertibility, gauge equivariance, triangularity, exact log-det against the numerical
Jacobian in su(N) coordinates, and every VJP against finite differences."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import flows
from flows.gradcheck import assert_vjp
from flows.masks import LayerMask
from lattice import Layout, su_n, random_gauge, random_gauge_transformation
from lattice.backend import Rng
from lattice.loops import path_product, plaquette_path, rectangle_path

from flow_testing import (perturbed, small_layer_kw, jacobian_columns, full_jacobian_logdet,
                          assert_layer_gauge_equivariant)

DIR = LayerMask("direction", mu=1, parity=0, orientation=(1, -1))
DIR_RECT = LayerMask("direction", mu=1, parity=1, along=0, orientation=(1, 1))
LOC = LayerMask("location", offset=(1, 0), orientation=(1, -1))
DIR4 = LayerMask("direction", mu=3, parity=1, orientation=(2, 1))
DIR4_RECT = LayerMask("direction", mu=2, parity=0, along=1, orientation=(1, -1))
LOC4 = LayerMask("location", offset=(0, 1, 1, 0), orientation=(1, -1))
SHAPE4 = (2, 2, 2, 4)


def _mask_for(loops, Nd, kind):
    if Nd == 2:
        return {"direction": DIR_RECT if loops == "rectangle" else DIR, "location": LOC}[kind]
    return {"direction": DIR4_RECT if loops == "rectangle" else DIR4, "location": LOC4}[kind]


def _layer(mask, Nd, N, loops, kind="sine", scale=0.3, seed=1, **kw):
    layer = flows.CouplingLayer(mask, Nd, N, loops, **{**small_layer_kw(Nd, kind), **kw})
    return layer, perturbed(layer.init(Rng(0)), scale, seed)


# ---------------------------------------------------------------------- fixed loops
@pytest.mark.parametrize("kind,side", [("plaquette", 1), ("plaquette", -1), ("rectangle", 1), ("rectangle", -1)])
def test_fixed_staple_closes_the_loop(kind, side):
    """U_mu(x) S^dag(x) with S^dag(x) = W(x + mu) is the untraced plaquette / 2x1 loop
    of lattice.loops (in the (mu, side*nu) plane)."""
    lay = Layout((4, 4, 2))
    U = random_gauge(lay.global_shape, N=3, seed=2)
    mu, dnu = 2, 2
    nu = (mu + dnu) % 3
    rest = flows.fixed_staple_path(kind, mu, (dnu, side), 3)
    loop = ((mu, 1),) + rest
    ref_path = {("plaquette", 1): plaquette_path(mu, nu), ("rectangle", 1): rectangle_path(mu, nu),
                ("plaquette", -1): ((mu, 1), (nu, -1), (mu, -1), (nu, 1)),
                ("rectangle", -1): ((mu, 1), (mu, 1), (nu, -1), (mu, -1), (mu, -1), (nu, 1))}[(kind, side)]
    assert loop == ref_path
    W = path_product(U, rest, lay)
    Sd = lay.shift(W, mu, +1)
    np.testing.assert_allclose(U[mu] @ Sd, path_product(U, ref_path, lay), atol=1e-13)


def test_incompatible_fixed_loop_fails_loudly():
    """Location updates with an 'up' staple (side +1) would use other active links."""
    layer = flows.CouplingLayer(LayerMask("location", offset=(0, 0), orientation=(1, 1)), 2, 2, "plaquette")
    U = random_gauge((4, 4), N=2, seed=1)
    with pytest.raises(ValueError, match="not be triangular"):
        layer.forward(layer.init(Rng(0)), U, layout=Layout((4, 4)))
    # rectangles on the plain direction masks: the loop contains the mu-link at x + mu
    layer = flows.CouplingLayer(LayerMask("direction", mu=0, parity=0, orientation=(1, 1)), 2, 2, "rectangle")
    with pytest.raises(ValueError, match="refined masks for rectangles"):
        layer.forward(layer.init(Rng(0)), U, layout=Layout((4, 4)))


def test_schedules_cover_every_link():
    for Nd, shape in [(2, (4, 4)), (3, (2, 4, 2)), (4, (2, 2, 2, 2))]:
        lay = Layout(shape)
        for loops in ("plaquette", "rectangle"):
            c = flows.check_covers_every_link(lay, flows.simple_schedule(Nd, loops=loops))
            assert int(c.min()) == int(c.max()) == 1          # one cycle: every link exactly once
            flows.check_covers_every_link(lay, flows.paper_schedule(Nd, loops=loops))
        assert len(flows.paper_schedule(Nd)) == Nd * 2 * 2 * (Nd - 1) + 2 ** Nd


def test_bad_input_fails_loudly():
    layer, p = _layer(DIR, 2, 3, "learned")
    with pytest.raises(ValueError, match="SU\\(3\\)"):
        layer.forward(p, random_gauge((4, 4), N=2, seed=0))
    with pytest.raises(ValueError, match="loops must be"):
        flows.CouplingLayer(DIR, 2, 3, "hexagon")
    with pytest.raises(ValueError, match="even lattice extents"):
        layer.forward(p, random_gauge((4, 3), N=3, seed=0))


# ---------------------------------------------------------------------- identity and inverse
@pytest.mark.parametrize("loops", ["learned", "plaquette", "rectangle"])
@pytest.mark.parametrize("kind", ["direction", "location"])
def test_identity_at_initialisation(loops, kind):
    """Zero context heads: spectral maps exactly the identity, so U' = U bit for bit (the
    update is U + (L' - L) S_hat, not L' S_hat, which would round) and log det = 0 exactly,
    whatever the staple network does; the same for the inverse."""
    for Nd, shape in [(2, (4, 4)), (4, SHAPE4)]:
        layer = flows.CouplingLayer(_mask_for(loops, Nd, kind), Nd, 3, loops, **small_layer_kw(Nd, "spline"))
        p = layer.init(Rng(3))
        U = random_gauge(shape, N=3, batch=(2,), seed=4)
        (V, ld), _ = layer.forward(p, U, layout=Layout(shape))
        np.testing.assert_array_equal(V, U)
        assert np.all(ld == 0.0)
        (W, ld_inv), _ = layer.inverse(p, U, layout=Layout(shape))
        np.testing.assert_array_equal(W, U)
        assert np.all(ld_inv == 0.0)


@pytest.mark.parametrize("loops", ["learned", "plaquette", "rectangle"])
@pytest.mark.parametrize("kind", ["direction", "location"])
@pytest.mark.parametrize("Nd", [2, 4])
def test_inverse_and_frozen_links(loops, kind, Nd):
    shape = (4, 4) if Nd == 2 else SHAPE4
    lay = Layout(shape)
    mask = _mask_for(loops, Nd, kind)
    layer, p = _layer(mask, Nd, 3, loops, kind="spline")
    U = random_gauge(shape, N=3, batch=(2,), seed=5)
    (V, ld), _ = layer.forward(p, U, layout=lay)
    act = mask.active(lay).astype(bool)
    np.testing.assert_array_equal(V[:, ~act], U[:, ~act])            # frozen links untouched
    assert np.abs(V[:, act] - U[:, act]).max() > 1e-2                 # active links do move
    su_n.check_su_n(V, tol=1e-12)
    (U2, ldi), _ = layer.inverse(p, V, layout=lay)
    np.testing.assert_allclose(U2, U, atol=1e-10)
    np.testing.assert_allclose(ldi, -ld, atol=1e-10)
    assert ld.dtype == np.float64 and ld.shape == (2,)


# ---------------------------------------------------------------------- symmetries
@given(seed=st.integers(0, 2**16), Nd=st.sampled_from([2, 4]), loops=st.sampled_from(["learned", "plaquette"]),
       kind=st.sampled_from(["direction", "location"]))
def test_gauge_equivariance(seed, Nd, loops, kind):
    """f(U^Omega) = f(U)^Omega with the same log-det (forward and inverse)."""
    shape = (4, 4) if Nd == 2 else (2, 2, 2, 2)
    lay = Layout(shape)
    mask = _mask_for(loops, Nd, kind)
    layer, p = _layer(mask, Nd, 3, loops, kind="spline", seed=seed)
    U = random_gauge(shape, N=3, batch=(1,), seed=seed)
    Om = random_gauge_transformation(shape, N=3, batch=(1,), seed=seed + 1)
    assert_layer_gauge_equivariant(layer, p, U, Om, lay, atol=1e-11)


@pytest.mark.parametrize("loops", ["learned", "plaquette", "rectangle"])
@pytest.mark.parametrize("kind", ["direction", "location"])
def test_triangular_4d(loops, kind):
    """Perturbing one active link changes no other link (block-triangular Jacobian)."""
    lay = Layout(SHAPE4)
    mask = _mask_for(loops, 4, kind)
    layer, p = _layer(mask, 4, 3, loops)
    U = random_gauge(SHAPE4, N=3, seed=6)
    fwd = lambda X: layer.forward(p, X[None], layout=lay)[0][0][0]
    assert flows.check_triangular(fwd, U, mask.active(lay), lay, n_probe=3, tol=1e-13) <= 1e-13


# ---------------------------------------------------------------------- exact log-det
@pytest.mark.parametrize("N", [2, 3])
@pytest.mark.parametrize("loops,kind", [("learned", "direction"), ("learned", "location"),
                                        ("plaquette", "direction"), ("plaquette", "location"),
                                        ("rectangle", "direction")])
def test_logdet_equals_numerical_jacobian_2d(N, loops, kind):
    """Whole layer on 4x4: log|det J| of the full numerical Jacobian in su(N) coordinates
    (all 32 (N^2-1) link coordinates) equals the layer's log-det (RQ splines)."""
    lay = Layout((4, 4))
    layer, p = _layer(_mask_for(loops, 2, kind), 2, N, loops, kind="spline", scale=0.3, seed=2)
    U = random_gauge((4, 4), N=N, seed=7)
    fn = lambda X: layer.forward(p, X, layout=lay)[0][0]
    (_, ld), _ = layer.forward(p, U[None], layout=lay)
    num = full_jacobian_logdet(fn, U)
    assert abs(ld[0]) > 0.1
    np.testing.assert_allclose(num, ld[0], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("loops,kind", [("learned", "direction"), ("learned", "location"),
                                        ("plaquette", "direction"), ("rectangle", "location")])
def test_logdet_per_link_blocks_4d(loops, kind):
    """4d SU(3): the Jacobian is block triangular (checked above), so log|det J| is the sum
    over active links of log|det| of their 8x8 diagonal blocks, computed by moving all active
    links together along each generator (each responds only to itself among active links)."""
    lay = Layout(SHAPE4)
    mask = _mask_for(loops, 4, kind)
    layer, p = _layer(mask, 4, 3, loops, kind="spline", scale=0.3, seed=3)
    U = random_gauge(SHAPE4, N=3, seed=8)
    fn = lambda X: layer.forward(p, X, layout=lay)[0][0]
    act = mask.active(lay).astype(bool)
    cols = jacobian_columns(fn, U, [act], range(8))[0]           # (gen, Nd, *sites, 8)
    blocks = np.moveaxis(cols[:, act], 0, -1)                      # (n_active, out 8, in 8)
    num = np.sum(np.linalg.slogdet(blocks)[1])
    (_, ld), _ = layer.forward(p, U[None], layout=lay)
    np.testing.assert_allclose(num, ld[0], rtol=1e-7, atol=1e-7)


# ---------------------------------------------------------------------- adjoints
def _check_all_vjps(layer, p, U, lay, h):
    fwd = lambda pp, X: layer.forward(pp, X, layout=lay)
    inv = lambda pp, X: layer.inverse(pp, X, layout=lay)
    for f, b in ((fwd, layer.vjp), (inv, layer.inverse_vjp)):
        assert_vjp(f, b, p, (U,), group=(0,), h=h, rtol=1e-6)


@pytest.mark.parametrize("loops", ["learned", "plaquette", "rectangle"])
@pytest.mark.parametrize("kind", ["direction", "location"])
@pytest.mark.parametrize("Nd", [2, 4])
def test_vjp_against_finite_differences(loops, kind, Nd):
    """Forward and inverse VJPs w.r.t. the links (group perturbations) and all parameters
    (staple nets, context net), smooth angle map (no spline knots inside the stencil)."""
    shape = (4, 4) if Nd == 2 else SHAPE4
    layer, p = _layer(_mask_for(loops, Nd, kind), Nd, 3, loops, kind="sine", scale=0.3, seed=4)
    U = random_gauge(shape, N=3, batch=(2,), seed=9)
    _check_all_vjps(layer, p, U, Layout(shape), h=2e-5)


@pytest.mark.parametrize("loops", ["learned", "plaquette"])
def test_vjp_with_splines(loops):
    """Same with the RQ-spline angle maps (a small step keeps the stencil off the knots, where
    log s' has a kink; fixed seeds)."""
    layer, p = _layer(DIR, 2, 3, loops, kind="spline", scale=0.3, seed=5)
    U = random_gauge((4, 4), N=3, batch=(2,), seed=10)
    _check_all_vjps(layer, p, U, Layout((4, 4)), h=1e-5)


@pytest.mark.parametrize("loops,kind", [("learned", "direction"), ("plaquette", "location")])
def test_contexts_are_interchangeable(loops, kind):
    """A forward context serves the inverse VJP (and vice versa): both describe the pair
    (U, V = f(U)); the model's fused path gradient relies on this."""
    lay = Layout((4, 4))
    layer, p = _layer(_mask_for(loops, 2, kind), 2, 3, loops, kind="spline")
    U = random_gauge((4, 4), N=3, batch=(2,), seed=11)
    (V, ld), fctx = layer.forward(p, U, layout=lay)
    (_, ldi), ictx = layer.inverse(p, V, layout=lay)
    r = Rng(3)
    Ub, lb = r.complex_normal(U.shape), r.normal((2,))
    a, ga = layer.inverse_vjp(p, fctx, Ub, lb)
    b, gb = layer.inverse_vjp(p, ictx, Ub, lb)
    np.testing.assert_allclose(a[0], b[0], atol=1e-9)
    for k in gb:
        np.testing.assert_allclose(ga[k], gb[k], atol=1e-9)
    a, _ = layer.vjp(p, fctx, Ub, lb)
    b, _ = layer.vjp(p, ictx, Ub, lb)
    np.testing.assert_allclose(a[0], b[0], atol=1e-9)


def test_complex64():
    lay = Layout((4, 4))
    layer, p = _layer(DIR, 2, 3, "learned", kind="spline")
    U = random_gauge((4, 4), N=3, batch=(2,), seed=12)
    (V, ld), _ = layer.forward(p, U.astype(np.complex64), layout=lay)
    (V64, ld64), _ = layer.forward(p, U, layout=lay)
    assert V.dtype == np.complex64 and ld.dtype == np.float64
    np.testing.assert_allclose(V, V64, atol=2e-5)
    np.testing.assert_allclose(ld, ld64, atol=1e-3)


def test_triangularity_checker_catches_coupled_and_frozen_changes():
    """check_triangular must fail for a map in which an active link depends on another
    active link, and for one that changes a frozen link."""
    from lattice import su_n
    lay = Layout(SHAPE4)
    act = _mask_for("plaquette", 4, "direction").active(lay)
    a = act[..., None, None] != 0
    U = random_gauge(SHAPE4, N=3, seed=6)

    def coupled(X):                       # every active link feels the mean of all active links
        m = np.mean(np.where(a, X, 0), axis=tuple(range(X.ndim - 2)))
        return np.where(a, su_n.expm(0.1 * su_n.project_algebra(m)) @ X, X)

    with pytest.raises(AssertionError, match="not triangular"):
        flows.check_triangular(coupled, U, act, lay, n_probe=2)
    with pytest.raises(AssertionError, match="frozen links"):
        flows.check_triangular(lambda X: np.where(a, X, X @ X), U, act, lay)
