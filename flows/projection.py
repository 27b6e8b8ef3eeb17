"""Differentiable projections onto U(N) and SU(N) (paper eqs. 9-10) with hand-written adjoints.

Forward (the project's one projection, :mod:`lattice.su_n`):

    P_U(N)(M)  = Q = W V^dag   for the SVD M = W diag(s) V^dag
               = M (M^dag M)^(-1/2)        (polar decomposition M = Q H, H = V diag(s) V^dag);
    P_SU(N)(M) = Q / det(Q)^(1/N)          (principal branch of the N-th root).

(The paper's printed eq. 9, (M^dag M)^(-1/2) M, is not unitary; see docs/design.md §7.)
P_SU(N) is conjugation equivariant, P(g M g^dag) = g P(M) g^dag (eq. 2), and
P_U(N)(g M) = g P_U(N)(M) for unitary g. For U in SU(N), P_SU(N)(U S^dag) = U P_SU(N)(S)^dag
away from the branch cut of the N-th root (det P_U(N)(S) = -1).

Adjoint (never through a generic SVD). Differentiating M = Q H with Q^dag dQ = X
anti-Hermitian and dH Hermitian gives the Sylvester equation

    H X + X H = Q^dag dM - dM^dag Q,

solved in the eigenbasis of H: X~_ij = A~_ij / (s_i + s_j) with A~ = V^dag A V. Only the
denominators s_i + s_j appear, so repeated singular values are harmless (the formula does not
depend on the basis chosen inside a degenerate subspace). The N-th-root phase removal adds
dP = P T[X] (T the traceless part). For a real loss with cotangent G on the output
(convention dL = Re tr(G^dag dP), docs/design.md §7) the input cotangent is

    M_bar = W [(B~ - B~^dag) o K] V^dag,   K_ij = 1/(s_i + s_j),
    B~ = W^dag G V                        (U(N)),
    B~ = T[V^dag P^dag G V]               (SU(N)).

Rank deficiency: the polar factor is not unique (and the adjoint diverges) when the smallest
singular value vanishes. The forward raises :class:`ProjectionError` when
s_min <= rank_rtol * s_max for any matrix (default rank_rtol = 1000 eps of the dtype:
2.2e-13 in double, 1.2e-4 in single precision), naming the worst matrix.

Shapes: M is ``(*batch, N, N)`` with any leading axes (e.g. batch and lattice sites).
"""
from __future__ import annotations

from lattice.backend import namespace, finfo_eps
from lattice import su_n

from .module import Module

__all__ = ["ProjectionError", "project_u", "project_su", "project_u_fwd", "project_u_vjp",
           "project_su_fwd", "project_su_vjp", "ProjectU", "ProjectSU", "check_rank"]


class ProjectionError(ValueError):
    """The matrix to be projected is (numerically) rank deficient."""


def _default_rtol(xp, dtype) -> float:
    return 1000.0 * finfo_eps(xp, dtype)


def check_rank(s, dtype, rank_rtol: float | None = None, what: str = "matrix"):
    """Raise :class:`ProjectionError` unless s_min > rank_rtol * s_max for every matrix.

    ``s`` are the singular values, shape ``(*batch, N)`` (descending, as from the SVD).
    """
    xp = namespace(s)
    tol = _default_rtol(xp, dtype) if rank_rtol is None else float(rank_rtol)
    smax, smin = s[..., 0], s[..., -1]
    ok = smin > tol * smax          # False for NaN and for M = 0
    if bool(xp.all(ok)):
        return
    # locate the worst matrix (host-side arithmetic only on one index)
    ratio = xp.where(smax > 0, smin / xp.where(smax > 0, smax, xp.ones_like(smax)), xp.zeros_like(smax))
    ratio = xp.where(xp.isnan(ratio), -xp.ones_like(ratio), ratio)
    flat = xp.reshape(ratio, (-1,))
    k0 = int(xp.argmin(flat))
    k = k0
    shape = tuple(int(n) for n in ratio.shape)
    idx = []
    for n in reversed(shape):
        idx.append(k % n)
        k //= n
    idx = tuple(reversed(idx))
    r = float(flat[k0])
    raise ProjectionError(
        f"cannot project a rank-deficient {what} onto U(N)/SU(N): at index {idx} (of batch shape "
        f"{shape}) the smallest/largest singular value is "
        f"{'NaN' if r < 0 else f'{r:.3e}'} <= rank_rtol = {tol:.1e}. The polar factor is not "
        f"unique there and its derivative diverges. For an active loop U S^dag this means the "
        f"active staple S (nearly) vanishes or is degenerate at that link: check the mask and "
        f"the staple network (eq. 4 zeroes the active links).")


def _first_index(bad):
    """Multi-index (host tuple) of the first True entry of a boolean array."""
    xp = namespace(bad)
    flat = xp.reshape(xp.astype(bad, xp.int8), (-1,))
    k = int(xp.argmax(flat))
    idx = []
    for n in reversed(tuple(int(n) for n in bad.shape)):
        idx.append(k % n)
        k //= n
    return tuple(reversed(idx))


