"""Wilson lines and loops, their staples, and gauge observables.

Paths are sequences of signed steps ``(mu, +1)`` (forward, link U_mu(y)) or ``(mu, -1)``
(backward, link U_mu(y - mu^)^dag). ``path_product(U, path)[x]`` is the ordered product of
the links along the path starting at x. For a closed path its trace is gauge invariant.

Standard loops (docs/design.md §4):
* plaquette  P_mu,nu(x) = U_mu(x) U_nu(x+mu) U_mu(x+nu)^dag U_nu(x)^dag
* rectangle  R_mu,nu(x): 2 links in mu, 1 in nu (12 orientations mu != nu per site in 4d)
* the plaquette observable is the average of (1/N) Re tr P over sites and the Nd(Nd-1)/2 planes.
"""
from __future__ import annotations

import math
import warnings

from .backend import namespace
from .layout import Layout, infer_gauge_layout
from .fields import links
from . import su_n, kernels

__all__ = [
    "plaquette_path", "rectangle_path", "path_product", "path_staples", "plaquette_field",
    "rectangle_field", "plaquette", "plaquette_planes", "plaquette_spatial_temporal",
    "wilson_loop", "polyakov_loop", "clover_field_strength", "topological_charge",
    "topological_charge_density", "backward_links", "plaquette_staples",
]


def plaquette_path(mu: int, nu: int):
    return ((mu, 1), (nu, 1), (mu, -1), (nu, -1))


def rectangle_path(mu: int, nu: int):
    """2 x 1 loop: two steps in mu, one in nu."""
    return ((mu, 1), (mu, 1), (nu, 1), (mu, -1), (mu, -1), (nu, -1))


def backward_links(Ul, layout: Layout):
    """B_mu(x) = U_mu(x - mu^)^dag, the factor of a backward step."""
    return [layout.shift(su_n.dagger(Um), mu, -1) for mu, Um in enumerate(Ul)]


def path_product(U, path, layout: Layout | None = None, *, _links=None, _memo=None):
    """W(x) = ordered product of links along ``path`` starting at x; shape (*batch, *sites, N, N).

    The path is split in halves, W(x) = W_a(x) W_b(x + d_a) with d_a the displacement of the
    first half; with a shared ``_memo`` dict, sub-paths common to several paths (e.g. all
    the staples of an action) are computed once.
    """
    if _links is None:
        layout = infer_gauge_layout(U, layout)
        Ul = links(U, layout)
        Bl = backward_links(Ul, layout)
    else:
        Ul, Bl = _links
    path = tuple((int(m), int(s)) for m, s in path)
    if not path:
        raise ValueError("empty path")
    for m, s in path:
        if not 0 <= m < layout.Nd or s not in (1, -1):
            raise ValueError(f"bad step {(m, s)} in path {path}: need (mu, +1 or -1) with 0 <= mu < {layout.Nd}")
    memo = {} if _memo is None else _memo
    uses = memo.get("__uses__")  # planned remaining uses of each sub-path (see path_staples)

    def prod(p):
        if len(p) == 1:
            m, s = p[0]
            return Ul[m] if s > 0 else Bl[m]
        W = memo.get(p)
        if W is None:
            h = len(p) // 2
            B = prod(p[h:])
            disp = [0] * layout.Nd
            for m, s in p[:h]:
                disp[m] += s
            for m, d in enumerate(disp):
                if d:
                    B = layout.shift(B, m, d)
            W = kernels.matmul(prod(p[:h]), B)
            if uses is None or uses.get(p, 0) > 1:
                memo[p] = W
        if uses is not None and p in uses:
            uses[p] -= 1
            if uses[p] <= 0:
                memo.pop(p, None)  # free sub-products nobody needs any more
        return W

    return prod(path)


def _plan_uses(paths):
    """How often each sub-path of length >= 2 is requested when evaluating ``paths`` with the
    halving recursion of :func:`path_product` (first request computes, later ones reuse)."""
    uses, seen = {}, set()

    def visit(p):
        if len(p) < 2:
            return
        uses[p] = uses.get(p, 0) + 1
        if p in seen:
            return
        seen.add(p)
        h = len(p) // 2
        visit(p[:h])
        visit(p[h:])

    for p in paths:
        visit(tuple(p))
    return uses


