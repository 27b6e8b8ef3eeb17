"""Residual layers (flows.residual): M2/M4 masks, identity start, exact inverse, gauge
equivariance, triangularity, the exact log-det against numerical Jacobians (2d whole layer,
4d per-link 8x8 blocks), every VJP against central finite differences
and the linear-response derivative."""


import numpy as np
import pytest
from hypothesis import given, strategies as st

import flows
from flows.masks import LayerMask, residual_schedule, check_covers_every_link, checker_mask
from flows.residual import ResidualLayer, residual_terms, family_paths
from flows.gradcheck import assert_vjp
from lattice import Layout, su_n, random_gauge, gauge_transform, random_gauge_transformation
from lattice.backend import Rng
from lattice.loops import path_product

from flow_testing import (perturbed, jacobian_columns, full_jacobian_logdet, model_harness,
                          assert_layer_gauge_equivariant)

SHAPE4 = (4, 4, 4, 4)


def _families(mask, Nd):
    if mask.modulus == 4:
        return ("plaquette", "rectangle") + (("chair",) if Nd > 2 else ())
    return ("plaquette",) + (("chair",) if Nd > 2 else ())


def _layer(mask, Nd, field_dependent=True, seed=1, frac=0.8, families=None):
    """A generic (non-identity) layer: constants at +-frac of their bound, perturbed context."""
    layer = ResidualLayer(mask, Nd, 3, families or _families(mask, Nd), field_dependent=field_dependent,
                          context_hidden=(3,), context_kernel=3 if Nd == 2 else 1)
    p = perturbed(layer.init(Rng(0)), 0.3, seed)
    rng = np.random.default_rng(seed)
    c = [frac * cm * rng.choice([-1.0, 1.0]) for cm in layer.c_max]
    p["coef"], _ = layer.raw_from_coefficients(c, np, clip=0.99)
    return layer, p


M2_2D = LayerMask("checker", mu=1, parity=1, modulus=2)
M4_2D = LayerMask("checker", mu=0, parity=3, modulus=4)
M2_4D = LayerMask("checker", mu=3, parity=0, modulus=2)       # temporal link
M4_4D = LayerMask("checker", mu=1, parity=2, modulus=4)       # spatial link


# ---------------------------------------------------------------------- masks and terms
@pytest.mark.parametrize("Nd,shape", [(2, (4, 8)), (4, (4, 4, 4, 8))])
def test_checker_masks_cover_every_link_once_per_pass(Nd, shape):
    lay = Layout(shape)
    for pattern, n in ((("M2",), 2 * Nd), (("M4",), 4 * Nd)):
        masks = residual_schedule(Nd, pattern)
        assert len(masks) == n
        count = check_covers_every_link(lay, masks)
        assert count.min() == 1 and count.max() == 1
    assert len(residual_schedule(4)) == 48                      # the paper's M2, M4, M2, M4


def test_checker_mask_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        checker_mask(Layout((4, 6)), 0, 4, 1)
    with pytest.raises(ValueError, match="parity"):
        checker_mask(Layout((4, 4)), 0, 2, 2)
    with pytest.raises(ValueError, match="M2 or M4"):
        LayerMask("checker", mu=0, parity=0, modulus=3).active(Layout((4, 4)))
    rect_on_m2 = ResidualLayer(M2_2D, 2, 3, ("rectangle",))       # rectangles on M2 are not triangular
    with pytest.raises(ValueError, match="2x1 rectangles need M4 masks"):
        rect_on_m2.forward(rect_on_m2.init(Rng(0)), random_gauge((4, 4), N=3, batch=(1,)), layout=Layout((4, 4)))


