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

A masked layer needs a staple sum only at its active links: :func:`staple_lines` gives the
:class:`LineSet` that evaluates it there (:func:`lattice.kernels.line_sums` through index
tables, no shifted fields; with split axes on the block with ghost planes). The whole-field
products of :func:`paths_fwd` / :func:`paths_vjp` remain for paths that reach beyond the
neighbouring block.
"""
from __future__ import annotations

from lattice import su_n, kernels

__all__ = ["paths_fwd", "paths_vjp", "LineSet", "line_set", "staple_lines"]


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


class LineSet:
    """Sums of Wilson lines (one per path set) at chosen start sites of this rank's block, by
    :func:`lattice.kernels.line_sums`: the links are read through index tables, on a layout
    with split axes from the block extended by the ghost planes the paths reach
    (:meth:`lattice.layout.Layout.with_ghosts`; the adjoint adds them back with
    :meth:`~lattice.layout.Layout.ghost_sum`). Build with :func:`line_set`.

    ``links(X)`` -> the links the tables index (X itself without split axes);
    ``sums(Xe)`` -> list of ``(*lead, n, N, N)``; ``vjp(Xe, W_bars, out=None)`` -> the link
    cotangent on the local block (shape of X; added to ``out``, in place where possible).
    """

    def __init__(self, layout, tables, below, above):
        self.layout, self.tables, self.below, self.above = layout, tables, below, above
        self.ghosts = any(below) or any(above)

    def links(self, X):
        return self.layout.with_ghosts(X, self.below, self.above, inner=2) if self.ghosts else X

    def sums(self, Xe):
        return [kernels.line_sums(Xe, tb) for tb in self.tables]

    def vjp(self, Xe, W_bars, out=None):
        acc = out if not self.ghosts else None           # ghosts: accumulate on the extended block
        for tb, Wb in zip(self.tables, W_bars):
            if Wb is not None:
                acc = kernels.line_sums_vjp(Xe, tb, Wb, L_bar=acc)
        if not self.ghosts or acc is None:
            return out if acc is None else acc
        Lb = self.layout.ghost_sum(acc, self.below, self.above, inner=2)
        return Lb if out is None else out + Lb


def line_set(layout, path_sets, starts=None, shift=None):
    """The :class:`LineSet` of ``path_sets`` (each a list of paths of equal length) started at
    the flat local site indices ``starts`` (None = every site) moved by ``shift = (mu, n)``;
    None where a path reaches beyond the neighbouring block of a split axis (the caller then
    takes the whole-field products of :func:`paths_fwd`)."""
    from lattice.backend import to_host
    split = tuple(a for a, g in enumerate(layout.grid) if g > 1)
    got = kernels.ghost_line_tables(layout.local_shape, path_sets, None if starts is None else to_host(starts),
                                    shift=shift, split_axes=split)
    return None if got is None else LineSet(layout, *got)


def staple_lines(layout, active_idx, mu: int, path_sets):
    """For S^dag paths (from x + mu^ back to x; :func:`flows.layers.fixed_staple_path`): the
    :class:`LineSet` started at x + mu^ for the active sites x = ``active_idx``, so that
    ``dagger(sums(...)[k])`` is the staple sum of set k at the active mu-links, gathered."""
    return line_set(layout, path_sets, active_idx, shift=(mu, +1))
