"""Gauge actions, forces and observables: invariance, covariance, finite differences."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import lattice as L
from lattice import su_n
from lattice.actions import Wilson, LuscherWeisz
from lattice.backend import Rng

SHAPES = {2: (4, 4), 3: (4, 2, 4), 4: (2, 2, 4, 2)}
geometry = st.tuples(st.sampled_from([2, 3, 4]), st.sampled_from([2, 3]), st.integers(0, 10_000))
actions = st.sampled_from(["wilson", "lw"])
lams = st.sampled_from([0.0, 0.3])


def make_action(kind, lam):
    return Wilson(2.3, lam=lam) if kind == "wilson" else LuscherWeisz(3.1, lam=lam)


def field_and_transform(Nd, N, seed):
    shape = SHAPES[Nd]
    lay = L.Layout(shape)
    U = L.random_gauge(shape, N=N, batch=(2,), seed=seed, layout=lay)
    Om = L.random_gauge_transformation(shape, N=N, batch=(2,), seed=seed + 1, layout=lay)
    return lay, U, Om, L.gauge_transform(U, Om, layout=lay)


@given(geometry, actions, lams)
def test_actions_and_observables_gauge_invariant(g, kind, lam):
    Nd, N, seed = g
    lay, U, Om, Ug = field_and_transform(Nd, N, seed)
    S = make_action(kind, lam)
    assert np.allclose(S.action(U, lay), S.action(Ug, lay), rtol=1e-12, atol=1e-10)
    assert np.allclose(S.operator(U, lay), S.operator(Ug, lay), rtol=1e-12, atol=1e-10)
    assert np.allclose(L.plaquette(U, lay), L.plaquette(Ug, lay), atol=1e-13)
    assert np.allclose(L.polyakov_loop(U, lay), L.polyakov_loop(Ug, lay), atol=1e-13)
    if Nd == 4:
        assert np.allclose(L.topological_charge(U, lay), L.topological_charge(Ug, lay), atol=1e-12)


@given(geometry, actions, lams)
def test_forces_gauge_covariant(g, kind, lam):
    """grad S transforms in the adjoint: F_mu(x) -> Omega(x) F_mu(x) Omega(x)^dag."""
    Nd, N, seed = g
    lay, U, Om, Ug = field_and_transform(Nd, N, seed)
    S = make_action(kind, lam)
    F, Fg = S.force(U, lay), S.force(Ug, lay)
    Omx = Om[:, None]
    assert np.allclose(Fg, Omx @ F @ su_n.dagger(Omx), atol=1e-12)


@given(geometry, actions, lams)
def test_force_equals_finite_differences(g, kind, lam):
    """<grad S, X> = d/dt S(exp(tX) U) at t = 0, fourth-order stencil, relative error < 1e-6."""
    Nd, N, seed = g
    lay = L.Layout(SHAPES[Nd])
    U = L.random_gauge(SHAPES[Nd], N=N, seed=seed, layout=lay)
    S = make_action(kind, lam)
    X = su_n.random_algebra(Rng(seed + 7), N, lead=(Nd,), layout=lay)
    h = 1e-3
    f = {k: float(S.action(su_n.expm(k * h * X) @ U, lay)) for k in (-2, -1, 1, 2)}
    fd = (-f[2] + 8 * f[1] - 8 * f[-1] + f[-2]) / (12 * h)
    an = float(np.sum(su_n.inner(S.force(U, lay), X)))
    assert abs(fd - an) <= 1e-6 * max(abs(an), 1e-3), (fd, an)


def test_operator_is_dS_dlambda_and_its_force():
    lay = L.Layout((4, 4, 4, 4))
    U = L.random_gauge((4, 4, 4, 4), seed=3)
    for base in (Wilson(5.5), LuscherWeisz(3.8)):
        d = (base.with_lam(1e-3).action(U) - base.with_lam(-1e-3).action(U)) / 2e-3
        assert np.isclose(d, base.operator(U), rtol=1e-8)
        dF = (base.with_lam(0.5).force(U) - base.with_lam(-0.5).force(U))
        assert np.allclose(dF, base.operator_force(U), atol=1e-12)


def test_operator_definition_eq16():
    """O = -(beta/N) sum_x Re tr(sum_i P_it - sum_{i<j} P_ij), time = last axis."""
    lay = L.Layout((2, 4, 2, 4))
    U = L.random_gauge((2, 4, 2, 4), seed=8)
    beta, N = 5.7, 3
    planes, v = L.plaquette_planes(U)
    V = lay.volume
    t = 3
    direct = -(beta / N) * V * N * sum(val if nu == t else -val for (mu, nu), val in zip(planes, v))
    assert np.isclose(Wilson(beta).operator(U), direct, rtol=1e-12)


def test_unit_gauge_values():
    U = L.unit_gauge((4, 4, 4, 4))
    assert np.isclose(L.plaquette(U), 1.0)
    assert np.isclose(Wilson(6.0).action(U), -6.0 * 6 * 256)
    lw = LuscherWeisz(3.8)
    assert np.isclose(lw.action(U), -3.8 * 256 * (6 * (5 / 3) + 12 * (-1 / 12)))
    assert np.isclose(L.polyakov_loop(U), 1.0)
    assert np.isclose(L.topological_charge(U), 0.0)


def test_polyakov_loop_equals_direct_product():
    U = L.random_gauge((2, 2, 2, 6), seed=2)
    Ut = U[3]
    P = np.eye(3)[None, None, None]
    for t in range(6):
        P = P @ Ut[:, :, :, t]
    direct = np.mean(np.trace(P, axis1=-2, axis2=-1)) / 3
    assert np.isclose(L.polyakov_loop(U), direct, atol=1e-14)


def test_wilson_loop_path_matches_plaquette():
    U = L.random_gauge((4, 4, 4), N=2, seed=1)
    w = L.wilson_loop(U, [(0, 1), (1, 1), (0, -1), (1, -1)])
    assert np.isclose(w.real, L.plaquette_planes(U)[1][0])
    with pytest.raises(ValueError, match="bad step"):
        L.wilson_loop(U, [(3, 1)])


def test_wilson_loop_untraced_is_deprecated_for_path_product():
    U = L.random_gauge((4, 4, 4), N=2, seed=2, batch=(2,))
    path = [(0, 1), (1, 1), (0, -1), (1, -1)]
    with pytest.warns(DeprecationWarning, match="path_product"):
        W = L.wilson_loop(U, path, traced=False)
    assert np.array_equal(W, L.path_product(U, path)) and W.shape == (2, 4, 4, 4, 2, 2)
    w = L.wilson_loop(U, path)
    assert w.shape == (2,)
    assert np.allclose(w, np.mean(np.trace(W, axis1=-2, axis2=-1), axis=(1, 2, 3)) / 2, atol=1e-14)


def test_rectangle_field_is_the_untraced_rectangle_loop():
    from lattice.loops import rectangle_path
    U = L.random_gauge((4, 4, 4), N=2, seed=3)
    R = L.rectangle_field(U, 0, 2)
    assert R.shape == (4, 4, 4, 2, 2)
    w = L.wilson_loop(U, rectangle_path(0, 2))
    assert np.isclose(np.mean(np.trace(R, axis1=-2, axis2=-1)) / 2, w, atol=1e-14)


def test_action_from_params_rebuilds_the_action_an_ensemble_records(tmp_path):
    from lattice.actions import LoopAction, action_from_params
    from lattice.io import EnsembleStore
    U = L.random_gauge((4, 4), N=3, batch=(2,), seed=4)
    lay = L.Layout((4, 4))
    for i, S in enumerate([Wilson(5.7, lam=0.01), LuscherWeisz(3.8, lam=0.005), LoopAction(2.0, 1.2, -0.05, 0.1)]):
        with EnsembleStore.create(tmp_path / f"e{i}.h5", lattice_shape=(4, 4), N=3, action=S) as ens:
            pass
        with EnsembleStore.open(tmp_path / f"e{i}.h5") as ens:
            S2 = action_from_params(ens.action)
        assert type(S2) is type(S) and S2.params() == S.params()
        assert np.array_equal(S2.action(U, lay), S.action(U, lay))
    with pytest.raises(ValueError, match="unknown gauge action"):
        action_from_params({"name": "iwasaki", "beta": 2.0})


def test_topological_charge_odd_under_parity():
    """Q -> -Q under the reflection x_0 -> -x_0 (links U_0(x) -> U_0(-x-0)^dag)."""
    U = L.random_gauge((4, 4, 4, 4), seed=12)
    lay = L.Layout((4, 4, 4, 4))
    idx = (-np.arange(4)) % 4
    R = U[:, idx]
    R0 = su_n.dagger(np.roll(U[0][idx], -1, axis=0))  # U_0(-x0 - 1)^dag
    R = np.stack([R0, R[1], R[2], R[3]])
    assert np.isclose(L.topological_charge(R, lay), -L.topological_charge(U, lay), atol=1e-12)


def test_shape_inference_prefers_fewest_batch_axes():
    U = L.random_gauge((2, 2, 2, 2), N=3, seed=0)          # also reads as a (4, 2) batch of 2d
    assert L.infer_gauge_layout(U).global_shape == (2, 2, 2, 2)
    U = L.random_gauge((4, 4), N=3, batch=(3,), seed=0)     # reads as a 3d lattice without layout
    assert L.plaquette(U, layout=L.Layout((4, 4))).shape == (3,)
    with pytest.raises(L.LayoutError, match="does not fit"):
        L.plaquette(U, layout=L.Layout((4, 2)))