def _svd_checked(M, rank_rtol):
    """SVD factors of M after checking finiteness and rank (raises :class:`ProjectionError`)."""
    xp = namespace(M)
    fin = xp.all(xp.isfinite(M), axis=(-2, -1))
    if not bool(xp.all(fin)):
        raise ProjectionError(f"cannot project a matrix with NaN or inf entries onto U(N)/SU(N): first at "
                              f"index {_first_index(xp.logical_not(fin))} of batch shape {tuple(fin.shape)}")
    W, s, Vh = su_n.polar_svd(M)
    check_rank(s, M.dtype, rank_rtol)
    return W, s, Vh


def _sylvester_kernel(s, dtype):
    """K_ij = 1 / (s_i + s_j), shape (*batch, N, N), cast to ``dtype``."""
    xp = namespace(s)
    K = 1.0 / (s[..., :, None] + s[..., None, :])
    return xp.astype(K, dtype)


def _polar_adjoint(W, s, Vh, Bt):
    """M_bar = W [(Bt - Bt^dag) o K] Vh for the rotated X-cotangent ``Bt``."""
    Y = (Bt - su_n.dagger(Bt)) * _sylvester_kernel(s, Bt.dtype)
    return W @ Y @ Vh


# --------------------------------------------------------------------------- U(N)
def project_u_fwd(M, *, rank_rtol: float | None = None):
    """P_U(N)(M) and the context for :func:`project_u_vjp`. Raises at rank deficiency."""
    W, s, Vh = _svd_checked(M, rank_rtol)
    Q = W @ Vh
    return Q, (W, s, Vh)


def project_u_vjp(ctx, Q_bar):
    """Input cotangent M_bar of P_U(N) for the output cotangent ``Q_bar``."""
    W, s, Vh = ctx
    if Q_bar is None:
        return None
    Bt = su_n.dagger(W) @ Q_bar @ su_n.dagger(Vh)
    return _polar_adjoint(W, s, Vh, Bt)


def project_u(M, *, rank_rtol: float | None = None):
    """Polar projection P_U(N)(M) = W V^dag (eq. 9, corrected), batched over leading axes.

    Same numbers as :func:`lattice.su_n.project_u`, plus the rank check.
    """
    return project_u_fwd(M, rank_rtol=rank_rtol)[0]


# --------------------------------------------------------------------------- SU(N)
def project_su_fwd(M, *, rank_rtol: float | None = None):
    """P_SU(N)(M) and the context for :func:`project_su_vjp`. Raises at rank deficiency."""
    W, s, Vh = _svd_checked(M, rank_rtol)
    P = su_n.remove_det_phase(W @ Vh)
    return P, (W, s, Vh, P)


def project_su_vjp(ctx, P_bar):
    """Input cotangent M_bar of P_SU(N) for the output cotangent ``P_bar``."""
    W, s, Vh, P = ctx
    if P_bar is None:
        return None
    V = su_n.dagger(Vh)
    Bt = su_n.traceless(su_n.dagger(P @ V) @ P_bar @ V)
    return _polar_adjoint(W, s, Vh, Bt)


def project_su(M, *, rank_rtol: float | None = None):
    """P_SU(N)(M) = P_U(N)(M) / det(P_U(N)(M))^(1/N), principal branch (eq. 10), batched.

    Same numbers as :func:`lattice.su_n.project_su`, plus the rank check.
    """
    return project_su_fwd(M, rank_rtol=rank_rtol)[0]


# --------------------------------------------------------------------------- modules
class ProjectU(Module):
    """Module wrapper of P_U(N): ``forward({}, M) -> ((Q,), ctx)``, ``vjp({}, ctx, Q_bar)``."""

    def __init__(self, rank_rtol: float | None = None):
        self.rank_rtol = rank_rtol

    def init(self, rng=None):
        return {}

    def forward(self, params, M):
        Q, ctx = project_u_fwd(M, rank_rtol=self.rank_rtol)
        return (Q,), ctx

    def vjp(self, params, ctx, Q_bar):
        return (project_u_vjp(ctx, Q_bar),), {}

    def config(self):
        return {"rank_rtol": self.rank_rtol}


class ProjectSU(Module):
    """Module wrapper of P_SU(N): ``forward({}, M) -> ((P,), ctx)``, ``vjp({}, ctx, P_bar)``."""

    def __init__(self, rank_rtol: float | None = None):
        self.rank_rtol = rank_rtol

    def init(self, rng=None):
        return {}

    def forward(self, params, M):
        P, ctx = project_su_fwd(M, rank_rtol=self.rank_rtol)
        return (P,), ctx

    def vjp(self, params, ctx, P_bar):
        return (project_su_vjp(ctx, P_bar),), {}

    def config(self):
        return {"rank_rtol": self.rank_rtol}
