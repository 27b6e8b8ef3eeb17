"""Residual flows on a lattice decomposed over MPI ranks (run under mpiexec): flowed field,
log J, the fixed-point inverse, the path-gradient parameter cotangents (summed over the
ranks) and the linear-response regressors equal the single-process ones."""

import numpy as np
import pytest

pytestmark = pytest.mark.mpi
MPI = pytest.importorskip("mpi4py.MPI")

import flows  # noqa: E402
from flows.train import sample_loss_and_grad  # noqa: E402
from lattice import Layout, random_gauge  # noqa: E402
from lattice.actions import Wilson  # noqa: E402

SHAPE = (4, 4, 4, 8)
GRIDS = {1: (1, 1, 1, 1), 2: (1, 2, 1, 1), 4: (2, 1, 1, 2)}


def _model():
    m = flows.residual_flow(4, 3, ("M2", "M4"), ("plaquette", "rectangle"), field_dependent=True,
                            context_hidden=(2,), context_kernel=3)
    rng = np.random.default_rng(1)
    p = {k: v + 0.3 * rng.normal(size=v.shape) for k, v in m.init(0).items()}
    return m, p


def _grids():
    """Grids of this rank count: with 4 ranks also (4, 1, 1, 1), whose blocks are one site
    thick along axis 0, so that the rectangles of the M4 layers reach beyond the neighbouring
    block and take the whole-field path (flows.paths) while the M2 layers use ghost planes."""
    n = MPI.COMM_WORLD.Get_size()
    return [GRIDS[n]] + ([(4, 1, 1, 1)] if n == 4 else [])


@pytest.mark.parametrize("grid", _grids())
def test_distributed_residual_flow_equals_single_process(grid):
    comm = MPI.COMM_WORLD
    lay = Layout(SHAPE, comm=comm, grid=grid, tile=(1, 1, 1, 1))
    full = Layout(SHAPE)
    m, p = _model()
    zg = random_gauge(SHAPE, N=3, batch=(2,), seed=3)
    z = lay.local_part(zg, inner=2)
    V, lj = m.forward(p, z, layout=lay)
    Vg, ljg = m.forward(p, zg, layout=full)
    np.testing.assert_allclose(V, lay.local_part(Vg, inner=2), atol=1e-12)
    np.testing.assert_allclose(lj, ljg, rtol=1e-12)
    U, lji = m.inverse(p, V, layout=lay)
    np.testing.assert_allclose(U, z, atol=1e-11)
    np.testing.assert_allclose(lji, -lj, atol=1e-10)
    S1, S2 = flows.GaugeTarget(Wilson(5.7)), flows.GaugeTarget(Wilson(5.7, lam=0.1))
    base, base_full = flows.EnsembleBase(z, S1, holdout=1, layout=lay), flows.EnsembleBase(zg, S1, holdout=1, layout=full)
    loss, g, lw, _ = sample_loss_and_grad(m, p, base, S2, z, "path", lay)
    lossg, gg, lwg, _ = sample_loss_and_grad(m, p, base_full, S2, zg, "path", full)
    np.testing.assert_allclose(lw, lwg, rtol=1e-12)
    for k in gg:
        tot = lay.allreduce_sum(g[k])
        np.testing.assert_allclose(tot, gg[k], rtol=1e-9, atol=1e-9 * max(1.0, np.abs(gg[k]).max()))
    keys, F, y = flows.linear_response_features(m, p, z, S1, S2, layout=lay)
    keysg, Fg, yg = flows.linear_response_features(m, p, zg, S1, S2, layout=full)
    assert keys == keysg
    np.testing.assert_allclose(F, Fg, rtol=1e-12)
    np.testing.assert_allclose(y, yg, rtol=1e-12)
