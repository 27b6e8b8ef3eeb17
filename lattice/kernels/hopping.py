"""The Wilson hopping term H (full lattice and even-odd blocks) and its adjoint H^dag = gamma_5 H gamma_5
(see :mod:`lattice.kernels`; physics conventions in docs/design.md §6 and :mod:`fermions.wilson`).

    (H psi)(x) = sum_mu [ (1 - gamma_mu) U_mu(x) psi(x + mu^) + (1 + gamma_mu) U_mu(x - mu^)^dag psi(x - mu^) ]

Operands are *spin/colour-major* ("SoA") fields with the sites last: spinors
``(*batch, 4, N, L0, L1, L2, L3)``, link fields ``(*batch, N, N, L0, .., L3)`` (one per
direction, boundary phases already multiplied in: the kernels never see a boundary
condition). Batch axes of spinors and links broadcast. Results are the two spin halves
``(up, dn)`` of the output, rows 0:2 and 2:4 (the callers combine them with site-diagonal
terms without a concatenation).

The spin structure comes in as the caller's projection tables ``proj`` (``proj[mu] =
(B_mu, B_mu^dag)``, monomial 2x2 blocks with attributes ``perm``, ``phase``, ``swap``,
``uniform``: :data:`fermions.gamma.PROJ`): each hop projects psi onto the half spinor
h = psi_up + s B_mu psi_dn of (1 + s gamma_mu) psi, multiplies it by the link and reconstructs
the lower rows as s B_mu^dag h. ``dagger=True`` gives gamma_5 H gamma_5 = H^dag, i.e. the
same hops with the projector signs exchanged.

Implementations
---------------
* reference (:func:`wilson_hop_reference`): array-API expressions on whole fields; neighbours
  through the caller's ``fetch`` (``Layout.shift`` on the full lattice,
  ``fermions.evenodd.EvenOdd.fetch`` on packed half lattices), so it works under MPI;
* ``"numba"`` (:mod:`lattice.kernels._numba_hopping`): one compiled pass over chunks of
  planes, neighbour indices by arithmetic (periodic wrap; for the packed half lattice the
  row-parity rule of :mod:`fermions.evenodd`), half spinors in split real/imaginary buffers;
* ``"cupy"`` (:mod:`lattice.kernels._cupy_hopping`): one CUDA thread per site.

The compiled kernels implement the tmLQCD chiral basis (:data:`FAST_BASIS`, the tables of
:data:`fermions.gamma.PROJ`) for SU(3) in complex64/complex128; other projection tables,
colours or dtypes get the reference. On a layout with axes split over ranks they run on the
local block with ghost layers (see "ghost layers" below): the same halo bytes as the
reference and, site by site, the same arithmetic as on one process.
"""
from __future__ import annotations

from ..backend import namespace
from .dispatch import implementation

__all__ = ["wilson_hop", "wilson_hop_eo", "wilson_hop_reference", "spin_project", "spin_lower", "FAST_BASIS"]

#: ((B_mu.perm, B_mu.phase), (B_mu^dag.perm, B_mu^dag.phase)) for mu = 0..3: the spin
#: projection the compiled kernels implement (the chiral basis of tmLQCD with time last,
#: :mod:`fermions.gamma`). Projection tables that differ from these use the reference.
FAST_BASIS = (
    (((1, 0), (-1j, -1j)), ((1, 0), (1j, 1j))),
    (((1, 0), (-1, 1)), ((1, 0), (1, -1))),
    (((0, 1), (-1j, 1j)), ((0, 1), (1j, -1j))),
    (((0, 1), (-1, -1)), ((0, 1), (-1, -1))),
)

_REV = (Ellipsis, slice(None, None, -1)) + (slice(None),) * 5     # reverse the 2 spin rows (axis -6)
_PHASES: dict = {}
_BASIS_OK: dict = {}


# ---------------------------------------------------------------------------- spin algebra
def _phase_array(xp, dtype, phases):
    """Cached (2, 1, 1, 1, 1, 1) array of per-row phases."""
    key = (id(xp), dtype, phases)
    a = _PHASES.get(key)
    if a is None:
        a = _PHASES[key] = xp.reshape(xp.asarray(list(phases), dtype=dtype), (2, 1, 1, 1, 1, 1))
    return a


