"""Active links of a masked layer: gather them, work on them, scatter them back.

A coupling layer changes only its *active* links (a :class:`flows.masks.LayerMask`), usually
a small fraction of the lattice, so the per-link work (loops, spectral maps, their VJPs) runs
on the gathered active links only. This module holds that bookkeeping, shared by every
masked layer:

* :class:`ActiveSites` - for one mask on one layout: the active mask m (int8,
  ``(Nd, *local_sites)``), and per active direction mu the flattened indices ``idx[mu]`` of
  the active sites (``(n_active[mu],)``, increasing), the inverse positions ``inv[mu]``
  (``(V,)``: position of site x in ``idx[mu]`` where active, 0 elsewhere) and the selection
  ``sel[mu]`` (``(V,)`` bool, ``m[mu] != 0``), V the local volume;
* :func:`flat_sites` - ``(*batch, *sites, *inner) -> (*batch, V, *inner)`` (a reshape);
* :func:`gather_active` - a site field of one direction -> its values at the active sites,
  ``(*batch, *sites, *inner) -> (*batch, n_active, *inner)`` (``take`` on the flat index);
* :func:`scatter_active` - the transpose of the gather, with a background: gathered values
  at the active sites and ``base`` (or zero) elsewhere, ``(*batch, n_active, *inner) ->
  (*batch, *sites, *inner)`` (``take`` with ``inv`` + ``where``, no scatter-assignment, so it
  works on every array-API namespace);
* :func:`scatter_density` - the same for a per-link scalar (e.g. a log-density),
  ``(*batch, n_active) -> (*batch, *sites)``, zero on inactive sites.

As linear maps, ``scatter_active(., base=None)`` is the adjoint of :func:`gather_active`, so a
VJP scatters the gathered cotangents with it. ``nb`` is always the number of leading batch
axes. :func:`flows.masks.check_triangular` (re-exported here) checks by perturbation that a
layer built on these masks is triangular.
"""
from __future__ import annotations

from lattice.backend import namespace
from lattice.layout import Layout

from .masks import check_triangular

__all__ = ["ActiveSites", "flat_sites", "gather_active", "scatter_active", "scatter_density",
           "check_triangular"]


class ActiveSites:
    """Active-site bookkeeping of one mask on one layout (see the module docstring).

    Parameters
    ----------
    mask : a :class:`flows.masks.LayerMask` (anything with ``active(layout, xp)`` giving the
        int8 mask ``(Nd, *local_sites)``, and ``kind`` / ``mu``).
    layout : the (local) lattice layout.
    xp : array namespace of the index arrays.
    dirs : active directions (default: ``[mask.mu]`` for direction updates, all Nd otherwise).

    Attributes: ``layout``, ``m``, ``V``, ``dirs``, and per mu in ``dirs``: ``idx[mu]``,
    ``inv[mu]``, ``sel[mu]``, ``n_active[mu]`` (a Python int).
    """

    def __init__(self, mask, layout: Layout, xp, dirs=None):
        self.layout = layout
        self.m = mask.active(layout, xp)                          # (Nd, *sites) int8
        V = layout.local_volume
        self.V = V
        if dirs is None:
            dirs = [mask.mu] if mask.kind in ("direction", "checker") else list(range(layout.Nd))
        self.dirs = [int(mu) for mu in dirs]
        self.idx, self.inv, self.sel = {}, {}, {}
        for mu in self.dirs:
            mf = xp.reshape(self.m[mu, ...], (V,))
            sel = mf != 0
            self.sel[mu] = sel
            self.idx[mu] = xp.nonzero(sel)[0]
            pos = xp.cumulative_sum(xp.astype(sel, xp.int64)) - 1
            self.inv[mu] = xp.where(sel, pos, xp.zeros_like(pos))
        self.n_active = {mu: int(self.idx[mu].shape[0]) for mu in self.dirs}


def flat_sites(F, nb: int, V: int, inner_shape):
    """Flatten the site axes: ``(*batch, *sites, *inner) -> (*batch, V, *inner)`` (``nb``
    batch axes, V sites)."""
    xp = namespace(F)
    return xp.reshape(F, tuple(F.shape[:nb]) + (V,) + tuple(inner_shape))


def gather_active(F_sites, s: ActiveSites, mu: int, nb: int, inner_shape):
    """Values of a site field at the active sites of direction mu:
    ``(*batch, *sites, *inner) -> (*batch, n_active[mu], *inner)``."""
    xp = namespace(F_sites)
    return xp.take(flat_sites(F_sites, nb, s.V, inner_shape), s.idx[mu], axis=nb)


def scatter_active(vals, s: ActiveSites, mu: int, nb: int, base=None):
    """Site field equal to ``vals`` (gathered, ``(*batch, n_active[mu], *inner)``) at the
    active sites of mu and to ``base`` (a site field ``(*batch, *sites, *inner)``) elsewhere;
    ``base=None`` means zeros (then this is the adjoint of :func:`gather_active`)."""
    xp = namespace(vals)
    inner = tuple(vals.shape[nb + 1:])
    full = xp.take(vals, s.inv[mu], axis=nb)
    sel = xp.reshape(s.sel[mu], (s.V,) + (1,) * len(inner))
    if base is None:
        out = xp.where(sel, full, xp.zeros_like(full))
        sites_shape = tuple(vals.shape[:nb]) + tuple(s.layout.local_shape) + inner
        return xp.reshape(out, sites_shape)
    bshape = tuple(base.shape)
    out = xp.where(sel, full, flat_sites(base, nb, s.V, inner))
    return xp.reshape(out, bshape)


def scatter_density(vals, s: ActiveSites, mu: int, nb: int):
    """Per-link scalars at the active sites of mu (``(*batch, n_active[mu])``) as a site field
    ``(*batch, *sites)``, zero on the other sites."""
    xp = namespace(vals)
    full = xp.take(vals, s.inv[mu], axis=nb)
    out = xp.where(s.sel[mu], full, xp.zeros_like(full))
    return xp.reshape(out, tuple(vals.shape[:nb]) + tuple(s.layout.local_shape))