def test_staple_paths_close_the_loops():
    """U_mu(x) S^dag(x) is a closed loop: its trace is gauge invariant, and the plaquette
    term equals the plaquette staple sum of lattice.loops."""
    shape = (4, 4, 4, 4)
    lay = Layout(shape)
    U = random_gauge(shape, N=3, seed=1)
    Om = random_gauge_transformation(shape, N=3, seed=2)
    Ug = gauge_transform(U, Om, lay)
    for fam, n in (("plaquette", 6), ("rectangle", 18), ("chair", 48)):
        paths = family_paths(fam, 2, 4)
        assert len(paths) == n and len({p for p, _ in paths}) == n
        for path, _ in paths:
            loop = ((2, 1),) + path
            a = np.trace(path_product(U, loop, lay), axis1=-2, axis2=-1)
            b = np.trace(path_product(Ug, loop, lay), axis1=-2, axis2=-1)
            np.testing.assert_allclose(a, b, atol=1e-12)
    keys = [t["key"] for t in residual_terms(3, 4, ("plaquette",))] + \
           [t["key"] for t in residual_terms(0, 4, ("plaquette",))]
    assert keys == ["plaquette/temporal-plane/temporal-link", "plaquette/temporal-plane/spatial-link",
                    "plaquette/spatial-plane/spatial-link"]


# ---------------------------------------------------------------------- the layer
@pytest.mark.parametrize("Nd,mask", [(2, M2_2D), (2, M4_2D), (4, M2_4D), (4, M4_4D)])
def test_identity_at_initialisation(Nd, mask):
    shape = (4, 4) if Nd == 2 else SHAPE4
    layer = ResidualLayer(mask, Nd, 3, _families(mask, Nd), field_dependent=True)
    p = layer.init(Rng(0))
    U = random_gauge(shape, N=3, batch=(2,), seed=1)
    (V, ld), _ = layer.forward(p, U, layout=Layout(shape))
    assert np.array_equal(V, U) and np.all(ld == 0.0)


@pytest.mark.parametrize("Nd,mask", [(2, M2_2D), (2, M4_2D), (4, M2_4D), (4, M4_4D)])
@pytest.mark.parametrize("fd", [False, True])
def test_inverse_and_frozen_links(Nd, mask, fd):
    shape = (4, 4) if Nd == 2 else SHAPE4
    lay = Layout(shape)
    layer, p = _layer(mask, Nd, field_dependent=fd)
    U = random_gauge(shape, N=3, batch=(2,), seed=5)
    (V, ld), _ = layer.forward(p, U, layout=lay)
    act = mask.active(lay).astype(bool)
    np.testing.assert_array_equal(V[:, ~act], U[:, ~act])
    assert np.abs(V[:, act] - U[:, act]).max() > 1e-2
    su_n.check_su_n(V, tol=1e-12)
    (U2, ldi), _ = layer.inverse(p, V, layout=lay)
    np.testing.assert_allclose(U2, U, atol=1e-12)
    np.testing.assert_allclose(ldi, -ld, atol=1e-12)
    assert ld.dtype == np.float64 and ld.shape == (2,)


def test_inverse_fails_loudly():
    """A field that is not in SU(N) (here: scaled links) makes the iteration diverge or
    converge to a non-solution; a non-contracting coefficient is refused at construction."""
    with pytest.raises(ValueError, match="bound"):
        ResidualLayer(M2_2D, 2, 3, bound=0.9)
    layer, p = _layer(M2_2D, 2, field_dependent=False, frac=0.99)
    V = 40.0 * random_gauge((4, 4), N=3, batch=(1,), seed=1)
    with pytest.raises(flows.residual.ResidualInverseError, match="did not converge"):
        layer.inverse(p, V, layout=Layout((4, 4)))


@given(seed=st.integers(0, 2**16), Nd=st.sampled_from([2, 4]), fd=st.booleans())
def test_gauge_equivariance(seed, Nd, fd):
    """f(U^Omega) = f(U)^Omega with the same log-det; the inverse likewise."""
    shape = (4, 4) if Nd == 2 else SHAPE4
    lay = Layout(shape)
    mask = residual_schedule(Nd, ("M2", "M4"))[seed % (6 * Nd)]
    layer, p = _layer(mask, Nd, field_dependent=fd, seed=seed)
    U = random_gauge(shape, N=3, batch=(1,), seed=seed)
    Om = random_gauge_transformation(shape, N=3, batch=(1,), seed=seed + 1)
    assert_layer_gauge_equivariant(layer, p, U, Om, lay, atol=1e-12)


