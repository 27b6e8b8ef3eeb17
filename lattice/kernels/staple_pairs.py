"""Transported staples of a staple network, one fused product chain per direction pair.

For fields S_a of all directions stacked colour-first along axis 2, ``S (N, N, Nd, *rest)``,
and their shifted copies ``T (N, N, E, *rest)`` (T_e = S_b(x + a^) for the ordered pairs
e = (a, b) a caller needs), a pair q = (mu, nu) with T_mn = S_nu(x + mu^) and
T_nm = S_mu(x + nu^) gives (flows/staples.py, paper eqs. 5-6 in docs/design.md §7 form)

    (P1)  Y_mn = S_mu T_mn,   Y_nm = S_nu T_nm           (two-link products, shared)
    (P2)  D_q  = S_nu^dag Y_mn                           (S^L_mu,nu before its shift by -nu^)
    (P3)  R_q  = Y_nm T_mn^dag                           (S^R_mu,nu)

and the adjoint (cotangents Rb of R_q and Db of D_q; everything accumulates):

    (A1)  Ynm_b = Rb T_mn,        T_mn_b += Rb^dag Y_nm,
          S_nu_b += Ynm_b T_nm^dag,  T_nm_b += S_nu^dag Ynm_b,
    (A2)  S_nu_b += Y_mn Db^dag,  Ymn_b = S_nu Db,
          T_mn_b += S_mu^dag Ymn_b,  S_mu_b += Ymn_b T_mn^dag.

:func:`staple_pairs` / :func:`staple_pairs_vjp` do this for a list of pairs, given T;
:func:`transported_staples` / :func:`transported_staples_vjp` do the whole step of a staple
network layer (T from ``layout.shift``, S^L = D shifted by -nu^, and the adjoint), and on one
process read S at neighbour sites through index tables instead of materialising T; on a split
layout the same tables run on the block with ghost planes (:class:`GhostBlock`). The reference
composes :func:`lattice.kernels.mul_gather` calls (the two-link products and the cotangents
Ynm_b, Ymn_b are materialised for all pairs); the compiled path (NumPy + Numba) runs the whole
chain per block of sites with the intermediates in a cache-resident scratch, so each pair
reads its operands and updates its cotangents once (the composition is memory bound), and a
pair (mu, nu) shares Y_mn, Y_nm with its partner (nu, mu) when both are in the call. On CuPy
arrays one fused CUDA kernel runs the chain per (pair, site) forward and per site over the
pairs in the adjoint, intermediates in registers (:mod:`lattice.kernels._cupy_staples`).
"""
from __future__ import annotations

from ..backend import namespace
from .colour import mul_gather
from .dispatch import implementation

__all__ = ["staple_pairs", "staple_pairs_vjp", "staple_pairs_reference", "staple_pairs_vjp_reference",
           "transported_staples", "transported_staples_vjp"]


def _check_pairs(S, T, i_mu, i_nu, i_mn, i_nm):
    n = len(i_mu)
    if not len(i_nu) == len(i_mn) == len(i_nm) == n:
        raise ValueError(f"kernels.staple_pairs: index lists of lengths {len(i_mu)}, {len(i_nu)}, {len(i_mn)}, "
                         f"{len(i_nm)}: need one entry per pair in each")
    if tuple(S.shape[:2]) != tuple(T.shape[:2]) or tuple(S.shape[3:]) != tuple(T.shape[3:]):
        raise ValueError(f"kernels.staple_pairs: fields S {tuple(S.shape)} and T {tuple(T.shape)} must agree "
                         f"except on the stacking axis 2")


def _fast(*arrays):
    """The compiled module for these arrays (Numba on NumPy, CUDA on CuPy), or None."""
    impl = implementation(namespace(*arrays))
    if impl == "numba":
        from . import _numba_staples
        return _numba_staples
    if impl == "cupy":
        from . import _cupy_staples
        return _cupy_staples
    return None


