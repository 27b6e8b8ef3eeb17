"""Fermion terms for flow targets, joining `fermions` and `flows` (which never import each other).

:class:`ExactNf2Determinant` is the target term p_F(U) = det M^dag M[U] of Nf = 2 twisted-mass
fermions, computed exactly with dense linear algebra (small lattices, e.g. the paper's 4^4
training volume): log_prob = log det M^dag M, force = grad(-log p) = -grad log det M^dag M
(DESIGN section 4 convention, as `flows.targets` expects).
"""
from __future__ import annotations

from fermions import dense_log_det, dense_log_det_force

__all__ = ["ExactNf2Determinant"]


class ExactNf2Determinant:
    def __init__(self, kappa: float, mu: float, bc="antiperiodic"):
        self.kappa, self.mu, self.bc = float(kappa), float(mu), bc

    def log_prob(self, U, layout=None):
        return dense_log_det(U, self.kappa, self.mu, layout=layout, bc=self.bc)

    def force(self, U, layout=None):
        return -dense_log_det_force(U, self.kappa, self.mu, layout=layout, bc=self.bc)[1]

    def describe(self) -> dict:
        return {"type": "exact_nf2_determinant", "kappa": self.kappa, "mu": self.mu, "bc": str(self.bc)}