@pytest.mark.parametrize("mask", residual_schedule(4, ("M2", "M4")))
def test_triangular_every_mask_4d(mask):
    """Every M2/M4 layer of a pass (all families valid for it, field-dependent coefficients):
    perturbing one active link changes no other link and no frozen link."""
    lay = Layout(SHAPE4)
    layer, p = _layer(mask, 4, field_dependent=True)
    U = random_gauge(SHAPE4, N=3, seed=6)
    fwd = lambda X: layer.forward(p, X[None], layout=lay)[0][0][0]
    assert flows.check_triangular(fwd, U, mask.active(lay), lay, n_probe=2, tol=1e-13) <= 1e-13


@pytest.mark.parametrize("mask", [M2_2D, M4_2D])
@pytest.mark.parametrize("fd", [False, True])
def test_logdet_equals_numerical_jacobian_2d(mask, fd):
    """Whole layer on 2d SU(3) 4x4: log|det| of the full 32*8-dimensional numerical Jacobian in
    su(3) coordinates equals the layer's log-det."""
    lay = Layout((4, 4))
    layer, p = _layer(mask, 2, field_dependent=fd, seed=3)
    U = random_gauge((4, 4), N=3, seed=7)
    fn = lambda X: layer.forward(p, X, layout=lay)[0][0]
    (_, ld), _ = layer.forward(p, U[None], layout=lay)
    assert abs(ld[0]) > 0.02                                     # a non-trivial Jacobian
    np.testing.assert_allclose(full_jacobian_logdet(fn, U), ld[0], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("mask", [M2_4D, M4_4D])
@pytest.mark.parametrize("fd", [False, True])
def test_logdet_per_link_blocks_4d(mask, fd):
    """4d SU(3): sum over active links of log|det| of the numerical 8x8 diagonal blocks."""
    lay = Layout(SHAPE4)
    layer, p = _layer(mask, 4, field_dependent=fd, seed=4)
    U = random_gauge(SHAPE4, N=3, seed=8)
    fn = lambda X: layer.forward(p, X, layout=lay)[0][0]
    act = mask.active(lay).astype(bool)
    cols = jacobian_columns(fn, U, [act], range(8))[0]
    blocks = np.moveaxis(cols[:, act], 0, -1)
    (_, ld), _ = layer.forward(p, U[None], layout=lay)
    assert abs(ld[0]) > 0.1
    np.testing.assert_allclose(np.sum(np.linalg.slogdet(blocks)[1]), ld[0], rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("Nd,mask", [(2, M2_2D), (2, M4_2D), (4, M2_4D), (4, M4_4D)])
@pytest.mark.parametrize("fd", [False, True])
def test_vjp_against_finite_differences(Nd, mask, fd):
    """Forward and inverse VJPs w.r.t. the links (group perturbations) and all parameters
    (constants, context network), with random cotangents of the field and the log-det."""
    shape = (4, 4) if Nd == 2 else SHAPE4
    lay = Layout(shape)
    layer, p = _layer(mask, Nd, field_dependent=fd, seed=5)
    U = random_gauge(shape, N=3, batch=(2,), seed=9)
    fwd = lambda pp, X: layer.forward(pp, X, layout=lay)
    inv = lambda pp, X: layer.inverse(pp, X, layout=lay)
    for f, b in ((fwd, layer.vjp), (inv, layer.inverse_vjp)):
        assert_vjp(f, b, p, (U,), group=(0,), h=2e-5, rtol=1e-6)


def test_forward_vjp_is_the_complex_gradient():
    """The forward VJP is exact for any complex perturbation of the links, not only along the
    group (U' = exp(X(U)) U is defined for every complex U)."""
    lay = Layout((4, 4))
    layer, p = _layer(M4_2D, 2, field_dependent=True, seed=6)
    U = random_gauge((4, 4), N=3, batch=(2,), seed=10)
    assert_vjp(lambda pp, X: layer.forward(pp, X, layout=lay), layer.vjp, p, (U,), h=1e-5, rtol=1e-6, wrt=("inputs",))


def test_contexts_are_interchangeable():
    lay = Layout((4, 4))
    layer, p = _layer(M4_2D, 2, field_dependent=True)
    U = random_gauge((4, 4), N=3, batch=(2,), seed=11)
    (V, ld), fctx = layer.forward(p, U, layout=lay)
    (_, ldi), ictx = layer.inverse(p, V, layout=lay)
    r = Rng(3)
    Ub, lb = r.complex_normal(U.shape), r.normal((2,))
    for method in (layer.inverse_vjp, layer.vjp):
        a, ga = method(p, fctx, Ub, lb)
        b, gb = method(p, ictx, Ub, lb)
        np.testing.assert_allclose(a[0], b[0], atol=1e-10)
        for k in gb:
            np.testing.assert_allclose(ga[k], gb[k], atol=1e-10)


def test_linear_response_is_the_derivative_of_log_w():
    """F_k = d/da_k [log p(f(U)) + log J(U)] at a = 0 (central differences in the constants),
    for a Wilson target with the Feynman-Hellmann term."""
    from lattice.actions import Wilson
    lay = Layout(SHAPE4)
    S = Wilson(5.7, lam=0.3)
    U = random_gauge(SHAPE4, N=3, batch=(2,), seed=12)
    for mask in (M2_4D, M4_4D):
        layer = ResidualLayer(mask, 4, 3, _families(mask, 4))
        p = layer.init(Rng(0))
        F = layer.linear_response(p, U, S.force(U, layout=lay), layout=lay)
        assert F.shape == (2, len(layer.terms))
        for k in range(len(layer.terms)):
            def logw(t):
                q = dict(p)
                q["coef"] = p["coef"].copy()
                q["coef"][k] = np.arctanh(t / layer.c_max[k])
                (V, ld), _ = layer.forward(q, U, layout=lay)
                return -S.action(V, layout=lay) + ld
            h = 1e-3 * layer.c_max[k]
            num = (-logw(2 * h) + 8 * logw(h) - 8 * logw(-h) + logw(-2 * h)) / (12 * h)
            np.testing.assert_allclose(F[:, k], num, rtol=1e-6)


def test_config_round_trip():
    layer, p = _layer(M4_4D, 4, field_dependent=True)
    again = ResidualLayer.from_config(layer.config())
    assert again.config() == layer.config()
    U = random_gauge(SHAPE4, N=3, batch=(1,), seed=13)
    lay = Layout(SHAPE4)
    np.testing.assert_array_equal(layer.forward(p, U, layout=lay)[0][0], again.forward(p, U, layout=lay)[0][0])


# ---------------------------------------------------------------------- linear response of a flow
def test_tied_linear_response_is_the_derivative_of_the_flow_log_w():
    """F_K of the fit = d/dc [log w(f(U))] when every layer's constant of class K is c (all
    other constants 0), for a two-pass M2 + M4 flow with plaquette and rectangle terms (2d
    SU(3) 4x8; the 4d single-layer case is tested above)."""
    from lattice.actions import Wilson
    from flows.linear_response import linear_response_features
    from flows.targets import GaugeTarget
    shape = (4, 8)
    lay = Layout(shape)
    S1, S2 = GaugeTarget(Wilson(2.0)), GaugeTarget(Wilson(2.0, lam=0.2))
    layers = [ResidualLayer(m, 2, 3, ("plaquette",) if m.modulus == 2 else ("plaquette", "rectangle"))
              for m in residual_schedule(2, ("M2", "M4"))]
    model = flows.Flow(layers, Nd=2, N=3)
    p = model.init(0)
    U = random_gauge(shape, N=3, batch=(3,), seed=20)
    keys, F, y = linear_response_features(model, p, U, S1, S2, layout=lay)
    assert len(keys) == 4 and F.shape == (3, 4)
    np.testing.assert_allclose(y, Wilson(2.0).action(U, layout=lay) - Wilson(2.0, lam=0.2).action(U, layout=lay),
                               rtol=1e-10)
    for j, key in enumerate(keys):
        def logw(t):
            q = dict(p)
            for i, l in enumerate(layers):
                c = [t if k == key else 0.0 for k in l.term_keys]
                q[f"layer{i}.coef"] = np.array([np.arctanh(ck / cm) for ck, cm in zip(c, l.c_max)])
            V, ld = model.forward(q, U, layout=lay)
            return S2.log_prob(V, lay) - S1.log_prob(U, lay) + ld
        h = 1e-4
        num = (-logw(2 * h) + 8 * logw(h) - 8 * logw(-h) + logw(-2 * h)) / (12 * h)
        np.testing.assert_allclose(F[:, j], num, rtol=1e-6)


def test_linear_response_fit_lowers_the_variance_on_held_out_configurations():
    """Quenched SU(3) Wilson beta = 5.7 on 4^4, lambda 0 -> 0.05: constants fitted on 24
    configurations of a short HMC chain, var(log w) of 12 *other* configurations (the end of
    the chain) with the 8-layer plaquette flow is less than half of the identity's."""
    from lattice.actions import Wilson
    from lattice.hmc import run_hmc
    from flows.linear_response import linear_response_fit
    from flows.targets import GaugeTarget
    lay = Layout(SHAPE4)
    S1, S2 = Wilson(5.7), Wilson(5.7, lam=0.05)
    U = random_gauge(SHAPE4, N=3, seed=1)
    U, _ = run_hmc(S1, U, n_traj=20, n_steps=5, seed=2, progress=False)
    cfgs = []
    for i in range(36):
        U, _ = run_hmc(S1, U, n_traj=1, n_steps=5, seed=3 + i, progress=False)
        cfgs.append(U)
    cfgs = np.stack(cfgs)
    model = flows.residual_flow(4, 3, ("M2",), ("plaquette",))
    p, fit = linear_response_fit(model, model.init(0), cfgs[:24], GaugeTarget(S1), GaugeTarget(S2), layout=lay)
    assert fit.keys == ["plaquette/temporal-plane/spatial-link", "plaquette/spatial-plane/spatial-link",
                        "plaquette/temporal-plane/temporal-link"] and fit.share_removed > 0.5
    held = cfgs[24:]
    V, ld = model.forward(p, held, layout=lay)
    lw_flow = -S2.action(V, layout=lay) + S1.action(held, layout=lay) + ld
    lw_id = -S2.action(held, layout=lay) + S1.action(held, layout=lay)
    assert np.var(lw_flow) < 0.5 * np.var(lw_id)


# ---------------------------------------------------------------------- flows of mixed layers
def _mixed_flow(Nd, seed=0):
    """Spectral coupling layers (learned loops) interleaved with residual layers."""
    from flow_testing import small_layer_kw
    shape = (4, 4) if Nd == 2 else SHAPE4
    res = residual_schedule(Nd, ("M2", "M4"))
    spec = flows.simple_schedule(Nd, 2)
    layers = [flows.CouplingLayer(spec[0], Nd, 3, "learned", **small_layer_kw(Nd)),
              _layer(res[1], Nd, field_dependent=True, seed=seed)[0],
              flows.CouplingLayer(spec[1], Nd, 3, "plaquette", **small_layer_kw(Nd)),
              _layer(res[2 * Nd + 3], Nd, field_dependent=False, seed=seed)[0]]
    model = flows.Flow(layers, Nd=Nd, N=3)
    p = perturbed(model.init(seed), 0.3, seed + 1)
    for i in (1, 3):
        l = model.layers[i]
        c = [0.7 * cm * (-1) ** k for k, cm in enumerate(l.c_max)]
        p[f"layer{i}.coef"], _ = l.raw_from_coefficients(c, np)
    return model, p, shape


@given(seed=st.integers(0, 2**16), Nd=st.sampled_from([2, 4]))
def test_mixed_flow_gauge_equivariance_and_inverse(seed, Nd):
    model, p, shape = _mixed_flow(Nd, seed % 7)
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(1,), seed=seed)
    Om = random_gauge_transformation(shape, N=3, batch=(1,), seed=seed + 1)
    V, ld = model.forward(p, U, layout=lay)
    Vg, ldg = model.forward(p, gauge_transform(U, Om, lay), layout=lay)
    np.testing.assert_allclose(Vg, gauge_transform(V, Om, lay), atol=1e-11)
    np.testing.assert_allclose(ldg, ld, atol=1e-10)
    U2, ldi = model.inverse(p, V, layout=lay)
    np.testing.assert_allclose(U2, U, atol=1e-10)
    np.testing.assert_allclose(ldi, -ld, atol=1e-10)


def test_mixed_flow_vjps_and_fused_path_gradient():
    """Model VJPs of a mixed flow against finite differences; the fused path-gradient pass
    equals inverse_ctx + inverse_vjp."""
    model, p, shape = _mixed_flow(2)
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(2,), seed=3)
    fwd = lambda pp, X: model.forward_ctx(pp, X, layout=lay)
    assert_vjp(*model_harness(fwd, model.vjp), p, (U,), group=(0,), h=2e-5, rtol=1e-6)
    r = Rng(5)
    zb, lb = r.complex_normal(U.shape), r.normal((2,))
    x, logJ, ctx, gq = model.forward_path(p, U, zb, lb, layout=lay)
    z, lji, ictx = model.inverse_ctx(p, x, layout=lay)
    ref, _ = model.inverse_vjp(p, ictx, zb, lb)
    np.testing.assert_allclose(z, U, atol=1e-11)
    np.testing.assert_allclose(gq, ref, atol=1e-9)