def _apply_block(xp, blk, v, coef: float):
    """coef * (B v) for a monomial spin block B acting on the 2-row spin axis of v."""
    w = v[_REV] if blk.swap else v
    if blk.uniform is not None:
        c = coef * blk.uniform
        return w if c == 1.0 else -w if c == -1.0 else c * w
    return _phase_array(xp, v.dtype, tuple(coef * p for p in blk.phase)) * w


def spin_project(up, dn, block, s: int):
    """Half spinor h = up + s B dn of (1 + s gamma_mu) psi for the monomial block B = B_mu
    (``proj[mu][0]``); up, dn the spin rows 0:2 and 2:4 of an SoA spinor."""
    xp = namespace(up, dn)
    w = dn[_REV] if block.swap else dn
    if block.uniform is not None:
        return up + w if s * block.uniform > 0 else up - w
    return up + _phase_array(xp, up.dtype, tuple(s * p for p in block.phase)) * w


def spin_lower(h, block_dag, s: int):
    """Lower rows s B^dag h of (1 + s gamma_mu) psi (``block_dag = proj[mu][1]``)."""
    return _apply_block(namespace(h), block_dag, h, float(s))


def _cmul(cols, h):
    """Colour multiply (U h)_a = sum_b U_ab h_b; cols[b] = U[..., None, :, b, sites]."""
    out = cols[0] * h[..., 0:1, :, :, :, :]
    for b in range(1, len(cols)):
        out += cols[b] * h[..., b:b + 1, :, :, :, :]
    return out


def _columns(Usoa):
    """Column views U[..., None, :, b, sites] of an SoA link field (*batch, N, N, sites)."""
    xp = namespace(Usoa)
    N = Usoa.shape[-5]
    return [xp.expand_dims(Usoa[..., b, :, :, :, :], axis=-6) for b in range(N)]


# ---------------------------------------------------------------------------- reference
def wilson_hop_reference(psi, U_fwd, Udag_bwd, fetch, proj, *, dagger: bool = False):
    """(up, dn) of H psi (``dagger``: of H^dag psi = gamma_5 H gamma_5 psi), array API only.

    ``U_fwd[mu]``: U_mu at the target sites; ``Udag_bwd[mu]``: U_mu^dag at the source sites
    (multiplied there, then the *half* spinor is moved: half the halo);
    ``fetch(F, mu, sign)[x] = F(x + sign mu^)`` on the sites of psi -> the target sites.
    """
    xp = namespace(psi)
    sf = 1 if dagger else -1            # forward projector 1 + sf gamma_mu, backward 1 - sf gamma_mu
    up_in = psi[..., 0:2, :, :, :, :, :]
    dn_in = psi[..., 2:4, :, :, :, :, :]
    up = dn = None
    for mu in range(4):
        B, Bd = proj[mu]
        # forward hop: (1 - gamma_mu) U_mu(x) psi(x + mu)
        hf = _cmul(_columns(U_fwd[mu]), fetch(spin_project(up_in, dn_in, B, sf), mu, +1))
        # backward hop: (1 + gamma_mu) U_mu(x - mu)^dag psi(x - mu)
        hb = fetch(_cmul(_columns(Udag_bwd[mu]), spin_project(up_in, dn_in, B, -sf)), mu, -1)
        if up is None:           # fresh arrays (the spin_lower results may be views of hf, hb)
            up = hf + hb
            dn = spin_lower(hf, Bd, sf) + spin_lower(hb, Bd, -sf)
        else:
            up += hf
            up += hb
            dn += spin_lower(hf, Bd, sf)
            dn += spin_lower(hb, Bd, -sf)
    return up, dn


# ---------------------------------------------------------------------------- dispatch
def face_operands(psi, W, result_type):
    """Shapes of a face-product call the compiled paths handle: ``(dtype, sites, full, bu)``
    (common complex dtype, slab extents, broadcast batch shape, batch shape of W), or None
    (N != 3, other dtypes). psi (*bp, 4, 3, *slab), W (*bu, 3, 3, *slab)."""
    if psi.ndim < 6 or W.ndim < 6 or psi.shape[-5] != 3 or tuple(W.shape[-6:-4]) != (3, 3):
        return None
    dtype = result_type(psi.dtype, W.dtype)
    if dtype.kind != "c" or dtype.itemsize not in (8, 16):
        return None
    sites = tuple(int(x) for x in psi.shape[-4:])
    bp, bu = tuple(psi.shape[:-6]), tuple(W.shape[:-6])
    full = _broadcast_shapes(bp, bu)
    return dtype, sites, full, bu


