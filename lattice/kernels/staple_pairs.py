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

:func:`staple_pairs` / :func:`staple_pairs_vjp` do this for a list of pairs. The reference
composes :func:`lattice.kernels.mul_gather` calls (the two-link products and the cotangents
Ynm_b, Ymn_b are materialised for all pairs); the compiled path (NumPy + Numba) runs the whole
chain per block of sites with the intermediates in a cache-resident scratch, so each pair
reads its six operands and updates its four cotangents once: about 2.5x fewer bytes than the
composition, which is memory bound.
"""
from __future__ import annotations

from ..backend import namespace
from .colour import mul_gather
from .dispatch import implementation

__all__ = ["staple_pairs", "staple_pairs_vjp", "staple_pairs_reference", "staple_pairs_vjp_reference"]


def _check_pairs(S, T, i_mu, i_nu, i_mn, i_nm):
    n = len(i_mu)
    if not len(i_nu) == len(i_mn) == len(i_nm) == n:
        raise ValueError(f"kernels.staple_pairs: index lists of lengths {len(i_mu)}, {len(i_nu)}, {len(i_mn)}, "
                         f"{len(i_nm)}: need one entry per pair in each")
    if tuple(S.shape[:2]) != tuple(T.shape[:2]) or tuple(S.shape[3:]) != tuple(T.shape[3:]):
        raise ValueError(f"kernels.staple_pairs: fields S {tuple(S.shape)} and T {tuple(T.shape)} must agree "
                         f"except on the stacking axis 2")


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
    xp = namespace(S, T)
    if implementation(xp) == "numba":
        from . import _numba_staples
        if _numba_staples.forward(S, T, i_mu, i_nu, i_mn, i_nm, D, R, oR):
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
    xp = namespace(S, T)
    if implementation(xp) == "numba":
        from . import _numba_staples
        if _numba_staples.vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb, iR, Db, S_bar, T_bar):
            return S_bar, T_bar
    return staple_pairs_vjp_reference(S, T, i_mu, i_nu, i_mn, i_nm, Rb, iR, Db, S_bar, T_bar)
