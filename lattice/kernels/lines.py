"""Sums of Wilson lines at chosen sites, read through neighbour tables, and their adjoint.

A path is a sequence of signed steps ``(mu, +1)`` (factor U_mu(y), then y -> y + mu^) or
``(mu, -1)`` (y -> y - mu^, then factor U_mu(y)^dag), as in :func:`lattice.loops.path_product`
and :mod:`flows.paths`. For P paths of equal length K and n start sites x_i,

    (L1)  W(x_i) = sum_p F_p1(x_i) F_p2(x_i) ... F_pK(x_i),

F_pk(x_i) the k-th factor of path p started at x_i. Every factor is a link read at a fixed
index of the flattened link axis (direction mu, site): a :class:`LineTable` holds these
indices ``edge (P, K, n)`` (e = mu V + site, V the sites of the block) and the dagger flags
``dag (P, K)``. Nothing is shifted: a layer that needs a staple sum at its active links only
(n = V/2 or V/4 of the mu-links) computes it there and nowhere else. :func:`line_table` wraps
around the periodic local block; with axes split over ranks, :func:`ghost_line_tables` indexes
the block extended by the ghost planes the paths reach
(:meth:`lattice.layout.Layout.with_ghosts`).

The adjoint (complex cotangents as in docs/design.md §7): with prefixes Pre_k = F_1 ... F_k
and G_K = W_bar, G_{k-1} = G_k F_k^dag,

    (L2)  F_k_bar = Pre_{k-1}^dag G_k   (Pre_0 = 1),    U_bar += F_k_bar   (U_bar += F_k_bar^dag
          for a dagger factor F = U^dag),

added at the factor's link index. Within one (p, k) the indices are distinct (a translate of
the start sites), across (p, k) they may coincide, so the adjoint accumulates.

Links are colour-last ``(*lead, Nd, *sites, N, N)`` (the gauge-field layout); W and W_bar are
``(*lead, n, N, N)``. The reference composes ``take`` and ``@`` (array API; its adjoint
scatters through inverse index tables per direction, so it needs no scatter-add); the
compiled path (NumPy + Numba, N = 3) runs each path's chain per block of start sites in a
split (re, im) scratch, with the prefixes of (L2) kept there, and writes W once; the CuPy path
(N = 3, paths of up to 8 links) runs one CUDA thread per start site and row, its adjoint
adding with atomics (:mod:`lattice.kernels._cupy_lines`; not yet run on a GPU).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..backend import namespace, np
from .dispatch import implementation

__all__ = ["LineTable", "line_table", "ghost_line_tables", "line_sums", "line_sums_vjp", "line_sums_reference",
           "line_sums_vjp_reference"]


@dataclass(frozen=True, eq=False)
class LineTable:
    """Index tables of (L1) for one set of paths and start sites on one local block.

    ``edge`` int64 ``(P, K, n)``: flat link index mu V + site of each factor; ``dag`` bool
    ``(P, K)``; ``shape`` the (possibly ghost-extended) block, ``Nd`` and ``V`` derived;
    ``paths`` the steps. Host (NumPy) arrays; :meth:`on` gives ``edge`` in another namespace
    (cached)."""
    edge: object
    dag: object
    shape: tuple
    paths: tuple
    _on: dict = field(default_factory=dict, repr=False)

    @property
    def Nd(self) -> int:
        return len(self.shape)

    @property
    def V(self) -> int:
        return int(np.prod(self.shape))

    @property
    def n(self) -> int:
        return int(self.edge.shape[2])

    def on(self, xp):
        """``edge`` in namespace ``xp`` (cached)."""
        return self._cached(xp, "edge", lambda: self.edge)

    def inverse_on(self, xp):
        """Per (p, k) the inverse tables of the reference adjoint in namespace ``xp`` (cached):
        ``inv (P, K, V)``, the position i of each site in the factor's index list, and ``sel``
        where a site is in it. Built only when the reference adjoint runs (they are P K V
        entries, far more than the table itself on a large block)."""
        def build():
            P, K, n = self.edge.shape
            inv = np.zeros((P, K, self.V), dtype=np.int64)
            sel = np.zeros((P, K, self.V), dtype=bool)
            site = self.edge % self.V
            for p in range(P):
                for k in range(K):
                    inv[p, k, site[p, k]] = np.arange(n)
                    sel[p, k, site[p, k]] = True
            return inv, sel
        return self._cached(xp, "inverse", build)

    def _cached(self, xp, what, build):
        key = (getattr(xp, "__name__", str(id(xp))), what)
        got = self._on.get(key)
        if got is None:
            host = build()
            got = self._on[key] = (tuple(xp.asarray(a) for a in host) if isinstance(host, tuple)
                                   else xp.asarray(host))
        return got


def _checked_paths(paths, Nd):
    paths = tuple(tuple((int(m), int(s)) for m, s in p) for p in paths)
    if not paths or any(len(p) != len(paths[0]) or not p for p in paths):
        raise ValueError(f"kernels.line_table: need one or more non-empty paths of equal length, got lengths "
                         f"{[len(p) for p in paths]}")
    for p in paths:
        for m, s in p:
            if not 0 <= m < Nd or s not in (1, -1):
                raise ValueError(f"kernels.line_table: bad step {(m, s)} in path {p}: need (mu, +1 or -1), "
                                 f"0 <= mu < {Nd}")
    return paths


def _walk(shape, paths, starts, shift, open_axes):
    """Factor sites of each (p, k): coordinates ``(P, K, Nd, n)`` (periodic on the block,
    unwrapped along ``open_axes``), and the directions and dagger flags ``(P, K)``."""
    Nd, V = len(shape), int(np.prod(shape))
    starts = np.arange(V, dtype=np.int64) if starts is None else np.asarray(starts, dtype=np.int64).reshape(-1)
    if starts.size and (starts.min() < 0 or starts.max() >= V):
        raise ValueError(f"kernels.line_table: start sites must be flat indices in [0, {V}), got range "
                         f"[{starts.min()}, {starts.max()}]")
    if np.unique(starts).size != starts.size:
        raise ValueError("kernels.line_table: start sites must be distinct (the adjoint scatters each factor's "
                         "cotangent back through the table)")

    def wrap(y, a):
        return y if a in open_axes else y % shape[a]
    x0 = [c.astype(np.int64) for c in np.unravel_index(starts, shape)]
    if shift is not None:
        a, n = int(shift[0]), int(shift[1])
        x0[a] = wrap(x0[a] + n, a)
    P, K = len(paths), len(paths[0])
    coords = np.empty((P, K, Nd, starts.size), dtype=np.int64)
    mus = np.empty((P, K), dtype=np.int64)
    dag = np.zeros((P, K), dtype=bool)
    for p, path in enumerate(paths):
        y = list(x0)
        for k, (m, sg) in enumerate(path):
            if sg < 0:
                y[m] = wrap(y[m] - 1, m)
            coords[p, k] = np.stack(y)
            mus[p, k], dag[p, k] = m, sg < 0
            if sg > 0:
                y[m] = wrap(y[m] + 1, m)
    return coords, mus, dag


def _table(paths, coords, mus, dag, shape, offset):
    """LineTable on the block ``shape`` with the walk's coordinates moved by ``offset``."""
    V = int(np.prod(shape))
    P, K = mus.shape
    edge = np.empty((P, K, coords.shape[-1]), dtype=np.int64)
    for p in range(P):
        for k in range(K):
            c = tuple(coords[p, k, a] + offset[a] for a in range(len(shape)))
            edge[p, k] = mus[p, k] * V + np.ravel_multi_index(c, shape)
    return LineTable(edge, dag, tuple(shape), paths)