def staple_pairs_reference(S, T, i_mu, i_nu, i_mn, i_nm, D, R, oR):
    """(P1)-(P3) by :func:`mul_gather` compositions; writes ``D[:, :, q]`` and ``R[:, :, oR[q]]``."""
    q = range(len(i_mu))
    Y = mul_gather(S, T, list(i_mu) + list(i_nu), list(i_mn) + list(i_nm))      # [Y_mn | Y_nm]
    mul_gather(S, Y, i_nu, q, da=True, out=D)
    mul_gather(Y, T, [len(i_mu) + k for k in q], i_mn, db=True, out=R, oc=oR)
    return D, R


def staple_pairs(S, T, i_mu, i_nu, i_mn, i_nm, *, D, R, oR):
    """Transported staples (P1)-(P3) of pairs q = (i_mu[q], i_nu[q]) with T slots i_mn[q] =
    S_nu(x + mu^), i_nm[q] = S_mu(x + nu^): ``D[:, :, q] = S_nu^dag S_mu T_mn`` and
    ``R[:, :, oR[q]] = S_nu T_nm T_mn^dag``.

    S ``(N, N, Nd, *rest)``, T ``(N, N, E, *rest)``, D ``(N, N, len(pairs), *rest)``, R ``(N, N,
    P_R, *rest)``, all one dtype; D and R are written (not accumulated) and returned.
    """
    _check_pairs(S, T, i_mu, i_nu, i_mn, i_nm)
    fast = _fast(S, T)
    if fast is not None and fast.forward(S, T, i_mu, i_nu, i_mn, i_nm, D, R, oR):
        return D, R
    return staple_pairs_reference(S, T, i_mu, i_nu, i_mn, i_nm, D, R, oR)


def staple_pairs_vjp_reference(S, T, i_mu, i_nu, i_mn, i_nm, Rb, iR, Db, S_bar, T_bar):
    """(A1)-(A2) by :func:`mul_gather` compositions, accumulating into S_bar and T_bar."""
    n = len(i_mu)
    q = range(n)
    Y = mul_gather(S, T, list(i_mu) + list(i_nu), list(i_mn) + list(i_nm))      # [Y_mn | Y_nm]
    i_ynm = [n + k for k in q]
    to_S = dict(out=S_bar, accumulate=True)
    to_T = dict(out=T_bar, accumulate=True)
    Ynm_b = mul_gather(Rb, T, iR, i_mn)
    mul_gather(Rb, Y, iR, i_ynm, da=True, oc=i_mn, **to_T)
    mul_gather(Ynm_b, T, q, i_nm, db=True, oc=i_nu, **to_S)
    mul_gather(S, Ynm_b, i_nu, q, da=True, oc=i_nm, **to_T)
    del Ynm_b
    mul_gather(Y, Db, q, q, db=True, oc=i_nu, **to_S)
    Ymn_b = mul_gather(S, Db, i_nu, q)
    del Y
    mul_gather(S, Ymn_b, i_mu, q, da=True, oc=i_mn, **to_T)
    mul_gather(Ymn_b, T, q, i_mn, db=True, oc=i_mu, **to_S)
    return S_bar, T_bar


def staple_pairs_vjp(S, T, i_mu, i_nu, i_mn, i_nm, *, Rb, iR, Db, S_bar, T_bar):
    """Adjoint (A1)-(A2) of :func:`staple_pairs`: cotangents ``Rb[:, :, iR[q]]`` of R_q and
    ``Db[:, :, q]`` of D_q are pulled back and *added* to ``S_bar`` (shape of S) and ``T_bar``
    (shape of T), which are returned. Pairs are processed in order, so repeated slots add up.
    """
    _check_pairs(S, T, i_mu, i_nu, i_mn, i_nm)
    fast = _fast(S, T)
    if fast is not None and fast.vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb, iR, Db, S_bar, T_bar):
        return S_bar, T_bar
    return staple_pairs_vjp_reference(S, T, i_mu, i_nu, i_mn, i_nm, Rb, iR, Db, S_bar, T_bar)


# ---------------------------------------------------------------------- whole chunks of pairs
def _plan(i_mu, i_nu):
    """E = the ordered pairs (a, b) whose shifted fields T_ab = S_b(x + a^) the pairs need,
    and per pair the slots of S_nu(x + mu^) and S_mu(x + nu^) in E."""
    E = []
    for mu, nu in zip(i_mu, i_nu):
        for e in ((int(mu), int(nu)), (int(nu), int(mu))):
            if e not in E:
                E.append(e)
    return E, [E.index((int(m), int(n))) for m, n in zip(i_mu, i_nu)], \
        [E.index((int(n), int(m))) for m, n in zip(i_mu, i_nu)]


