"""Gauge fields: creation, access to the links of one direction, gauge transformations.

Shape convention: ``U[..., mu, x_0, ..., x_{Nd-1}, a, b]`` is the link from x to x + mu^
(docs/design.md §3), complex128 by default. A gauge transformation Omega has shape
``(*batch, L_0, ..., L_{Nd-1}, N, N)`` and acts as
U_mu(x) -> Omega(x) U_mu(x) Omega(x + mu^)^dag, psi(x) -> Omega(x) psi(x).
"""
from __future__ import annotations

from .backend import Rng, namespace, default_xp
from .layout import Layout, infer_gauge_layout
from . import su_n

__all__ = ["random_gauge", "unit_gauge", "random_gauge_transformation", "gauge_transform",
           "link", "links", "stack_links", "mu_axis", "check_gauge_field"]


def _layout_from_shape(shape, layout):
    if layout is not None:
        if tuple(layout.global_shape) != tuple(shape):
            raise ValueError(f"lattice shape {tuple(shape)} does not match {layout}")
        return layout
    return Layout(shape)


def random_gauge(shape, N: int = 3, batch=(), seed: int = 0, layout: Layout | None = None,
                 rng: Rng | None = None, xp=None, dtype=None):
    """Haar-random SU(N) links ("hot start"), shape ``(*batch, Nd, *local_shape, N, N)``.

    Reproducible from ``seed`` and independent of the MPI decomposition.
    """
    lay = _layout_from_shape(shape, layout)
    rng = rng if rng is not None else Rng(seed, xp=xp)
    batch = tuple(batch)
    return rng.haar(N, lead=batch + (lay.Nd,), layout=lay, dtype=dtype)


def unit_gauge(shape, N: int = 3, batch=(), layout: Layout | None = None, xp=None, dtype=None):
    """All links equal to the identity ("cold start")."""
    lay = _layout_from_shape(shape, layout)
    xp = default_xp() if xp is None else xp
    dtype = dtype or xp.complex128
    full = tuple(batch) + (lay.Nd,) + tuple(lay.local_shape) + (N, N)
    return xp.broadcast_to(xp.eye(N, dtype=dtype), full) * xp.ones(full[:-2] + (1, 1), dtype=dtype)


def random_gauge_transformation(shape, N: int = 3, batch=(), seed: int = 0,
                                layout: Layout | None = None, rng: Rng | None = None, xp=None):
    """Haar-random Omega(x), shape ``(*batch, *local_shape, N, N)``."""
    lay = _layout_from_shape(shape, layout)
    rng = rng if rng is not None else Rng(seed, xp=xp)
    return rng.haar(N, lead=tuple(batch), layout=lay)


def mu_axis(U, layout: Layout) -> int:
    """Index of the direction axis of a gauge field."""
    return U.ndim - layout.Nd - 3


def link(U, mu: int, layout: Layout):
    """U_mu as a site field of shape ``(*batch, *sites, N, N)`` (a view)."""
    ax = mu_axis(U, layout)
    return U[(slice(None),) * ax + (mu, Ellipsis)]


def links(U, layout: Layout | None = None):
    """The Nd link fields U_0, ..., U_{Nd-1}."""
    layout = infer_gauge_layout(U, layout)
    return [link(U, mu, layout) for mu in range(layout.Nd)]


def stack_links(Us, layout: Layout):
    """Inverse of :func:`links`."""
    xp = namespace(*Us)
    return xp.stack(Us, axis=Us[0].ndim - layout.Nd - 2)


def gauge_transform(U, Omega, layout: Layout | None = None):
    """U_mu(x) -> Omega(x) U_mu(x) Omega(x + mu^)^dag."""
    layout = infer_gauge_layout(U, layout)
    out = []
    for mu, Umu in enumerate(links(U, layout)):
        out.append(Omega @ Umu @ su_n.dagger(layout.shift(Omega, mu, +1)))
    return stack_links(out, layout)


def check_gauge_field(U, layout: Layout | None = None, N: int | None = None, tol=None,
                      what: str = "gauge field") -> Layout:
    """Validate shape, dtype, NaNs and SU(N) membership; return the layout.

    Raises ``LayoutError`` for wrong shapes and ``InvalidGaugeField`` (naming the worst link)
    for non-unitary links, wrong determinants or NaNs.
    """
    layout = infer_gauge_layout(U, layout)
    if N is not None and U.shape[-1] != N:
        raise su_n.InvalidGaugeField(f"{what}: expected SU({N}) links, got {U.shape[-1]}x{U.shape[-1]} matrices")
    su_n.check_su_n(U, tol=tol, what=what)
    return layout
