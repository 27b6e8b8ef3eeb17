"""The output layer of a staple network: the transported staples of one direction, mixed.

For staple fields of all directions, ``S (N, N, Nd, K, *rest)`` (K channels, rest = batch and
the layout's local site axes, colour-first), and one direction mu, the augmented vector of mu
(flows/staples.py, eqs. 5-6 in the form of docs/design.md §7) is

    aug_mu = [S_mu | S^L_mu,nu_1 ... S^L_mu,nu_{Nd-1} | S^R_mu,nu_1 ... S^R_mu,nu_{Nd-1}],

nu_1 < nu_2 < ... the directions other than mu, each block K channels (index l = block K + k),
and the mixing of eq. 7 with real coefficients c ``(K_out, (2 Nd - 1) K)`` gives

    out_p = sum_l c_pl aug_mu,l                                            (M1)

of shape ``(N, N, K_out, *rest)``. The adjoint for a cotangent ``ob`` of out is

    c_bar_pl = Re sum_{colour, rest} conj(ob_p) aug_mu,l,   aug_bar_l = sum_p c_pl ob_p,   (M2)

and aug_bar pulled back through the transported staples (:func:`transported_staples_vjp`).

The reference composes :func:`transported_staples` (writing aug_mu: 2 Nd - 1 staple fields per
input channel) with :func:`lattice.kernels.real_mix`. On a split layout the compiled path runs
on the block with ghost planes (:class:`lattice.kernels.staple_pairs.GhostBlock`). On one process
with NumPy the compiled path never writes aug: per block of sites it forms D (S^L before its
shift) and R = S^R in a cache-resident scratch and adds c D at x + nu^ and c R at x straight
into out; the adjoint recomputes them for c_bar and reads ob for their cotangents. For the
last layer of a staple network (K channels in, one out) that removes its augmented vector (with
two mixing layers the largest array of the network) and the passes that write and read it.
"""
from __future__ import annotations

from ..backend import namespace
from .colour import real_inner, real_mix
from .staple_pairs import GhostBlock, _compiled, transported_staples, transported_staples_vjp

__all__ = ["transported_mix", "transported_mix_vjp"]


def _check(S, layout, mu, c):
    nd = layout.Nd
    if S.ndim < 4 + nd or S.shape[2] != nd or tuple(S.shape[S.ndim - nd:]) != tuple(layout.local_shape):
        raise ValueError(f"kernels.transported_mix: staple fields of shape {tuple(S.shape)}: expected (N, N, Nd = {nd}, "
                         f"K, *batch, *{tuple(layout.local_shape)}) (colour-first, local sites last)")
    if not 0 <= int(mu) < nd:
        raise ValueError(f"kernels.transported_mix: direction mu = {mu} out of range for Nd = {nd}")
    K = int(S.shape[3])
    if c.ndim != 2 or int(c.shape[1]) != (2 * nd - 1) * K or int(c.shape[0]) < 1:
        raise ValueError(f"kernels.transported_mix: coefficients of shape {tuple(c.shape)}: expected (K_out, "
                         f"(2 Nd - 1) K) = (K_out >= 1, {(2 * nd - 1) * K})")


def _augmented(S, layout, mu):
    """aug_mu ``(N, N, (2 Nd - 1) K, *rest)`` by :func:`transported_staples` (the reference)."""
    xp = namespace(S)
    nd = layout.Nd
    nus = [nu for nu in range(nd) if nu != int(mu)]
    aug = xp.empty((S.shape[0], S.shape[1], 2 * nd - 1) + tuple(S.shape[3:]), dtype=S.dtype)
    aug[:, :, 0, ...] = S[:, :, int(mu), ...]
    transported_staples(S, layout, [int(mu)] * len(nus), nus, aug=aug,
                        i_L=list(range(1, nd)), i_R=list(range(nd, 2 * nd - 1)))
    return xp.reshape(aug, (S.shape[0], S.shape[1], (2 * nd - 1) * int(S.shape[3])) + tuple(S.shape[4:]))


def _flat(X, n_axis):
    """(N, N, n, M) view of (N, N, n, *rest)."""
    xp = namespace(X)
    return xp.reshape(X, (X.shape[0], X.shape[1], n_axis, -1))


