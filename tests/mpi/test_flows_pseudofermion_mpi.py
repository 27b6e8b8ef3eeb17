"""The conditional pseudofermion flow on a lattice decomposed over MPI ranks (run under
mpiexec): the mapped pseudofermion, log J, the inverse, the VJPs (phi cotangent, inverse
VJP, parameter cotangents summed over the ranks), the training objective's log-weights and
gradients, a short training run, and the determinant-ratio estimator with the flow as pf_map
equal the single-process results on the gathered fields. Every local L0 is even (even-odd
packing along axis 0)."""

import numpy as np
import pytest

pytestmark = pytest.mark.mpi
MPI = pytest.importorskip("mpi4py.MPI")

import flows  # noqa: E402
import fermions as F  # noqa: E402
import lattice as L  # noqa: E402
from lattice import su_n  # noqa: E402
from flows.pseudofermion import PseudofermionFlow, PseudofermionObjective  # noqa: E402

SHAPE = (8, 4, 4, 4)
KAPPA, MU = 0.17, 0.1
NC = 3


def _grids(size):
    # axis 0 split (local L0 = 4), the time axis split, two axes split; (4, 1, 1, 1) is refused
    # by fermions.even_odd (the half lattice (4, 4, 4, 4) cannot be split 4 ways along axis 0
    # with its reduction tile 2)
    return {1: [None], 2: [(2, 1, 1, 1), (1, 1, 1, 2)], 4: [(2, 1, 1, 2), (2, 2, 1, 1), (1, 2, 2, 1)]}.get(size, [None])


@pytest.fixture(scope="module", params=[0, 1, 2])
def lay(comm, request):
    grids = _grids(comm.Get_size())
    if request.param >= len(grids):
        pytest.skip("fewer grids for this rank count")
    lay = L.Layout(SHAPE, comm=comm, grid=grids[request.param])
    assert lay.local_shape[0] % 2 == 0
    assert lay.is_distributed == (comm.Get_size() > 1)
    return lay


@pytest.fixture(scope="module")
def serial():
    return L.Layout(SHAPE)


@pytest.fixture(scope="module")
def setup():
    """Global fields (2 configurations), a generic model and parameters, known on every rank."""
    U = L.random_gauge(SHAPE, seed=3, batch=(2,))
    X = su_n.random_algebra(L.Rng(4), NC, lead=U.shape[:-2], scale=0.1)
    Up = su_n.expm(X) @ U
    m = PseudofermionFlow(4, hidden=3, masks=[{"axis": 0, "parity": 0}, {"axis": 1, "parity": 1},
                                             {"axis": 2, "parity": 0}, {"axis": 3, "parity": 1}])   # every split axis
    rng = np.random.default_rng(1)
    p = {k: v + 0.05 * rng.normal(size=v.shape) for k, v in m.init(0).items()}
    return U, Up, m, p


def _half(layout):
    return F.even_odd(layout).half


def _spinor(seed, layout, lead):
    return L.Rng(seed).complex_normal(lead=lead, layout=_half(layout), inner=(4, NC))


def _close(a, b, tol=1e-12):
    np.testing.assert_allclose(a, b, rtol=0, atol=tol * max(1.0, float(np.abs(b).max())))


@pytest.fixture(scope="module")
def ref(serial, setup):
    """Single-process results on the global fields (computed once, on every rank)."""
    Ug, Upg, m, p = setup
    out = {}
    ctx = m.prepare(p, Ug, Upg, serial)
    phi = _spinor(5, serial, (3, 2))
    out["phi"] = phi
    out["y"], out["lj"] = m.forward(ctx, phi)
    out["x"], out["lji"] = m.inverse(ctx, out["y"])
    phi2, g = _spinor(6, serial, (2, 2)), _spinor(7, serial, (2, 2))
    _, _, ins = m.forward(ctx, phi2, keep=True)
    out["pbar"], out["grads"] = m.vjp(p, ctx, ins, g, LJ_BAR)
    out["ibar"] = m.inverse_vjp(ctx, g)
    objg = PseudofermionObjective(Ug, Upg, KAPPA, MU, n_shots=3, holdout=0, layout=serial)
    for est in ("path", "plain"):
        out["obj", est] = objg.log_weights(m, p, [1, 0], 11, want_grad=est)
    m2 = PseudofermionFlow(2, hidden=2)
    objg = PseudofermionObjective(Ug, Upg, KAPPA, MU, n_shots=2, holdout=0, layout=serial)
    out["train"] = flows.train(m2, m2.init(0), None, objg, layout=serial, **TRAIN_KW)
    out["ratio"] = F.log_det_ratio(Ug, Upg, KAPPA, MU, n_shots=4, seed=9, layout=serial,
                                   pf_map=m.bind(p, Ug, Upg, serial))
    out["ratio0"] = F.log_det_ratio(Ug, Upg, KAPPA, MU, n_shots=4, seed=9, layout=serial)
    return out


LJ_BAR = np.array([0.4, -1.3])
TRAIN_KW = dict(steps=2, batch_size=1, lr=1e-3, progress=False, seed=3)


