"""gaugeflow.fermions: Nf=2 twisted-mass Wilson fermions.

Conventions (docs/design.md §6): M = 1 + i mu~ gamma_5 - kappa H, mu~ = 2 kappa mu (hopping
normalisation), H = sum_mu [(1 - gamma_mu) U_mu(x) psi(x+mu) + (1 + gamma_mu) U_mu(x-mu)^dag psi(x-mu)],
antiperiodic in time (the last axis); chiral gamma basis of tmLQCD with gamma_5 = diag(1,1,-1,-1)
(:mod:`fermions.gamma`); spinors (*batch, L0, L1, L2, L3, 4, N); even-odd fields packed along
axis 0 (:mod:`fermions.evenodd`).

Modules: gamma, evenodd, wilson (hopping kernel and link derivative), twisted_mass (operator,
even-odd pieces, solve), cg (the one CG), solvers (solver objects CG and MixedPrecision around it),
preconditioners (EvenOddSchur, NoPreconditioner: how M psi = b becomes a Hermitian positive-definite
system; ``op.solve(b, solver=..., preconditioner=...)``), dense (exact determinants and force on small lattices,
and :class:`ExactNf2Determinant`, the exact determinant as a flow target term), det_ratio
(stochastic determinant ratio), correlators (pion correlator), pseudofermion and hmc_nf2 (Nf=2 HMC).

``dense_force`` is a deprecated alias of ``dense_log_det_force`` (it warns; its gradient is
minus the force of S_F = -log det M^dag M).
"""
from .gamma import gammas, gamma5, projector
from .evenodd import EvenOdd, even_odd, EvenOddError
from .wilson import WilsonLinks, force_from_omega, FLOPS_PER_SITE_HOPPING
from .twisted_mass import TwistedMassWilson, SolveInfo
from .cg import cg, CGInfo, CGNotConverged, CGWarning, CGBreakdown
from .solvers import CG, MixedPrecision, LinearMap, resolve_solver, solver_from_config
from .preconditioners import EvenOddSchur, NoPreconditioner, preconditioner_from_config
from .dense import (dense_matrix, dense_M, dense_schur, dense_log_det, dense_log_det_force, LogDetForce,
                    dense_inverse_blocks, ExactNf2Determinant, dense_force)
from .det_ratio import log_det_ratio, DetRatio, log_mean_exp, ratio_variance_condition
from .correlators import (pion_correlator, PionCorrelator, point_source, timeslice_noise_source, point_propagator,
                          create_correlator_store, append_correlator)
from .pseudofermion import PseudofermionNf2
from .hmc_nf2 import run_hmc_nf2, nf2_levels, nf2_reversibility_check, nf2_meta, create_nf2_store
from . import (gamma, evenodd, wilson, twisted_mass, solvers, preconditioners, dense, det_ratio, correlators,
               pseudofermion, hmc_nf2)

__all__ = [
    "gammas", "gamma5", "projector", "EvenOdd", "even_odd", "EvenOddError", "WilsonLinks", "force_from_omega",
    "FLOPS_PER_SITE_HOPPING", "TwistedMassWilson", "SolveInfo", "cg", "CGInfo", "CGNotConverged", "CGWarning",
    "CGBreakdown", "CG", "MixedPrecision", "LinearMap", "resolve_solver", "solver_from_config", "EvenOddSchur",
    "NoPreconditioner", "preconditioner_from_config", "dense_matrix", "dense_M", "dense_schur", "dense_log_det",
    "dense_log_det_force", "LogDetForce", "dense_inverse_blocks", "ExactNf2Determinant", "log_det_ratio", "DetRatio",
    "log_mean_exp", "ratio_variance_condition", "pion_correlator", "PionCorrelator", "point_source",
    "timeslice_noise_source", "point_propagator", "create_correlator_store", "append_correlator", "PseudofermionNf2",
    "run_hmc_nf2", "nf2_levels", "nf2_reversibility_check", "nf2_meta", "create_nf2_store", "gamma", "evenodd",
    "wilson", "twisted_mass", "solvers", "preconditioners", "dense", "det_ratio", "correlators", "pseudofermion",
    "hmc_nf2",
]
