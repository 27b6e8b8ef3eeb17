"""Preconditioners of M psi = b: how the system is reduced to a Hermitian positive-definite one
that a solver of :mod:`fermions.solvers` handles (docs/design.md §6).

A preconditioner is a stateless frozen dataclass; every method takes the operator ``op``:

    c   = pre.prepare(op, b)          the reduced right-hand side
    A   = pre.normal(op)              the HPD operator of the reduced normal equations (a LinearMap)
    rhs = pre.rhs_normal(op, c)       the right-hand side of those normal equations
    psi = pre.reconstruct(op, b, x)   the full solution from the reduced one, x = A^{-1} rhs

and ``pre.solve(op, b, solver)`` chains them (``pre.solve_reduced(op, c, solver)`` is the middle
step alone). A new preconditioner implements these five methods and ``layout(op)`` (the layout
of the reduced field's sites); a new operator provides the methods they call.

* :class:`EvenOddSchur` -- even-odd Schur complement. With M = [[A, M_eo], [M_oe, M_oo]]
  (sites ordered even, odd; A = M_ee site diagonal) and M^ = M_oo - M_oe A^{-1} M_eo on the odd
  sites:  c = b_o - M_oe A^{-1} b_e,  M^ psi_o = c solved as M^dag M^ psi_o = M^dag c,
  psi_e = A^{-1} (b_e - M_eo psi_o). Operator interface: pack/unpack, apply_ee_inv, apply_eo,
  apply_oe, apply_schur_dagger, apply_schur_normal, half_layout (and astype for mixed precision).
  Packed fields are (*batch, L0/2, L1, L2, L3, 4, N).
* :class:`NoPreconditioner` -- the full normal equations M^dag M psi = M^dag b on all sites
  (c = b; interface apply_dagger, apply_normal, layout). Spinors (*batch, L0, L1, L2, L3, 4, N).
"""
from __future__ import annotations

from dataclasses import dataclass

from .solvers import LinearMap

__all__ = ["EvenOddSchur", "NoPreconditioner", "preconditioner_from_config"]


class _Preconditioner:
    """The driver shared by all preconditioners (subclasses provide the pieces)."""

    what = "CG"

    def solve(self, op, b, solver, x0=None):
        """(psi, CGInfo) with M psi = b; ``x0`` an initial guess of the reduced solution."""
        x, info = self.solve_reduced(op, self.prepare(op, b), solver, x0=x0)
        return self.reconstruct(op, b, x), info

    def solve_reduced(self, op, c, solver, x0=None):
        """(x, CGInfo) solving the reduced system for the reduced right-hand side ``c`` through its
        normal equations normal(op) x = rhs_normal(op, c)."""
        return solver.solve(self.normal(op), self.rhs_normal(op, c), x0=x0, layout=self.layout(op), what=self.what)

    def config(self) -> dict:
        return {"kind": type(self).__name__}


@dataclass(frozen=True)
class EvenOddSchur(_Preconditioner):
    """Even-odd (Schur complement) preconditioning; the reduced unknown is psi_o (odd sites)."""

    what = "CG on M^dag M^ (even-odd)"

    def layout(self, op):
        return op.half_layout

    def prepare(self, op, b):
        """b_o - M_oe A^{-1} b_e (packed odd), b full-lattice."""
        b_e, b_o = op.pack(b)
        return b_o - op.apply_oe(op.apply_ee_inv(b_e))

    def normal(self, op):
        """M^dag M^ on the odd sites."""
        return LinearMap(op, "apply_schur_normal")

    def rhs_normal(self, op, c):
        """M^dag c."""
        return op.apply_schur_dagger(c)

    def reconstruct(self, op, b, x):
        """psi = (A^{-1} (b_e - M_eo x), x) unpacked to the full lattice."""
        b_e = op.pack(b)[0]
        return op.unpack(op.apply_ee_inv(b_e - op.apply_eo(x)), x)


@dataclass(frozen=True)
class NoPreconditioner(_Preconditioner):
    """No preconditioning: CG on M^dag M psi = M^dag b over the full lattice (also where the
    even-odd packing does not exist, e.g. an odd extent)."""

    what = "CG on M^dag M (full lattice)"

    def layout(self, op):
        return op.layout

    def prepare(self, op, b):
        return b

    def normal(self, op):
        """M^dag M."""
        return LinearMap(op, "apply_normal")

    def rhs_normal(self, op, c):
        """M^dag c."""
        return op.apply_dagger(c)

    def reconstruct(self, op, b, x):
        return x


_KINDS = {"EvenOddSchur": EvenOddSchur, "NoPreconditioner": NoPreconditioner}


def preconditioner_from_config(cfg: dict):
    """The preconditioner described by ``pre.config()``."""
    kind = dict(cfg).get("kind")
    if kind not in _KINDS:
        raise ValueError(f"unknown preconditioner kind {kind!r} (expected one of {sorted(_KINDS)})")
    return _KINDS[kind]()