def line_table(local_shape, paths, starts=None, *, shift=None) -> LineTable:
    """The :class:`LineTable` of ``paths`` (P paths of equal length, signed steps) started at
    the distinct flat site indices ``starts`` (``(n,)``; None = every site in order) of the
    periodic local block ``local_shape``, moved by ``shift = (mu, n)`` (x -> x + n mu^) when
    given. For a block with axes split over ranks use :func:`ghost_line_tables`."""
    shape = tuple(int(L) for L in local_shape)
    paths = _checked_paths(paths, len(shape))
    coords, mus, dag = _walk(shape, paths, starts, shift, ())
    return _table(paths, coords, mus, dag, shape, (0,) * len(shape))


def ghost_line_tables(local_shape, path_sets, starts=None, *, shift=None, split_axes=()):
    """Tables of several path sets (same starts and ``shift``, as :func:`line_table`) on the
    local block extended by ghost planes along ``split_axes``: coordinates are not wrapped
    along those axes, and the block grows by exactly the planes the paths reach below and
    above it. Returns ``(tables, below, above)`` (ghost planes per axis, length Nd; the
    links come from :meth:`lattice.layout.Layout.with_ghosts` with these widths), or None
    where a path reaches further than one neighbouring block (a width above the local extent).
    Without split axes this is :func:`line_table` per set with zero widths."""
    shape = tuple(int(L) for L in local_shape)
    Nd = len(shape)
    split = tuple(sorted(int(a) for a in split_axes))
    walks = []
    below, above = [0] * Nd, [0] * Nd
    for paths in path_sets:
        paths = _checked_paths(paths, Nd)
        coords, mus, dag = _walk(shape, paths, starts, shift, split)
        walks.append((paths, coords, mus, dag))
        for a in split:
            if coords.shape[-1]:
                below[a] = max(below[a], int(-coords[:, :, a].min()))
                above[a] = max(above[a], int(coords[:, :, a].max()) - (shape[a] - 1))
    if any(below[a] > shape[a] or above[a] > shape[a] for a in range(Nd)):
        return None
    ext = tuple(L + b + t for L, b, t in zip(shape, below, above))
    return [_table(*w, ext, below) for w in walks], tuple(below), tuple(above)


