"""Staple and context networks on a lattice decomposed over MPI ranks (run under mpiexec).

Outputs and link cotangents must equal the single-process ones on every rank's block, and the
parameter cotangents (sums over local sites) must add up over the ranks to the global ones.
"""
import numpy as np
import pytest

pytestmark = pytest.mark.mpi
MPI = pytest.importorskip("mpi4py.MPI")

import flows  # noqa: E402
from lattice import Layout, random_gauge  # noqa: E402
from lattice.backend import Rng  # noqa: E402


def _mask(layout_full, mu):
    m = np.zeros((layout_full.Nd,) + layout_full.global_shape)
    m[mu] = np.asarray(layout_full.parity()) == 0
    return m


@pytest.mark.parametrize("which", ["staples", "context"])
def test_distributed_equals_single_process(which):
    comm = MPI.COMM_WORLD
    shape = (4, 4, 2, 8)
    grid = {1: (1, 1, 1, 1), 2: (1, 2, 1, 1), 4: (2, 1, 1, 2)}.get(comm.Get_size())
    lay = Layout(shape, comm=comm, grid=grid)     # split space and time, not only time
    full = Layout(shape)
    U = random_gauge(shape, N=3, batch=(2,), seed=1, layout=lay)
    Ug = random_gauge(shape, N=3, batch=(2,), seed=1, layout=full)
    np.testing.assert_array_equal(U, lay.local_part(Ug, inner=2))
    mg = _mask(full, 1)
    m = lay.local_part(mg, inner=0)
    if which == "staples":
        net = flows.StapleNet(4, 1, width=3, n_layers=3)
        params = net.init(Rng(2))
    else:
        net = flows.ContextNet(4, 3, hidden=(4,), loops=("plaquette", "rectangle"))
        params = {k: v + 0.2 * Rng(3).normal(tuple(v.shape)) for k, v in net.init(Rng(2)).items()}
    (o,), ctx = net.forward(params, U, m, layout=lay)
    (og,), ctxg = net.forward(params, Ug, mg, layout=full)
    inner = 2 if which == "staples" else 1
    np.testing.assert_allclose(o, lay.local_part(og, inner=inner), atol=1e-13)
    Gg = Rng(5).normal(tuple(og.shape)) if which == "context" else Rng(5).complex_normal(tuple(og.shape))
    G = lay.local_part(Gg, inner=inner)
    (Ub, _), g = net.vjp(params, ctx, G)
    (Ubg, _), gg = net.vjp(params, ctxg, Gg)
    np.testing.assert_allclose(Ub, lay.local_part(Ubg, inner=2), atol=1e-12)
    for k in gg:
        tot = comm.allreduce(np.asarray(g[k]), op=MPI.SUM)
        np.testing.assert_allclose(tot, gg[k], rtol=1e-11, atol=1e-11)


def test_staple_net_chunks_exchange_once_per_layer(monkeypatch):
    """With one pair group per chunk (several kernel calls per layer), a split layout still
    extends each layer's input once and sends its ghost cotangents back once, and the network
    equals the single-process one."""
    comm = MPI.COMM_WORLD
    shape = (4, 4, 2, 8)
    grid = {1: (1, 1, 1, 1), 2: (1, 2, 1, 1), 4: (2, 1, 1, 2)}.get(comm.Get_size())
    lay, full = Layout(shape, comm=comm, grid=grid), Layout(shape)
    U = random_gauge(shape, N=3, batch=(2,), seed=4, layout=lay)
    Ug = random_gauge(shape, N=3, batch=(2,), seed=4, layout=full)
    mg = _mask(full, 2)
    net = flows.StapleNet(4, 2, width=3, n_layers=3)
    params = net.init(Rng(6))
    monkeypatch.setattr(flows.StapleNet, "CHUNK_MATRICES", 1)
    calls = {"with_ghosts": 0, "ghost_sum": 0}
    for name in calls:
        real = getattr(Layout, name)

        def spy(self, *a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(Layout, name, spy)
    (o,), ctx = net.forward(params, U, lay.local_part(mg, inner=0), layout=lay)
    fwd = dict(calls)
    Gg = Rng(7).complex_normal(tuple(o.shape[:-2 - 4]) + shape + (3, 3))
    (Ub, _), g = net.vjp(params, ctx, lay.local_part(Gg, inner=2))
    if comm.Get_size() > 1:                   # 2 hidden layers + the output layer, each once
        assert fwd == {"with_ghosts": 3, "ghost_sum": 0}
        assert calls == {"with_ghosts": 6, "ghost_sum": 3}
    (og,), ctxg = net.forward(params, Ug, mg, layout=full)
    (Ubg, _), gg = net.vjp(params, ctxg, Gg)
    np.testing.assert_allclose(o, lay.local_part(og, inner=2), atol=1e-13)
    np.testing.assert_allclose(Ub, lay.local_part(Ubg, inner=2), atol=1e-12)
    for k in gg:
        np.testing.assert_allclose(comm.allreduce(np.asarray(g[k]), op=MPI.SUM), gg[k], rtol=1e-11, atol=1e-11)