def _rotations_forward(path, mu):
    """For each traversal of a mu-link in the closed ``path``, the remaining path after that
    link when the loop is read (in the orientation that traverses it forwards) starting at it.
    Re tr W is the same for a loop and its reverse, so backward traversals use the reverse."""
    rev = tuple((m, -s) for m, s in reversed(path))
    out = []
    for p in (path, rev):
        for k, (m, s) in enumerate(p):
            if m == mu and s == 1:
                rot = p[k:] + p[:k]
                out.append(rot[1:])
    return out


def path_staples(U, terms, layout: Layout | None = None, _links=None):
    """Staple sums A_mu(x) for an action sum_terms w sum_x Re tr W_term(x).

    ``terms`` is a list of ``(weight, path)`` with weight a scalar or a per-batch array.
    Returns A_mu for every mu with d/dt sum_terms w sum_x Re tr W(exp(tX) U)|_0
    = sum_{x,mu} Re tr(X_mu(x) U_mu(x) A_mu(x)).
    """
    layout = infer_gauge_layout(U, layout)
    if _links is None:
        Ul = links(U, layout)
        _links = (Ul, backward_links(Ul, layout))
    xp = namespace(U)
    out = []
    rests = {mu: [(w, rest) for w, path in terms for rest in _rotations_forward(path, mu)] for mu in range(layout.Nd)}
    memo = {"__uses__": _plan_uses([r for mu in rests for _, r in rests[mu]])}
    for mu in range(layout.Nd):
        A = None
        for w, rest in rests[mu]:
            S = layout.shift(path_product(U, rest, layout, _links=_links, _memo=memo), mu, +1)
            S = _weigh(S, w, xp)
            A = S if A is None else A + S
        out.append(A if A is not None else xp.zeros_like(_links[0][mu]))
    return out


def _weigh(S, w, xp):
    if isinstance(w, (int, float)):
        return S * w if w != 1 else S
    w = xp.asarray(w)
    return S * xp.reshape(xp.astype(w, S.dtype), tuple(w.shape) + (1,) * (S.ndim - w.ndim))


def plaquette_staples(U, layout: Layout | None = None):
    """Sum over nu != mu of the up and down plaquette staples (weight 1)."""
    layout = infer_gauge_layout(U, layout)
    terms = [(1.0, plaquette_path(m, n)) for m in range(layout.Nd) for n in range(m + 1, layout.Nd)]
    return path_staples(U, terms, layout)


def plaquette_field(U, mu: int, nu: int, layout: Layout | None = None):
    """Untraced P_mu,nu(x), shape (*batch, *sites, N, N)."""
    layout = infer_gauge_layout(U, layout)
    return path_product(U, plaquette_path(mu, nu), layout)


def rectangle_field(U, mu: int, nu: int, layout: Layout | None = None):
    """Untraced 2x1 loop R_mu,nu(x) (2 in mu, 1 in nu)."""
    layout = infer_gauge_layout(U, layout)
    return path_product(U, rectangle_path(mu, nu), layout)


def wilson_loop(U, path, layout: Layout | None = None, traced: bool = True):
    """General Wilson loop along ``path``, traced and site-averaged: (1/N) <tr W> (complex, per
    batch element). The untraced field W(x) is :func:`path_product` ``(U, path)``.

    ``traced=False`` (returns the untraced field instead, a different type and shape) is
    deprecated: it warns and will be removed; use :func:`path_product`.
    """
    layout = infer_gauge_layout(U, layout)
    W = path_product(U, path, layout)
    if not traced:
        warnings.warn("wilson_loop(..., traced=False) is deprecated: wilson_loop returns the traced, "
                      "site-averaged loop; use lattice.path_product(U, path) for the untraced field",
                      DeprecationWarning, stacklevel=2)
        return W
    return layout.mean(su_n.trace(W)) / U.shape[-1]


def plaquette_planes(U, layout: Layout | None = None):
    """Average of (1/N) Re tr P_mu,nu over sites for every plane mu < nu.

    Returns ``(planes, values)`` with values of shape (*batch, n_planes), float64.
    """
    layout = infer_gauge_layout(U, layout)
    xp = namespace(U)
    Nd, N = layout.Nd, U.shape[-1]
    Ul = links(U, layout)
    planes, vals = [], []
    for mu in range(Nd):
        for nu in range(mu + 1, Nd):
            # Re tr(U_mu(x) U_nu(x+mu) [U_nu(x) U_mu(x+nu)]^dag) via elementwise trace
            A = kernels.matmul(Ul[mu], layout.shift(Ul[nu], mu, +1))
            B = kernels.matmul(Ul[nu], layout.shift(Ul[mu], nu, +1))
            tr = xp.real(xp.sum(A * xp.conj(B), axis=(-2, -1)))
            planes.append((mu, nu))
            vals.append(layout.mean(xp.astype(tr, xp.float64)) / N)
    return planes, xp.stack(vals, axis=-1)


