"""Spectral maps of SU(N) matrices with one fused, hand-written adjoint (docs/design.md §7).

    h(W) = V diag(e^{i theta'}) V^dag,   W = V diag(e^{i theta}) V^dag,   theta' = g(theta; cond),

with g a canonical-cell angle map (:class:`flows.torus.CellAngleMap`) conditioned per matrix
on ``cond`` (from the context network of the coupling layer). h is conjugation equivariant,
h(X W X^dag) = X h(W) X^dag for X in SU(N), continuous across eigenvalue ties, invertible, and
exactly the identity at ``cond = 0`` (h(W) = W bit for bit, log-det 0). It is evaluated as
h(W) = W + V diag(e^{i theta}(e^{i dtheta} - 1)) V^dag with dtheta = theta' - theta, which is
exact at the identity and accurate for small changes.

Log-Jacobian of W -> h(W) on SU(N) (in su(N) coordinates, i.e. w.r.t. Haar measure):

    log J = sum_{i<j} [log sin^2((theta'_i - theta'_j)/2) - log sin^2((theta_i - theta_j)/2)]
            + log|det d theta'/d theta|   (over N-1 independent angles).

Adjoint (Daleckii-Krein structure, no 1/(theta_i - theta_j))
------------------------------------------------------------
For a group perturbation W -> e^{tX} W let Y = V^dag X V. Then h(W) -> e^{tZ} h(W) with
M = V^dag Z V given by

    M_ij = Gamma_ij Y_ij (i != j),   Gamma_ij = [sin(D'_ij/2)/sin(D_ij/2)] e^{i (dtheta_i - dtheta_j)/2},
    M_ii = i d theta'_i,   d theta = -i diag(Y),

(D_ij = theta_i - theta_j). The ratio of sines is the divided difference of the angle map;
the angle map evaluates it stably and takes its limit at ties, so the adjoint never divides
by an eigenvalue gap. With F' the su(N) gradient of the loss at h(W) and A = V^dag F' V, the
gradient at W is F = V B V^dag with B_ij = A_ij conj(Gamma_ij) (i != j) and
B_ii = (i/2) theta_bar_i, where theta_bar (and cond_bar) come from the angle map's VJP with
cotangents 2 Im A_ii on theta' and logdet_bar on log J. The inverse uses 1/Gamma and the
implicit-function VJP of g^{-1}. Complex cotangents follow docs/design.md §7
(dL/dRe W + i dL/dIm W); the returned W_bar is the tangent representative 2 F W
(:func:`lattice.su_n.cotangent_from_force`).

Module contract (:mod:`flows.module`), no own parameters (``params = {}``):

* ``forward(params, W, cond) -> ((W', logdet), ctx)``
* ``vjp(params, ctx, W'_bar, logdet_bar) -> ((W_bar, cond_bar), {})``
* ``inverse(params, W', cond) -> ((W, logdet_inv), ctx)`` with logdet_inv = -logdet(W)
* ``inverse_vjp(params, ctx, W_bar, logdet_inv_bar) -> ((W'_bar, cond_bar), {})``

Shapes: W (..., N, N) complex64/complex128 (SU(N), not checked); cond (..., n_cond) real,
leading shape broadcastable with W's; logdet (...) float64 always. The angle arithmetic runs
in float64 also for complex64 matrices (it is cheap); the matrix work stays in W's dtype.
"""
from __future__ import annotations

from lattice.backend import namespace
from lattice import su_n, kernels

from .eig import eigen_angles, check_square_complex
from .module import Module
from .torus import CellAngleMap, _bshape

__all__ = ["SpectralMap", "n_params", "haar_log_density"]


def n_params(N: int, K: int = 8, n_basis: int = 3, kind: str = "spline") -> int:
    """Size of ``cond`` per matrix for :class:`SpectralMap` (N, K, n_basis, kind):
    (3K + 1) * sum_{k=1}^{N-1} (1 + (k - 1)(n_basis - 1)) for splines; e.g. 25 for SU(2) and
    100 for SU(3) at K = 8, n_basis = 3."""
    return CellAngleMap(N, K=K, n_basis=n_basis, kind=kind).n_params


def haar_log_density(theta):
    """Haar-measure term sum_{i<j} log sin^2((theta_i - theta_j)/2) of eigen-angles (..., N).

    The Haar measure of SU(N) in eigen-angle coordinates is proportional to
    prod_{i<j} |e^{i theta_i} - e^{i theta_j}|^2 = 4^{N(N-1)/2} prod_{i<j} sin^2((theta_i - theta_j)/2)
    (Weyl integration formula); this returns its logarithm up to the constant (-inf at ties).
    """
    xp = namespace(theta)
    N = theta.shape[-1]
    out = xp.zeros(theta.shape[:-1], dtype=theta.dtype)
    for i in range(N):
        for j in range(i + 1, N):
            out = out + 2.0 * xp.log(xp.abs(xp.sin(0.5 * (theta[..., i] - theta[..., j]))))
    return out


