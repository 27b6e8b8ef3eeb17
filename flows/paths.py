"""Differentiable Wilson lines: products of links along paths, with a hand-written VJP.

Same conventions as :func:`lattice.loops.path_product`: a path is a sequence of signed steps
``(mu, +1)`` (factor U_mu(y)) or ``(mu, -1)`` (factor U_mu(y - mu^)^dag), and

    W(x) = F_1(x) F_2(x + s_1 mu_1^) ... F_n(x + s_1 mu_1^ + ... + s_{n-1} mu_{n-1}^),

computed from the end, W_k(y) = F_k(y) W_{k+1}(y + s_k mu_k^), one ``layout.shift`` and one
matrix product per step. The links need not be unitary (the context network applies it to the
masked field (1 - m) U). The adjoint runs the recursion forwards:

    F_k_bar = W_k_bar shift(W_{k+1})^dag,   W_{k+1}_bar = shift^{-1}(F_k^dag W_k_bar),

and a backward factor F = shift(U_mu^dag, mu, -1) sends its cotangent to U_mu as
shift(F_bar, mu, +1)^dag. Complex cotangents follow docs/design.md §7.

Shapes: links are a list of Nd site fields ``(*lead, *sites, N, N)``; W likewise.

A masked layer needs a staple sum only at its active links; on one process
:func:`staple_line_tables` gives the :class:`lattice.kernels.LineTable` s that evaluate it there
(:func:`lattice.kernels.line_sums`, no shifted fields), and the whole-field products here serve
layouts with split axes (halo exchange).
"""
from __future__ import annotations

from lattice import su_n, kernels

__all__ = ["paths_fwd", "paths_vjp", "staple_line_tables"]


def _check_path(path, Nd):
    path = tuple((int(m), int(s)) for m, s in path)
    if not path:
        raise ValueError("empty path")
    for m, s in path:
        if not 0 <= m < Nd or s not in (1, -1):
            raise ValueError(f"bad step {(m, s)} in path {path}: need (mu, +1 or -1) with 0 <= mu < {Nd}")
    return path


def paths_fwd(Ul, paths, layout):
    """Products along each path of ``paths``; returns ``(list of W, ctx)``."""
    Nd = layout.Nd
    paths = [_check_path(p, Nd) for p in paths]
    back = {}

    def factor(m, s):
        if s > 0:
            return Ul[m]
        if m not in back:
            back[m] = layout.shift(su_n.dagger(Ul[m]), m, -1)
        return back[m]

    Ws, saved = [], []
    for path in paths:
        Fs = [factor(m, s) for m, s in path]
        sh = [None] * len(path)
        W = Fs[-1]
        for k in range(len(path) - 2, -1, -1):
            m, s = path[k]
            sh[k] = layout.shift(W, m, s)
            W = kernels.matmul(Fs[k], sh[k])
        Ws.append(W)
        saved.append((path, Fs, sh))
    return Ws, (layout, saved)


def paths_vjp(ctx, W_bars):
    """Link cotangents (list over directions, ``None`` where a direction is not used) for the
    cotangents ``W_bars`` (one per path; ``None`` = zero) of :func:`paths_fwd`'s outputs."""
    layout, saved = ctx
    Nd = layout.Nd
    Ub = [None] * Nd
    Bb = [None] * Nd

    def add(acc, m, v):
        acc[m] = v if acc[m] is None else acc[m] + v

    for (path, Fs, sh), Wb in zip(saved, W_bars):
        if Wb is None:
            continue
        for k, (m, s) in enumerate(path):
            if k < len(path) - 1:
                Fb = kernels.matmul(Wb, sh[k], db=True)
                Wb = layout.shift(kernels.matmul(Fs[k], Wb, da=True), m, -s)
            else:
                Fb = Wb
            add(Ub if s > 0 else Bb, m, Fb)
    for m in range(Nd):
        if Bb[m] is not None:
            add(Ub, m, su_n.dagger(layout.shift(Bb[m], m, +1)))
    return Ub


def staple_line_tables(layout, active_idx, mu: int, path_sets):
    """For S^dag paths (from x + mu^ back to x; :func:`flows.layers.fixed_staple_path`), one
    :class:`lattice.kernels.LineTable` per set in ``path_sets``, started at x + mu^ for the
    active sites x = ``active_idx`` (flat): ``dagger(kernels.line_sums(U, table))`` is then
    the staple sum at the active mu-links, gathered. None where an axis is split over ranks
    (the tables would wrap around the local block)."""
    if any(g > 1 for g in layout.grid):
        return None
    shape = tuple(layout.local_shape)
    starts = kernels.neighbour_sites(shape, active_idx, mu, +1)
    return [kernels.line_table(shape, paths, starts) for paths in path_sets]
