"""Solver objects for Hermitian positive-definite systems A x = b (docs/design.md §6).

A solver is a small frozen dataclass holding its settings, with one method

    x, info = solver.solve(apply_A, b, x0=None, layout=None, what="CG")

(``info`` a :class:`fermions.cg.CGInfo`) and ``config()``, a JSON-ready dict for run records
(:func:`solver_from_config` rebuilds the solver from it). Both solvers run the one CG of
:mod:`fermions.cg`:

* :class:`CG` -- plain CG to a true relative residual ||b - A x|| / ||b|| <= tol.
* :class:`MixedPrecision` -- the same solve as a defect correction: the float64 residual
  r = b - A x is solved by a CG in ``low_dtype`` (settings ``inner``) and x += d in float64,
  until the float64 true residual meets ``tol``. It needs A in the low precision: an
  ``apply_A`` with ``astype(dtype)`` (a :class:`LinearMap`, as the preconditioners of
  :mod:`fermions.preconditioners` build) or an explicit ``apply_A_low``.

Fields b, x are ``(*batch, *sites, 4, N)`` spinors (any trailing per-site shape of two axes);
``layout`` is the layout of their sites (the half layout for packed even-odd fields).

:func:`resolve_solver` turns the keyword arguments of the operator solves (tol, maxiter,
on_failure, precision="double"|"mixed") into a solver, or passes an explicit one through.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lattice.backend import namespace

from .cg import cg, check_cg_args

__all__ = ["CG", "MixedPrecision", "LinearMap", "resolve_solver", "solver_from_config"]

DEFAULT_TOL = 1e-10


@dataclass(frozen=True, eq=False)
class LinearMap:
    """The linear map x -> op.<method>(x) that can rebuild itself in another precision.

    ``op`` is any operator with ``astype(dtype)`` (e.g. :class:`fermions.TwistedMassWilson`);
    ``LinearMap(op, "apply_schur_normal").astype(complex64)`` is
    ``op.astype(complex64).apply_schur_normal``.
    """
    op: object
    method: str

    def __call__(self, x):
        return getattr(self.op, self.method)(x)

    def astype(self, dtype) -> "LinearMap":
        return LinearMap(self.op.astype(dtype), self.method)


@dataclass(frozen=True)
class CG:
    """Conjugate gradient (:func:`fermions.cg.cg`) for A x = b, A Hermitian positive definite.

    tol : true relative residual ||b - A x|| / ||b|| required for every batch element.
    maxiter : operator applications (None: :data:`fermions.cg.DEFAULT_MAXITER`).
    on_failure : "raise" (:class:`fermions.CGNotConverged`) or "warn" (:class:`fermions.CGWarning`).
    """
    tol: float = DEFAULT_TOL
    maxiter: int | None = None
    on_failure: str = "raise"

    def __post_init__(self):
        check_cg_args(self.tol, self.maxiter, self.on_failure)
        object.__setattr__(self, "tol", float(self.tol))
        if self.maxiter is not None:
            object.__setattr__(self, "maxiter", int(self.maxiter))

    def solve(self, apply_A, b, x0=None, layout=None, *, what: str = "CG"):
        """(x, CGInfo) with A x = b; x0 the initial guess (default zero), ``what`` names the solve
        in error messages."""
        return cg(apply_A, b, tol=self.tol, maxiter=self.maxiter, x0=x0, layout=layout,
                  on_failure=self.on_failure, what=what)

    def config(self) -> dict:
        return {"kind": "CG", "tol": self.tol, "maxiter": self.maxiter, "on_failure": self.on_failure}


_LOW = {"complex64": "float32", "complex128": "float64"}     # a real system uses the real counterpart


@dataclass(frozen=True)
class MixedPrecision:
    """Mixed-precision defect correction around a low-precision CG.

    tol, maxiter, on_failure : as for :class:`CG`, for the whole solve: the float64 true relative
        residual must reach ``tol``; ``maxiter`` counts all operator applications (both precisions).
    inner : the low-precision CG. Each step solves A d = r in ``low_dtype`` to the relative
        tolerance max(2e-6, min(inner.tol, tol / (2 ||r|| / ||b||))) within at most
        ``inner.maxiter`` iterations (None: what is left of ``maxiter``); ``inner.on_failure`` is
        not used (a step that stops short is corrected by the next one).
    low_dtype : "complex64" (default) or "complex128", the precision of the inner CG (a real
        system uses float32/float64).
    """
    tol: float = DEFAULT_TOL
    maxiter: int | None = None
    on_failure: str = "raise"
    inner: CG = field(default_factory=lambda: CG(tol=1e-5))
    low_dtype: str = "complex64"

    def __post_init__(self):
        check_cg_args(self.tol, self.maxiter, self.on_failure)
        object.__setattr__(self, "tol", float(self.tol))
        if self.maxiter is not None:
            object.__setattr__(self, "maxiter", int(self.maxiter))
        if not isinstance(self.inner, CG):
            raise TypeError(f"MixedPrecision: inner must be a CG, got {type(self.inner).__name__}")
        if self.low_dtype not in _LOW:
            raise ValueError(f"MixedPrecision: low_dtype must be one of {sorted(_LOW)}, got {self.low_dtype!r}")

    def solve(self, apply_A, b, x0=None, layout=None, *, what: str = "CG", apply_A_low=None):
        """(x, CGInfo) with A x = b. A in the low precision is ``apply_A_low`` or, when that is
        None, ``apply_A.astype(low dtype)``."""
        xp = namespace(b)
        complex_b = xp.isdtype(b.dtype, "complex floating")
        low = getattr(xp, self.low_dtype if complex_b else _LOW[self.low_dtype])
        if apply_A_low is None:
            if not hasattr(apply_A, "astype"):
                raise TypeError(f"{what}: MixedPrecision needs the operator in {self.low_dtype}: pass apply_A_low, "
                                f"or an apply_A with astype(dtype) such as fermions.solvers.LinearMap(op, method)")
            apply_A_low = apply_A.astype(low)
        return cg(apply_A, b, tol=self.tol, maxiter=self.maxiter, x0=x0, layout=layout, on_failure=self.on_failure,
                  apply_A_low=apply_A_low, low_tol=self.inner.tol, low_maxiter=self.inner.maxiter, low_dtype=low,
                  what=what)

    def config(self) -> dict:
        return {"kind": "MixedPrecision", "tol": self.tol, "maxiter": self.maxiter, "on_failure": self.on_failure,
                "inner": self.inner.config(), "low_dtype": self.low_dtype}


def solver_from_config(cfg: dict):
    """The solver described by ``solver.config()``."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind == "CG":
        return CG(**cfg)
    if kind == "MixedPrecision":
        inner = cfg.pop("inner", None)
        if inner is not None:
            cfg["inner"] = solver_from_config(inner)
        return MixedPrecision(**cfg)
    raise ValueError(f"unknown solver kind {kind!r} (expected 'CG' or 'MixedPrecision')")