def transported_mix(S, layout, mu, c, *, keep: bool = False):
    """``out = c . aug_mu`` (M1): the transported staples of direction ``mu`` mixed by real
    coefficients ``c (K_out, (2 Nd - 1) K)``; S ``(N, N, Nd, K, *batch, *sites)``.

    Returns ``(out, aug)`` with out ``(N, N, K_out, *batch, *sites)`` in S's dtype and aug the
    augmented vector ``(N, N, (2 Nd - 1) K, *batch, *sites)`` where the path formed it and
    ``keep`` asks for it (pass it back to :func:`transported_mix_vjp` to skip its recomputation),
    else None. On one process with NumPy (N = 3, complex, C-contiguous S) aug is never formed.
    """
    _check(S, layout, mu, c)
    xp = namespace(S)
    nd, K_out = layout.Nd, int(c.shape[0])
    rest = tuple(S.shape[4:])
    if _compiled(layout, S):                  # the local block, or on a split layout its ghost block
        from . import _numba_staples
        g = GhostBlock(layout)
        out = g.zeros(S, (S.shape[0], S.shape[1], K_out) + rest[:len(rest) - nd])
        if _numba_staples.transported_mix_local(g.extend(S), g.shape, mu, c, out):
            return g.crop(out), None
    aug = _augmented(S, layout, mu)
    out = xp.reshape(real_mix(c, _flat(aug, aug.shape[2])), (S.shape[0], S.shape[1], K_out) + rest)
    return out, (aug if keep else None)


def transported_mix_vjp(S, layout, mu, c, out_bar, *, S_bar, aug=None, need_c: bool = True):
    """Adjoint of :func:`transported_mix` (M2): the cotangent ``out_bar`` (shape of out)
    pulled back and *added* to ``S_bar`` (shape of S); returns c_bar (float64, shape of c) when
    ``need_c``, else None. ``aug``: the augmented vector :func:`transported_mix` returned with
    ``keep`` for the same S and mu (recomputed where needed and not given; checked for shape
    and dtype)."""
    _check(S, layout, mu, c)
    xp = namespace(S)
    nd, K_out = layout.Nd, int(c.shape[0])
    want = (S.shape[0], S.shape[1], K_out) + tuple(S.shape[4:])
    if tuple(out_bar.shape) != want:
        raise ValueError(f"kernels.transported_mix_vjp: cotangent of shape {tuple(out_bar.shape)}, expected {want}")
    if tuple(S_bar.shape) != tuple(S.shape):
        raise ValueError(f"kernels.transported_mix_vjp: S_bar of shape {tuple(S_bar.shape)}, expected {tuple(S.shape)}")
    want_aug = (S.shape[0], S.shape[1], (2 * nd - 1) * int(S.shape[3])) + tuple(S.shape[4:])
    if aug is not None and (tuple(aug.shape) != want_aug or aug.dtype != S.dtype):
        raise ValueError(f"kernels.transported_mix_vjp: aug of shape {tuple(aug.shape)} and dtype {aug.dtype}, "
                         f"expected {want_aug} and {S.dtype}: pass what transported_mix(..., keep=True) "
                         f"returned for this S and mu")
    ob = out_bar if out_bar.dtype == S.dtype else xp.astype(out_bar, S.dtype)
    if _compiled(layout, S, ob, S_bar) and S_bar.dtype == S.dtype:
        from . import _numba_staples
        blk = GhostBlock(layout)
        Sb = blk.accumulator(S_bar)
        g = _numba_staples.transported_mix_local_vjp(blk.extend(S), blk.shape, mu, c,
                                                     blk.pad(ob, tuple(ob.shape[:ob.ndim - nd])), Sb, need_c)
        if g is not None:
            blk.add_back(S_bar, Sb)
            return g if need_c else None
    ob_f = _flat(ob, K_out)
    c_bar = None
    if need_c:
        if aug is None:
            aug = _augmented(S, layout, mu)
        c_bar = xp.sum(real_inner(ob_f, _flat(aug, aug.shape[2])), axis=(0, 1))
    K = int(S.shape[3])
    nus = [nu for nu in range(nd) if nu != int(mu)]
    AB = xp.reshape(real_mix(c, ob_f, transpose=True), (S.shape[0], S.shape[1], 2 * nd - 1, K) + tuple(S.shape[4:]))
    S_bar[:, :, int(mu), ...] += AB[:, :, 0, ...]
    transported_staples_vjp(S, layout, [int(mu)] * len(nus), nus, aug_bar=AB, i_L=list(range(1, nd)),
                            i_R=list(range(nd, 2 * nd - 1)), S_bar=S_bar)
    return c_bar
