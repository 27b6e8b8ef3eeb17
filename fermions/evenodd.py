"""Even-odd (checkerboard) geometry with packed half-lattice fields.

A site x = (x_0, x_1, x_2, x_3) has parity p(x) = (x_0 + x_1 + x_2 + x_3) mod 2 (0 = even).
A parity-p field is stored *packed along axis 0*: it has site shape
(L_0/2, L_1, L_2, L_3) and the packed site (h, x_1, x_2, x_3) is the lattice site

    x_0 = 2 h + (p XOR r),     r = (x_1 + x_2 + x_3) mod 2   ("row parity").

Neighbours of a parity-p site lie on parity 1-p. In a direction mu != 0 the packed index h
is unchanged, so the neighbour is the half-lattice shift in mu. In direction 0 the neighbour
x_0 +- 1 has packed index

    x_0 + 1:  h + (p XOR r)          x_0 - 1:  h - 1 + (p XOR r)

i.e. a select between the unshifted and the shifted packed array depending on the row.
All neighbour access goes through :meth:`lattice.Layout.shift` of the half-lattice layout
(:attr:`EvenOdd.half`), so an MPI decomposition works unchanged. Requirements: every global
extent even (otherwise the checkerboard is inconsistent across the periodic boundary), every
*local* extent L_0 even, and the global L_0 >= 4 (a :class:`lattice.Layout` needs extents >= 2); the smallest such
lattice is (4, 2, 2, 2). Under MPI the half lattice (L_0/2, L_1, L_2, L_3) is decomposed on the
same process grid, so it must itself be a valid :class:`lattice.Layout` on that grid (its local
extents >= 2 and compatible with the reduction tiles): e.g. (8, 4, 4, 4) splits 2 ways along
axis 0 but not 4 ways (local L_0 = 2, half-lattice local extent 1); the error says so.
Coordinates are global, so the packing is the same on every rank.

Fields may carry ``inner`` trailing per-site axes (spinors ``(4, N)``: ``inner=2``; the
internal spin/colour-major kernels put sites last: ``inner=0``).
"""
from __future__ import annotations

from lattice.backend import namespace, default_xp
from lattice.layout import Layout, LayoutError

__all__ = ["EvenOdd", "even_odd", "EvenOddError", "require_even_odd"]


class EvenOddError(LayoutError):
    """The lattice cannot be split into packed even/odd halves."""