def test_residual_flow_files(tmp_path):
    """A residual flow saved with flows.save loads as the same model (layer types by name)."""
    model = flows.residual_flow(4, 3, ("M2", "M4"), ("plaquette", "rectangle", "chair"), field_dependent=True,
                                context_hidden=(2,), context_kernel=1)
    p = perturbed(model.init(1), 0.2, 2)
    flows.save(tmp_path / "f.h5", model, p)
    m2, p2 = flows.load(tmp_path / "f.h5")
    assert m2.config() == model.config() and [type(l).__name__ for l in m2.layers].count("ResidualLayer") == 24
    U = random_gauge(SHAPE4, N=3, batch=(1,), seed=4)
    lay = Layout(SHAPE4)
    np.testing.assert_array_equal(model.forward(p, U, layout=lay)[0], m2.forward(p2, U, layout=lay)[0])


def test_array_api_strict():
    """A mixed residual flow (forward, inverse, fused path pass, VJP) runs on array_api_strict
    arrays and agrees with NumPy (the 8 x 8 algebra uses linalg.inv / slogdet of the
    standard's linalg extension)."""
    xs = pytest.importorskip("array_api_strict")
    model, p, shape = _mixed_flow(2)
    model = flows.Flow(model.layers[1::2], Nd=2, N=3)             # the two residual layers
    p = {k.replace("layer1.", "layer0.").replace("layer3.", "layer1."): v for k, v in p.items()
         if k.startswith(("layer1.", "layer3."))}
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(2,), seed=1)
    r = Rng(4)
    zb, lb = r.complex_normal(U.shape), r.normal((2,))
    ps = {k: xs.asarray(v) for k, v in p.items()}
    x, lj, ctx, gq = model.forward_path(ps, xs.asarray(U), xs.asarray(zb), xs.asarray(lb), lay)
    zbar, g = model.vjp(ps, ctx, xs.asarray(zb), xs.asarray(lb))
    u, lji = model.inverse(ps, x, lay)
    xn, ljn, ctxn, gqn = model.forward_path(p, U, zb, lb, lay)
    zbarn, gn = model.vjp(p, ctxn, zb, lb)
    for a, b in ((x, xn), (lj, ljn), (gq, gqn), (zbar, zbarn), (u, U), (lji, -ljn)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12, atol=1e-12)
    for k in gn:
        np.testing.assert_allclose(np.asarray(g[k]), gn[k], rtol=1e-12, atol=1e-12)
