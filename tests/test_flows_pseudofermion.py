"""Conditional pseudofermion flow (flows.pseudofermion, equations (C0)-(C3)) and the
flow-assisted determinant-ratio estimator (fermions.log_det_ratio with pf_map, (P1)-(P2)).

Model: gauge covariance and invariance of log J, exact inverse, log J = log|det| of the full
real Jacobian, the triangular (A from B) structure, every VJP against central finite
differences, exact adjointness, identity at initialisation. Estimator: the dense zero-variance
map h* gives the exact ratio on every shot (validates (P2) with its Jacobian term); a random
map is unbiased. Training: path-gradient training lowers the per-shot variance on held-out
configurations, is reproducible, and the path and plain gradients agree in expectation.
Tiny lattice (4, 2, 2, 4): V/2 = 32 odd sites, n = 384 complex components."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import flows
import fermions as F
import lattice as L
from lattice import su_n
from flows.pseudofermion import (PseudofermionFlow, PseudofermionObjective, PFMask, pf_schedule,
                                 save_pf_flow, load_pf_flow)

from flow_testing import perturbed

SHAPE = (4, 2, 2, 4)
KAPPA, MU = 0.17, 0.1
NC = 3
LAY = L.Layout(SHAPE)
EO = F.even_odd(LAY)
HALF = EO.half
SPINOR = tuple(HALF.local_shape) + (4, NC)        # packed odd spinor (2, 2, 2, 4, 4, 3)
NDIM = int(np.prod(SPINOR))                       # 384 complex components


# ---------------------------------------------------------------------- helpers
def _fields(seed=1, batch=(), eps=0.1):
    """U Haar random, U' = exp(eps X) U nearby (X random in su(3))."""
    U = L.random_gauge(SHAPE, seed=seed, batch=batch)
    X = su_n.random_algebra(L.Rng(seed + 1000), NC, lead=U.shape[:-2], scale=eps)
    return U, su_n.expm(X) @ U


_S_UNIT = []