def _broadcast_shapes(a, b):
    """Broadcast of two shape tuples (array-API rules), without a backend library."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            raise ValueError(f"shapes {a} and {b} do not broadcast")
        out.append(max(x, y) if 1 in (x, y) else x)
    return tuple(out)


def prepared_links(tag, prepare, links, dtype, cache, key):
    """``prepare(links, dtype)`` (a compiled path's packed link layout), kept in ``cache`` (the
    dict that lives with the links) under (tag, key, dtype) so repeated calls reuse it."""
    if cache is None:
        return prepare(links, dtype)
    k = (tag, key, getattr(dtype, "str", str(dtype)))
    W = cache.get(k)
    if W is None:
        W = cache[k] = prepare(links, dtype)
    return W


def fast_operands(psi, Wt, Ws, result_type):
    """Shapes of a hopping call the compiled paths handle: ``(sites, dtype, bp, bu, full)``
    (site extents, common complex dtype, batch shapes of psi and of the links, broadcast
    batch shape), or None (SU(N != 3), other dtypes, links of differing batch shapes, batch
    shapes that do not broadcast: the caller uses the reference). ``Wt``, ``Ws``: the four
    links at the target and at the source sites; ``result_type``: the backend's."""
    if psi.ndim < 6 or len(Wt) != 4 or len(Ws) != 4:
        return None
    N = psi.shape[-5]
    sites = tuple(int(s) for s in psi.shape[-4:])
    links = list(Wt) + list(Ws)
    if N != 3 or psi.shape[-6] != 4 or any(w.ndim < 6 or tuple(w.shape[-6:]) != (N, N) + sites for w in links):
        return None
    dtype = result_type(psi.dtype, *(w.dtype for w in links))
    if str(dtype) not in ("complex64", "complex128"):
        return None
    bp = tuple(psi.shape[:-6])
    bu = tuple(links[0].shape[:-6])
    if any(tuple(w.shape[:-6]) != bu for w in links):
        return None
    try:
        full = _broadcast_shape(bp, bu)
    except ValueError:
        return None
    return sites, dtype, bp, bu, full


def _fast_basis(proj) -> bool:
    key = id(proj)
    ok = _BASIS_OK.get(key)
    if ok is None:
        try:
            tab = tuple(tuple((tuple(b.perm), tuple(complex(p) for p in b.phase)) for b in pair) for pair in proj)
            ok = tab == tuple(tuple((perm, tuple(complex(p) for p in ph)) for perm, ph in pair)
                              for pair in FAST_BASIS)
        except (AttributeError, TypeError):
            ok = False
        _BASIS_OK[key] = (ok, proj)        # keep proj alive: its id stays unique
        return ok
    return ok[0]


def _split_axes(layout) -> tuple:
    """The lattice axes split over ranks (their neighbours come through halo exchange)."""
    return tuple(mu for mu, g in enumerate(layout.grid) if int(g) > 1)


def _fast(xp, psi, layout, proj):
    impl = implementation(xp)
    if impl not in ("numba", "cupy") or not _fast_basis(proj):
        return None
    if psi.ndim < 6 or tuple(psi.shape[-4:]) != tuple(layout.local_shape):
        return None
    if impl == "numba":
        from . import _numba_hopping
        return _numba_hopping
    from . import _cupy_hopping  # pragma: no cover - GPU only
    return _cupy_hopping         # pragma: no cover


# ---------------------------------------------------------------------------- ghost layers
# On a layout with axes split over ranks the compiled kernels run on the local block extended by
# one ghost layer on both sides of every split axis, as if that block were a periodic lattice of
# its own; the interior of the result is H psi. The ghost faces carry what the reference sends
# (half spinors, the same halo bytes): above, the projected neighbour spinor
# P^{sf} psi(x + mu^), put in the upper spin rows of a spinor whose lower rows are zero (the
# kernel's projection then returns it unchanged); below, the product U_mu(y)^dag P^{-sf} psi(y)
# computed by the neighbouring rank with the compiled kernel's own arithmetic
# (``face_products``), behind an identity ghost link. Every site thus gets the same
# floating-point operations as on one process: results do not depend on the decomposition
# (docs/design.md §3). Only the faces travel (``Layout.start_swap``: one message per split axis
# and direction, the halo bytes of the reference), and the extended block is assembled while
# they are in flight. The kernels take a ``fill`` callback that completes the exchange: the
# CuPy kernel launches on the core of the block (sites none of whose neighbours is a ghost)
# first, so that the device computes it while ``fill`` waits for the faces, and on the sites
# next to the ghosts after; each site still gets one kernel's arithmetic on the same values,
# so the split changes no bit. The Numba kernel is synchronous and works on whole planes: it
# calls ``fill`` first (patching boundary sites afterwards would change their summation order).

