"""The staple kernels on a lattice decomposed over MPI ranks (run under mpiexec): the compiled
path on the block with ghost planes (``staple_pairs.GhostBlock``) must run, and equal both the
generic path (shifted copies through the halo exchange) and the one-process result on every
rank's block; parameter cotangents (sums over local sites) add up to the global ones."""
import importlib

import numpy as np
import pytest

pytestmark = pytest.mark.mpi
MPI = pytest.importorskip("mpi4py.MPI")

from lattice import Layout, kernels  # noqa: E402

sp = importlib.import_module("lattice.kernels.staple_pairs")
sm = importlib.import_module("lattice.kernels.staple_mix")
ns = importlib.import_module("lattice.kernels._numba_staples")


def _setup():
    comm = MPI.COMM_WORLD
    shape = (4, 3, 2, 6)
    grid = {1: (1, 1, 1, 1), 2: (1, 1, 1, 2), 4: (2, 1, 1, 2)}.get(comm.Get_size())
    lay, full = Layout(shape, comm=comm, grid=grid), Layout(shape)
    rng = np.random.default_rng(21)
    Sg = rng.normal(size=(3, 3, 4, 2, 2) + shape) + 1j * rng.normal(size=(3, 3, 4, 2, 2) + shape)
    return comm, lay, full, Sg, np.ascontiguousarray(lay.local_part(Sg, inner=0))


def _spy(monkeypatch, name):
    calls = []
    real = getattr(ns, name)
    monkeypatch.setattr(ns, name, lambda S, sites, *a: calls.append(tuple(sites)) or real(S, sites, *a))
    return calls


def _generic(monkeypatch, fn):
    with monkeypatch.context() as mp:
        mp.setattr(sp, "_ghosted", lambda *a: False)
        mp.setattr(sm, "_compiled", lambda *a: False)
        return fn()


def test_transported_staples_on_the_ghost_block(monkeypatch):
    comm, lay, full, Sg, S = _setup()
    Q = [(m, n) for m in range(4) for n in range(4) if m != n]
    i_mu, i_nu = [m for m, _ in Q], [n for _, n in Q]
    i_L, i_R = list(range(0, 24, 2)), list(range(1, 24, 2))
    Wg = np.random.default_rng(22).normal(size=(3, 3, 24, 2, 2) + full.global_shape) * (1 + 1j)
    W = np.ascontiguousarray(lay.local_part(Wg, inner=0))
    fwd, vjp = _spy(monkeypatch, "transported_local"), _spy(monkeypatch, "transported_local_vjp")

    def run(S, layout, W):
        aug = np.zeros(W.shape, complex)
        kernels.transported_staples(S, layout, i_mu, i_nu, aug=aug, i_L=i_L, i_R=i_R)
        Sb = np.ones(S.shape, complex)                  # the adjoint adds
        kernels.transported_staples_vjp(S, layout, i_mu, i_nu, aug_bar=W, i_L=i_L, i_R=i_R, S_bar=Sb)
        return aug, Sb - 1
    aug, Sb = run(S, lay, W)
    if comm.Get_size() > 1:                             # the compiled kernels ran on the extended block
        ext = tuple(L + 2 * (g > 1) for L, g in zip(lay.local_shape, lay.grid))
        assert fwd and vjp and all(s == ext for s in fwd + vjp)
    aug_g, Sb_g = _generic(monkeypatch, lambda: run(S, lay, W))
    aug_1, Sb_1 = run(Sg, full, Wg)
    for got, want in ((aug, aug_g), (Sb, Sb_g), (aug, lay.local_part(aug_1, inner=0)),
                      (Sb, lay.local_part(Sb_1, inner=0))):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.max(np.abs(want)))