def _shifted_stack(F, src, axes, layout):
    """``out[:, :, k] = layout.shift(F[:, :, src[k]], axes[k], +1)`` (fields colour-first with
    the site axes last: ``inner=0``)."""
    xp = namespace(F)
    out = xp.empty(tuple(F.shape[:2]) + (len(src),) + tuple(F.shape[3:]), dtype=F.dtype)
    for k, (s, a) in enumerate(zip(src, axes)):
        layout.shift(F[:, :, s, ...], a, +1, inner=0, out=out[:, :, k, ...])
    return out


def _local(layout, *arrays):
    """Whether every shift is local (no split axis) and the compiled fused path applies."""
    return not any(g > 1 for g in layout.grid) and implementation(namespace(*arrays)) == "numba"


def _ghosted(layout, *arrays):
    """Whether some axis is split and the compiled path runs on the block with ghost planes."""
    return any(g > 1 for g in layout.grid) and _compiled(layout, *arrays)


def _compiled(layout, *arrays):
    """Whether the compiled kernels run, on the local block or (split layout) its ghost block."""
    return implementation(namespace(*arrays)) == "numba" and GhostBlock.fits(arrays[0])


class GhostBlock:
    """The local block extended by one ghost plane on each side of every split axis (corners
    included, :meth:`lattice.Layout.with_ghosts`), for the staple kernels on a split layout; on
    one process there are no ghost planes and every method is the identity (no copy).

    Every transported staple at a site x of the block reads S at x, x + mu^, x + nu^, x - nu^
    and x + mu^ - nu^ only, all inside the extended block, so the one-process kernels run on it
    with periodic tables of its shape: the values at the block's own sites are exact (a wrapped
    read only feeds a ghost site, which is cropped). In the adjoint the cotangents are zero on
    the ghost sites, so wrapped reads contribute nothing, and the cotangents that land on ghost
    planes go back to their owners through :meth:`lattice.Layout.ghost_sum`."""

    def __init__(self, layout):
        self.layout = layout
        self.w = [1 if g > 1 else 0 for g in layout.grid]
        self.shape = tuple(L + 2 * b for L, b in zip(layout.local_shape, self.w))
        self.block = (Ellipsis,) + tuple(slice(b, b + L) for b, L in zip(self.w, layout.local_shape))

    @staticmethod
    def fits(S):
        """Whether the compiled staple kernels take S (SU(3), complex): checked before the
        exchange, so that every rank takes the same path."""
        return S.shape[0] == 3 and S.shape[1] == 3 and S.dtype.kind == "c"

    def extend(self, S):
        """S with its ghost planes (one exchange per split axis and side)."""
        return self.layout.with_ghosts(S, self.w, self.w, inner=0)

    def zeros(self, like, lead):
        """Zeros of shape ``(*lead, *extended sites)`` in ``like``'s namespace and dtype."""
        xp = namespace(like)
        return xp.zeros(tuple(lead) + self.shape, dtype=like.dtype)

    @property
    def ghosts(self) -> bool:
        return any(self.w)

    def crop(self, E):
        """The block's own sites of a field on the extended block."""
        return namespace(E).asarray(E[self.block], copy=True) if self.ghosts else E

    def pad(self, X, lead):
        """A field of the block on the extended block, zero on the ghost sites."""
        if not self.ghosts:
            return X
        E = self.zeros(X, lead)
        E[self.block] = X
        return E

    def accumulator(self, S_bar):
        """Where a kernel adds cotangents of S: S_bar itself, or zeros on the extended block
        (then :meth:`add_back`)."""
        return self.zeros(S_bar, tuple(S_bar.shape[:S_bar.ndim - len(self.w)])) if self.ghosts else S_bar

    def add_back(self, S_bar, E):
        """S_bar += the extended cotangent E with its ghost planes sent to their owners."""
        if self.ghosts:
            S_bar += self.sum_back(E)

    def sum_back(self, E):
        """The cotangent of the block from that of the extended block (ghosts to their owners)."""
        return self.layout.ghost_sum(E, self.w, self.w, inner=0)