def test_forward_inverse_and_log_jacobian(lay, setup, ref):
    Ug, Upg, m, p = setup
    hl = _half(lay)
    Ul, Upl = L.scatter(lay, Ug), L.scatter(lay, Upg)
    phil = _spinor(5, lay, (3, 2))                       # the noise is decomposition independent
    assert np.array_equal(phil, L.scatter(hl, ref["phi"], inner=2))
    yg, ljg = ref["y"], ref["lj"]
    assert np.abs(yg - ref["phi"]).max() > 0.1 and np.all(np.abs(ljg) > 1.0)     # guard: a non-trivial map
    ctx = m.prepare(p, Ul, Upl, lay)
    y, lj = m.forward(ctx, phil)
    _close(y, L.scatter(hl, yg, inner=2))
    np.testing.assert_allclose(lj, ljg, rtol=1e-12)
    _close(L.gather(hl, y, inner=2), yg)
    x, lji = m.inverse(ctx, y)
    _close(x, L.scatter(hl, ref["x"], inner=2))
    _close(x, phil, 1e-10)
    np.testing.assert_allclose(lji, ref["lji"], rtol=1e-12)
    np.testing.assert_allclose(lji, -lj, rtol=1e-12)
    # the bound map (pf_map) is the same map
    y2, lj2 = m.bind(p, Ul, Upl, lay)(phil)
    assert np.array_equal(y2, y) and np.array_equal(lj2, lj)


def test_vjps_and_parameter_gradients(lay, serial, setup, ref):
    Ug, Upg, m, p = setup
    hl = _half(lay)
    Ul, Upl = L.scatter(lay, Ug), L.scatter(lay, Upg)
    phil, gl = _spinor(6, lay, (2, 2)), _spinor(7, lay, (2, 2))
    ctx = m.prepare(p, Ul, Upl, lay)
    _, _, ins = m.forward(ctx, phil, keep=True)
    pbar, grads = m.vjp(p, ctx, ins, gl, LJ_BAR)
    _close(pbar, L.scatter(hl, ref["pbar"], inner=2))
    gradsg = ref["grads"]
    assert set(grads) == set(gradsg) == set(p)
    for k in gradsg:
        assert np.abs(gradsg[k]).max() > 1e-3, k
        _close(lay.allreduce_sum(grads[k]), gradsg[k])
    _close(m.inverse_vjp(ctx, gl), L.scatter(hl, ref["ibar"], inner=2))


@pytest.mark.parametrize("estimator", ["path", "plain"])
def test_objective_log_weights_and_gradients(lay, setup, ref, estimator):
    Ug, Upg, m, p = setup
    obj = PseudofermionObjective(L.scatter(lay, Ug), L.scatter(lay, Upg), KAPPA, MU, n_shots=3, holdout=0,
                                 layout=lay)
    lw, loss, grads = obj.log_weights(m, p, [1, 0], 11, want_grad=estimator)
    lwg, lossg, gradsg = ref["obj", estimator]
    assert lw.shape == (3, 2)
    np.testing.assert_allclose(lw, lwg, rtol=1e-12, atol=1e-12)
    assert abs(loss - lossg) <= 1e-12 * max(1.0, abs(lossg))
    for k in gradsg:
        _close(lay.allreduce_sum(grads[k]), gradsg[k], 1e-11)


def test_short_training_run_is_the_same(lay, setup, ref):
    Ug, Upg, _, _ = setup
    m = PseudofermionFlow(2, hidden=2)
    p0 = m.init(0)
    obj = PseudofermionObjective(L.scatter(lay, Ug), L.scatter(lay, Upg), KAPPA, MU, n_shots=2, holdout=0,
                                 layout=lay)
    pl, hl = flows.train(m, p0, None, obj, layout=lay, **TRAIN_KW)
    pg, hg = ref["train"]
    np.testing.assert_allclose(hl.loss, hg.loss, rtol=1e-12)
    assert any(not np.array_equal(pg[k], p0[k]) for k in pg)
    for k in pg:
        np.testing.assert_allclose(pl[k], pg[k], rtol=0, atol=1e-12)


def test_log_det_ratio_with_pf_map(lay, setup, ref):
    Ug, Upg, m, p = setup
    Ul, Upl = L.scatter(lay, Ug), L.scatter(lay, Upg)
    r = F.log_det_ratio(Ul, Upl, KAPPA, MU, n_shots=4, seed=9, layout=lay, pf_map=m.bind(p, Ul, Upl, lay))
    rg, r0 = ref["ratio"], ref["ratio0"]
    assert r.log_weights.shape == (4, 2) and r.cg.converged
    assert np.abs(rg.log_weights - r0.log_weights).min() > 1e-3          # the map changes every shot
    np.testing.assert_allclose(r.log_weights, rg.log_weights, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(r.log_W, rg.log_W, rtol=1e-12, atol=1e-11)
    # identical on every rank
    allw = lay.comm.allgather(r.log_weights) if lay.is_distributed else [r.log_weights]
    assert all(np.array_equal(w, allw[0]) for w in allw)
