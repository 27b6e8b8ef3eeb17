"""Independent NumPy references for the fermion tests (host side, straightforward and slow).

* :func:`naive_tm_apply`: the twisted-mass operator written directly from docs/design.md §6
  with full 4x4 spin matrices, np.roll and explicit boundary signs (no half spinors, no
  packing, no SoA) -- the reference the fast kernel is compared with.
* Free-field (U = 1) momentum-space formulas for log det M^dag M and the charged-pion
  correlator, with antiperiodic time momenta p_t = (2 pi n + pi) / T.
"""
from __future__ import annotations

import numpy as np


def _chiral_gammas():
    """The chiral basis of tmLQCD built here from the Pauli matrices (not from fermions.gamma):
    gamma_t = [[0, -1], [-1, 0]], gamma_k = [[0, -i sigma_k], [i sigma_k, 0]] (k = x, y, z), in
    lattice order (x, y, z, t), and gamma_5 = gamma_t gamma_x gamma_y gamma_z."""
    s = [np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.array([[1, 0], [0, -1]])]
    z, one = np.zeros((2, 2)), np.eye(2)
    g = [np.block([[z, -1j * sk], [1j * sk, z]]) for sk in s] + [np.block([[z, -one], [-one, z]])]
    return np.array(g, dtype=complex), g[3] @ g[0] @ g[1] @ g[2]


G, G5 = _chiral_gammas()


def naive_tm_apply(U, psi, kappa, mu, bc=(1, 1, 1, -1)):
    """M psi for U (4, L0..L3, N, N) and psi (..., L0..L3, 4, N); no batch on U."""
    U = np.asarray(U)
    psi = np.asarray(psi)
    mt = 2 * kappa * mu
    out = np.einsum("st,...tc->...sc", np.eye(4) + 1j * mt * G5, psi)
    H = np.zeros_like(psi)
    nb = psi.ndim - 6
    for m in range(4):
        Um = U[m].copy()
        idx = [slice(None)] * 4
        idx[m] = -1
        Um[tuple(idx)] *= bc[m]
        fwd = np.roll(psi, -1, axis=nb + m)                                  # psi(x + mu)
        H += np.einsum("st,...tb->...sb", np.eye(4) - G[m], np.einsum("...ab,...tb->...ta", Um, fwd))
        bwd = np.einsum("...ba,...tb->...ta", Um.conj(), psi)                # U^dag psi at x
        H += np.einsum("st,...tb->...sb", np.eye(4) + G[m], np.roll(bwd, 1, axis=nb + m))
    return out - kappa * H


def _momenta(shape):
    Ls, T = shape[:3], shape[3]
    p = [2 * np.pi * np.arange(L) / L for L in Ls]
    pt = (2 * np.pi * np.arange(T) + np.pi) / T
    return p, pt


def free_log_det(shape, kappa, mu, N=3):
    """log det M^dag M at U = 1: 4 N sum_p log(A^2 + 4 kappa^2 sum_mu sin^2 p_mu + mu~^2)."""
    p, pt = _momenta(shape)
    P = np.meshgrid(*p, pt, indexing="ij")
    mt = 2 * kappa * mu
    A = 1 - 2 * kappa * sum(np.cos(q) for q in P)
    D = A ** 2 + 4 * kappa ** 2 * sum(np.sin(q) ** 2 for q in P) + mt ** 2
    return 4 * N * np.sum(np.log(D))


def free_pion_correlator(shape, kappa, mu, N=3):
    """C(t) = sum_x tr[S(x,0) S(x,0)^dag] at U = 1 from S(p) = (A - i K)/D:

    C(t) = (L^3 / V^2) sum_p_vec sum_{p_t, q_t} e^{i (p_t - q_t) t}
           4 N [A_p A_q + 4 kappa^2 sum_mu s_mu(p) s_mu(q) + mu~^2] / (D_p D_q).
    """
    p, pt = _momenta(shape)
    Ls, T = shape[:3], shape[3]
    V = np.prod(shape)
    mt = 2 * kappa * mu
    px = np.meshgrid(*p, indexing="ij")
    s3 = sum(np.sin(q) ** 2 for q in px)
    A = (1 - 2 * kappa * sum(np.cos(q) for q in px))[..., None] - 2 * kappa * np.cos(pt)
    st = np.sin(pt)
    D = A ** 2 + 4 * kappa ** 2 * (s3[..., None] + st ** 2) + mt ** 2
    C = np.empty(T)
    for t in range(T):
        e = np.exp(1j * pt * t)
        a = np.abs(np.sum(A / D * e, axis=-1)) ** 2
        b = np.abs(np.sum(st / D * e, axis=-1)) ** 2
        c = np.abs(np.sum(e / D, axis=-1)) ** 2
        C[t] = 4 * N * np.prod(Ls) / V ** 2 * np.sum(a + 4 * kappa ** 2 * (s3 * c + b) + mt ** 2 * c)
    return C


def fd_group_derivative(f, U, X, h=1e-3):
    """d/dt f(exp(t X) U) at t = 0, fourth-order central stencil (f returns a float)."""
    from lattice import su_n
    v = {s: float(np.sum(f(su_n.expm((s * h) * X) @ U))) for s in (-2, -1, 1, 2)}
    return (-v[2] + 8 * v[1] - 8 * v[-1] + v[-2]) / (12 * h)


def pair_force(Fld, X):
    """sum_{x,mu} <F, X> = -2 Re tr(F X) summed."""
    from lattice import su_n
    return float(np.sum(su_n.inner(Fld, X)))