def resolve_solver(solver=None, *, tol: float | None = None, maxiter: int | None = None,
                   on_failure: str | None = None, precision: str | None = None):
    """The solver of a solve called with either ``solver=`` or the keyword settings.

    Without ``solver``: precision "double" (default) gives ``CG(tol, maxiter, on_failure)``,
    "mixed" gives ``MixedPrecision(tol, maxiter, on_failure)`` (tol default 1e-10, on_failure
    default "raise"). With ``solver`` the keywords must be left unset (the solver carries them).
    """
    if solver is not None:
        given = [k for k, v in (("tol", tol), ("maxiter", maxiter), ("on_failure", on_failure),
                                ("precision", precision)) if v is not None]
        if given:
            raise ValueError(f"pass either solver= or {', '.join(given)}, not both (the solver object carries "
                             f"its settings)")
        if not callable(getattr(solver, "solve", None)):
            raise TypeError(f"solver must have a solve(apply_A, b, x0, layout) method, got {type(solver).__name__}")
        return solver
    tol = DEFAULT_TOL if tol is None else tol
    on_failure = "raise" if on_failure is None else on_failure
    precision = "double" if precision is None else precision
    if precision == "double":
        return CG(tol, maxiter, on_failure)
    if precision == "mixed":
        return MixedPrecision(tol, maxiter, on_failure)
    raise ValueError(f"precision must be 'double' or 'mixed', got {precision!r}")