class GhostedInput:
    """A staple network layer's input S with its ghost planes, exchanged once for all the
    :func:`transported_staples` / :func:`transported_staples_vjp` calls of the layer (its pair
    chunks), passed to them as ``ghosted=``; made by :func:`ghosted_input`. In the adjoint the
    cotangents of the calls accumulate on the extended block, and :meth:`add_back` sends them
    to S_bar once (one :meth:`lattice.Layout.ghost_sum`) after the last call."""

    def __init__(self, S, layout):
        self.S, self.block = S, GhostBlock(layout)
        self.extended = self.block.extend(S)
        self._bar = None

    def check(self, S):
        if S is not self.S:
            raise ValueError("ghosted= was made for another field: call ghosted_input(S, layout) "
                             "with the S passed to transported_staples(_vjp)")
        return self

    def accumulator(self, S_bar):
        """The extended cotangent the adjoint kernels add to (zeros on the first call)."""
        if self._bar is None:
            self._bar = self.block.accumulator(S_bar)
        return self._bar

    def add_back(self, S_bar):
        """S_bar += the accumulated cotangents, ghost planes to their owners; returns S_bar."""
        if self._bar is not None:
            self.block.add_back(S_bar, self._bar)
            self._bar = None
        return S_bar


def ghosted_input(S, layout):
    """S extended by its ghost planes once (a :class:`GhostedInput`) where the staple kernels
    run on the ghost block (a split layout, NumPy, SU(3)); None elsewhere (one process, CuPy,
    the generic path), where nothing needs to be shared. Collective under MPI: every rank
    decides alike (layout and dtype) and then exchanges."""
    return GhostedInput(S, layout) if _ghosted(layout, S) else None


def _ghost_transported(S, layout, i_mu, i_nu, aug, i_L, i_R, ghosted=None):
    """:func:`transported_staples` on a split layout: the one-process kernel on the block with
    ghost planes, S^L and S^R cropped into their slots. False where the kernel does not fit."""
    from . import _numba_staples
    g = GhostBlock(layout)
    n = len(i_mu)
    Se = g.extend(S) if ghosted is None else ghosted.check(S).extended
    out = g.zeros(S, tuple(S.shape[:2]) + (2 * n,) + tuple(S.shape[3:S.ndim - layout.Nd]))
    if not _numba_staples.transported_local(Se, g.shape, i_mu, i_nu, out, list(range(n)), list(range(n, 2 * n))):
        return False
    for k, slot in enumerate(list(i_L) + list(i_R)):
        aug[:, :, slot, ...] = out[:, :, k, ...][g.block]
    return True


def _ghost_transported_vjp(S, layout, i_mu, i_nu, aug_bar, i_L, i_R, S_bar, ghosted=None):
    """:func:`transported_staples_vjp` on a split layout (see :class:`GhostBlock`); with
    ``ghosted`` the cotangents stay on its extended block until its ``add_back``."""
    from . import _numba_staples
    g = GhostBlock(layout)
    n = len(i_mu)
    Se = g.extend(S) if ghosted is None else ghosted.check(S).extended
    AB = g.zeros(S, tuple(S.shape[:2]) + (2 * n,) + tuple(S.shape[3:S.ndim - layout.Nd]))
    for k, slot in enumerate(list(i_L) + list(i_R)):
        AB[:, :, k, ...][g.block] = aug_bar[:, :, slot, ...]
    Sb = g.accumulator(S_bar) if ghosted is None else ghosted.accumulator(S_bar)
    if not _numba_staples.transported_local_vjp(Se, g.shape, i_mu, i_nu, AB, list(range(n)), list(range(n, 2 * n)), Sb):
        return False
    if ghosted is None:
        g.add_back(S_bar, Sb)
    return True