def _sum_to(xp, a, shape):
    """Sum ``a`` over broadcast axes so that it has ``shape``."""
    shape = tuple(shape)
    while a.ndim > len(shape):
        a = xp.sum(a, axis=0)
    axes = tuple(i for i, (p, q) in enumerate(zip(a.shape, shape)) if q == 1 and p != 1)
    if axes:
        a = xp.sum(a, axis=axes, keepdims=True)
    return a


def _phase(xp, t, dtype):
    """e^{i t} as ``dtype``."""
    return xp.astype(xp.cos(t), dtype) + 1j * xp.astype(xp.sin(t), dtype)


def _phase_m1(xp, t, dtype):
    """e^{i t} - 1 = -2 sin^2(t/2) + i sin t, exactly 0 at t = 0."""
    sh = xp.sin(0.5 * t)
    return xp.astype(-2.0 * sh * sh, dtype) + 1j * xp.astype(xp.sin(t), dtype)


class SpectralMap(Module):
    """Conjugation-equivariant spectral map of SU(N) matrices (see the module docstring).

    Parameters
    ----------
    N : matrix size.
    K, n_basis, kind, **interval_kw : the angle map (:class:`flows.torus.CellAngleMap`).

    ``n_cond`` (= :func:`n_params`) is the length of the conditioning vector per matrix.
    """

    def __init__(self, N: int, K: int = 8, n_basis: int = 3, kind: str = "spline", **interval_kw):
        self.N = int(N)
        self.angle_map = CellAngleMap(self.N, K=K, n_basis=n_basis, kind=kind, **interval_kw)
        self.n_cond = self.angle_map.n_params
        self.pairs = self.angle_map.pairs

    def config(self) -> dict:
        return self.angle_map.config()

    def init(self, rng=None):
        return {}

    # -- helpers -----------------------------------------------------------------------
    def _prep(self, W, cond, what):
        check_square_complex(W, what, self.N)
        xp = namespace(W, cond)
        if cond.ndim < 1 or cond.shape[-1] != self.n_cond:
            raise ValueError(f"{what}: cond must have {self.n_cond} entries in its last axis for "
                             f"{self.angle_map.config()}, got shape {tuple(cond.shape)}")
        if not xp.isdtype(cond.dtype, "real floating"):
            raise ValueError(f"{what}: cond must be a real floating array, got dtype {cond.dtype}")
        lead = _bshape(W.shape[:-2], cond.shape[:-1])
        if tuple(W.shape[:-2]) != lead:
            W = xp.broadcast_to(W, lead + tuple(W.shape[-2:]))
        return xp, W, xp.astype(cond, xp.float64)

    def _gamma_conj(self, xp, out, dtype, invert=False):
        """conj(Gamma) (or conj(1/Gamma)) as an (..., N, N) matrix with zero diagonal."""
        N = self.N
        lr = out["log_ratio"]
        dth = out["dtheta"]
        zero = xp.zeros(lr.shape[:-1], dtype=dtype)
        rows = [[zero for _ in range(N)] for _ in range(N)]
        for p, (i, j) in enumerate(self.pairs):
            ph = 0.5 * (dth[..., i] - dth[..., j])
            mag = xp.exp(-lr[..., p]) if invert else xp.exp(lr[..., p])
            sgn = 1.0 if invert else -1.0
            gij = xp.astype(mag, dtype) * _phase(xp, sgn * ph, dtype)     # conj(Gamma_ij) or conj(1/Gamma_ij)
            rows[i][j] = gij
            rows[j][i] = xp.conj(gij)
        return xp.stack([xp.stack(r, axis=-1) for r in rows], axis=-2)

    def _backprop_matrix(self, xp, V, A, Gc, tb, Win):
        """W_bar = 2 F W with F = V B V^dag, B = A o Gc (off-diagonal) + diag(i tb / 2)."""
        d = 0.5j * xp.astype(tb, V.dtype)
        B = A * Gc + xp.eye(self.N, dtype=V.dtype) * d[..., None, :]
        F = kernels.matmul(kernels.matmul(V, B), V, db=True)
        return su_n.cotangent_from_force(Win, F)

    @staticmethod
    def _eigbasis_force(xp, W, Wbar, V):
        """A = V^dag F V with F the su(N) gradient of the complex cotangent Wbar at W, and
        2 Im diag(A) (the cotangent of the eigen-angles)."""
        F = su_n.force_from_cotangent(W, Wbar)
        A = kernels.matmul(kernels.matmul(V, F, da=True), V)
        N = W.shape[-1]
        diag = xp.stack([A[..., k, k] for k in range(N)], axis=-1)
        return A, xp.astype(2.0 * xp.imag(diag), xp.float64)

    # -- forward -----------------------------------------------------------------------
    def forward(self, params, W, cond):
        """(h(W), log J) and the context for :meth:`vjp`."""
        xp, W, cond64 = self._prep(W, cond, "SpectralMap.forward")
        theta, V = eigen_angles(W)
        out, actx = self.angle_map.forward(xp.astype(theta, xp.float64), cond64)
        lam_e = _phase(xp, theta, W.dtype) * _phase_m1(xp, out["dtheta"], W.dtype)
        Wn = W + kernels.matmul(V * lam_e[..., None, :], V, db=True)
        ctx = dict(W=W, Wn=Wn, V=V, actx=actx, out=out, cond_shape=tuple(cond.shape), cond_dtype=cond.dtype)
        return (Wn, out["logdet"]), ctx

    def vjp(self, params, ctx, Wn_bar=None, logdet_bar=None):
        """((W_bar, cond_bar), {}) from cotangents of h(W) (complex) and of log J (float64)."""
        W, Wn, V, out = ctx["W"], ctx["Wn"], ctx["V"], ctx["out"]
        xp = namespace(W)
        if Wn_bar is None:
            A = xp.zeros_like(W)
            tb = xp.zeros(out["dtheta"].shape, dtype=xp.float64)
        else:
            A, tb = self._eigbasis_force(xp, Wn, Wn_bar, V)
        lb = None if logdet_bar is None else xp.astype(logdet_bar, xp.float64)
        thb, condb = self.angle_map.vjp(ctx["actx"], tb, lb)
        Wb = self._backprop_matrix(xp, V, A, self._gamma_conj(xp, out, W.dtype), thb, W)
        condb = xp.astype(_sum_to(xp, condb, ctx["cond_shape"]), ctx["cond_dtype"])
        return (Wb, condb), {}

    # -- inverse -----------------------------------------------------------------------
    def inverse(self, params, Wn, cond):
        """(h^{-1}(W'), -log J(h^{-1}(W'))) and the context for :meth:`inverse_vjp`."""
        xp, Wn, cond64 = self._prep(Wn, cond, "SpectralMap.inverse")
        theta_n, V = eigen_angles(Wn)
        out, actx = self.angle_map.inverse(xp.astype(theta_n, xp.float64), cond64)
        lam_e = _phase(xp, theta_n, Wn.dtype) * _phase_m1(xp, -out["dtheta"], Wn.dtype)
        W = Wn + kernels.matmul(V * lam_e[..., None, :], V, db=True)
        ctx = dict(W=W, Wn=Wn, V=V, actx=actx, out=out, cond_shape=tuple(cond.shape), cond_dtype=cond.dtype)
        return (W, -out["logdet"]), ctx

    def inverse_vjp(self, params, ctx, W_bar=None, logdet_bar=None):
        """((W'_bar, cond_bar), {}) from cotangents of h^{-1}(W') and of its log-det."""
        W, Wn, V, out = ctx["W"], ctx["Wn"], ctx["V"], ctx["out"]
        xp = namespace(W)
        am = self.angle_map
        if W_bar is None:
            A = xp.zeros_like(W)
            tb = xp.zeros(out["dtheta"].shape, dtype=xp.float64)
        else:
            A, tb = self._eigbasis_force(xp, W, W_bar, V)
        condb = None
        if logdet_bar is not None:
            # logdet_inv = -L(theta, cond) with theta = g^{-1}(theta', cond)
            lb = xp.astype(logdet_bar, xp.float64)
            Lth, Lc = am.vjp(ctx["actx"], None, lb)
            tb = tb - Lth
            condb = -Lc
        tnb, condb2 = am.inverse_vjp(ctx["actx"], tb)
        condb = condb2 if condb is None else condb + condb2
        Wnb = self._backprop_matrix(xp, V, A, self._gamma_conj(xp, out, W.dtype, invert=True), tnb, Wn)
        condb = xp.astype(_sum_to(xp, condb, ctx["cond_shape"]), ctx["cond_dtype"])
        return (Wnb, condb), {}