def _broadcast_shape(a, b):
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
        raise ValueError(f"batch shapes {a} and {b} do not broadcast")
    return tuple(max(x, y) if 1 in (x, y) else x for x, y in zip(a, b))


def _ghost_index(layout, split):
    """(ghost widths per axis, slices of the interior in the extended block)."""
    gw = tuple(1 if mu in split else 0 for mu in range(4))
    return gw, tuple(slice(g, g + l) for g, l in zip(gw, layout.local_shape))


def _block_row_parity(layout, split):
    """(x_1 + x_2 + x_3) mod 2 (global coordinates) of the first site of the extended block: the
    packed kernels take r from the block's own coordinates and need this offset."""
    gw, _ = _ghost_index(layout, split)
    return sum(layout.offset[k] - gw[k] for k in (1, 2, 3)) % 2


def _at(sites, mu, k):
    """Site index tuple: ``sites`` (a tuple of slices) with position k along axis mu."""
    idx = list(sites)
    idx[mu] = slice(k, k + 1)
    return tuple(idx)


def _ghost_links(U, layout, split, cache, key):
    """The 4 link fields on the extended block: interior = U, the lower ghost face of every
    split axis mu holds identities in U_mu (behind them the received products), the rest zero
    (never read). Kept in ``cache`` with the links."""
    k = ("ghost links", key)
    if cache is not None and k in cache:
        return cache[k]
    xp = namespace(*U)
    gw, inner = _ghost_index(layout, split)
    full = (slice(None),) * 4
    ext = tuple(l + 2 * g for l, g in zip(layout.local_shape, gw))
    out = []
    for nu, u in enumerate(U):
        dev = getattr(u, "device", None)
        E = xp.zeros(tuple(u.shape[:-4]) + ext, dtype=u.dtype, device=dev)
        E[(...,) + inner] = u
        if nu in split:
            N = u.shape[-5]
            eye = xp.reshape(xp.eye(N, dtype=u.dtype, device=dev), (N, N, 1, 1, 1, 1))
            E[(...,) + _at(full, nu, 0)] = eye
        out.append(E)
    if cache is not None:
        cache[k] = out
    return out


def _ghost_hop(fast, psi, Ut, Us, layout, split, proj, dagger, cache, key, target=None, row_parity=0):
    """The compiled kernel on the block with ghost layers (see above); None if it declines."""
    xp = namespace(psi)
    dev = getattr(psi, "device", None)
    sf = 1 if dagger else -1
    gw, inner = _ghost_index(layout, split)
    full = (slice(None),) * 4
    ext = tuple(l + 2 * g for l, g in zip(layout.local_shape, gw))
    batch = _broadcast_shape(tuple(psi.shape[:-6]), tuple(Us[0].shape[:-6]))
    N = psi.shape[-5]
    # the faces this rank sends, per split axis: down, P^{sf} psi of its first slab (exact: one
    # rounded add per component); up, U_mu^dag P^{-sf} psi of its last slab (face_products)
    faces = []
    for mu in split:
        l = layout.local_shape[mu]
        first = psi[(...,) + _at(full, mu, 0)]
        down = spin_project(first[..., 0:2, :, :, :, :, :], first[..., 2:4, :, :, :, :, :], proj[mu][0], sf)
        up = fast.face_products(psi[(...,) + _at(full, mu, l - 1)], Us[mu][(...,) + _at(full, mu, l - 1)], mu, -sf)
        if up is None:
            return None
        faces.append((up, down))
    # only the faces travel; the extended block is assembled while they are in flight, and a
    # kernel that can (CuPy) computes the core of the block before ``fill`` waits for them
    handles, block = [], {}

    def fill():
        """Wait for every posted exchange (once) and put the faces into the extended block; after
        a failure the remaining exchanges are still waited for, then the first error is raised."""
        error = None
        while handles:
            mu, h = handles.pop(0)
            try:
                from_below, from_above = layout.finish_swap(h)
                if "E" in block:
                    l = layout.local_shape[mu]
                    block["E"][(..., slice(0, 2), slice(None)) + _at(inner, mu, l + 1)] = from_above
                    block["E"][(..., slice(0, 2), slice(None)) + _at(inner, mu, 0)] = from_below
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error

    try:
        for mu, (up, down) in zip(split, faces):
            handles.append((mu, layout.start_swap(mu, up, down)))
        E = xp.zeros(batch + (4, N) + ext, dtype=psi.dtype, device=dev)
        E[(...,) + inner] = psi
        block["E"] = E
        if target is None:
            Wt = Ws = _ghost_links(Ut, layout, split, cache, key)
        else:
            Wt = _ghost_links(Ut, layout, split, cache, target)
            Ws = _ghost_links(Us, layout, split, cache, 1 - target)
        res = fast.wilson_hop(E, Wt, Ws, dagger=dagger, target=target, cache=cache, row_parity=row_parity,
                              ghosts=gw, fill=fill)
    except BaseException:
        try:                     # no message may stay in flight (it would meet the next call's)
            fill()
        except BaseException:
            pass                 # the first error is the one to report
        raise
    fill()                       # a kernel that declined (None) may not have called it
    if res is None:
        return None
    return tuple(r[(...,) + inner] for r in res)