def transported_staples(S, layout, i_mu, i_nu, *, aug, i_L, i_R, ghosted=None):
    """Both transported staples of pairs q = (i_mu[q], i_nu[q]) (paper eqs. 5-6, design §7):

        aug[:, :, i_L[q]] = S^L_mu,nu(x) = S_nu(x - nu^)^dag S_mu(x - nu^) S_nu(x + mu^ - nu^),
        aug[:, :, i_R[q]] = S^R_mu,nu(x) = S_nu(x) S_mu(x + nu^) S_nu(x + mu^)^dag.

    S ``(N, N, Nd, *rest, *sites)`` colour-first with the layout's local site axes last; aug
    ``(N, N, P, *rest, *sites)`` of S's dtype (written, not accumulated). Generic path: the
    shifted fields T are stacked with ``layout.shift`` (halo exchange under MPI),
    :func:`staple_pairs` gives D = S^L before its shift and S^R, and D is shifted by -nu^. On
    one process with NumPy, the compiled path reads S at neighbour sites through index tables
    and writes S^L at its shifted site: no shifted field is materialised; on a split layout it
    runs on the ghost block (:class:`GhostBlock`), and ``ghosted=ghosted_input(S, layout)``
    shares one ghost exchange of S among the calls of several pair chunks.
    """
    if _local(layout, S, aug):
        from . import _numba_staples
        if _numba_staples.transported_local(S, layout.local_shape, i_mu, i_nu, aug, i_L, i_R):
            return aug
    elif _ghosted(layout, S, aug) and _ghost_transported(S, layout, i_mu, i_nu, aug, i_L, i_R, ghosted):
        return aug
    xp = namespace(S)
    E, i_mn, i_nm = _plan(i_mu, i_nu)
    T = _shifted_stack(S, [b for _, b in E], [a for a, _ in E], layout)
    D = xp.empty(tuple(S.shape[:2]) + (len(i_mu),) + tuple(S.shape[3:]), dtype=S.dtype)
    staple_pairs(S, T, i_mu, i_nu, i_mn, i_nm, D=D, R=aug, oR=i_R)
    del T
    for k, nu in enumerate(i_nu):                                  # S^L = shift_-nu(D)
        layout.shift(D[:, :, k, ...], int(nu), -1, inner=0, out=aug[:, :, i_L[k], ...])
    return aug


def transported_staples_vjp(S, layout, i_mu, i_nu, *, aug_bar, i_L, i_R, S_bar, ghosted=None):
    """Adjoint of :func:`transported_staples`: the cotangents ``aug_bar[:, :, i_L[q]]`` and
    ``aug_bar[:, :, i_R[q]]`` pulled back and *added* to ``S_bar`` (shape of S), returned.
    Generic path: T stacked again, the S^L cotangents shifted by +nu^, :func:`staple_pairs_vjp`,
    and the cotangents of T (summed over the pairs) shifted back once per field; the compiled
    one-process path gathers and scatters through neighbour tables instead. With
    ``ghosted=ghosted_input(S, layout)`` (not None only on a split layout) the cotangents of
    the ghost-block path are held on its extended block and reach S_bar only with
    ``ghosted.add_back(S_bar)``, to be called once after the last chunk."""
    if _local(layout, S, aug_bar, S_bar):
        from . import _numba_staples
        if _numba_staples.transported_local_vjp(S, layout.local_shape, i_mu, i_nu, aug_bar, i_L, i_R, S_bar):
            return S_bar
    elif _ghosted(layout, S, aug_bar, S_bar) and \
            _ghost_transported_vjp(S, layout, i_mu, i_nu, aug_bar, i_L, i_R, S_bar, ghosted):
        return S_bar
    xp = namespace(S)
    E, i_mn, i_nm = _plan(i_mu, i_nu)
    T = _shifted_stack(S, [b for _, b in E], [a for a, _ in E], layout)
    T_bar = xp.zeros(T.shape, dtype=S.dtype)
    Db = _shifted_stack(aug_bar, list(i_L), [int(nu) for nu in i_nu], layout)
    staple_pairs_vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb=aug_bar, iR=i_R, Db=Db, S_bar=S_bar, T_bar=T_bar)
    del T, Db
    for e, (a, b) in enumerate(E):
        S_bar[:, :, b, ...] += layout.shift(T_bar[:, :, e, ...], a, -1, inner=0)
    return S_bar