def _flat_links(L, table: LineTable):
    """``(*lead, Nd, *sites, N, N) -> (*lead, Nd V, N, N)`` (a view where L is contiguous)
    and ``lead``."""
    xp = namespace(L)
    N = L.shape[-1]
    lead = tuple(L.shape[:_lead_count(L, table)])
    return xp.reshape(L, lead + (table.Nd * table.V, N, N)), lead


def _lead_count(L, table: LineTable) -> int:
    """Number of leading axes of L = (*lead, Nd, *sites, N, N), checked against the table."""
    nl = L.ndim - 3 - table.Nd
    if nl < 0 or L.shape[nl] != table.Nd or tuple(L.shape[nl + 1:-2]) != table.shape or L.shape[-1] != L.shape[-2]:
        raise ValueError(f"kernels.line_sums: links of shape {tuple(L.shape)} do not match the table (Nd = {table.Nd}, "
                         f"local sites {table.shape}): need (*lead, Nd, *sites, N, N)")
    return nl


def _dagger(xp, A):
    return xp.conj(xp.matrix_transpose(A))


def line_sums_reference(L, table: LineTable):
    """(L1) by ``take`` and ``@`` (array API)."""
    xp = namespace(L)
    Lf, lead = _flat_links(L, table)
    edge = table.on(xp)
    ax = len(lead)
    W = None
    for p in range(edge.shape[0]):
        Wp = None
        for k in range(edge.shape[1]):
            F = xp.take(Lf, edge[p, k, ...], axis=ax)
            if table.dag[p, k]:
                F = _dagger(xp, F)
            Wp = F if Wp is None else Wp @ F
        W = Wp if W is None else W + Wp
    return W