def plaquette(U, layout: Layout | None = None):
    """The plaquette (1/N) <Re tr P> averaged over sites and planes, per batch element (float64)."""
    xp = namespace(U)
    _, v = plaquette_planes(U, layout)
    return xp.mean(v, axis=-1)


def plaquette_spatial_temporal(U, layout: Layout | None = None):
    """(spatial, temporal) plaquette averages; temporal planes contain the last axis (time)."""
    layout = infer_gauge_layout(U, layout)
    xp = namespace(U)
    planes, v = plaquette_planes(U, layout)
    t = layout.Nd - 1
    tmask = [nu == t for (_, nu) in planes]
    ti = [i for i, m in enumerate(tmask) if m]
    si = [i for i, m in enumerate(tmask) if not m]
    temporal = xp.mean(v[..., ti], axis=-1) if ti else None
    spatial = xp.mean(v[..., si], axis=-1) if si else None
    return spatial, temporal


def polyakov_loop(U, layout: Layout | None = None, mu: int | None = None):
    """Spatially averaged Polyakov loop (1/N) tr prod_t U_t(x, t), per batch element (complex).

    Computed on every site by binary doubling of shifted products (log2 L_t steps), so it
    distributes with the layout's ``shift``.
    """
    layout = infer_gauge_layout(U, layout)
    mu = layout.Nd - 1 if mu is None else mu
    L = layout.global_shape[mu]
    Ut = links(U, layout)[mu]
    result, power, step = None, Ut, 1   # power(x) = prod of `step` links from x
    n = L
    offset = 0                            # result(x) = prod of `offset` links from x
    while n:
        if n & 1:
            result = power if result is None else result @ layout.shift(power, mu, offset)
            offset += step
        n >>= 1
        if n:
            power = power @ layout.shift(power, mu, step)
            step *= 2
    return layout.mean(su_n.trace(result)) / U.shape[-1]


def _clover(U, mu, nu, layout, Ul):
    """Sum of the four plaquette leaves around x in the (mu, nu) plane, all oriented mu -> nu."""
    paths = [
        ((mu, 1), (nu, 1), (mu, -1), (nu, -1)),
        ((nu, 1), (mu, -1), (nu, -1), (mu, 1)),
        ((mu, -1), (nu, -1), (mu, 1), (nu, 1)),
        ((nu, -1), (mu, 1), (nu, 1), (mu, -1)),
    ]
    lk = (Ul, backward_links(Ul, layout))
    C = None
    for p in paths:
        W = path_product(U, p, layout, _links=lk)
        C = W if C is None else C + W
    return C


def clover_field_strength(U, layout: Layout | None = None):
    """Clover F_mu,nu(x) (Hermitian, traceless): F = -(i/8) T[C - C^dag], C the sum of the four
    leaves. Returns a dict {(mu, nu): F} for mu < nu."""
    layout = infer_gauge_layout(U, layout)
    Ul = links(U, layout)
    out = {}
    for mu in range(layout.Nd):
        for nu in range(mu + 1, layout.Nd):
            C = _clover(U, mu, nu, layout, Ul)
            out[(mu, nu)] = (-1j / 8.0) * su_n.traceless(C - su_n.dagger(C))
    return out


def topological_charge_density(U, layout: Layout | None = None):
    """q(x) = 1/(32 pi^2) eps_{mu nu rho sigma} tr F_mu,nu F_rho,sigma
    = 1/(4 pi^2) tr(F01 F23 - F02 F13 + F03 F12), clover definition, 4d only."""
    layout = infer_gauge_layout(U, layout)
    if layout.Nd != 4:
        raise ValueError("the topological charge is defined in 4 dimensions")
    xp = namespace(U)
    F = clover_field_strength(U, layout)
    tr = lambda A, B: xp.real(xp.sum(A * xp.matrix_transpose(B), axis=(-2, -1)))
    q = tr(F[(0, 1)], F[(2, 3)]) - tr(F[(0, 2)], F[(1, 3)]) + tr(F[(0, 3)], F[(1, 2)])
    return q / (4.0 * math.pi ** 2)


def topological_charge(U, layout: Layout | None = None):
    """Clover topological charge Q = sum_x q(x), per batch element (float64)."""
    layout = infer_gauge_layout(U, layout)
    return layout.sum(topological_charge_density(U, layout))
