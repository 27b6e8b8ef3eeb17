"""Propagators and the charged-pion two-point function for twisted-mass fermions.

Charged pion
------------
With S = M(+mu)^{-1} the "up" propagator, gamma_5-hermiticity M(mu)^dag = gamma_5 M(-mu) gamma_5
gives the "down" propagator S_d(y, x) = gamma_5 S(x, y)^dag gamma_5, so the charged pion
(interpolator P^+ = d-bar gamma_5 u) correlator is the positive sum

    C(t) = (1 / V_s) sum_{x_vec, y_vec} tr[ S(x_vec, t0 + t; y_vec, t0) S(x_vec, t0 + t; y_vec, t0)^dag ]

(trace over spin and colour; V_s = L_0 L_1 L_2 the spatial volume; t0 + t taken mod T). This is
the normalisation of a single point source, C(t) = sum_x_vec tr[S(x, y) S(x, y)^dag] with
x_4 = y_4 + t, averaged over the source position. The time boundary condition does change C
(free field on 4^3 x 6, kappa = 0.12: periodic and antiperiodic differ by up to 80%); where its phase
sits -- on the links that cross one boundary, as here, or spread as e^{i pi / T} over every
time link, as in tmLQCD -- does not (a U(1) gauge choice: S changes by phases, |S|^2 not).

Normalisation: S is the inverse of M in the hopping normalisation (M = 1 + i mu~ gamma_5 -
kappa H, docs/design.md §6). The continuum-normalised propagator 2 kappa M^{-1} gives
4 kappa^2 C(t); codes that print correlators (e.g. tmLQCD's online measurement) divide by
their own factors of kappa and V_s, so compare amplitudes only after matching these. C is
stored unfolded (t = 0 ... T - 1 from the source); masses do not depend on any of this.

Estimators
----------
* point sources (``method="point"``): a random site y per source, 4N solves (every spin and
  colour), C_k(t) = sum_x_vec |S(x, y)|^2.
* stochastic timeslice sources (``method="stochastic"``, the default; "one-end trick"): noise
  eta with independent U(1) phases (|eta| = 1) on every spin, colour and spatial site of a
  random timeslice t0, one solve M phi = eta, and C_k(t) = (1 / V_s) sum_x_vec |phi(x_vec, t0+t)|^2
  whose expectation over the noise is C(t) (E[eta eta^dag] = 1 on the timeslice).

Each source's correlator is shifted to t = 0 (C_k(t) = c_k(t0_k + t)) and the sources are
averaged. Source times (and points) are drawn from ``lattice.Rng(seed)`` and are the same on any
number of MPI ranks. Solves go through the even-odd preconditioned CG of
:meth:`fermions.TwistedMassWilson.solve`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

from lattice.backend import Rng, namespace, to_host
from lattice.layout import Layout, infer_gauge_layout

from .twisted_mass import TwistedMassWilson
from .evenodd import require_even_odd

__all__ = ["pion_correlator", "PionCorrelator", "point_source", "timeslice_noise_source",
           "point_propagator", "create_correlator_store", "append_correlator", "CORRELATOR_KIND"]

#: ``kind`` of the measurement files written by :func:`create_correlator_store`.
CORRELATOR_KIND = "pion_correlators"


@dataclass
class PionCorrelator:
    """C(t) with its sources and parameters: the measurement record.

    Measure one with :meth:`PionCorrelator.measure` (the arguments of :func:`pion_correlator`,
    which returns only the array ``C``).

    C : float64 (*batch, T), averaged over sources; C_sources : (n_sources, *batch, T) per source;
    source_times : list of t0; source_points : list of spatial points (point method) or None;
    params : kappa, mu, bc, method, n_sources, seed, tol, normalisation; residual: worst true
    relative residual of the solves; iterations : CG iterations per solve.
    """
    C: object
    C_sources: object
    source_times: list
    source_points: list | None
    params: dict
    residual: float = 0.0
    iterations: list = field(default_factory=list)

    @classmethod
    def measure(cls, U, kappa: float, mu: float, n_sources: int = 16, seed: int = 0, method: str = "stochastic",
                layout: Layout | None = None, bc="antiperiodic", tol: float = 1e-10, maxiter=None,
                precision: str = "double", batch_sources: int | None = None) -> "PionCorrelator":
        """Measure the charged-pion correlator and return the full record (the same numbers as
        :func:`pion_correlator`, which takes the same arguments and returns ``record.C``)."""
        return _measure(U, kappa, mu, n_sources, seed, method, layout, bc, tol, maxiter, precision,
                        batch_sources)

    def as_record(self) -> dict:
        """Host-side dict (NumPy arrays, plain numbers) for storage."""
        return {"C": to_host(self.C), "C_sources": to_host(self.C_sources),
                "source_times": list(self.source_times),
                "source_points": None if self.source_points is None else [list(p) for p in self.source_points],
                "params": dict(self.params), "residual": self.residual, "iterations": list(self.iterations)}


def point_source(layout: Layout, point, N: int, xp, dtype, batch=()):
    """The 4N point sources at ``point`` (global coordinates), shape (4N, *[1]*len(batch), *sites, 4, N):
    source j = (s, c) has a 1 at (point, s, c)."""
    coords = layout.coords(xp)
    at = None
    for mu in range(4):
        m = coords[mu] == int(point[mu])
        at = m if at is None else (at & m)
    site = xp.astype(at, dtype)                                           # (sites)
    E = xp.reshape(xp.eye(4 * N, dtype=dtype), (4 * N,) + (1,) * 4 + (4, N))
    src = E * xp.reshape(site, tuple(site.shape) + (1, 1))
    return xp.reshape(src, (4 * N,) + (1,) * len(batch) + tuple(src.shape[1:]))


def timeslice_noise_source(rng: Rng, layout: Layout, t0s, N: int, dtype, batch=()):
    """U(1) noise on the timeslices t0s (one per source), zero elsewhere:
    shape (len(t0s), *batch, *sites, 4, N)."""
    xp = rng.xp
    n = len(t0s)
    u = rng.uniform(lead=(n,) + tuple(batch), layout=layout, inner=(4, N))
    phase = (2.0 * math.pi) * u
    eta = xp.astype(xp.cos(phase), dtype) + 1j * xp.astype(xp.sin(phase), dtype)
    t = layout.coords(xp)[3]                                              # (1, 1, 1, l3)
    tt = xp.reshape(xp.asarray([int(v) for v in t0s], dtype=xp.int64), (n,) + (1,) * (len(batch) + 4))
    mask = xp.astype(t == tt, dtype)                                      # (n, *1, 1, 1, 1, l3)
    return eta * xp.reshape(mask, tuple(mask.shape) + (1, 1))


def point_propagator(op: TwistedMassWilson, point, tol: float = 1e-10, maxiter=None, precision="double"):
    """``(S, info)``: S(x, y) for the point y, the 4N columns as spinors of shape
    (4N, *batch, *sites, 4, N), and the :class:`fermions.SolveInfo` of the solve."""
    batch = tuple(op.U.shape[: op.U.ndim - 7])
    src = point_source(op.layout, point, op.N, op.xp, op.dtype, batch)
    src = op.xp.broadcast_to(src, (4 * op.N,) + batch + tuple(src.shape[1 + len(batch):]))
    return op.solve(src, tol=tol, maxiter=maxiter, precision=precision)


def _shift_to_zero(c, t0s, T):
    """(n, *batch, T) per-source correlators -> c_k(t0_k + t)."""
    xp = namespace(c)
    rows = []
    for k, t0 in enumerate(t0s):
        idx = xp.asarray([(int(t0) + t) % T for t in range(T)], dtype=xp.int64)
        rows.append(xp.take(c[k, ...], idx, axis=-1))
    return xp.stack(rows, axis=0)


def pion_correlator(U, kappa: float, mu: float, n_sources: int = 16, seed: int = 0, method: str = "stochastic",
                    layout: Layout | None = None, bc="antiperiodic", tol: float = 1e-10, maxiter=None,
                    precision: str = "double", full_output: bool = False, batch_sources: int | None = None):
    """Charged-pion correlator C(t): always an array, float64 of shape (*batch, T); see the
    module docstring for the normalisation and the estimators.

    For the full record (per-source correlators, source positions, parameters, residual) use
    :meth:`PionCorrelator.measure` with the same arguments.

    Parameters
    ----------
    U : gauge field(s) (*batch, 4, L0..L3, N, N).
    kappa, mu : twisted-mass parameters.
    n_sources : number of sources at random timeslices (and points, for ``method="point"``).
    seed : seed of the source positions and the noise.
    method : "stochastic" (timeslice U(1) noise, one-end trick) or "point".
    tol, maxiter, precision : CG parameters of the even-odd solve.
    full_output : deprecated; ``True`` returns a :class:`PionCorrelator` with a
        ``DeprecationWarning`` (use :meth:`PionCorrelator.measure`). Will be removed.
    batch_sources : sources solved together (default: all for stochastic, 1 for point).

    The solves are even-odd preconditioned: every extent even and L_0 >= 4 (EvenOddError otherwise).
    """
    if full_output:
        warnings.warn("pion_correlator(..., full_output=True) is deprecated: pion_correlator always returns the "
                      "array C(t); use fermions.PionCorrelator.measure(U, kappa, mu, ...) (same arguments) for "
                      "the full record", DeprecationWarning, stacklevel=2)
    res = _measure(U, kappa, mu, n_sources, seed, method, layout, bc, tol, maxiter, precision, batch_sources)
    return res if full_output else res.C


def _measure(U, kappa, mu, n_sources, seed, method, layout, bc, tol, maxiter, precision, batch_sources):
    """The measurement behind :func:`pion_correlator` and :meth:`PionCorrelator.measure`."""
    layout = infer_gauge_layout(U, layout)
    require_even_odd(layout, "pion_correlator")
    if method not in ("stochastic", "point"):
        raise ValueError(f"method must be 'stochastic' or 'point', got {method!r}")
    n_sources = int(n_sources)
    if n_sources < 1:
        raise ValueError(f"n_sources must be >= 1, got {n_sources}")
    op = TwistedMassWilson(U, kappa, mu, layout=layout, bc=bc)
    xp = op.xp
    N = op.N
    T = layout.global_shape[3]
    Vs = layout.global_shape[0] * layout.global_shape[1] * layout.global_shape[2]
    batch = tuple(U.shape[: U.ndim - 7])
    rng = Rng(seed, xp=xp)
    t0s = [int(v) for v in to_host(rng.integers(T, lead=(n_sources,)))]
    points = None
    per_source = []
    resid, its = 0.0, []
    if method == "point":
        pts = [to_host(rng.integers(layout.global_shape[m], lead=(n_sources,))) for m in range(3)]
        points = [(int(pts[0][k]), int(pts[1][k]), int(pts[2][k]), t0s[k]) for k in range(n_sources)]
        for p in points:
            S, info = point_propagator(op, p, tol=tol, maxiter=maxiter, precision=precision)
            resid = max(resid, info.residual)
            its.append(info.cg.iterations)
            c = layout.slice_sum(xp.real(S * xp.conj(S)), 3, inner=2)       # (4N, *batch, T)
            per_source.append(xp.sum(c, axis=0))
        c_all = xp.stack(per_source, axis=0)                                  # (n, *batch, T)
    else:
        eta = timeslice_noise_source(rng, layout, t0s, N, op.dtype, batch)
        nb = n_sources if batch_sources is None else max(1, int(batch_sources))
        for k0 in range(0, n_sources, nb):
            phi, info = op.solve(eta[k0:min(k0 + nb, n_sources), ...], tol=tol, maxiter=maxiter, precision=precision)
            resid = max(resid, info.residual)
            its.append(info.cg.iterations)
            per_source.append(layout.slice_sum(xp.real(phi * xp.conj(phi)), 3, inner=2) / Vs)
        c_all = xp.concat(per_source, axis=0)
    c_all = xp.astype(c_all, xp.float64)
    c_shift = _shift_to_zero(c_all, t0s, T)
    C = xp.mean(c_shift, axis=0)
    params = {"kappa": float(kappa), "mu": float(mu), "bc": [str(b) for b in op.bc], "method": method,
              "n_sources": n_sources, "seed": int(seed), "tol": float(tol), "precision": precision,
              "normalisation": "C(t) = (1/V_s) sum_{x,y spatial} tr[S(x,t0+t;y,t0) S(...)^dag], "
                               "averaged over sources shifted to t=0",
              "noise": "U(1) phases on spin, colour and space of the source timeslice" if method == "stochastic"
              else None}
    return PionCorrelator(C=C, C_sources=c_shift, source_times=t0s, source_points=points, params=params,
                          residual=resid, iterations=its)


def create_correlator_store(path, *, T: int, n_sources: int, params: dict, lattice_shape, overwrite: bool = False):
    """An append-only :class:`lattice.io.RecordStore` for pion correlators (one record per
    configuration) whose header holds the measurement parameters.

    Columns: ``C`` (T,) float64, ``C_sources`` (n_sources, T), ``source_times`` (n_sources,) int64,
    ``config`` (configuration number), ``info`` (JSON: source points, residual, iterations).
    Open it on one process only (rank 0 under MPI). Reopen with
    ``lattice.io.RecordStore.open(path, "a", kind=CORRELATOR_KIND, expect={"params": params})``.
    """
    from lattice.io import RecordStore, Column, JSON
    cols = {"C": Column((int(T),), "f8"), "C_sources": Column((int(n_sources), int(T)), "f8"),
            "source_times": Column((int(n_sources),), "i8"), "config": Column((), "i8"),
            "info": Column((), JSON)}
    attrs = {"params": dict(params), "lattice_shape": [int(v) for v in lattice_shape], "T": int(T),
             "n_sources": int(n_sources)}
    return RecordStore.create(path, kind=CORRELATOR_KIND, attrs=attrs, columns=cols, overwrite=overwrite)


def append_correlator(store, result: "PionCorrelator", config: int) -> int:
    """Append one unbatched :class:`PionCorrelator` (from :meth:`PionCorrelator.measure`) to a
    correlator store."""
    rec = result.as_record()
    if rec["C"].ndim != 1:
        raise ValueError(f"append one configuration at a time; got C of shape {rec['C'].shape}")
    stored = store.attrs.get("params", {})
    mism = {k: (rec["params"].get(k), v) for k, v in stored.items() if rec["params"].get(k) != v}
    if mism:
        raise ValueError(f"correlator parameters differ from the store's: {mism}")
    return store.append({"C": rec["C"], "C_sources": rec["C_sources"],
                         "source_times": rec["source_times"], "config": int(config),
                         "info": {"source_points": rec["source_points"], "residual": rec["residual"],
                                  "iterations": rec["iterations"]}})
