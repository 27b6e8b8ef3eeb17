"""Euclidean gamma matrices in the chiral basis of tmLQCD, and the spin projectors 1 -/+ gamma_mu.

Basis
-----
The chiral (Weyl) basis of tmLQCD (Jansen & Urbach, Comput. Phys. Commun. 180 (2009) 2717),
with gamma_5 = diag(1, 1, -1, -1). Lattice direction mu is lattice axis mu, **time is the
last axis** (mu = 3), so our gamma_mu are tmLQCD's (gamma_1, gamma_2, gamma_3, gamma_0):

    gamma_0 (x) = [[ 0,  0,  0, -i],      gamma_1 (y) = [[ 0,  0,  0, -1],
                   [ 0,  0, -i,  0],                     [ 0,  0,  1,  0],
                   [ 0,  i,  0,  0],                     [ 0,  1,  0,  0],
                   [ i,  0,  0,  0]]                     [-1,  0,  0,  0]]

    gamma_2 (z) = [[ 0,  0, -i,  0],      gamma_3 (t) = [[ 0,  0, -1,  0],
                   [ 0,  0,  0,  i],                     [ 0,  0,  0, -1],
                   [ i,  0,  0,  0],                     [-1,  0,  0,  0],
                   [ 0, -i,  0,  0]]                     [ 0, -1,  0,  0]]

    gamma_5 = gamma_t gamma_x gamma_y gamma_z = diag(1, 1, -1, -1).

All are Hermitian, {gamma_mu, gamma_nu} = 2 delta_mu,nu, and gamma_5 anticommutes with
every gamma_mu (tests/test_fermions_operator.py checks this). Physical results
(determinants, the charged-pion correlator) do not depend on the basis.

Two-spinor projection
---------------------
Every gamma_mu has the block form [[0, B_mu], [B_mu^dag, 0]] with B_mu unitary and *monomial*
(one non-zero, a phase, per row). Hence for s = +-1

    (1 + s gamma_mu) psi = [ h ; s B_mu^dag h ],   h = psi_up + s B_mu psi_dn   (2 spin rows)

so a hop needs only the half spinor h: project, multiply by the link (colour), reconstruct
the lower half. :data:`PROJ` holds the tables (row permutation and phase) of B_mu and
B_mu^dag that the hopping kernel uses.

This module is host-side constants only (plain Python numbers); :func:`gammas` returns them
as arrays of any backend.
"""
from __future__ import annotations

__all__ = ["GAMMA", "GAMMA5", "gammas", "gamma5", "projector", "PROJ", "SpinBlock"]

_i = 1j

#: gamma_mu for mu = 0, 1, 2 (x, y, z) and 3 (t), as nested tuples (rows of complex numbers).
GAMMA = (
    ((0, 0, 0, -_i), (0, 0, -_i, 0), (0, _i, 0, 0), (_i, 0, 0, 0)),      # x = tmLQCD gamma_1
    ((0, 0, 0, -1), (0, 0, 1, 0), (0, 1, 0, 0), (-1, 0, 0, 0)),          # y = tmLQCD gamma_2
    ((0, 0, -_i, 0), (0, 0, 0, _i), (_i, 0, 0, 0), (0, -_i, 0, 0)),      # z = tmLQCD gamma_3
    ((0, 0, -1, 0), (0, 0, 0, -1), (-1, 0, 0, 0), (0, -1, 0, 0)),        # t = tmLQCD gamma_0
)

#: gamma_5 = diag(1, 1, -1, -1).
GAMMA5 = ((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, -1, 0), (0, 0, 0, -1))


def gammas(xp=None, dtype=None):
    """gamma_mu for the lattice directions mu = 0..3 = (x, y, z, t), shape (4, 4, 4)
    (direction, spin, spin). Index 0 is gamma_x, **not** tmLQCD's gamma_0: their gamma_0 (time)
    is ``gammas()[3]``; note also gamma_x gamma_y gamma_z gamma_t = -gamma_5."""
    from lattice.backend import default_xp
    xp = default_xp() if xp is None else xp
    return xp.asarray([[[complex(v) for v in row] for row in g] for g in GAMMA],
                      dtype=dtype or xp.complex128)


def gamma5(xp=None, dtype=None):
    """gamma_5 as a (4, 4) array."""
    from lattice.backend import default_xp
    xp = default_xp() if xp is None else xp
    return xp.asarray([[complex(v) for v in row] for row in GAMMA5], dtype=dtype or xp.complex128)


def projector(mu: int, sign: int, xp=None, dtype=None):
    """The 4x4 matrix 1 + sign * gamma_mu (sign = +1 or -1)."""
    from lattice.backend import default_xp
    xp = default_xp() if xp is None else xp
    s = _check_sign(sign)
    m = [[(1 if i == j else 0) + s * complex(GAMMA[mu][i][j]) for j in range(4)] for i in range(4)]
    return xp.asarray(m, dtype=dtype or xp.complex128)


def _check_sign(sign) -> int:
    if sign not in (1, -1):
        raise ValueError(f"projector sign must be +1 or -1, got {sign!r}")
    return int(sign)


class SpinBlock:
    """A monomial 2x2 matrix: (B v)_r = phase[r] * v[perm[r]].

    ``swap`` is True when perm = (1, 0); ``uniform`` holds the common phase when both rows
    carry the same real phase (+-1), else None (the kernel then multiplies by a (2,) array).
    """

    def __init__(self, M):
        perm, phase = [], []
        for r in range(2):
            nz = [c for c in range(2) if M[r][c] != 0]
            if len(nz) != 1 or abs(abs(M[r][nz[0]]) - 1) > 1e-14:
                raise ValueError(f"2x2 spin block {M} is not monomial with unit phases")
            perm.append(nz[0])
            phase.append(complex(M[r][nz[0]]))
        if sorted(perm) != [0, 1]:
            raise ValueError(f"2x2 spin block {M} is singular")
        self.perm = tuple(perm)
        self.phase = tuple(phase)
        self.swap = self.perm == (1, 0)
        self.uniform = phase[0].real if (phase[0] == phase[1] and phase[0].imag == 0) else None

    def __repr__(self):
        return f"SpinBlock(perm={self.perm}, phase={self.phase})"


def _blocks(mu):
    g = GAMMA[mu]
    B = tuple(tuple(g[r][2 + c] for c in range(2)) for r in range(2))          # upper-right
    Bd = tuple(tuple(g[2 + r][c] for c in range(2)) for r in range(2))         # lower-left
    # consistency: gamma Hermitian means lower-left = B^dag
    for r in range(2):
        for c in range(2):
            if abs(complex(Bd[r][c]) - complex(B[c][r]).conjugate()) > 1e-14:
                raise AssertionError(f"gamma_{mu} is not of the block form [[0, B], [B^dag, 0]]")
        for c in range(2):
            if g[r][c] != 0 or g[2 + r][2 + c] != 0:
                raise AssertionError(f"gamma_{mu} has non-zero diagonal blocks")
    return SpinBlock(B), SpinBlock(Bd)


#: PROJ[mu] = (B_mu, B_mu^dag) as :class:`SpinBlock` s (see the module docstring).
PROJ = tuple(_blocks(mu) for mu in range(4))
