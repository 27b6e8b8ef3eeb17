"""Geometry and layout: the one object that knows the lattice and how it is distributed.

Every lattice field has its ``Nd`` site axes followed by ``inner`` trailing axes
(``inner = 2`` for matrices per site and for spinors ``(4, N)``, ``inner = 0`` for
scalar densities), preceded by any leading (batch, direction) axes::

    gauge field  U   : (*batch, Nd, L_0, ..., L_{Nd-1}, N, N)   (time = last axis)
    spinor       psi : (*batch, L_0, ..., L_{Nd-1}, 4, N)
    density      q   : (*batch, L_0, ..., L_{Nd-1})

:class:`Layout` owns :meth:`Layout.shift` (periodic neighbour access, halo exchange under
MPI), the global reductions (:meth:`Layout.sum`, :meth:`Layout.slice_sum`), site
coordinates and parities. Code elsewhere is written once against it.

Reductions are *reproducible*: sums run first inside fixed global blocks (``tile``), then
over the blocks in global order, so the result is bit-for-bit the same for every
decomposition of the lattice over MPI ranks (docs/design.md §8).

Halo exchange (MPI)
-------------------
``shift(F, mu, n)`` on an axis split over ``g`` ranks reduces ``n`` modulo the global extent
``L``, writes ``n = q l + r`` (``l = L / g`` the local extent, ``0 <= r < l``) and assembles
the result from two slabs: sites ``[r, l)`` of the block ``q`` ranks up and sites ``[0, r)`` of
the block ``q + 1`` ranks up. A slab that lives on this rank is not sent; the others travel as
C-contiguous host buffers with non-blocking ``Irecv``/``Isend`` pairs (at most two messages
each way, ``l`` slices in total, for any shift distance). The bytes and messages received are
counted in :attr:`Layout.halo_bytes` and :attr:`Layout.halo_messages`.

Device arrays (CuPy) are staged through host memory (one device-to-host copy of each face
and one host-to-device copy of each halo); see the scaling notes for what GPU-aware MPI
would change.
"""
from __future__ import annotations

import math
from typing import Sequence

import array_api_compat

from .backend import namespace, to_host, from_host, default_xp

__all__ = ["Layout", "infer_gauge_layout", "layout_for", "scatter", "gather", "default_tile",
           "LayoutError"]


class LayoutError(ValueError):
    """Inconsistent lattice geometry or decomposition."""


def default_tile(L: int) -> int:
    """Reduction block extent along an axis of length L: L // b for the largest b in
    (8, 4, 2, 1) with b | L and L // b >= 2. Decompositions must split each axis into a
    divisor of b ranks (override with ``Layout(..., tile=...)``)."""
    for b in (8, 4, 2, 1):
        if L % b == 0 and L // b >= 2:
            return L // b
    return L