def _s_per_unit():
    """s(x) per unit of the network's output 0 (the model may scale it), measured through log J =
    2 * 4N * sum_A s of a one-layer model with only that output bias set."""
    if not _S_UNIT:
        m = PseudofermionFlow(1, hidden=0, masks=[{"axis": 1, "parity": 0}])
        p = m.init(0)
        p["layer0.b2"] = np.eye(1, m.n_out, 0)[0]
        U = L.random_gauge(SHAPE, seed=0)
        lj = float(m.forward(m.prepare(p, U, U), _phi(0))[1])
        _S_UNIT.append(lj / (2 * 4 * NC * (NDIM // (4 * NC) // 2)))
        assert _S_UNIT[0] > 0
    return _S_UNIT[0]


def _model(n_layers=4, hidden=3, scale=0.1, seed=0, masks=None):
    """A generic (non-identity) model: init, then Gaussian noise of size ``scale`` on every array;
    the weights of output 0 are rescaled so that s(x) itself gets noise of size ``scale``."""
    m = PseudofermionFlow(n_layers, hidden=hidden, masks=masks)
    p = perturbed(m.init(seed), scale, seed + 1)
    return m, _boost_s(m, p)


def _boost_s(m, p, shift=0.0):
    """Rescale output 0 (the s head) by 1 / (s per unit), then add ``shift`` to s."""
    u = _s_per_unit()
    p = {k: np.array(v, copy=True) for k, v in p.items()}
    for i in range(m.n_layers):
        p[f"layer{i}.W2"][0] /= u
        p[f"layer{i}.b2"][0] = p[f"layer{i}.b2"][0] / u + shift / u
    return p


def _phi(seed, lead=()):
    return L.Rng(seed).complex_normal(lead=tuple(lead), layout=HALF, inner=(4, NC))


def _inner(a, b):
    """Complex <a, b> = sum conj(a) b."""
    return complex(np.sum(np.conj(a) * b))


def _odd_coords():
    """Lattice coordinates (x_0..x_3) of the packed odd sites, (L0/2, L1, L2, L3, 4), computed by
    packing a coordinate field (independent of PFMask)."""
    X = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    _, odd = EO.pack(X, inner=1)
    assert np.all(odd.sum(axis=-1) % 2 == 1)
    return odd


def _active(axis, parity):
    return (_odd_coords()[..., axis] % 2) == parity          # (L0/2, L1, L2, L3)


def _gauge_transform(U, Up, phi, Om):
    """(U, U', phi) -> (U^Omega, U'^Omega, Omega phi) with phi on the packed odd sites."""
    Om_odd = EO.pack(Om, inner=2)[1]
    return (L.gauge_transform(U, Om, LAY), L.gauge_transform(Up, Om, LAY),
            phi @ np.swapaxes(Om_odd, -1, -2))


def _stencil(f, h):
    """Fourth-order central difference of f at 0."""
    return (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)


def _real_jacobian(fn):
    """Real 2n x 2n Jacobian of phi -> fn(phi) on one packed odd spinor: columns are the images
    of the 2n real basis vectors e_k and i e_k (fn is linear), rows (Re, Im) of the output."""
    E = np.eye(NDIM, dtype=np.complex128).reshape((NDIM,) + SPINOR)
    Y = fn(np.concatenate([E, 1j * E])).reshape(2 * NDIM, NDIM)
    return np.concatenate([Y.real.T, Y.imag.T], axis=0)


def _dense_map(fn):
    """Complex n x n matrix of a complex-linear map on one packed odd spinor (flattened C order,
    the ordering of fermions.dense_schur)."""
    E = np.eye(NDIM, dtype=np.complex128).reshape((NDIM,) + SPINOR)
    return fn(E).reshape(NDIM, NDIM).T


def _dag(A):
    return np.conj(np.swapaxes(A, -1, -2))


# ---------------------------------------------------------------------- gauge covariance
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_model_gauge_covariance(seed):
    """phi -> Omega phi, U, U' -> U^Omega, U'^Omega: phi' -> Omega phi', log J unchanged."""
    U, Up = _fields(seed, batch=(2,))
    m, p = _model(8, hidden=3, scale=0.1, seed=seed)          # default schedule: every axis
    phi = _phi(seed + 1, lead=(2, 2))
    Om = L.random_gauge_transformation(SHAPE, N=NC, batch=(2,), seed=seed + 2)
    y, lj = m.forward(m.prepare(p, U, Up), phi)
    Ug, Upg, phig = _gauge_transform(U, Up, phi, Om)
    yg, ljg = m.forward(m.prepare(p, Ug, Upg), phig)
    _, _, y_rot = _gauge_transform(U, Up, y, Om)
    assert lj.shape == (2,) and np.all(np.abs(lj) > 1.0)           # a non-trivial map (guard)
    assert np.abs(y - phi).max() > 0.1 and np.abs(phig - phi).max() > 0.1
    np.testing.assert_allclose(yg, y_rot, atol=1e-12 * np.abs(y).max())
    np.testing.assert_allclose(ljg, lj, rtol=1e-12, atol=1e-12)
    # the inverse is covariant too
    x, _ = m.inverse(m.prepare(p, Ug, Upg), yg)
    np.testing.assert_allclose(x, phig, atol=1e-11)


@pytest.mark.parametrize("axis", [0, 1, 2, 3])
@pytest.mark.parametrize("parity", [0, 1])
def test_single_layer_gauge_covariance(axis, parity):
    U, Up = _fields(7 + axis)
    m, p = _model(1, hidden=3, scale=0.2, seed=axis + 4 * parity, masks=[{"axis": axis, "parity": parity}])
    phi = _phi(3, lead=(2,))
    Om = L.random_gauge_transformation(SHAPE, N=NC, seed=11 + axis)
    y, lj = m.forward(m.prepare(p, U, Up), phi)
    Ug, Upg, phig = _gauge_transform(U, Up, phi, Om)
    yg, ljg = m.forward(m.prepare(p, Ug, Upg), phig)
    _, _, y_rot = _gauge_transform(U, Up, y, Om)
    act = _active(axis, parity)
    assert np.abs((y - phi)[:, act]).max() > 0.1              # the layer acts (guard)
    np.testing.assert_allclose(yg, y_rot, atol=1e-12 * np.abs(y).max())
    np.testing.assert_allclose(ljg, lj, rtol=1e-12)


# ---------------------------------------------------------------------- inverse and log J
@pytest.mark.parametrize("hidden", [3, 0])
def test_inverse_round_trips(hidden):
    U, Up = _fields(2, batch=(2,))
    m, p = _model(8, hidden=hidden, scale=0.05, seed=5)
    ctx = m.prepare(p, U, Up)
    phi = _phi(4, lead=(3, 2))
    y, lj = m.forward(ctx, phi)
    assert np.abs(y - phi).max() > 0.1 and np.all(np.abs(lj) > 1.0)       # guard
    x, lji = m.inverse(ctx, y)
    np.testing.assert_allclose(x, phi, rtol=0, atol=1e-10)
    np.testing.assert_allclose(lji, -lj, rtol=1e-14, atol=1e-12)
    assert lj.shape == (2,) and lj.dtype == np.float64
    psi = _phi(5, lead=(3, 2))
    z, lji2 = m.inverse(ctx, psi)
    y2, lj2 = m.forward(ctx, z)
    np.testing.assert_allclose(y2, psi, rtol=0, atol=1e-10)
    np.testing.assert_allclose(lj2, lj, rtol=1e-14)
    np.testing.assert_allclose(lji2, -lj, rtol=1e-14)


def test_log_jacobian_two_layers_full_real_jacobian():
    """The real 768 x 768 Jacobian of a 2-layer map: log|det| = log J (C2), and it has the
    block form [[Re A, -Im A], [Im A, Re A]] of a complex-linear map."""
    U, Up = _fields(3)
    m, p = _model(2, hidden=3, scale=0.1, seed=2)
    ctx = m.prepare(p, U, Up)
    J = _real_jacobian(lambda v: m.forward(ctx, v)[0])
    lj = float(m.forward(ctx, _phi(1))[1])
    assert abs(lj) > 1.0                                       # guard: non-volume-preserving
    sign, logdet = np.linalg.slogdet(J)
    assert sign == 1.0                                         # orientation preserving (det = |det A|^2)
    assert abs(logdet - lj) < 1e-9 * max(1.0, abs(lj)), (logdet, lj)
    n = NDIM
    np.testing.assert_allclose(J[:n, :n], J[n:, n:], atol=1e-13)
    np.testing.assert_allclose(J[:n, n:], -J[n:, :n], atol=1e-13)


def test_log_jacobian_default_schedule_full_real_jacobian():
    """The default schedule (pf_schedule: axes 0, 0, 1, 1, 2, 2, 3, 3, parities alternating):
    log|det| of the full real Jacobian = log J to 1e-9."""
    U, Up = _fields(4)
    m, p = _model(8, hidden=4, scale=0.02, seed=3)            # small noise: a well-conditioned J
    assert m.masks == pf_schedule(8) and {mk.axis for mk in m.masks} == {0, 1, 2, 3}
    ctx = m.prepare(p, U, Up)
    J = _real_jacobian(lambda v: m.forward(ctx, v)[0])
    lj = float(m.forward(ctx, _phi(1))[1])
    assert abs(lj) > 1.0
    sign, logdet = np.linalg.slogdet(J)
    assert sign == 1.0
    assert abs(logdet - lj) < 1e-9 * max(1.0, abs(lj)), (logdet, lj)


# ---------------------------------------------------------------------- triangular structure
@pytest.mark.parametrize("axis,parity", [(0, 0), (0, 1), (1, 1), (2, 0), (3, 1)])
def test_layer_is_triangular(axis, parity):
    """One layer: the frozen half B is copied exactly; a perturbation on the active half A moves
    the A output only by the per-site factor e^{s(x)} (real, positive, equal for every spin
    and colour component) with 24 sum_A s = log J; a perturbation on B moves B by itself and
    couples into A."""
    U, Up = _fields(5)
    m, p = _model(1, hidden=3, scale=0.2, seed=7 + axis, masks=[{"axis": axis, "parity": parity}])
    ctx = m.prepare(p, U, Up)
    act = _active(axis, parity)
    assert act.sum() == act.size // 2
    phi = _phi(8, lead=(2,))
    y, lj = m.forward(ctx, phi)
    assert np.array_equal(y[:, ~act], phi[:, ~act])
    # perturbation on A only
    d = _phi(9, lead=(2,))
    dA = np.where(act[..., None, None], d, 0)
    y2, _ = m.forward(ctx, phi + dA)
    delta = y2 - y
    assert np.array_equal(delta[:, ~act], np.zeros_like(delta[:, ~act]))
    ratio = delta[:, act] / dA[:, act]                          # (2, sites in A, 4, 3)
    c = ratio[:1, :, :1, :1]
    np.testing.assert_allclose(ratio, np.broadcast_to(c, ratio.shape), rtol=1e-10)
    assert np.abs(c.imag).max() < 1e-10 and c.real.min() > 0
    np.testing.assert_allclose(2 * 4 * NC * np.sum(np.log(c.real)), lj, rtol=1e-10)
    assert np.ptp(c.real) > 1e-3                                   # field-dependent s(x) (guard)
    # perturbation on B only: B moves by itself, A through the two-hop transports
    dB = np.where(act[..., None, None], 0, d)
    y3, _ = m.forward(ctx, phi + dB)
    np.testing.assert_allclose((y3 - y)[:, ~act], dB[:, ~act], atol=1e-14)
    assert np.abs((y3 - y)[:, act]).min() > 0 and np.abs((y3 - y)[:, act]).max() > 1e-2


def test_masks_match_the_lattice_coordinates():
    """PFMask.active marks the odd sites with x_axis = parity (mod 2), axis 0 included (row parity)."""
    for axis in range(4):
        for parity in (0, 1):
            got = np.broadcast_to(PFMask(axis, parity).active(EO, np), HALF.local_shape)
            assert np.array_equal(got, _active(axis, parity)), (axis, parity)
    assert pf_schedule(16) == [PFMask((i // 2) % 4, i % 2) for i in range(16)]


# ---------------------------------------------------------------------- VJPs
def _loss_fn(m, U, Up, g, lj_bar):
    def loss(params, phi):
        y, lj = m.forward(m.prepare(params, U, Up), phi)
        return float(np.sum(np.real(np.conj(g) * y)) + np.sum(lj_bar * lj))
    return loss


@pytest.mark.parametrize("hidden", [3, 0])
def test_vjp_against_finite_differences(hidden):
    """d/dt L(phi + t u) and d/dt L(theta + t D_k) (fourth-order central differences, float64)
    for L = Re<g, h(phi)> + sum lj_bar log J: the VJP w.r.t. phi, and w.r.t. every parameter
    array separately (a random direction per key)."""
    U, Up = _fields(6, batch=(2,))
    m, p = _model(3, hidden=hidden, scale=0.1, seed=11, masks=[{"axis": 0, "parity": 1}, {"axis": 2, "parity": 0},
                                                                 {"axis": 3, "parity": 1}])
    phi = _phi(12, lead=(2, 2))
    g = _phi(13, lead=(2, 2))
    lj_bar = np.array([0.3, -0.7])
    ctx = m.prepare(p, U, Up)
    y, lj, ins = m.forward(ctx, phi, keep=True)
    phi_bar, grads = m.vjp(p, ctx, ins, g, lj_bar)
    assert set(grads) == set(p) and all(grads[k].shape == p[k].shape for k in p)
    loss = _loss_fn(m, U, Up, g, lj_bar)
    u = _phi(14, lead=(2, 2))
    num = _stencil(lambda t: loss(p, phi + t * u), 1e-3)
    ana = float(np.sum(np.real(np.conj(phi_bar) * u)))
    assert abs(ana - num) <= 1e-9 * abs(num), (ana, num)
    rng = np.random.default_rng(15)
    for k in sorted(p):
        D = rng.normal(size=p[k].shape)
        num = _stencil(lambda t: loss({**p, k: p[k] + t * D}, phi), 1e-3)
        ana = float(np.sum(grads[k] * D))
        assert abs(ana) > 1e-3, k                                # every array matters (guard)
        assert abs(ana - num) <= 1e-7 * max(abs(ana), abs(num)), (k, ana, num)


@pytest.mark.parametrize("hidden", [3, 0])
def test_inverse_vjp_against_finite_differences(hidden):
    U, Up = _fields(7, batch=(2,))
    m, p = _model(4, hidden=hidden, scale=0.1, seed=12)
    ctx = m.prepare(p, U, Up)
    y = _phi(16, lead=(3, 2))
    g = _phi(17, lead=(3, 2))
    u = _phi(18, lead=(3, 2))
    y_bar = m.inverse_vjp(ctx, g)
    num = _stencil(lambda t: float(np.sum(np.real(np.conj(g) * m.inverse(ctx, y + t * u)[0]))), 1e-3)
    ana = float(np.sum(np.real(np.conj(y_bar) * u)))
    assert abs(ana) > 1.0
    assert abs(ana - num) <= 1e-9 * abs(num), (ana, num)


def test_vjp_and_inverse_vjp_are_exact_adjoints():
    """h is complex-linear, so the phi cotangent of the VJP is h^dag g: <g, h d> = <h^dag g, d>
    (real and imaginary parts) to 1e-10, and <g, h^-1 d> = <h^-dag g, d>."""
    U, Up = _fields(8, batch=(2,))
    m, p = _model(8, hidden=3, scale=0.1, seed=13)
    ctx = m.prepare(p, U, Up)
    d = _phi(20, lead=(2, 2))
    g = _phi(21, lead=(2, 2))
    yd, _, ins = m.forward(ctx, d, keep=True)
    g_bar, _ = m.vjp(p, ctx, ins, g)
    a, b = _inner(g, yd), _inner(g_bar, d)
    assert abs(a - b) <= 1e-10 * abs(a), (a, b)
    xd, _ = m.inverse(ctx, d)
    a, b = _inner(g, xd), _inner(m.inverse_vjp(ctx, g), d)
    assert abs(a - b) <= 1e-10 * abs(a), (a, b)
    # complex linearity: h(i d) = i h(d)
    np.testing.assert_allclose(m.forward(ctx, 1j * d)[0], 1j * yd, atol=1e-12)


# ---------------------------------------------------------------------- identity start
@pytest.mark.parametrize("hidden,seed", [(8, 0), (0, 3)])
def test_identity_at_initialisation(hidden, seed):
    U, Up = _fields(9, batch=(2,))
    m = PseudofermionFlow(16, hidden=hidden)
    p = m.init(seed)
    if hidden:
        assert np.abs(p["layer0.W1"]).max() > 0                 # hidden weights are random, output weights zero
    ctx = m.prepare(p, U, Up)
    phi = _phi(22, lead=(3, 2))
    y, lj = m.forward(ctx, phi)
    assert np.array_equal(y, phi) and np.array_equal(lj, np.zeros(2))
    x, lji = m.inverse(ctx, phi)
    assert np.array_equal(x, phi) and np.array_equal(lji, np.zeros(2))
    r0 = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=4, seed=5)
    r1 = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=4, seed=5, pf_map=m.bind(p, U, Up))
    assert np.abs(r0.log_weights).max() > 0.1
    np.testing.assert_allclose(r1.log_weights, r0.log_weights, rtol=0, atol=1e-12)
    np.testing.assert_allclose(r1.log_W, r0.log_W, rtol=0, atol=1e-12)
    assert r1.params["pf_map"] == "conditional flow" and r0.params["pf_map"] == "identity"


# ---------------------------------------------------------------------- the estimator (P2)
class _ZeroVarianceMap:
    """h* = M^(U')^dag M^(U)^-dag as dense matrices (per batch element), log J = log det K(U') -
    log det K(U) = 2 (log|det M^(U')| - log|det M^(U)|)."""

    name = "dense h*"

    def __init__(self, U, Up):
        S, Sp = F.dense_schur(U, KAPPA, MU), F.dense_schur(Up, KAPPA, MU)
        self.H = _dag(Sp) @ np.linalg.inv(_dag(S))                   # (*batch, n, n)
        self.log_jac = 2.0 * (np.linalg.slogdet(Sp)[1] - np.linalg.slogdet(S)[1])
        self.calls = 0

    def __call__(self, phi):
        self.calls += 1
        lead = phi.shape[: phi.ndim - len(SPINOR)]
        flat = phi.reshape(lead + (NDIM,))
        out = np.einsum("...ij,...j->...i", self.H, flat)
        return out.reshape(phi.shape), self.log_jac


def test_dense_schur_uses_the_packed_spinor_ordering():
    """fermions.dense_schur indexes rows/columns by the C-order flattening of a packed odd
    spinor (sites, spin, colour), so dense matrices act on phi.reshape(-1)."""
    U = L.random_gauge(SHAPE, seed=12, batch=(2,))
    op = F.TwistedMassWilson(U, KAPPA, MU)
    assert tuple(op.half_layout.local_shape) == tuple(HALF.local_shape)
    S = F.dense_schur(U, KAPPA, MU)
    eta = _phi(30, lead=(3, 2))
    got = np.einsum("bij,sbj->sbi", S, eta.reshape(3, 2, NDIM)).reshape(eta.shape)
    np.testing.assert_allclose(got, op.apply_schur(eta), atol=1e-13)
    got = np.einsum("bij,sbj->sbi", _dag(S), eta.reshape(3, 2, NDIM)).reshape(eta.shape)
    np.testing.assert_allclose(got, op.apply_schur_dagger(eta), atol=1e-13)


def test_zero_variance_map_gives_the_exact_ratio_on_every_shot():
    """With h* the per-shot log-weights all equal log det K(U') - log det K(U) (the dense
    ratio): (P2) with its Jacobian term, phi' = M^(U')^dag eta."""
    U, Up = _fields(10, batch=(2,), eps=0.1)
    exact = F.dense_log_det(Up, KAPPA, MU) - F.dense_log_det(U, KAPPA, MU)
    hstar = _ZeroVarianceMap(U, Up)
    np.testing.assert_allclose(hstar.log_jac, exact, rtol=1e-12)
    r = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=6, seed=3, pf_map=hstar)
    plain = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=6, seed=3)
    assert hstar.calls == 1 and r.params["pf_map"] == "dense h*"
    assert np.all(np.abs(exact) > 0.3) and np.all(np.std(plain.log_weights, axis=0) > 0.3)   # guard
    assert r.log_weights.shape == (6, 2)
    np.testing.assert_allclose(r.log_weights, np.broadcast_to(exact, (6, 2)), rtol=0, atol=1e-8)
    np.testing.assert_allclose(r.log_W, exact, rtol=0, atol=1e-8)
    assert np.all(r.log_W_err < 1e-8)


def test_random_map_is_unbiased():
    """A random (untrained, clearly non-identity) map with a finite-variance estimator
    (lambda_min(B^dag B) > 1/2 for B = M^(U')^-dag h M^(U)^dag, dense): log W of 400 shots
    agrees with the dense ratio within 4 standard errors, as does the identity map; the
    estimated error does not exceed the one the exact variance of the mapped estimator predicts."""
    U, Up = _fields(1, eps=0.06)
    exact = float(F.dense_log_det(Up, KAPPA, MU) - F.dense_log_det(U, KAPPA, MU))
    m = PseudofermionFlow(4, hidden=4)
    p = perturbed(m.init(0), 2e-3, 1)
    p = _boost_s(m, p, shift=0.005)                      # s noise 2e-3, a uniform rescaling on top: log J ~ 7
    f = m.bind(p, U, Up)
    # exact variance of w = |det h|^2 exp(|eta|^2 - |B eta|^2)
    Hd = _dense_map(lambda v: f(v)[0])
    S, Sp = F.dense_schur(U, KAPPA, MU), F.dense_schur(Up, KAPPA, MU)
    B = np.linalg.solve(_dag(Sp), Hd @ _dag(S))
    BB = _dag(B) @ B
    assert np.linalg.eigvalsh(BB).min() > 0.5
    assert np.isclose(float(F.ratio_variance_condition(U, Up, KAPPA, MU, pf_map=f)), np.linalg.eigvalsh(BB).min(),
                      rtol=1e-10)                          # the library's condition with a map
    rel_var = np.exp(2 * np.linalg.slogdet(BB)[1] - np.linalg.slogdet(2 * BB - np.eye(NDIM))[1]) - 1
    n = 400
    r = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=n, seed=5, pf_map=f)
    r0 = F.log_det_ratio(U, Up, KAPPA, MU, n_shots=n, seed=5)
    lj = float(f(_phi(1))[1])
    assert abs(lj) > 3.0                                   # guard: a visible Jacobian term
    assert np.mean(np.abs(r.log_weights - r0.log_weights)) > 0.2     # guard: the map changes every shot
    assert abs(float(r.log_W) - exact) < 4 * float(r.log_W_err), (r.log_W, exact, r.log_W_err)
    assert abs(float(r0.log_W) - exact) < 4 * float(r0.log_W_err), (r0.log_W, exact, r0.log_W_err)
    # the scatter is no larger than the exact variance of the mapped estimator predicts (the
    # sample estimate of a heavy-tailed variance is typically below it, so one-sided)
    predicted = np.sqrt(rel_var / n)
    assert 0.0 < float(r.log_W_err) < 1.5 * predicted, (r.log_W_err, predicted)


# ---------------------------------------------------------------------- training
def _objective(n_cfg=6, holdout=2, eps=0.1, n_shots=8):
    U = L.random_gauge(SHAPE, seed=1, batch=(n_cfg,))
    X = su_n.random_algebra(L.Rng(2), NC, lead=U.shape[:-2], scale=eps)
    return PseudofermionObjective(U, su_n.expm(X) @ U, KAPPA, MU, n_shots=n_shots, holdout=holdout)


def test_training_lowers_the_held_out_variance():
    """30 Adam steps (path gradients, lr 1e-3 constant) on 4 configurations with U' = exp(0.1 X) U:
    the per-shot log-weight variance on the 2 held-out configurations (64 shots, fixed noise)
    drops by more than 15% against the identity start (about 30% here), and so does the
    held-out loss."""
    obj = _objective()
    assert (obj.n_train, obj.n_holdout) == (4, 2)
    m = PseudofermionFlow(4, hidden=4)
    p0 = m.init(0)
    lw0 = obj.holdout_log_weights(m, p0, seed=0, n_shots=64)
    p1, hist = flows.train(m, p0, None, obj, steps=30, batch_size=2, estimator="path", lr=1e-3,
                           schedule="constant", progress=False, seed=3)
    lw1 = obj.holdout_log_weights(m, p1, seed=0, n_shots=64)
    assert lw0.shape == lw1.shape == (64, 2)
    assert len(hist.loss) == 30 and np.all(np.isfinite(hist.loss))
    v0, v1 = np.var(lw0, axis=0), np.var(lw1, axis=0)
    assert np.all(v1 < 0.85 * v0), (v0, v1)
    # the held-out loss E[-log w] (reverse KL up to a constant) drops too, and E[log w] stays
    # below log E[w] = the exact log ratio (Jensen)
    exact = F.dense_log_det(obj.Up[4:], KAPPA, MU) - F.dense_log_det(obj.U[4:], KAPPA, MU)
    m0, m1 = np.mean(lw0, axis=0), np.mean(lw1, axis=0)
    assert np.all(m1 > m0 + 0.3), (m0, m1)
    assert np.all(m1 < exact), (m1, exact)


def test_training_is_reproducible_and_plain_estimator_runs():
    obj = _objective()
    m = PseudofermionFlow(2, hidden=4)
    p0 = m.init(0)
    kw = dict(steps=3, batch_size=2, lr=1e-3, progress=False)
    pa, ha = flows.train(m, p0, None, obj, estimator="path", seed=3, **kw)
    pb, hb = flows.train(m, p0, None, obj, estimator="path", seed=3, **kw)
    pc, _ = flows.train(m, p0, None, obj, estimator="path", seed=4, **kw)
    assert set(pa) == set(p0)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert list(ha.loss) == list(hb.loss)
    assert any(not np.array_equal(pa[k], pc[k]) for k in pa)          # the seed matters
    assert any(not np.array_equal(pa[k], p0[k]) for k in pa)          # training moved the parameters
    pd, hd = flows.train(m, p0, None, obj, estimator="plain", seed=3, **kw)
    assert len(hd.loss) == 3 and np.all(np.isfinite(hd.loss))
    assert all(np.all(np.isfinite(pd[k])) for k in pd)
    assert any(not np.array_equal(pd[k], p0[k]) for k in pd)
    with pytest.raises(ValueError, match="estimator"):
        obj.log_weights(m, p0, [0], 1, want_grad="score")


def test_path_and_plain_gradients_are_equal_in_expectation(monkeypatch):
    """Per shot, both gradients are quadratic forms in eta (h is linear in phi = M^dag eta), and
    for complex Gaussian eta, E[Q(eta)] = (1/2n) sum_k [Q(sqrt(n) e_k) + Q(i sqrt(n) e_k)]
    exactly. With these 2n "shots" in place of the random noise, the path gradient (C3) and the
    plain reparameterised gradient are exact expectations: they agree to rounding (per shot
    they differ), and equal the derivative of the expected loss E[-log w] = |B|_F^2 - n - log J
    (B = M^(U')^-dag h M^(U)^dag, dense) by central finite differences. A missing log J term,
    a wrong h^-dag K(U)^-1 phi term or a biased score term would each fail this.
    SU(2) and kappa = 0.1 here: 2n = 512 shots, fewer CG iterations."""
    import fermions.det_ratio as det_ratio
    kappa, nc = 0.1, 2
    spinor = tuple(HALF.local_shape) + (4, nc)
    n = int(np.prod(spinor))
    E = np.sqrt(n) * np.eye(n, dtype=np.complex128).reshape((n, 1) + spinor)
    quad = np.concatenate([E, 1j * E])
    noise, calls = [quad], []

    def fixed_noise(rng, half, lead, N):
        assert tuple(lead) == noise[0].shape[:2] and N == nc and tuple(half.local_shape) == spinor[:4]
        calls.append(tuple(lead))
        return noise[0]

    monkeypatch.setattr(det_ratio, "draw_odd_noise", fixed_noise)
    U = L.random_gauge(SHAPE, N=nc, seed=3, batch=(1,))
    Up = su_n.expm(su_n.random_algebra(L.Rng(4), nc, lead=U.shape[:-2], scale=0.1)) @ U
    obj = PseudofermionObjective(U, Up, kappa, MU, n_shots=2 * n, holdout=0, tol=1e-12)
    m = PseudofermionFlow(2, hidden=3)
    p = _boost_s(m, perturbed(m.init(0), 0.02, 4))
    lw, loss_a, ga = obj.log_weights(m, p, [0], 7, want_grad="path")
    _, loss_b, gb = obj.log_weights(m, p, [0], 7, want_grad="plain")
    assert calls == [(2 * n, 1)] * 2, "the objective no longer draws its noise through det_ratio.draw_odd_noise"
    assert lw.shape == (2 * n, 1) and loss_a == loss_b
    for k in p:
        scale = np.abs(gb[k]).max()
        assert scale > 1e-3, k
        np.testing.assert_allclose(ga[k], gb[k], rtol=0, atol=1e-9 * scale, err_msg=k)
    # guard: for random noise (4 shots) the two estimators differ
    noise[0] = L.Rng(8).complex_normal(lead=(4, 1), layout=HALF, inner=(4, nc))
    _, _, ga4 = obj.log_weights(m, p, [0], 7, n_shots=4, want_grad="path")
    _, _, gb4 = obj.log_weights(m, p, [0], 7, n_shots=4, want_grad="plain")
    assert all(np.abs(ga4[k] - gb4[k]).max() > 1e-2 * np.abs(gb4[k]).max() for k in p)
    # the expected loss, densely
    S, Sp = F.dense_schur(U[0], kappa, MU), F.dense_schur(Up[0], kappa, MU)
    basis = np.eye(n, dtype=np.complex128).reshape((n,) + spinor)

    def expected_loss(params):
        f = m.bind(params, U[0], Up[0])
        y, lj = f(basis)
        B = np.linalg.solve(_dag(Sp), y.reshape(n, n).T @ _dag(S))
        return float(np.sum(np.abs(B) ** 2)) - n - float(lj)

    assert abs(loss_a - expected_loss(p)) < 1e-9 * abs(loss_a), loss_a
    D = {k: np.random.default_rng(6).normal(size=v.shape) for k, v in p.items()}
    h = 1e-5
    num = (expected_loss({k: p[k] + h * D[k] for k in p}) - expected_loss({k: p[k] - h * D[k] for k in p})) / (2 * h)
    ana = sum(float(np.sum(gb[k] * D[k])) for k in p)
    assert abs(ana - num) <= 1e-6 * abs(num), (ana, num)


# ---------------------------------------------------------------------- bad input and files
def test_bad_input_raises_value_errors():
    U, Up = _fields(11)
    m, p = _model(2, hidden=3, scale=0.1, seed=1)
    ctx = m.prepare(p, U, Up)
    phi = _phi(1, lead=(2,))
    for bad in (phi[..., :2, :], phi[..., :2], phi[:, :, :1]):            # spin, colour, sites
        with pytest.raises(ValueError, match="pseudofermion field"):
            m.forward(ctx, bad)
        with pytest.raises(ValueError, match="pseudofermion field"):
            m.inverse(ctx, bad)
    with pytest.raises(ValueError, match="same shape"):
        m.prepare(p, U, Up[None])
    with pytest.raises(ValueError, match="same shape"):
        m.bind(p, U[None], np.stack([Up, Up]))
    U3 = L.random_gauge((4, 2, 4), seed=1)
    with pytest.raises(ValueError, match="four-dimensional"):
        m.prepare(p, U3, U3)
    with pytest.raises(ValueError, match="at least one layer"):
        PseudofermionFlow(n_layers=0)
    with pytest.raises(ValueError, match="hidden"):
        PseudofermionFlow(2, hidden=-1)
    for mask in ({"axis": 4, "parity": 0}, {"axis": -1, "parity": 1}, {"axis": 1, "parity": 2}):
        with pytest.raises(ValueError, match="invalid pseudofermion mask"):
            PseudofermionFlow(n_layers=1, masks=[mask])
    with pytest.raises(ValueError, match="masks for"):
        PseudofermionFlow(n_layers=2, masks=[{"axis": 0, "parity": 0}])
    with pytest.raises(ValueError, match="same shape|n_cfg"):
        PseudofermionObjective(U[None], Up[None, None], KAPPA, MU)
    with pytest.raises(ValueError, match="holdout"):
        PseudofermionObjective(U[None], Up[None], KAPPA, MU, holdout=1)
    with pytest.raises(ValueError, match="pf_map"):
        F.log_det_ratio(U, Up, KAPPA, MU, n_shots=2, seed=1, pf_map=lambda v: (v[..., :2, :], 0.0))


def test_incomplete_mask_dict_raises_value_error():
    for bad in ({"axis": 0}, (0, 1), {"axis": "x", "parity": 0}, {"axis": 0, "parity": 1, "extra": 2}):
        with pytest.raises(ValueError, match="invalid pseudofermion mask"):
            PseudofermionFlow(n_layers=1, masks=[bad])


def test_save_and_load_round_trip(tmp_path):
    m, p = _model(3, hidden=2, scale=0.1, seed=3, masks=[{"axis": 3, "parity": 1}, {"axis": 0, "parity": 0},
                                                            {"axis": 2, "parity": 1}])
    path = tmp_path / "pf.h5"
    save_pf_flow(path, m, p, extra={"kappa": KAPPA, "note": "test"})
    m2, p2, cfg = load_pf_flow(path)
    assert isinstance(m2, PseudofermionFlow) and m2.config() == m.config()
    assert m2.masks == m.masks and m2.bc == m.bc and m2.hidden == 2
    assert cfg["kappa"] == KAPPA and cfg["note"] == "test" and cfg["model"] == m.config()
    assert set(p2) == set(p) and all(np.array_equal(p2[k], p[k]) and p2[k].dtype == p[k].dtype for k in p)
    U, Up = _fields(12)
    phi = _phi(2)
    y, lj = m.forward(m.prepare(p, U, Up), phi)
    y2, lj2 = m2.forward(m2.prepare(p2, U, Up), phi)
    assert np.array_equal(y, y2) and np.array_equal(lj, lj2)
    # a PseudofermionFlow built from its config is the same model
    assert PseudofermionFlow.from_config(m.config()).config() == m.config()
    with pytest.raises(ValueError, match="not a pseudofermion flow configuration"):
        PseudofermionFlow.from_config({"class": "Flow"})


def test_loading_a_file_of_another_kind_raises_param_file_error(tmp_path):
    gauge = flows.residual_flow(4, 3, ("M2",), ("plaquette",))
    gp = gauge.init(0)
    a, b, c, d = (tmp_path / f"{x}.h5" for x in "abcd")
    flows.save(a, gauge, gp)                                          # a gauge-flow file
    flows.save_params(b, gp, {"model": gauge.config()})               # another model config
    m, p = _model(2, hidden=3)
    other = PseudofermionFlow(2, hidden=4)
    flows.save_params(c, p, {"model": other.config()})               # parameters of another shape
    for path in (a, b, c):
        with pytest.raises(flows.ParamFileError):
            load_pf_flow(path)
    save_pf_flow(d, m, p)
    with pytest.raises(flows.ParamFileError):
        flows.load(d)                                                 # and the other way round
    with pytest.raises(flows.ParamFileError):
        load_pf_flow(tmp_path / "missing.h5")


def test_hopping_init_starts_at_the_kappa2_expansion_of_the_zero_variance_map():
    """hopping_init sets only output biases (s = 0: log J = 0) with the difference part
    d = c^U = -c^U' = kappa^2 mu~^(a+b) / (1 + mu~^2)^2 / n_p and no sum part, and on held-out configurations it removes a large part of
    the per-shot variance of log w before any training (about 60% at kappa = 0.17 here)."""
    m = PseudofermionFlow(16, hidden=3)
    p0 = m.init(0)
    p = m.hopping_init(p0, KAPPA, MU)
    assert all(np.array_equal(p[k], p0[k]) for k in p if not k.endswith("b2"))
    mt = 2 * KAPPA * MU
    b = p["layer5.b2"]
    assert b[0] == 0.0
    c = b[1:].reshape(2, 6, 4)
    want = np.array([KAPPA ** 2 * mt ** (a + bb) / (1 + mt * mt) ** 2 / 4 for a in (0, 1) for bb in (0, 1)])
    np.testing.assert_allclose(c[0], np.broadcast_to(want, (6, 4)), rtol=1e-14)
    assert not np.any(c[1])                                         # no sum part: c^U' = -c^U
    U, Up = _fields(seed=21, batch=(5,), eps=0.06)
    assert float(np.abs(m.forward(m.prepare(p, U, Up), _phi(1, lead=(2, 5)))[1]).max()) == 0.0
    obj = PseudofermionObjective(U, Up, KAPPA, MU, n_shots=4, holdout=3)
    v0 = np.var(obj.holdout_log_weights(m, p0, n_shots=128), axis=0)
    v1 = np.var(obj.holdout_log_weights(m, p, n_shots=128), axis=0)
    assert np.all(v1 < 0.6 * v0), (v0, v1)
