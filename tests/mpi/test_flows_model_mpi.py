"""Spectral flows on a lattice decomposed over MPI ranks (run under mpiexec): the flowed
field, log J, the inverse and the path/plain training gradients equal the single-process ones
(parameter cotangents summed over the ranks), and a short training run is the same."""

import numpy as np
import pytest

pytestmark = pytest.mark.mpi
MPI = pytest.importorskip("mpi4py.MPI")

import flows  # noqa: E402
from flows.train import sample_loss_and_grad  # noqa: E402
from lattice import Layout  # noqa: E402
from lattice.actions import Wilson  # noqa: E402
from lattice.backend import Rng  # noqa: E402

SHAPE = (4, 4, 2, 8)
GRIDS = {1: (1, 1, 1, 1), 2: (1, 2, 1, 1), 4: (2, 1, 1, 2)}


def _model(loops):
    m = flows.SpectralFlow(4, 3, 3, loops, schedule="paper", direction_layers=2, staple_width=3,
                           context_hidden=(3,), context_kernel=1, spline_bins=4, spline_basis=2)
    rng = np.random.default_rng(1)
    p = {k: v + 0.1 * rng.normal(size=v.shape) for k, v in m.init(0).items()}
    return m, p


@pytest.mark.parametrize("loops", ["learned", "plaquette"])
def test_distributed_flow_equals_single_process(loops):
    comm = MPI.COMM_WORLD
    lay = Layout(SHAPE, comm=comm, grid=GRIDS[comm.Get_size()])
    full = Layout(SHAPE)
    m, p = _model(loops)
    base, base_full = flows.HaarBase(SHAPE, 3, layout=lay), flows.HaarBase(SHAPE, 3, layout=full)
    target = flows.GaugeTarget(Wilson(2.0))
    z, zg = base.sample(2, Rng(3)), base_full.sample(2, Rng(3))
    np.testing.assert_array_equal(z, lay.local_part(zg, inner=2))
    V, lj = m.forward(p, z, layout=lay)
    Vg, ljg = m.forward(p, zg, layout=full)
    np.testing.assert_allclose(V, lay.local_part(Vg, inner=2), atol=1e-12)
    np.testing.assert_allclose(lj, ljg, rtol=1e-12)
    U, lji = m.inverse(p, V, layout=lay)
    Ug, ljig = m.inverse(p, Vg, layout=full)
    np.testing.assert_allclose(U, lay.local_part(Ug, inner=2), atol=1e-12)
    np.testing.assert_allclose(U, z, atol=1e-10)
    np.testing.assert_allclose(lji, -lj, atol=1e-10)
    for est in ("path", "plain"):
        loss, g, lw, _ = sample_loss_and_grad(m, p, base, target, z, est, lay)
        lossg, gg, lwg, _ = sample_loss_and_grad(m, p, base_full, target, zg, est, full)
        np.testing.assert_allclose(lw, lwg, rtol=1e-12)
        for k in gg:
            tot = lay.allreduce_sum(g[k])
            np.testing.assert_allclose(tot, gg[k], rtol=1e-9, atol=1e-9 * max(1.0, np.abs(gg[k]).max()))


def test_distributed_training_run():
    comm = MPI.COMM_WORLD
    lay = Layout(SHAPE, comm=comm, grid=GRIDS[comm.Get_size()])
    m, p = _model("learned")
    target = flows.GaugeTarget(Wilson(2.0))
    pd, hd = flows.train(m, p, target, flows.HaarBase(SHAPE, 3, layout=lay), steps=2, batch_size=2,
                         lr=0.01, progress=False, layout=lay)
    ps, hs = flows.train(m, p, target, flows.HaarBase(SHAPE, 3, layout=Layout(SHAPE)), steps=2, batch_size=2,
                         lr=0.01, progress=False)
    np.testing.assert_allclose(hd.loss, hs.loss, rtol=1e-12)
    for k in ps:
        np.testing.assert_allclose(pd[k], ps[k], rtol=1e-9, atol=1e-12)
