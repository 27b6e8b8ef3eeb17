"""Eigen-angles and eigenvectors of SU(N) matrices with the array API standard only.

The standard offers ``linalg.eigh`` (Hermitian) but no general ``eig``. For a unitary W the
*Cayley transform* with a unit phase c = e^{i phi},

    C = i (c - W)(c + W)^{-1} = i (2c (c + W)^{-1} - 1),

is Hermitian, has the eigenvectors of W, and maps each eigenvalue e^{i theta} to the real
number tan((theta - phi)/2), monotonically in theta on (phi - pi, phi + pi). So ``eigh(C)``
gives the eigenvectors V of W, and the angles are read off the Rayleigh quotients
v_k^dag W v_k = e^{i theta_k} (exact to rounding; an eigenvector error delta changes them only
at O(delta^2)). The pole of the transform sits at the eigenvalue -c; c is chosen per matrix
among the N-th roots of unity to maximise |det(c + W)| = prod_i |c + e^{i theta_i}|. Since the
eigen-angles of an SU(N) matrix sum to 0 mod 2 pi while the poles -c_k sum to pi mod 2 pi,
some root keeps every eigenvalue at least pi/N away from its pole; the one chosen by the
determinant criterion has min_i |c + e^{i theta_i}| >= (2 sin(pi/2N))^N / 2^(N-1)
(>= 1/4 for SU(3), >= 1 for SU(2)), so c + W is always well conditioned (condition number
<= 8 for SU(3)), including at eigenvalue -1 and at repeated eigenvalues.

Branch convention (the *alcove* of the maximal torus)
----------------------------------------------------
The returned angles are sorted in descending order, sum to exactly 0 (in floating point:
theta_N is stored as -(theta_1 + ... + theta_{N-1}), so the sum in index order is 0), and
span at most 2 pi:

    theta_1 >= theta_2 >= ... >= theta_N,   theta_1 - theta_N <= 2 pi,   sum_i theta_i = 0.

Every element of the maximal torus has exactly one such representative (up to the boundary,
where eigenvalues tie). Equivalently the cyclic gaps g_k = theta_k - theta_{k+1}
(k < N) and g_N = 2 pi - (theta_1 - theta_N) are >= 0 and sum to 2 pi; a gap is 0 exactly
when two eigenvalues coincide. For SU(2): theta = (t, -t) with t in [0, pi]. For SU(3) the
alcove is the triangle with corners at the three centre elements. The columns of V follow
the order of the angles: W = V diag(e^{i theta}) V^dag.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

from lattice.backend import namespace, real_dtype
from lattice import su_n, kernels

__all__ = ["eigen_angles", "EigenAngles", "eigen_angles_vjp", "cayley_phase_index", "check_square_complex"]

TWO_PI = 2.0 * math.pi


class EigenAngles(NamedTuple):
    """Result of :func:`eigen_angles`: ``theta`` (..., N) real, in the alcove convention, and
    ``V`` (..., N, N) unitary with W = V diag(e^{i theta}) V^dag. A named tuple, so
    ``theta, V = eigen_angles(W)`` unpacks as before; ``eigen_angles(W).theta`` reads one field."""
    theta: Any
    V: Any


def check_square_complex(W, what: str = "W", N: int | None = None):
    """Raise ValueError unless W is a stack of complex N x N matrices."""
    xp = namespace(W)
    if W.ndim < 2 or W.shape[-1] != W.shape[-2]:
        raise ValueError(f"{what}: expected a stack of square matrices (..., N, N), got shape {tuple(W.shape)}")
    if N is not None and W.shape[-1] != N:
        raise ValueError(f"{what}: expected {N} x {N} matrices, got {W.shape[-2]} x {W.shape[-1]}")
    if W.shape[-1] < 2:
        raise ValueError(f"{what}: need N >= 2, got N = {W.shape[-1]}")
    if not xp.isdtype(W.dtype, "complex floating"):
        raise ValueError(f"{what}: expected complex64 or complex128 matrices, got dtype {W.dtype}")


def _eye(xp, N, dtype, like):
    return xp.eye(N, dtype=dtype, device=getattr(like, "device", None))


def cayley_phase_index(W):
    """Index k (int64, shape ``W.shape[:-2]``) of the root of unity c = e^{2 pi i k/N} that
    maximises |det(c + W)|, i.e. keeps the Cayley transform of W best conditioned."""
    xp = namespace(W)
    N = W.shape[-1]
    eye = _eye(xp, N, W.dtype, W)
    dets = []
    for k in range(N):
        c = complex(math.cos(TWO_PI * k / N), math.sin(TWO_PI * k / N))
        dets.append(xp.abs(su_n.det(W + c * eye)))
    return xp.argmax(xp.stack(dets, axis=-1), axis=-1)


def _inv_small(M):
    """Inverse of stacked N x N matrices: closed-form adjugate for N <= 3, else linalg.inv."""
    xp = namespace(M)
    N = M.shape[-1]
    if N == 2:
        a, b, c, d = M[..., 0, 0], M[..., 0, 1], M[..., 1, 0], M[..., 1, 1]
        det = a * d - b * c
        adj = xp.stack([xp.stack([d, -b], axis=-1), xp.stack([-c, a], axis=-1)], axis=-2)
        return adj / det[..., None, None]
    if N == 3:
        m = [[M[..., i, j] for j in range(3)] for i in range(3)]
        # cofactor C_ij; inverse = C^T / det
        cof = [[m[(i + 1) % 3][(j + 1) % 3] * m[(i + 2) % 3][(j + 2) % 3]
                - m[(i + 1) % 3][(j + 2) % 3] * m[(i + 2) % 3][(j + 1) % 3] for j in range(3)] for i in range(3)]
        det = m[0][0] * cof[0][0] + m[0][1] * cof[0][1] + m[0][2] * cof[0][2]
        inv = xp.stack([xp.stack([cof[j][i] for j in range(3)], axis=-1) for i in range(3)], axis=-2)
        return inv / det[..., None, None]
    return xp.linalg.inv(M)


def eigen_angles(W):
    """Eigen-angles theta and unitary eigenvectors V of SU(N) matrices, W = V diag(e^{i theta}) V^dag.

    Parameters
    ----------
    W : complex array (..., N, N), each matrix in SU(N) (not checked; use
        :func:`lattice.su_n.check_su_n` on untrusted input). complex64 or complex128.

    Returns
    -------
    :class:`EigenAngles` ``(theta, V)``, a named tuple (unpacks as a pair):

    theta : real array (..., N) (float32 for complex64 input, float64 otherwise), in the alcove
        convention of the module docstring: descending, theta_1 - theta_N <= 2 pi, sum exactly 0.
    V : complex array (..., N, N), unitary, column k the eigenvector of e^{i theta_k}.

    One batched Hermitian eigen-decomposition of the Cayley transform
    (:func:`lattice.kernels.eigh`: closed form for SU(3) on the compiled path, ``xp.linalg.eigh``
    otherwise).
    Accuracy: |theta - theta_exact| ~ machine epsilon, also at exactly or nearly repeated
    eigenvalues and at eigenvalue -1 (for repeated eigenvalues V spans the eigenspace).
    """
    check_square_complex(W, "eigen_angles")
    xp = namespace(W)
    N = W.shape[-1]
    rdt = real_dtype(xp, W.dtype)
    eye = _eye(xp, N, W.dtype, W)

    k = cayley_phase_index(W)
    phi = xp.astype(k, rdt) * (TWO_PI / N)                       # (...)
    c = xp.astype(xp.cos(phi), W.dtype) + 1j * xp.astype(xp.sin(phi), W.dtype)
    Minv = _inv_small(W + c[..., None, None] * eye)
    C = 1j * (2.0 * c[..., None, None] * Minv - eye)
    C = 0.5 * (C + su_n.dagger(C))                               # exactly Hermitian
    _, V = kernels.eigh(C)

    # Rayleigh quotients r_k = v_k^dag W v_k and their angle relative to phi, in (-pi, pi)
    r = xp.sum(xp.conj(V) * (W @ V), axis=-2)                    # (..., N)
    rr = r * xp.conj(c)[..., None]
    psi = xp.atan2(xp.imag(rr), xp.real(rr))
    theta0 = phi[..., None] + psi                                # spread < 2 pi, sum = 2 pi m

    # alcove representative: sort descending, then rotate cyclically by m = sum/2pi,
    # moving 2 pi from the m largest (m > 0) or to the |m| smallest (m < 0) angles.
    perm = xp.argsort(theta0, axis=-1, descending=True, stable=True)
    m = xp.astype(xp.round(xp.sum(theta0, axis=-1) / TWO_PI), xp.int64)
    j = xp.arange(N, dtype=xp.int64, device=getattr(W, "device", None))
    t = j + m[..., None]
    src = t % N
    wrap = xp.astype((t - src) // N, rdt)                        # floor(t / N) in {-1, 0, 1}
    idx = xp.take_along_axis(perm, src, axis=-1)
    theta = xp.take_along_axis(theta0, idx, axis=-1) - TWO_PI * wrap
    Vidx = xp.broadcast_to(idx[..., None, :], V.shape)
    V = xp.take_along_axis(V, Vidx, axis=-1)

    # remove the rounding residual of the sum and make it exactly zero
    theta = theta - (xp.sum(theta, axis=-1, keepdims=True) / N)
    head = theta[..., :N - 1]
    last = -xp.sum(head, axis=-1, keepdims=True)
    theta = xp.concat([head, last], axis=-1)
    return EigenAngles(theta, V)


def eigen_angles_vjp(W, V, theta_bar):
    """Cotangent of W for a real loss L(theta(W)) (docs/design.md §7 convention).

    With Y = V^dag X V for a group perturbation W -> e^{tX} W, d theta_k = -i Y_kk, hence the
    su(N) gradient F = V diag(i theta_bar / 2) V^dag (traceless part) and W_bar = 2 F W
    (:func:`lattice.su_n.cotangent_from_force`). Valid where the angles are differentiable
    (distinct eigenvalues, or theta_bar equal on tied angles).
    """
    xp = namespace(W)
    tb = theta_bar - xp.mean(theta_bar, axis=-1, keepdims=True)
    d = 0.5j * xp.astype(tb, W.dtype)
    F = (V * d[..., None, :]) @ su_n.dagger(V)
    return su_n.cotangent_from_force(W, F)
