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
* ``"numba"`` (:mod:`lattice.kernels._numba_hopping`): one compiled pass, neighbour indices by
  arithmetic (periodic wrap; for the packed half lattice the row-parity select of
  :mod:`fermions.evenodd`), half spinors in L1-sized row buffers; used when no lattice axis is
  split over ranks;
* ``"cupy"`` (:mod:`lattice.kernels._cupy_hopping`): one CUDA thread per site.

The compiled kernels implement the tmLQCD chiral basis (:data:`FAST_BASIS`, the tables of
:data:`fermions.gamma.PROJ`); other projection tables, other dtypes than complex64/complex128
or a distributed layout get the reference.
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


def _local(layout) -> bool:
    """No lattice axis split over ranks: every neighbour is on this process."""
    return all(int(g) == 1 for g in layout.grid)


def _fast(xp, psi, layout, proj):
    impl = implementation(xp)
    if impl not in ("numba", "cupy") or not _local(layout) or not _fast_basis(proj):
        return None
    if tuple(psi.shape[-4:]) != tuple(layout.local_shape) or psi.ndim < 6:
        return None
    if impl == "numba":
        from . import _numba_hopping
        return _numba_hopping
    from . import _cupy_hopping  # pragma: no cover - GPU only
    return _cupy_hopping         # pragma: no cover


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
        res = fast.wilson_hop(psi, U, U, dagger=dagger, cache=cache)
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
    fast = _fast(xp, psi, eo.half, proj)
    if fast is not None:
        res = fast.wilson_hop(psi, U[target], U[1 - target], dagger=dagger, target=target, cache=cache)
        if res is not None:
            return res
    return wilson_hop_reference(psi, U[target], Udag[1 - target],
                                lambda F, mu, s: eo.fetch(F, mu, s, target, inner=0), proj, dagger=dagger)