def line_sums_vjp_reference(L, table: LineTable, W_bar):
    """(L2) composed: the link cotangents ``(*lead, Nd, *sites, N, N)`` (a new array)."""
    xp = namespace(L)
    Lf, lead = _flat_links(L, table)
    edge = table.on(xp)
    inv, sel = table.inverse_on(xp)
    ax = len(lead)
    Nd, V, N = table.Nd, table.V, L.shape[-1]
    acc = [None] * Nd
    for p in range(edge.shape[0]):
        Fs = []
        for k in range(edge.shape[1]):
            F = xp.take(Lf, edge[p, k, ...], axis=ax)
            Fs.append(_dagger(xp, F) if table.dag[p, k] else F)
        pre = [None]
        for F in Fs[:-1]:
            pre.append(F if pre[-1] is None else pre[-1] @ F)
        G = W_bar
        for k in range(len(Fs) - 1, -1, -1):
            Fb = G if pre[k] is None else _dagger(xp, pre[k]) @ G
            if k:
                G = G @ _dagger(xp, Fs[k])
            if table.dag[p, k]:
                Fb = _dagger(xp, Fb)
            m = int(table.edge[p, k, 0]) // V if table.n else 0
            full = xp.take(Fb, inv[p, k, ...], axis=ax)
            full = xp.where(xp.reshape(sel[p, k, ...], (V, 1, 1)), full, xp.zeros_like(full))
            acc[m] = full if acc[m] is None else acc[m] + full
    zero = xp.zeros(lead + (V, N, N), dtype=L.dtype)
    out = xp.stack([zero if a is None else xp.astype(a, L.dtype) for a in acc], axis=ax)
    return xp.reshape(out, tuple(L.shape))


def _check(L, table, W_bar=None):
    nl = _lead_count(L, table)
    if W_bar is not None:
        want = tuple(L.shape[:nl]) + (table.n, L.shape[-1], L.shape[-1])
        if tuple(W_bar.shape) != want:
            raise ValueError(f"kernels.line_sums_vjp: cotangent of shape {tuple(W_bar.shape)}, need {want}")


def _fast(impl):
    if impl == "numba":
        from . import _numba_lines
        return _numba_lines
    from . import _cupy_lines  # pragma: no cover - GPU only
    return _cupy_lines         # pragma: no cover


def line_sums(L, table: LineTable):
    """(L1): ``(*lead, n, N, N)`` sums of the table's Wilson lines at its start sites, from
    links ``(*lead, Nd, *sites, N, N)`` (module docstring)."""
    _check(L, table)
    impl = implementation(namespace(L))
    if impl in ("numba", "cupy"):
        W = _fast(impl).line_sums(L, table, _lead_count(L, table))
        if W is not None:
            return W
    return line_sums_reference(L, table)


def line_sums_vjp(L, table: LineTable, W_bar, L_bar=None):
    """(L2): link cotangents ``(*lead, Nd, *sites, N, N)`` (of L's dtype) from the cotangent
    ``W_bar (*lead, n, N, N)`` of :func:`line_sums`; added to ``L_bar`` (same shape and dtype
    as L; updated in place where the compiled path runs) when given."""
    _check(L, table, W_bar)
    if L_bar is not None and (tuple(L_bar.shape) != tuple(L.shape) or L_bar.dtype != L.dtype):
        raise ValueError(f"kernels.line_sums_vjp: accumulator {tuple(L_bar.shape)} {L_bar.dtype} must match the links "
                         f"{tuple(L.shape)} {L.dtype}")
    impl = implementation(namespace(L, W_bar))
    if impl in ("numba", "cupy"):
        Lb = _fast(impl).line_sums_vjp(L, table, W_bar, _lead_count(L, table), L_bar)
        if Lb is not None:
            return Lb
    Lb = line_sums_vjp_reference(L, table, W_bar)
    return Lb if L_bar is None else L_bar + Lb