def test_chunks_share_one_ghost_exchange(monkeypatch):
    """Pair chunks of one S with ``ghosted=ghosted_input(S, layout)``: S is extended once, the
    adjoint's ghost cotangents go back once (after add_back, not before), and the result
    equals one call over all pairs; a ghosted input of another field is refused."""
    comm, lay, full, Sg, S = _setup()
    Q = [(m, n) for m in range(4) for n in range(4) if m != n]
    chunks = [Q[:4], Q[4:10], Q[10:]]
    W = np.ascontiguousarray(lay.local_part(
        np.random.default_rng(25).normal(size=(3, 3, 24, 2, 2) + full.global_shape) * (1 - 2j), inner=0))
    i_L, i_R = list(range(0, 24, 2)), list(range(1, 24, 2))
    whole = np.zeros(W.shape, complex)
    kernels.transported_staples(S, lay, [m for m, _ in Q], [n for _, n in Q], aug=whole, i_L=i_L, i_R=i_R)
    Sb_whole = kernels.transported_staples_vjp(S, lay, [m for m, _ in Q], [n for _, n in Q], aug_bar=W,
                                               i_L=i_L, i_R=i_R, S_bar=np.zeros(S.shape, complex))
    calls = {"with_ghosts": 0, "ghost_sum": 0}
    for name in calls:
        real = getattr(type(lay), name)

        def spy(self, *a, _real=real, _name=name, **k):
            calls[_name] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(type(lay), name, spy)
    ghosted = kernels.ghosted_input(S, lay)
    split = comm.Get_size() > 1
    assert (ghosted is not None) == split
    aug, Sb, start = np.zeros(W.shape, complex), np.zeros(S.shape, complex), 0
    for part in chunks:
        kw = dict(i_L=i_L[start:start + len(part)], i_R=i_R[start:start + len(part)])
        kernels.transported_staples(S, lay, [m for m, _ in part], [n for _, n in part], aug=aug, ghosted=ghosted, **kw)
        kernels.transported_staples_vjp(S, lay, [m for m, _ in part], [n for _, n in part], aug_bar=W, S_bar=Sb,
                                        ghosted=ghosted, **kw)
        start += len(part)
    if split:
        assert calls == {"with_ghosts": 1, "ghost_sum": 0}
        assert not np.any(Sb)                           # held on the extended block until add_back
        ghosted.add_back(Sb)
        assert calls == {"with_ghosts": 1, "ghost_sum": 1}
        with pytest.raises(ValueError, match="another field"):
            kernels.transported_staples(S.copy(), lay, [0], [1], aug=aug, i_L=[0], i_R=[1], ghosted=ghosted)
    np.testing.assert_allclose(aug, whole, rtol=0, atol=1e-13 * np.max(np.abs(whole)))
    np.testing.assert_allclose(Sb, Sb_whole, rtol=0, atol=1e-13 * np.max(np.abs(Sb_whole)))


@pytest.mark.parametrize("mu", [0, 3])
def test_transported_mix_on_the_ghost_block(monkeypatch, mu):
    comm, lay, full, Sg, S = _setup()
    c = np.random.default_rng(23).normal(size=(2, 14))
    obg = np.random.default_rng(24).normal(size=(3, 3, 2, 2) + full.global_shape) * (1 - 1j)
    ob = np.ascontiguousarray(lay.local_part(obg, inner=0))
    fwd, vjp = _spy(monkeypatch, "transported_mix_local"), _spy(monkeypatch, "transported_mix_local_vjp")

    def run(S, layout, ob):
        out, _ = kernels.transported_mix(S, layout, mu, c)
        Sb = np.zeros(S.shape, complex)
        cb = kernels.transported_mix_vjp(S, layout, mu, c, ob, S_bar=Sb)
        return out, Sb, cb
    out, Sb, cb = run(S, lay, ob)
    if comm.Get_size() > 1:
        assert fwd and vjp and all(s != tuple(lay.local_shape) for s in fwd + vjp)
    out_g, Sb_g, cb_g = _generic(monkeypatch, lambda: run(S, lay, ob))
    out_1, Sb_1, cb_1 = run(Sg, full, obg)
    for got, want in ((out, out_g), (Sb, Sb_g), (cb, cb_g), (out, lay.local_part(out_1, inner=0)),
                      (Sb, lay.local_part(Sb_1, inner=0))):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.max(np.abs(want)))
    np.testing.assert_allclose(comm.allreduce(cb, op=MPI.SUM), cb_1, rtol=1e-12, atol=1e-12 * np.max(np.abs(cb_1)))