# ---------------------------------------------------------------------------- entry points
def wilson_hop(psi, U, Udag, layout, proj, *, dagger: bool = False, cache: dict | None = None):
    """(up, dn) of H psi (``dagger``: H^dag psi) on the full lattice.

    psi : SoA spinor (*batch, 4, N, *local sites) of ``layout``.
    U, Udag : the 4 SoA link fields U_mu (boundary phases applied) and their daggers.
    proj : spin projection tables (:data:`fermions.gamma.PROJ`).
    cache : optional dict that the caller keeps as long as U is unchanged: the fast paths
        keep their prepared copies of the links there (without it they prepare per call).
    """
    xp = namespace(psi)
    fast = _fast(xp, psi, layout, proj)
    if fast is not None:
        split = _split_axes(layout)
        if not split:
            res = fast.wilson_hop(psi, U, U, dagger=dagger, cache=cache)
        else:
            res = _ghost_hop(fast, psi, U, U, layout, split, proj, dagger, cache, "full")
        if res is not None:
            return res
    return wilson_hop_reference(psi, U, Udag, lambda F, mu, s: layout.shift(F, mu, s, inner=0), proj,
                                dagger=dagger)


def wilson_hop_eo(psi, U, Udag, eo, target: int, proj, *, dagger: bool = False, cache: dict | None = None):
    """(up, dn) of the even-odd block H_{p,1-p} psi (``dagger``: of its adjoint's partner
    gamma_5 H_{p,1-p} gamma_5 = (H_{1-p,p})^dag), target parity p = ``target``.

    psi : packed SoA spinor of parity 1 - p, (*batch, 4, N, L0/2, L1, L2, L3).
    U, Udag : ``U[q][mu]``, ``Udag[q][mu]``: the links (boundary phases applied) and their
        daggers packed at parity q (SoA).
    eo : the even-odd geometry (:class:`fermions.evenodd.EvenOdd`: ``fetch``, ``half``); the
        compiled kernels implement its packing (x_0 = 2h + (p XOR r), r = (x_1+x_2+x_3) mod 2).
    cache : as for :func:`wilson_hop` (one dict for both targets).
    """
    xp = namespace(psi)
    target = int(target)
    half = eo.half
    fast = _fast(xp, psi, half, proj)
    if fast is not None:
        split = _split_axes(half)
        if not split:
            res = fast.wilson_hop(psi, U[target], U[1 - target], dagger=dagger, target=target, cache=cache)
        else:
            res = _ghost_hop(fast, psi, U[target], U[1 - target], half, split, proj, dagger, cache, None,
                             target=target, row_parity=_block_row_parity(half, split))
        if res is not None:
            return res
    return wilson_hop_reference(psi, U[target], Udag[1 - target],
                                lambda F, mu, s: eo.fetch(F, mu, s, target, inner=0), proj, dagger=dagger)
