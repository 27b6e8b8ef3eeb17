"""flows.StapleNet: gauge equivariance, adjoint, initialisation, masking (paper eqs. 3-8)."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import flows
from flows.gradcheck import assert_vjp
from lattice import Layout, random_gauge, random_gauge_transformation, gauge_transform, loops, su_n
from lattice.backend import Rng, get_namespace

SHAPES = {2: [(4, 4), (3, 4)], 3: [(3, 2, 4)], 4: [(2, 3, 2, 2), (3, 2, 2, 2)]}


def _checker_mask(layout, mu, parity=0):
    """Direction mu active on the sites of one parity (a plaquette-style pattern)."""
    m = np.zeros((layout.Nd,) + tuple(layout.local_shape))
    m[mu] = (np.asarray(layout.parity()) == parity)
    return m


def _random_mask(seed, layout, p=0.3):
    return (np.asarray(Rng(seed).uniform((layout.Nd,), layout)) < p).astype(float)


def _setup(Nd, N, shape_idx, seed, batch=(2,)):
    shape = SHAPES[Nd][shape_idx % len(SHAPES[Nd])]
    lay = Layout(shape)
    U = random_gauge(shape, N=N, batch=batch, seed=seed)
    return lay, U


@given(Nd=st.sampled_from([2, 4]), N=st.sampled_from([2, 3]), n_layers=st.sampled_from([1, 2, 3]),
       shape_idx=st.integers(0, 1), seed=st.integers(0, 2**31))
def test_gauge_equivariance(Nd, N, n_layers, shape_idx, seed):
    """S[U^Omega](x) = Omega(x) S[U](x) Omega(x + mu^)^dag, any mask, random coefficients."""
    lay, U = _setup(Nd, N, shape_idx, seed)
    mu = seed % Nd
    net = flows.StapleNet(Nd, mu, width=3, n_layers=n_layers)
    params = net.init(Rng(seed + 1), gain=0.7)
    mask = _random_mask(seed + 2, lay)
    Om = random_gauge_transformation(lay.global_shape, N=N, batch=(2,), seed=seed + 3)
    (S,), _ = net.forward(params, U, mask, layout=lay)
    (S2,), _ = net.forward(params, gauge_transform(U, Om, lay), mask, layout=lay)
    expect = Om @ S @ su_n.dagger(lay.shift(Om, mu, +1))
    np.testing.assert_allclose(S2, expect, atol=1e-12 * max(1.0, float(np.max(np.abs(S)))))


@given(Nd=st.sampled_from([2, 3, 4]), N=st.sampled_from([2, 3]), n_layers=st.sampled_from([1, 2, 3]),
       seed=st.integers(0, 2**31), group=st.booleans(), save_memory=st.booleans())
def test_vjp_matches_finite_differences(Nd, N, n_layers, seed, group, save_memory):
    """Adjoint w.r.t. the coefficients and the links (free complex or su(N) directions)."""
    lay, U = _setup(Nd, N, seed, seed)
    net = flows.StapleNet(Nd, seed % Nd, width=2, n_layers=n_layers, save_memory=save_memory)
    params = net.init(Rng(seed + 1))
    mask = _random_mask(seed + 2, lay)
    fwd = lambda p, U, m: net.forward(p, U, m, layout=lay)
    assert_vjp(fwd, net.vjp, params, (U, mask), skip=(1,), group=(0,) if group else (),
               h=1e-4, seed=seed % 997)


@pytest.mark.parametrize("Nd", [2, 3, 4])
@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_gain_zero_is_plaquette_staple_sum(Nd, n_layers):
    """At gain 0 the active staple is sum_nu (S^L + S^R) of the masked field, which is the
    dagger of lattice.loops.plaquette_staples (U A = sum of plaquettes) of the masked field."""
    shape = {2: (4, 4), 3: (2, 4, 2), 4: (2, 2, 2, 4)}[Nd]   # even extents: a true checkerboard
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(2,), seed=Nd + n_layers)
    mu = Nd - 1
    net = flows.StapleNet(Nd, mu, width=4, n_layers=n_layers)
    p0 = net.init(Rng(0), gain=0.0)
    for k in p0:
        np.testing.assert_array_equal(p0[k], net.identity_params()[k])
    mask = _checker_mask(lay, mu)
    (S,), _ = net.forward(p0, U, mask, layout=lay)
    Um = U * (1.0 - mask)[None, ..., None, None]
    A = loops.plaquette_staples(Um, lay)[mu]
    np.testing.assert_allclose(S, su_n.dagger(A), atol=1e-13)
    # and U_mu S^dag is then the sum of the 2 (Nd - 1) plaquettes through each active link
    act = mask[mu].astype(bool)
    Umu = U[:, mu]
    plaq = sum(loops.plaquette_field(U, mu, nu, lay) for nu in range(Nd) if nu != mu)
    back = sum(loops.path_product(U, ((mu, 1), (nu, -1), (mu, -1), (nu, 1)), lay)
               for nu in range(Nd) if nu != mu)
    np.testing.assert_allclose((Umu @ su_n.dagger(S))[:, act], (plaq + back)[:, act], atol=1e-12)


def test_active_staple_ignores_active_links():
    """Eq. 4: the output does not depend on the masked links at all (exactly)."""
    lay, U = _setup(4, 3, 0, 5)
    net = flows.StapleNet(4, 1, width=4, n_layers=3)
    params = net.init(Rng(1))
    mask = _random_mask(3, lay, p=0.4)
    (S,), ctx = net.forward(params, U, mask, layout=lay)
    V = random_gauge(lay.global_shape, N=3, batch=(2,), seed=99)
    m = mask[None, ..., None, None]
    (S2,), _ = net.forward(params, m * V + (1 - m) * U, mask, layout=lay)
    np.testing.assert_array_equal(S, S2)
    (Ub, mb), _ = net.vjp(params, ctx, Rng(4).complex_normal(S.shape))
    assert mb is None
    assert np.all(Ub[np.broadcast_to(m, Ub.shape) == 1] == 0)


def test_translation_equivariance():
    lay, U = _setup(2, 3, 0, 8)
    net = flows.StapleNet(2, 0, width=3, n_layers=2)
    params = net.init(Rng(1))
    mask = _random_mask(2, lay)
    (S,), _ = net.forward(params, U, mask, layout=lay)
    Ut = lay.shift(U, 1, +1)                   # U'(x) = U(x + 1^)
    mt = lay.shift(mask, 1, +1, inner=0)
    (St,), _ = net.forward(params, Ut, mt, layout=lay)
    np.testing.assert_allclose(St, lay.shift(S, 1, +1), atol=1e-13)


def test_init_noise_is_xavier_normal():
    net = flows.StapleNet(4, 0, width=16, n_layers=3)
    p = net.init(Rng(3), gain=0.5)
    p0 = net.identity_params()
    for k, c in p.items():
        n = c - p0[k]
        std = 0.5 * math.sqrt(2.0 / (c.shape[1] + c.shape[2]))
        assert abs(np.mean(n)) < 4 * std / math.sqrt(n.size)
        assert abs(np.std(n) / std - 1) < 4 / math.sqrt(2 * n.size) + 0.02, (k, np.std(n), std)


def test_parameter_shapes_and_errors():
    net = flows.StapleNet(4, 2, width=8, n_layers=2)
    assert net.param_shapes() == {"c0": (4, 8, 7), "c1": (1, 1, 56)}
    assert flows.StapleNet(**net.config()).param_shapes() == net.param_shapes()
    lay, U = _setup(4, 3, 0, 0)
    p = net.init(Rng(0))
    mask = _checker_mask(lay, 2)
    with pytest.raises(KeyError, match="c1"):
        net.forward({"c0": p["c0"]}, U, mask, layout=lay)
    with pytest.raises(ValueError, match="c0"):
        net.forward({"c0": p["c0"][:, :4], "c1": p["c1"]}, U, mask, layout=lay)
    with pytest.raises(ValueError, match="mask"):
        net.forward(p, U, mask[:2], layout=lay)
    with pytest.raises(ValueError, match="0 .*1"):
        net.forward(p, U, 0.5 * mask, layout=lay)
    with pytest.raises(ValueError):
        flows.StapleNet(4, 4)


def test_complex64_close_to_complex128():
    lay, U = _setup(4, 3, 0, 1)
    net = flows.StapleNet(4, 0, width=8, n_layers=2)
    params = net.init(Rng(1))
    mask = _checker_mask(lay, 0)
    (S,), ctx = net.forward(params, U, mask, layout=lay)
    (S32,), ctx32 = net.forward(params, U.astype(np.complex64), mask, layout=lay)
    assert S32.dtype == np.complex64
    np.testing.assert_allclose(S32, S, atol=1e-5 * np.max(np.abs(S)))
    G = Rng(2).complex_normal(S.shape)
    (Ub, _), g = net.vjp(params, ctx, G)
    (Ub32, _), g32 = net.vjp(params, ctx32, G.astype(np.complex64))
    assert Ub32.dtype == np.complex64 and g32["c0"].dtype == np.float64
    for k in g:
        np.testing.assert_allclose(g32[k], g[k], rtol=1e-4, atol=1e-4 * np.max(np.abs(g[k])))


def test_array_api_strict_forward_and_vjp():
    xs = get_namespace("array_api_strict")
    shape = (4, 2, 2, 2)
    lay = Layout(shape)
    U = random_gauge(shape, N=3, batch=(1,), seed=3, xp=xs)
    net = flows.StapleNet(4, 3, width=3, n_layers=2)
    params = net.init(Rng(4, xp=xs))
    mask = xs.asarray(_checker_mask(lay, 3))
    (S,), ctx = net.forward(params, U, mask, layout=lay)
    (Ub, _), g = net.vjp(params, ctx, S)
    Uh = np.asarray(U)
    ph = {k: np.asarray(v) for k, v in params.items()}
    (Sh,), ctxh = net.forward(ph, Uh, np.asarray(mask), layout=lay)
    (Ubh, _), gh = net.vjp(ph, ctxh, Sh)
    np.testing.assert_allclose(np.asarray(S), Sh, atol=1e-13)
    np.testing.assert_allclose(np.asarray(Ub), Ubh, atol=1e-12)
    for k in gh:
        np.testing.assert_allclose(np.asarray(g[k]), gh[k], rtol=1e-12, atol=1e-12)


def test_save_memory_gives_identical_results():
    lay, U = _setup(4, 3, 0, 6)
    mask = _checker_mask(lay, 2)
    outs = []
    for sm in (False, True):
        net = flows.StapleNet(4, 2, width=4, n_layers=3, save_memory=sm)
        p = net.init(Rng(1))
        (S,), ctx = net.forward(p, U, mask, layout=lay)
        outs.append((S, net.vjp(p, ctx, Rng(2).complex_normal(S.shape))))
    (S0, ((Ub0, _), g0)), (S1, ((Ub1, _), g1)) = outs
    np.testing.assert_array_equal(S0, S1)
    np.testing.assert_array_equal(Ub0, Ub1)
    for k in g0:
        np.testing.assert_array_equal(g0[k], g1[k])


class _ActiveLoop:
    """The recipe documented for the coupling layer: S_hat = P_SU(N)(S) at the active links
    (identity elsewhere, so frozen sites never trip the rank check), L = U_mu S_hat^dag."""

    def __init__(self, net, layout):
        self.net, self.lay = net, layout

    def forward(self, params, U, mask):
        from lattice.fields import link
        lay, mu = self.lay, self.net.mu
        (S,), sctx = self.net.forward(params, U, mask, layout=lay)
        m = np.reshape(mask[mu], lay.local_shape + (1, 1))
        Shat, pctx = flows.project_su_fwd(m * S + (1 - m) * np.eye(S.shape[-1]))
        Umu = link(U, mu, lay)
        L = m * (Umu @ su_n.dagger(Shat)) + (1 - m) * np.eye(S.shape[-1])
        return (L,), (sctx, pctx, m, Umu, Shat)

    def vjp(self, params, ctx, L_bar):
        sctx, pctx, m, Umu, Shat = ctx
        Lb = m * L_bar
        Umu_bar = Lb @ Shat
        S_bar = m * flows.project_su_vjp(pctx, su_n.dagger(Lb) @ Umu)
        (U_bar, _), g = self.net.vjp(params, sctx, S_bar)
        U_bar = U_bar.copy()
        U_bar[:, self.net.mu] += Umu_bar
        return (U_bar, None), g


def test_active_loop_recipe():
    """Adjoint of the composite, gauge covariance L -> Omega(x) L Omega(x)^dag, and agreement
    with eq. 1, P_SU(N)(U S^dag), at the active links."""
    lay = Layout((2, 2, 2, 4))
    U = random_gauge(lay.global_shape, N=3, batch=(2,), seed=12)
    mu = 3
    net = flows.StapleNet(4, mu, width=3, n_layers=2)
    params = net.init(Rng(1))
    mask = _checker_mask(lay, mu)
    mod = _ActiveLoop(net, lay)
    assert_vjp(mod.forward, mod.vjp, params, (U, mask), skip=(1,), group=(0,), h=1e-4)
    assert_vjp(mod.forward, mod.vjp, params, (U, mask), skip=(1,), h=1e-4)
    (L,), _ = mod.forward(params, U, mask)
    Om = random_gauge_transformation(lay.global_shape, N=3, batch=(2,), seed=4)
    (Lg,), _ = mod.forward(params, gauge_transform(U, Om, lay), mask)
    act = mask[mu].astype(bool)
    np.testing.assert_allclose(Lg[:, act], (Om @ L @ su_n.dagger(Om))[:, act], atol=1e-12)
    (S,), _ = net.forward(params, U, mask, layout=lay)
    eq1 = flows.project_su(U[:, mu][:, act] @ su_n.dagger(S[:, act]))
    np.testing.assert_allclose(L[:, act], eq1, atol=1e-12)


@pytest.mark.parametrize("chunk", [None, 1, 40])
@pytest.mark.parametrize("save_memory", [False, True])
@pytest.mark.parametrize("Nd,N,n_layers", [(4, 3, 2), (4, 3, 3), (2, 2, 2), (3, 3, 1)])
def test_equals_the_colour_last_implementation_it_replaced(Nd, N, n_layers, save_memory, chunk):
    """The colour-first, pair-batched network (issue 14) gives the numbers of the colour-last
    one it replaced (bench/reference/staples_colour_last.py, the benchmark reference), forward
    and VJP, on the compiled path and on the array-API reference kernels."""
    from bench.reference.staples_colour_last import StapleNet as ColourLast
    from lattice import kernels
    lay, U = _setup(Nd, N, 0, 11)
    mu = 1 % Nd
    new = flows.StapleNet(Nd, mu, width=3, n_layers=n_layers, save_memory=save_memory)
    if chunk is not None:          # pairs in chunks of 1 pair / a few pairs (large-field path)
        new.CHUNK_MATRICES = chunk
    old = ColourLast(Nd, mu, width=3, n_layers=n_layers, save_memory=save_memory)
    params = new.init(Rng(3))
    mask = _random_mask(5, lay)
    (S_old,), ctx_old = old.forward(params, U, mask, layout=lay)
    rng = np.random.default_rng(0)
    S_bar = rng.normal(size=S_old.shape) + 1j * rng.normal(size=S_old.shape)
    (U_old, _), g_old = old.vjp(params, ctx_old, S_bar)
    for ref in (False, True):
        if ref:
            cm = kernels.reference_only()
            cm.__enter__()
        try:
            (S_new,), ctx_new = new.forward(params, U, mask, layout=lay)
            (U_new, _), g_new = new.vjp(params, ctx_new, S_bar)
        finally:
            if ref:
                cm.__exit__(None, None, None)
        assert np.max(np.abs(S_new - S_old)) < 1e-12
        assert np.max(np.abs(U_new - U_old)) < 1e-11
        for k in params:
            assert np.max(np.abs(g_new[k] - g_old[k])) < 1e-10 * max(1.0, float(np.max(np.abs(g_old[k]))))


@pytest.mark.parametrize("save_memory", [False, True])
def test_vjp_without_parameter_cotangents_gives_the_same_link_cotangent(save_memory):
    """need_params=False (path-gradient inverse VJPs): same link cotangent, zero coefficient
    cotangents of the right shapes, and with save_memory no augmented vector is recomputed."""
    lay, U = _setup(4, 3, 0, 11)
    net = flows.StapleNet(4, 1, width=3, n_layers=2, save_memory=save_memory)
    params = net.init(Rng(12))
    mask = _random_mask(13, lay)
    (S,), ctx = net.forward(params, U, mask, layout=lay)
    Sb = np.random.default_rng(14).normal(size=S.shape) + 1j * np.random.default_rng(15).normal(size=S.shape)
    (Ub, _), g = net.vjp(params, ctx, Sb)
    calls = []
    real_augment = net._augment
    net._augment = lambda *a: calls.append(1) or real_augment(*a)
    import importlib
    sm = importlib.import_module("lattice.kernels.staple_mix")        # the output layer's augmented vector
    real_mix_augment = sm._augmented
    sm._augmented = lambda *a: calls.append(2) or real_mix_augment(*a)
    try:
        (Ub2, _), g2 = net.vjp(params, ctx, Sb, need_params=False)
    finally:
        sm._augmented = real_mix_augment
    np.testing.assert_array_equal(Ub2, Ub)
    assert not calls
    assert set(g2) == set(g) and all(g2[k].shape == g[k].shape and not np.any(g2[k]) for k in g)