def _ordered_factorizations(n: int, k: int):
    """All k-tuples of positive ints with product n."""
    if k == 1:
        yield (n,)
        return
    for d in range(1, n + 1):
        if n % d == 0:
            for rest in _ordered_factorizations(n // d, k - 1):
                yield (d,) + rest


def _axis_splits(L: int, t: int):
    """Rank counts g along an axis of extent L with reduction tile t: g | L and t | L/g."""
    return [g for g in range(1, L + 1) if L % g == 0 and (L // g) % t == 0]


def _host_buffer(x):
    """A C-contiguous host (NumPy) copy or view of an array of any backend (an MPI buffer)."""
    h = to_host(x)
    return h if h.flags.c_contiguous else h.copy()  # ndarray.copy() is C-ordered


def _empty_host_like(h):
    return default_xp().empty_like(h)


# ------------------------------------------------------------------ device buffers under MPI
#: environment variables by which common MPI builds announce (or are asked for) CUDA support
_CUDA_AWARE_ENV = {"MPICH_GPU_SUPPORT_ENABLED": "1", "OMPI_MCA_opal_cuda_support": "true",
                   "MV2_USE_CUDA": "1", "PSP_CUDA": "1", "I_MPI_OFFLOAD": "1"}
_DEVICE_BUFFERS = "auto"


def set_device_buffers(mode: str) -> bool:
    """How halo slabs of device (CuPy) arrays travel in :meth:`Layout.shift` under MPI.

    ``"host"``: staged through host buffers (works with any MPI); ``"device"``: the device
    arrays go to mpi4py directly (needs a CUDA-aware MPI; mpi4py reads
    ``__cuda_array_interface__``); ``"auto"`` (default): ``"device"`` where the environment says
    the MPI is CUDA-aware (``MPICH_GPU_SUPPORT_ENABLED=1``, ``OMPI_MCA_opal_cuda_support=true``,
    ``MV2_USE_CUDA=1``, ...), else ``"host"``. Returns whether device buffers are used.
    NumPy arrays are host arrays: the setting does not matter for them.
    """
    global _DEVICE_BUFFERS
    if mode not in ("auto", "device", "host"):
        raise ValueError(f"device buffer mode must be 'auto', 'device' or 'host', got {mode!r}")
    _DEVICE_BUFFERS = mode
    return device_buffers()


def device_buffers() -> bool:
    """Whether :meth:`Layout.shift` hands device arrays to MPI directly (see
    :func:`set_device_buffers`)."""
    if _DEVICE_BUFFERS != "auto":
        return _DEVICE_BUFFERS == "device"
    import os
    return any(os.environ.get(k, "").strip().lower() == v for k, v in _CUDA_AWARE_ENV.items())


_XP_BY_TYPE: dict = {}


def _xp_of(F):
    """Array namespace of F, cached by array type (array_namespace costs ~10 us per call;
    the namespace of NumPy, CuPy and array_api_strict arrays depends only on the type)."""
    t = type(F)
    xp = _XP_BY_TYPE.get(t)
    if xp is None:
        xp = _XP_BY_TYPE[t] = namespace(F)
    return xp


_CART_KEYVAL = None


def _cart_comm(comm, grid):
    """Periodic Cartesian communicator over ``comm`` with ``grid``, created once per
    (communicator, grid) and cached as an MPI attribute of ``comm`` (so the cache dies with
    the communicator). Collective on first use, as every Layout construction is."""
    global _CART_KEYVAL
    from mpi4py import MPI
    if _CART_KEYVAL is None:
        _CART_KEYVAL = MPI.Comm.Create_keyval()
    carts = comm.Get_attr(_CART_KEYVAL)
    if carts is None:
        carts = {}
        comm.Set_attr(_CART_KEYVAL, carts)
    cart = carts.get(tuple(grid))
    if cart is None:
        cart = carts[tuple(grid)] = comm.Create_cart(list(grid), periods=[True] * len(grid), reorder=False)
    return cart


class Layout:
    """Global lattice ``global_shape`` (time last), optionally decomposed over MPI ranks.

    Parameters
    ----------
    global_shape : sequence of Nd ints, Nd in {2, 3, 4}.
    comm : an ``mpi4py`` communicator or ``None`` (single process, plain periodic rolls).
    grid : ranks per axis (product = comm size); chosen automatically when ``None``.
    tile : reduction block extents (see :func:`default_tile`).
    """

    def __init__(self, global_shape: Sequence[int], comm=None, grid: Sequence[int] | None = None,
                 tile: Sequence[int] | None = None):
        gs = tuple(int(n) for n in global_shape)
        if not 2 <= len(gs) <= 4:
            raise LayoutError(f"lattice must have 2, 3 or 4 dimensions, got shape {gs}")
        if any(n < 2 for n in gs):
            raise LayoutError(f"every lattice extent must be at least 2, got {gs}")
        self.global_shape = gs
        self.Nd = len(gs)
        self.tile = tuple(int(t) for t in tile) if tile is not None else tuple(default_tile(n) for n in gs)
        if len(self.tile) != self.Nd or any(L % t for L, t in zip(gs, self.tile)):
            raise LayoutError(f"reduction tile {self.tile} does not divide the lattice {gs}")
        size = 1 if comm is None else comm.Get_size()
        if comm is not None and size == 1 and grid is None:
            comm = None
        self.comm = comm
        self.size = size
        if grid is None:
            grid = self._choose_grid(size)
        grid = tuple(int(g) for g in grid)
        if len(grid) != self.Nd or any(g < 1 for g in grid) or math.prod(grid) != size:
            raise LayoutError(f"process grid {grid} does not match {size} ranks on an {self.Nd}d lattice "
                              f"(need {self.Nd} positive ranks-per-axis whose product is {size})")
        for ax, (L, g, t) in enumerate(zip(gs, grid, self.tile)):
            if L % g or (L // g) % t:
                raise LayoutError(
                    f"lattice {gs} does not divide over the process grid {grid}: axis {ax} has extent "
                    f"{L}, which must split into {g} equal blocks that are multiples of the reduction "
                    f"tile {t} (possible ranks along this axis: {_axis_splits(L, t)}). Choose a rank "
                    f"count/grid that divides it (or pass tile=...).")
        self.grid = grid
        if comm is None:
            self.rank = 0
            self.coords_rank = (0,) * self.Nd
            self._cart = None
        else:
            self._cart = _cart_comm(comm, grid)
            self.rank = self._cart.Get_rank()
            self.coords_rank = tuple(self._cart.Get_coords(self.rank))
            self._rank_coords = [tuple(self._cart.Get_coords(r)) for r in range(size)]
        self.local_shape = tuple(L // g for L, g in zip(gs, grid))
        self.offset = tuple(c * l for c, l in zip(self.coords_rank, self.local_shape))
        self.volume = math.prod(gs)
        self.local_volume = math.prod(self.local_shape)
        self.halo_bytes = 0      # bytes received by shift() so far (for the scaling notes)
        self.halo_messages = 0   # messages received by shift() so far
        self._peers: dict = {}   # (mu, hop) -> (rank hop blocks down, rank hop blocks up)

    # ------------------------------------------------------------------ construction
    def _choose_grid(self, size: int):
        """The process grid for ``size`` ranks with the smallest halo surface.

        Among all grids whose blocks are multiples of the reduction tile, pick the one that
        minimises the number of face sites exchanged per nearest-neighbour shift pair,
        sum over split axes of V_local / l_mu; ties go to fewer split axes, then to splitting
        later axes (time first; axis 0, the even-odd packing axis, last).
        """
        best = None
        for grid in _ordered_factorizations(size, self.Nd):
            if any(L % g or (L // g) % t for L, g, t in zip(self.global_shape, grid, self.tile)):
                continue
            loc = [L // g for L, g in zip(self.global_shape, grid)]
            vol = math.prod(loc)
            surface = sum(vol // l for l, g in zip(loc, grid) if g > 1)
            key = (surface, sum(g > 1 for g in grid)) + tuple(grid[:-1])
            if best is None or key < best[0]:
                best = (key, grid)
        if best is None:
            per_axis = [_axis_splits(L, t) for L, t in zip(self.global_shape, self.tile)]
            counts = {1}
            for opts in per_axis:
                counts = {c * g for c in counts for g in opts}
            raise LayoutError(
                f"cannot decompose lattice {self.global_shape} over {size} ranks with reduction tile "
                f"{self.tile}: ranks per axis must divide the extent into blocks that are multiples of "
                f"the tile (possible per axis: {per_axis}; possible rank counts: {sorted(counts)[:24]}). "
                f"Choose another rank count, or pass grid=... / tile=...")
        return best[1]

    @property
    def is_distributed(self) -> bool:
        return self.comm is not None and self.size > 1

    def __repr__(self):
        return (f"Layout(global_shape={self.global_shape}, grid={self.grid}, rank={self.rank}, "
                f"local_shape={self.local_shape})")

    def __eq__(self, other):
        return (isinstance(other, Layout) and self.global_shape == other.global_shape
                and self.grid == other.grid and self.rank == other.rank)

    def __hash__(self):
        return hash((self.global_shape, self.grid, self.rank))

    # ------------------------------------------------------------------ axes
    def check_sites(self, F, inner: int, what: str = "field", sites_shape=None):
        """Raise unless F's site axes (the ``Nd`` axes before the ``inner`` trailing ones) are
        this rank's ``local_shape`` (or ``sites_shape``). The message gives both shapes."""
        want = self.local_shape if sites_shape is None else tuple(sites_shape)
        inner = int(inner)
        sites = tuple(F.shape[F.ndim - inner - self.Nd: F.ndim - inner]) \
            if inner >= 0 and F.ndim >= inner + self.Nd else None
        if sites != want:
            raise LayoutError(f"{what} of shape {tuple(F.shape)} does not fit the lattice: expected shape "
                              f"(*batch, {', '.join(map(str, want))}{', *inner' if inner else ''}) with "
                              f"{inner} inner axes (site axes {want}), got site axes "
                              f"{sites if sites is not None else 'none'}")

    # ------------------------------------------------------------------ neighbours
    def shift(self, F, mu: int, sign: int = +1, inner: int = 2, out=None):
        """``shift(F, mu, n)[x] = F[x + n mu^]`` (periodic); ``sign`` may be any integer ``n``.

        F has shape ``(*lead, *local_shape, *inner_shape)`` with ``inner`` trailing axes.
        Without a split of axis ``mu`` this is a roll; under MPI the slabs that cross rank
        boundaries are exchanged (module docstring: at most two messages each way, contiguous
        host buffers, non-blocking send/receive), for any ``n``. With ``out`` (an array of F's
        shape, e.g. a slot of a preallocated stack) the result is written there and returned:
        an unsplit axis then costs no temporary. The local part is
        :func:`lattice.kernels.periodic_shift` (a compiled permutation on NumPy where the site
        extents are short).
        """
        n = int(sign)
        if not 0 <= mu < self.Nd:
            raise LayoutError(f"shift: field of shape {tuple(F.shape)} has no site axis {mu} (direction out of range "
                              f"for a {self.Nd}d lattice)")
        if F.ndim < inner + self.Nd:
            raise LayoutError(f"shift: field of shape {tuple(F.shape)} has no site axis {mu}: expected shape "
                              f"(*batch, {', '.join(map(str, self.local_shape))}{', *inner' if inner else ''}) with "
                              f"{inner} inner axes (site axes {self.local_shape})")
        self.check_sites(F, inner, "shift: field")
        from .kernels.shift import periodic_shift
        ax = F.ndim - inner - self.Nd + mu
        xp = _xp_of(F)
        if out is not None:
            if tuple(out.shape) != tuple(F.shape):
                raise LayoutError(f"shift: out of shape {tuple(out.shape)} for a field of shape {tuple(F.shape)}")
            if self.grid[mu] == 1:
                return periodic_shift(F, ax, n, out=out)
            out[...] = self._shift_distributed(F, mu, n, ax, xp) if n else F
            return out
        if n == 0:
            return F
        if self.grid[mu] == 1:
            return periodic_shift(F, ax, n)
        return self._shift_distributed(F, mu, n, ax, xp)

    def _peer(self, mu: int, hop: int):
        """(rank ``hop`` blocks down, rank ``hop`` blocks up) along axis ``mu``."""
        key = (mu, hop)
        pr = self._peers.get(key)
        if pr is None:
            pr = self._peers[key] = self._cart.Shift(mu, hop)
        return pr

    def _shift_distributed(self, F, mu, n, ax, xp):
        loc, g = self.local_shape[mu], self.grid[mu]
        k = n % self.global_shape[mu]
        if k == 0:
            return F
        q, r = divmod(k, loc)
        lead = (slice(None),) * ax
        # result = [sites r..loc of the block q up, sites 0..r of the block q+1 up]
        pieces = [(q, r, loc), (q + 1, 0, r)]
        out = [None, None]
        reqs, recvs = [], []
        for i, (hop, lo, hi) in enumerate(pieces):
            if hi == lo:
                continue
            slab = F[lead + (slice(lo, hi), Ellipsis)]
            if hop % g == 0:           # the slab is this rank's own
                out[i] = slab
                continue
            down, up = self._peer(mu, hop % g)
            recvs.append((i, self._post(slab, down, up, 2 * mu + i, xp, reqs)))
        for i, rbuf in self._wait(reqs, recvs, xp):
            out[i] = rbuf
        parts = [o for o in out if o is not None]
        return parts[0] if len(parts) == 1 else xp.concat(parts, axis=ax)

    def _post(self, slab, dest, source, tag, xp, reqs):
        """Non-blocking: send ``slab`` to ``dest``, receive a buffer of its shape from
        ``source`` (requests appended to ``reqs``); returns the receive buffer. Host staging,
        or device buffers where CUDA-aware MPI is configured."""
        if array_api_compat.is_cupy_namespace(xp) and device_buffers():  # pragma: no cover - GPU only
            import cupy
            sbuf = cupy.ascontiguousarray(slab)
            rbuf = cupy.empty_like(sbuf)
            cupy.cuda.get_current_stream().synchronize()   # sbuf complete before MPI reads it
        else:
            sbuf = _host_buffer(slab)
            rbuf = _empty_host_like(sbuf)
        reqs.append(self._cart.Irecv(rbuf, source=source, tag=tag))
        reqs.append(self._cart.Isend(sbuf, dest=dest, tag=tag))    # the request holds sbuf
        return rbuf

    def _wait(self, reqs, recvs, xp):
        """Complete the requests of :meth:`_post`; (key, received array in ``xp``) per receive,
        counted in the halo statistics."""
        if reqs:
            from mpi4py import MPI
            MPI.Request.Waitall(reqs)
        out = []
        for key, rbuf in recvs:
            self.halo_bytes += rbuf.nbytes
            self.halo_messages += 1
            out.append((key, rbuf if _xp_of(rbuf) is xp else from_host(rbuf, xp)))
        return out

    # ------------------------------------------------------------------ ghost layers
    def _ghost_widths(self, below, above, what):
        below, above = tuple(int(b) for b in below), tuple(int(t) for t in above)
        if len(below) != self.Nd or len(above) != self.Nd or any(
                not 0 <= w <= L for ws in (below, above) for w, L in zip(ws, self.local_shape)):
            raise LayoutError(f"{what}: ghost widths below {below} / above {above} must be {self.Nd} numbers "
                              f"between 0 and the local extents {self.local_shape}")
        return below, above

    def with_ghosts(self, F, below, above, inner: int = 2):
        """F on the local block extended by ``below[a]`` planes of the block below and
        ``above[a]`` planes of the block above along every axis a (periodic; under MPI the
        neighbours' planes, one message of just those planes per axis and side). Axes are
        extended in order and each exchange carries the ghosts of the axes before it, so edge
        and corner ghosts are filled too. Shape ``(*lead, *(L_a + below_a + above_a), *inner)``."""
        self.check_sites(F, inner, "with_ghosts: field")
        below, above = self._ghost_widths(below, above, "with_ghosts")
        xp = _xp_of(F)
        E = F
        for a, (b, t) in enumerate(zip(below, above)):
            if not (b or t):
                continue
            L, ax = self.local_shape[a], F.ndim - inner - self.Nd + a
            lead = (slice(None),) * ax
            # planes -b..-1 are the top b planes of the block below, L..L+t-1 the bottom t above
            from_below, from_above = self.swap_planes(a, E[lead + (slice(L - b, L), Ellipsis)] if b else None,
                                                      E[lead + (slice(0, t), Ellipsis)] if t else None)
            parts = ([from_below] if b else []) + [E] + ([from_above] if t else [])
            E = xp.concat(parts, axis=ax)
        return E

    def start_swap(self, a: int, send_up, send_down):
        """Post the exchange of boundary planes along axis a (non-blocking): ``send_up`` (any
        array, e.g. this block's top planes) goes to the block above, ``send_down`` to the block
        below (None: nothing that way). Returns a handle for :meth:`finish_swap`; local work
        can run while the messages are in flight. Without a split of axis a the block is its
        own neighbour (no message)."""
        if self.grid[a] == 1:
            return ("local", send_up, send_down)
        down, up = self._peer(a, 1)
        reqs, recvs = [], []
        for key, x, dest, source in ((0, send_up, up, down), (1, send_down, down, up)):
            if x is not None:
                recvs.append((key, self._post(x, dest, source, 2 * a + key, _xp_of(x), reqs)))
        return ("mpi", reqs, recvs, _xp_of(send_up if send_up is not None else send_down))

    def finish_swap(self, handle):
        """Wait for :meth:`start_swap`'s messages; returns (what came from the block below,
        what came from the block above), None where nothing was sent that way."""
        if handle[0] == "local":
            return handle[1], handle[2]
        _, reqs, recvs, xp = handle
        got = dict(self._wait(reqs, recvs, xp))
        return got.get(0), got.get(1)

    def swap_planes(self, a: int, send_up, send_down):
        """:meth:`start_swap` and :meth:`finish_swap` in one call."""
        return self.finish_swap(self.start_swap(a, send_up, send_down))

    def ghost_sum(self, E, below, above, inner: int = 2):
        """The adjoint of :meth:`with_ghosts`: a field on the extended block -> the local block,
        each ghost plane's value added to the site it copies (on its rank)."""
        below, above = self._ghost_widths(below, above, "ghost_sum")
        xp = _xp_of(E)
        want = tuple(L + b + t for L, b, t in zip(self.local_shape, below, above))
        self.check_sites(E, inner, "ghost_sum: field", sites_shape=want)
        for a in reversed(range(self.Nd)):
            b, t = below[a], above[a]
            if not (b or t):
                continue
            L, ax = self.local_shape[a], E.ndim - inner - self.Nd + a
            lead = (slice(None),) * ax
            # ghost planes go back to the blocks they were copied from: those below (copies of the
            # top planes of the block below) down, those above up
            from_below, from_above = self.swap_planes(a, E[lead + (slice(b + L, b + L + t), Ellipsis)] if t else None,
                                                      E[lead + (slice(0, b), Ellipsis)] if b else None)
            acc = xp.asarray(E[lead + (slice(b, b + L), Ellipsis)], copy=True)
            if b:
                acc[lead + (slice(L - b, L), Ellipsis)] += from_above
            if t:
                acc[lead + (slice(0, t), Ellipsis)] += from_below
            E = acc
        return E

    def halo_stats(self) -> dict:
        """Halo traffic received by :meth:`shift` since construction / the last reset."""
        return {"bytes": self.halo_bytes, "messages": self.halo_messages}

    def reset_halo_stats(self):
        self.halo_bytes = 0
        self.halo_messages = 0

    # ------------------------------------------------------------------ coordinates
    def coords(self, xp=None):
        """Global coordinates of the local sites: Nd int64 arrays broadcastable to local_shape."""
        xp = default_xp() if xp is None else xp
        out = []
        for mu in range(self.Nd):
            c = xp.arange(self.local_shape[mu], dtype=xp.int64) + self.offset[mu]
            out.append(xp.reshape(c, (self.local_shape[mu],) + (1,) * (self.Nd - 1 - mu)))
        return out

    def parity(self, xp=None):
        """Site parity (sum_mu x_mu) mod 2 on the local sites, int64 of shape local_shape."""
        xp = default_xp() if xp is None else xp
        s = xp.zeros(self.local_shape, dtype=xp.int64)
        for c in self.coords(xp):
            s = s + c
        return s % 2

    # ------------------------------------------------------------------ reductions
    def _block_sums(self, x, inner: int, tile):
        """Local per-block partial sums: (*lead, nb_0, ..., nb_{Nd-1}), blocks of shape ``tile``."""
        xp = namespace(x)
        if inner:
            x = xp.sum(x, axis=tuple(range(x.ndim - inner, x.ndim)))
        self.check_sites(x, 0, "reduced field")
        lead = tuple(x.shape[: x.ndim - self.Nd])
        nl = len(lead)
        split = []
        for L, t in zip(self.local_shape, tile):
            split += [L // t, t]
        y = xp.reshape(x, lead + tuple(split))
        perm = tuple(range(nl)) + tuple(nl + 2 * i for i in range(self.Nd)) + tuple(nl + 2 * i + 1 for i in range(self.Nd))
        y = xp.permute_dims(y, perm)
        nb = tuple(L // t for L, t in zip(self.local_shape, tile))
        y = xp.reshape(y, lead + (math.prod(nb), math.prod(tile)))
        return xp.reshape(xp.sum(y, axis=-1), lead + nb)

    def _allgather_host(self, x):
        """Every rank's copy of an equally shaped array, stacked in rank order on the host:
        a NumPy array of shape ``(size, *x.shape)`` (one buffer-based ``Allgather``)."""
        h = _host_buffer(x)
        out = default_xp().empty((self.size,) + tuple(h.shape), dtype=h.dtype)
        self.comm.Allgather(h, out)
        return out

    def _gather_blocks(self, b):
        """Assemble the global array of block sums on every rank (block order is global)."""
        if not self.is_distributed:
            return b
        xp = _xp_of(b)
        allb = self._allgather_host(b)
        lead = tuple(allb.shape[1: allb.ndim - self.Nd])
        nb_loc = tuple(allb.shape[allb.ndim - self.Nd:])
        nb_glob = tuple(n * g for n, g in zip(nb_loc, self.grid))
        out = default_xp().empty(lead + nb_glob, dtype=allb.dtype)
        for r, c in enumerate(self._rank_coords):
            idx = (Ellipsis,) + tuple(slice(ci * n, (ci + 1) * n) for ci, n in zip(c, nb_loc))
            out[idx] = allb[r]
        return out if _xp_of(out) is xp else from_host(out, xp)

    def sum(self, x, inner: int = 0):
        """Global sum over the sites (and the ``inner`` trailing axes); shape ``(*lead,)``.

        Reproducible: identical bits for every decomposition.
        """
        xp = namespace(x)
        b = self._gather_blocks(self._block_sums(x, inner, self.tile))
        lead = tuple(b.shape[: b.ndim - self.Nd])
        return xp.sum(xp.reshape(b, lead + (-1,)), axis=-1)

    def mean(self, x, inner: int = 0):
        return self.sum(x, inner) / self.volume

    def slice_sum(self, x, mu: int, inner: int = 0):
        """Sums over all sites with fixed global coordinate x_mu, shape ``(*lead, L_mu)``
        (e.g. timeslice sums with ``mu = Nd - 1``); the full axis on every rank."""
        xp = namespace(x)
        tile = list(self.tile)
        tile[mu] = 1
        b = self._gather_blocks(self._block_sums(x, inner, tuple(tile)))
        nl = b.ndim - self.Nd
        rest = tuple(nl + i for i in range(self.Nd) if i != mu)
        b = xp.permute_dims(b, tuple(range(nl)) + (nl + mu,) + rest)
        lead = tuple(b.shape[:nl])
        return xp.sum(xp.reshape(b, lead + (self.global_shape[mu], -1)), axis=-1)

    def allreduce_sum(self, x):
        """Sum of an array (e.g. parameter cotangents) over the ranks, added in rank order
        (so the same on every rank; identity without MPI). Note that the rank-order sum of
        per-rank partial sums depends on the decomposition in the last bits; use
        :meth:`sum` for site sums that must be reproducible."""
        if not self.is_distributed:
            return x
        parts = self._allgather_host(x)
        tot = parts[0].copy()
        for p in parts[1:]:
            tot += p
        xp = _xp_of(x)
        return tot if _xp_of(tot) is xp else from_host(tot, xp)

    def allreduce_max(self, value: float) -> float:
        """Maximum of a host scalar over the ranks."""
        if not self.is_distributed:
            return float(value)
        from mpi4py import MPI
        return float(self.comm.allreduce(float(value), op=MPI.MAX))

    def bcast(self, obj, root: int = 0):
        """Broadcast a host object from rank ``root`` (identity without MPI)."""
        return obj if not self.is_distributed else self.comm.bcast(obj, root=root)

    # ------------------------------------------------------------------ global <-> local
    def local_part(self, F_global, inner: int):
        """The block of a global field that this rank holds (a view/copy of the slice)."""
        self.check_sites(F_global, inner, "local_part: global field", self.global_shape)
        ax0 = F_global.ndim - inner - self.Nd
        idx = [slice(None)] * F_global.ndim
        for mu in range(self.Nd):
            idx[ax0 + mu] = slice(self.offset[mu], self.offset[mu] + self.local_shape[mu])
        return F_global[tuple(idx)]

    def _block_slices(self, r: int, ndim: int, ax0: int):
        """Index of rank r's block in a global array with site axes starting at ``ax0``."""
        c = self._rank_coords[r]
        idx = [slice(None)] * ndim
        for mu in range(self.Nd):
            idx[ax0 + mu] = slice(c[mu] * self.local_shape[mu], (c[mu] + 1) * self.local_shape[mu])
        return tuple(idx)

    def gather_field(self, F_local, inner: int, root: int | None = 0):
        """The global field on rank ``root`` (on every rank if ``root`` is None; None elsewhere).

        One buffer-based ``Gather`` (``Allgather``) of the equally shaped local blocks; the
        receiving rank holds ``size`` blocks, i.e. the global field, once on the host.
        """
        self.check_sites(F_local, inner, "gather_field: local field")
        if not self.is_distributed:
            return F_local
        xp = _xp_of(F_local)
        h = _host_buffer(F_local)
        if root is None:
            parts = self._allgather_host(h)
        else:
            parts = default_xp().empty((self.size,) + tuple(h.shape), dtype=h.dtype) if self.rank == root else None
            self.comm.Gather(h, parts, root=root)
            if parts is None:
                return None
        ax0 = h.ndim - inner - self.Nd
        shape = list(h.shape)
        for mu in range(self.Nd):
            shape[ax0 + mu] = self.global_shape[mu]
        out = default_xp().empty(tuple(shape), dtype=h.dtype)
        for r in range(self.size):
            out[self._block_slices(r, h.ndim, ax0)] = parts[r]
        return out if _xp_of(out) is xp else from_host(out, xp)

    def scatter_field(self, F_global, inner: int, root: int = 0, xp=None):
        """This rank's block of a global field that only rank ``root`` holds.

        ``F_global`` has shape ``(*lead, *global_shape, *inner_shape)`` on rank ``root``
        (it is ignored, and may be None, elsewhere). The root sends every other rank its
        block point-to-point (contiguous buffers, one message per rank); only the shape and
        dtype are broadcast. Returns ``(*lead, *local_shape, *inner_shape)`` in the namespace
        ``xp`` (default: the root's array namespace on the root, NumPy elsewhere).
        Without MPI, checks the shape and returns ``F_global``.
        """
        if not self.is_distributed:
            self.check_sites(F_global, inner, "global field")
            return F_global if xp is None else from_host(to_host(F_global), xp)
        me = self.comm.Get_rank()
        header = None
        if me == root:
            if xp is None:
                xp = _xp_of(F_global)
            h = to_host(F_global)
            sites = tuple(h.shape[h.ndim - inner - self.Nd: h.ndim - inner]) if h.ndim >= inner + self.Nd else None
            header = (tuple(h.shape), h.dtype.str) if sites == self.global_shape else ("error", tuple(h.shape))
        header = self.comm.bcast(header, root=root)
        if header[0] == "error":
            raise LayoutError(f"scatter_field: global field of shape {header[1]} does not fit the lattice "
                              f"{self.global_shape} (with {inner} inner axes)")
        shape, dtype = header
        ax0 = len(shape) - inner - self.Nd
        tag = 7301
        if me == root:
            for r in range(self.size):
                if r != root:
                    self.comm.Send(_host_buffer(h[self._block_slices(r, len(shape), ax0)]), dest=r, tag=tag)
            mine = _host_buffer(h[self._block_slices(root, len(shape), ax0)])
        else:
            local = list(shape)
            for mu in range(self.Nd):
                local[ax0 + mu] = self.local_shape[mu]
            mine = default_xp().empty(tuple(local), dtype=dtype)
            self.comm.Recv(mine, source=root, tag=tag)
        return from_host(mine, xp)


# ---------------------------------------------------------------------- inference helpers
def infer_gauge_layout(U, layout: Layout | None = None) -> Layout:
    """Layout of a gauge field ``(*batch, Nd, L_0..L_{Nd-1}, N, N)``.

    With ``layout`` given, check that U fits it. Otherwise infer a single-process layout.
    A shape that fits several Nd (an unbatched 2^4 lattice also reads as a batch of 2d
    fields) is read with the largest Nd, i.e. the fewest batch axes; pass ``layout`` to be
    explicit (always needed for batched 2d/3d fields whose batch shape ends in Nd + 1).
    """
    if U.ndim < 5 or U.shape[-1] != U.shape[-2]:
        raise LayoutError(f"gauge field must have shape (*batch, Nd, L_0, ..., L_(Nd-1), N, N); got {tuple(U.shape)}")
    if layout is not None:
        Nd = layout.Nd
        if U.ndim < Nd + 3 or U.shape[U.ndim - Nd - 3] != Nd or tuple(U.shape[U.ndim - Nd - 2: -2]) != layout.local_shape:
            raise LayoutError(f"gauge field of shape {tuple(U.shape)} does not fit {layout}: expected "
                              f"(*batch, {Nd}, {', '.join(map(str, layout.local_shape))}, N, N)")
        return layout
    cands = [Nd for Nd in (2, 3, 4) if U.ndim >= Nd + 3 and U.shape[U.ndim - Nd - 3] == Nd]
    if not cands:
        raise LayoutError(f"cannot read a gauge field from shape {tuple(U.shape)}: expected "
                          f"(*batch, Nd, L_0, ..., L_(Nd-1), N, N) with Nd in 2, 3, 4")
    Nd = max(cands)  # several fits (e.g. a 2^4 lattice): fewest batch axes wins
    return _cached_layout(tuple(U.shape[U.ndim - Nd - 2: -2]))


_LAYOUTS: dict = {}


def _cached_layout(shape):
    lay = _LAYOUTS.get(shape)
    if lay is None:
        lay = _LAYOUTS[shape] = Layout(shape)
    return lay


def layout_for(F, Nd: int, inner: int, layout: Layout | None = None) -> Layout:
    """Layout of a site field with ``inner`` trailing axes (spinors, densities)."""
    if layout is not None:
        layout.check_sites(F, inner)
        return layout
    if F.ndim < Nd + inner:
        raise LayoutError(f"field of shape {tuple(F.shape)} has fewer than {Nd} site axes")
    return _cached_layout(tuple(F.shape[F.ndim - inner - Nd: F.ndim - inner]))


def scatter(layout: Layout, F_global, inner: int = 2):
    """This rank's block of a global field (the field is known on every rank)."""
    return layout.local_part(F_global, inner)


def gather(layout: Layout, F_local, inner: int = 2, root: int | None = None):
    """The global field assembled from every rank's block (on all ranks by default)."""
    return layout.gather_field(F_local, inner, root=root)