class EvenOdd:
    """Even-odd geometry of a 4d :class:`lattice.Layout` (see the module docstring).

    Attributes
    ----------
    full : the full-lattice layout.
    half : the half-lattice layout, global shape (L_0/2, L_1, L_2, L_3), same process grid.
    """

    def __init__(self, layout: Layout):
        if layout.Nd != 4:
            raise EvenOddError(f"even-odd preconditioning is implemented for 4d lattices, got {layout}")
        L0 = layout.global_shape[0]
        l0 = layout.local_shape[0]
        if any(L % 2 for L in layout.global_shape):
            raise EvenOddError(
                f"even-odd preconditioning needs even extents in every direction (a periodic odd extent "
                f"connects sites of equal parity) and L_0 >= 4; got {layout.global_shape}. The smallest "
                f"lattice that works is (4, 2, 2, 2).")
        if L0 % 2 or l0 % 2 or L0 < 4:
            raise EvenOddError(
                f"even-odd packing halves axis 0, so it needs a global L_0 >= 4 and an even local extent L_0 "
                f"(and even extents in every direction); got global shape {layout.global_shape}, local shape "
                f"{layout.local_shape} (process grid {layout.grid}). Use an even L_0 >= 4, e.g. the lattice "
                f"(4, 2, 2, 2), and a decomposition that keeps the local L_0 even.")
        self.full = layout
        half_shape = (L0 // 2,) + tuple(layout.global_shape[1:])
        try:
            self.half = Layout(half_shape, comm=layout.comm, grid=layout.grid if layout.comm is not None else None)
        except LayoutError as exc:
            raise EvenOddError(f"cannot build the half-lattice layout {half_shape} for {layout}: {exc}") from exc
        self._masks = {}

    def __repr__(self):
        return f"EvenOdd(full={self.full}, half={self.half})"

    # ------------------------------------------------------------------ masks
    def row_parity(self, xp=None):
        """r = (x_1 + x_2 + x_3) mod 2 on the local half lattice, int64 of shape (1, l_1, l_2, l_3)."""
        xp = default_xp() if xp is None else xp
        c = self.full.coords(xp)
        r = (c[1] + c[2] + c[3]) % 2
        return xp.reshape(r, (1,) + tuple(self.full.local_shape[1:]))

    def mask(self, p: int, xp, inner: int = 0):
        """Boolean mask (p XOR r) == 1 of the parity-p packed sites, broadcastable to a field
        with ``inner`` trailing axes."""
        key = (id(xp), int(p), int(inner))
        m = self._masks.get(key)
        if m is None:
            r = self.row_parity(xp)
            m = (r != 0) if p == 0 else (r == 0)
            m = xp.reshape(m, tuple(m.shape) + (1,) * inner)
            self._masks[key] = m
        return m

    # ------------------------------------------------------------------ packing
    def _split0(self, F, inner):
        xp = namespace(F)
        ax = F.ndim - inner - 4
        if ax < 0 or tuple(F.shape[ax: ax + 4]) != tuple(self.full.local_shape):
            raise LayoutError(f"field of shape {tuple(F.shape)} does not fit {self.full} with {inner} inner axes")
        shp = tuple(F.shape)
        Fr = xp.reshape(F, shp[:ax] + (shp[ax] // 2, 2) + shp[ax + 1:])
        pre = (slice(None),) * (ax + 1)
        return Fr[pre + (0, ...)], Fr[pre + (1, ...)]

    def pack(self, F, inner: int = 2):
        """Full-lattice field -> (even, odd) packed half-lattice fields."""
        xp = namespace(F)
        s0, s1 = self._split0(F, inner)
        m_e = self.mask(0, xp, inner)          # even sites with x_0 = 2h + 1
        even = xp.where(m_e, s1, s0)
        odd = xp.where(m_e, s0, s1)
        return even, odd

    def unpack(self, F_even, F_odd, inner: int = 2):
        """(even, odd) packed fields -> full-lattice field."""
        xp = namespace(F_even, F_odd)
        self.half.check_sites(F_even, inner, "even half field")
        self.half.check_sites(F_odd, inner, "odd half field")
        m_e = self.mask(0, xp, inner)
        s0 = xp.where(m_e, F_odd, F_even)
        s1 = xp.where(m_e, F_even, F_odd)
        ax = s0.ndim - inner - 4
        st = xp.stack([s0, s1], axis=ax + 1)
        shp = tuple(st.shape)
        return xp.reshape(st, shp[:ax] + (shp[ax] * 2,) + shp[ax + 2:])

    # ------------------------------------------------------------------ neighbours
    def fetch(self, F, mu: int, sign: int, target: int, inner: int = 0):
        """Neighbour values on the parity-``target`` sites: G(x) = F(x + sign mu^),
        F a packed field of parity 1 - target."""
        if mu != 0:
            return self.half.shift(F, mu, sign, inner=inner)
        xp = namespace(F)
        m = self.mask(target, xp, inner)
        if sign > 0:
            return xp.where(m, self.half.shift(F, 0, +1, inner=inner), F)
        return xp.where(m, F, self.half.shift(F, 0, -1, inner=inner))

    def site_index(self, xp=None):
        """Global-independent local packed site index 0 .. V_half_local - 1, int64 of the half
        local shape (for dense-matrix bookkeeping)."""
        xp = default_xp() if xp is None else xp
        n = 1
        for l in self.half.local_shape:
            n *= l
        return xp.reshape(xp.arange(n, dtype=xp.int64), tuple(self.half.local_shape))


_CACHE: dict = {}


def require_even_odd(layout: Layout, what: str) -> EvenOdd:
    """:func:`even_odd` for the public entry point ``what``: an :class:`EvenOddError` that
    says which function needs the packing, and what the packing needs."""
    try:
        return even_odd(layout)
    except EvenOddError as exc:
        raise EvenOddError(f"{what} needs the even-odd packing (it uses the Schur complement of M on the odd "
                           f"sites): {exc}") from exc


def even_odd(layout: Layout) -> EvenOdd:
    """The (cached) :class:`EvenOdd` geometry of ``layout``."""
    key = (layout.global_shape, layout.grid, layout.rank, id(layout.comm))
    eo = _CACHE.get(key)
    if eo is None or eo.full is not layout and eo.full != layout:
        eo = _CACHE[key] = EvenOdd(layout)
    return eo
