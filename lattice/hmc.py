"""Hybrid Monte Carlo for gauge fields, with nested (multiple time scale) integrators.

Conventions (docs/design.md §4): momenta P in su(N) with density ~ exp(-1/2 sum <P, P>),
H = 1/2 sum <P, P> + sum_m S_m(U), equations of motion dU/dt = P U, dP/dt = -grad S.

A *monomial* is any object with ``action(U, layout=None)`` (float64 per batch element) and
``force(U, layout=None)`` (grad S, docs/design.md §4); it may have
``refresh(U, rng, layout=None)``, called once at the start of every trajectory (e.g. the
pseudofermion heatbath). Gauge actions of :mod:`lattice.actions` are monomials.

Integrators (Sexton-Weingarten nesting): ``levels = [(monomials, n_steps), ...]`` from the
outermost (coarsest; e.g. fermions) to the innermost time scale. On level k every
position update of length h is a full integration of level k+1 over h with n_{k+1} steps;
on the innermost level it is the exact update U <- exp(h P) U.

* ``"leapfrog"``: P(h/2) U(h) P(h/2);
* ``"omelyan"``: the second-order minimum-norm scheme (Omelyan, Mryglod, Folk 2003)
  P(lam h) U(h/2) P((1-2 lam) h) U(h/2) P(lam h), lam = 0.1931833275037836.
Both are reversible, area preserving and have dH = O(h^2). Consecutive momentum updates
of adjacent steps are merged, so each step costs one force evaluation (leapfrog) or two
(Omelyan).

Each trajectory i uses the random stream ``Rng(seed).child(i)`` (momenta, monomial refresh,
Metropolis), so a run resumed at trajectory i continues exactly as if uninterrupted, on any
number of MPI ranks.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, asdict
from typing import Callable

from .backend import Rng, namespace, to_host, host_array
from .layout import Layout, infer_gauge_layout
from .loops import plaquette
from . import su_n

__all__ = ["resume_point", "integrate", "kinetic_energy", "hamiltonian", "hmc_trajectory", "run_hmc",
           "reversibility_check", "TrajectoryRecord", "HMCHistory", "OMELYAN_LAMBDA", "draw_momenta"]

OMELYAN_LAMBDA = 0.1931833275037836


def _as_list(m):
    return list(m) if isinstance(m, (list, tuple)) else [m]


def _normalise_levels(action, n_steps, levels):
    if levels is None:
        return [(_as_list(action), int(n_steps))]
    out = [(_as_list(ms), int(n)) for ms, n in levels]
    if any(n < 1 for _, n in out):
        raise ValueError("every integration level needs n_steps >= 1")
    return out


def draw_momenta(rng: Rng, U, layout: Layout):
    """Gaussian su(N) momenta with density ~ exp(-<P,P>/2), one per link."""
    N = U.shape[-1]
    lead = tuple(U.shape[: U.ndim - layout.Nd - 2])
    P = su_n.random_algebra(rng, N, lead=lead, layout=layout)
    xp = namespace(U)
    return xp.astype(P, U.dtype) if P.dtype != U.dtype else P


def kinetic_energy(P, layout: Layout):
    """1/2 sum_{x,mu} <P, P> per batch element (float64)."""
    xp = namespace(P)
    kin = 0.5 * xp.astype(su_n.inner(P, P), xp.float64)       # (*batch, Nd, *sites)
    return layout.sum(xp.sum(kin, axis=kin.ndim - layout.Nd - 1))


def hamiltonian(U, P, monomials, layout: Layout):
    H = kinetic_energy(P, layout)
    for m in monomials:
        H = H + m.action(U, layout=layout)
    return H


def _force(U, monomials, layout):
    F = None
    for m in monomials:
        f = m.force(U, layout=layout)
        F = f if F is None else F + f
    return F


def integrate(U, P, levels, tau: float, integrator: str = "omelyan", layout: Layout | None = None):
    """Integrate the equations of motion over time ``tau``; returns (U, P)."""
    layout = infer_gauge_layout(U, layout)
    if integrator not in ("omelyan", "leapfrog"):
        raise ValueError(f"unknown integrator {integrator!r}; use 'omelyan' or 'leapfrog'")

    def evolve(k, U, P, T):
        monos, n = levels[k]
        h = T / n

        def kick(U, P, c):
            return P - c * _force(U, monos, layout)

        def drift(U, P, c):
            if k + 1 < len(levels):
                return evolve(k + 1, U, P, c)
            return su_n.expm(c * P) @ U, P

        if integrator == "leapfrog":
            P = kick(U, P, 0.5 * h)
            for i in range(n):
                U, P = drift(U, P, h)
                P = kick(U, P, h if i < n - 1 else 0.5 * h)
        else:
            lam = OMELYAN_LAMBDA
            P = kick(U, P, lam * h)
            for i in range(n):
                U, P = drift(U, P, 0.5 * h)
                P = kick(U, P, (1.0 - 2.0 * lam) * h)
                U, P = drift(U, P, 0.5 * h)
                P = kick(U, P, 2.0 * lam * h if i < n - 1 else lam * h)
        return U, P

    return evolve(0, U, P, float(tau))


@dataclass
class TrajectoryRecord:
    """One trajectory of :func:`run_hmc`: its number ``traj``, wall-clock ``seconds``, and per
    chain (lists over the flattened batch) ``accepted``, ``dH``, ``plaquette`` (after the
    Metropolis step) and ``exp_minus_dH``."""
    traj: int
    accepted: list
    dH: list
    plaquette: list
    exp_minus_dH: list
    seconds: float

    def as_dict(self):
        return asdict(self)


_PER_TRAJ = {"traj": "int64", "seconds": "float64"}
_PER_CHAIN = {"accepted": "bool", "dH": "float64", "plaquette": "float64", "exp_minus_dH": "float64"}


class HMCHistory(list):
    """The history returned by :func:`run_hmc` (and :func:`fermions.run_hmc_nf2`): a list of
    :class:`TrajectoryRecord`, one per trajectory in order, with column access.

    It is a ``list``, so indexing, iteration and ``len`` work as on the plain list it used to
    be (a slice is again an :class:`HMCHistory`). ``column(name)`` gathers one field over the
    trajectories as a NumPy array: ``traj`` (int64) and ``seconds`` (float64) of shape
    ``(n_traj,)``; ``accepted`` (bool), ``dH``, ``plaquette`` and ``exp_minus_dH`` (float64) of
    shape ``(n_traj, *batch)`` (``(n_traj,)`` for one unbatched chain). ``as_dict()`` is every
    column, e.g. for ``numpy.savez(path, **history.as_dict())``.

    ``batch_shape`` is the batch of chains (``U0.shape`` before the gauge axes; ``()`` for one
    chain). A history built from bare records (``HMCHistory(records)``) has
    ``batch_shape=None`` and its per-chain columns keep the flat chain axis of the records.
    """

    FIELDS = ("traj", "accepted", "dH", "plaquette", "exp_minus_dH", "seconds")

    def __init__(self, records=(), batch_shape: tuple | None = None):
        super().__init__(records)
        self.batch_shape = None if batch_shape is None else tuple(int(b) for b in batch_shape)

    def __getitem__(self, i):
        out = super().__getitem__(i)
        return HMCHistory(out, self.batch_shape) if isinstance(i, slice) else out

    def __add__(self, other):
        shape = self.batch_shape if getattr(other, "batch_shape", self.batch_shape) == self.batch_shape else None
        return HMCHistory(list(self) + list(other), shape)

    def __repr__(self):
        return f"HMCHistory({len(self)} trajectories, batch_shape={self.batch_shape})"

    def column(self, name: str):
        """One field over all trajectories as a NumPy array (see the class docstring for shapes)."""
        if name in _PER_TRAJ:
            return host_array([getattr(r, name) for r in self], _PER_TRAJ[name])
        if name not in _PER_CHAIN:
            raise KeyError(f"no column {name!r} in an HMC history; columns are {', '.join(self.FIELDS)}")
        a = host_array([list(getattr(r, name)) for r in self], _PER_CHAIN[name])
        if self.batch_shape is None:
            return a if len(self) else a.reshape(0, 0)
        return a.reshape((len(self),) + self.batch_shape)

    def as_dict(self) -> dict:
        """``{name: column(name)}`` for every field."""
        return {name: self.column(name) for name in self.FIELDS}


def _all_monomials(levels):
    seen, out = set(), []
    for ms, _ in levels:
        for m in ms:
            if id(m) not in seen:
                seen.add(id(m))
                out.append(m)
    return out


def hmc_trajectory(U, levels, tau: float, integrator: str, rng: Rng, layout: Layout,
                   metropolis: bool = True):
    """One HMC trajectory (momentum refresh, refresh of monomials, MD, Metropolis).

    Returns (U_new, accepted (bool per batch), dH (float64 per batch)).
    """
    xp = namespace(U)
    monos = _all_monomials(levels)
    for m in monos:
        if hasattr(m, "refresh"):
            m.refresh(U, rng, layout=layout)
    P = draw_momenta(rng, U, layout)
    H0 = hamiltonian(U, P, monos, layout)
    U1, P1 = integrate(U, P, levels, tau, integrator, layout)
    H1 = hamiltonian(U1, P1, monos, layout)
    dH = H1 - H0
    lead = tuple(U.shape[: U.ndim - layout.Nd - 3])
    u = rng.uniform(lead)
    if not bool(xp.all(xp.isfinite(dH))):
        raise FloatingPointError(f"HMC energy violation is not finite (dH = {to_host(dH)}); "
                                 "the step size is far too large or the field contains NaN")
    acc = (u < xp.exp(-dH)) if metropolis else xp.ones(lead, dtype=xp.bool)
    sel = xp.reshape(acc, lead + (1,) * (U.ndim - len(lead)))
    U_new = xp.where(sel, U1, U)
    return U_new, acc, dH


def reversibility_check(U, action, tau: float = 1.0, n_steps: int = 10, integrator: str = "omelyan",
                        seed: int = 0, levels=None, layout: Layout | None = None):
    """Integrate forward, flip the momenta, integrate back.

    Returns a dict with the max |U_back - U0| over links, max |P_back + P0| and |H_back - H0|
    (all should be at rounding level).
    """
    layout = infer_gauge_layout(U, layout)
    xp = namespace(U)
    lv = _normalise_levels(action, n_steps, levels)
    rng = Rng(seed)
    monos = _all_monomials(lv)
    for m in monos:
        if hasattr(m, "refresh"):
            m.refresh(U, rng, layout=layout)
    P0 = draw_momenta(rng, U, layout)
    H0 = hamiltonian(U, P0, monos, layout)
    U1, P1 = integrate(U, P0, lv, tau, integrator, layout)
    U2, P2 = integrate(U1, -P1, lv, tau, integrator, layout)
    H2 = hamiltonian(U2, P2, monos, layout)
    dU = layout.allreduce_max(float(xp.max(xp.abs(U2 - U))))
    dP = layout.allreduce_max(float(xp.max(xp.abs(P2 + P0))))
    return {"max_dU": dU, "max_dP": dP, "dH": [float(v) for v in to_host(xp.reshape(H2 - H0, (-1,)))]}


def resume_point(store):
    """(U, next trajectory number) of the last configuration in an ensemble store, or None.

    Trajectory i always uses the random stream ``Rng(seed).child(i)``, so continuing from
    here reproduces the uninterrupted chain exactly (trajectories after the last saved one
    are recomputed).
    """
    if store is None or len(store) == 0:
        return None
    rec = store.last()
    return rec.U, int(rec.scalars["trajectory"]) + 1


def run_hmc(action, U0, n_traj: int, tau: float = 1.0, n_steps: int = 10, integrator: str = "omelyan",
            seed: int = 0, levels=None, layout: Layout | None = None, start_traj: int = 0,
            store=None, save_every: int = 1, n_therm: int = 0, progress: bool = True,
            callback: Callable | None = None, metropolis: bool = True, check_input: bool = True):
    """Run ``n_traj`` HMC trajectories starting from ``U0``.

    Parameters
    ----------
    action : a monomial or list of monomials (ignored when ``levels`` is given).
    U0 : starting field (*batch, Nd, *sites, N, N); a batch runs independent chains.
    tau, n_steps, integrator : trajectory length, steps (outermost level), scheme.
    levels : nested time scales, see module docstring.
    start_traj : number of the first trajectory (for resuming; selects the random streams).
    store : optional :class:`lattice.io.EnsembleStore` (unbatched fields): trajectory i is
        appended when i >= n_therm and (i + 1 - n_therm) % save_every == 0 (trajectory
        numbers count from the start of the chain, so thermalisation is trajectories
        0 .. n_therm-1). Use :func:`resume_point` to continue a chain from its store.
    callback : called as ``callback(traj, U, record)`` after every trajectory.

    Returns ``(U, history)``: the final field and an :class:`HMCHistory` (a list of
    :class:`TrajectoryRecord`, one per trajectory, with ``history.column("plaquette")`` etc.
    giving NumPy arrays of shape ``(n_traj, *batch)``).
    """
    layout = infer_gauge_layout(U0, layout)
    if check_input:
        su_n.check_su_n(U0, what="HMC start field")
    if store is not None and U0.ndim != layout.Nd + 3:
        raise ValueError("an ensemble store holds single configurations: run one chain (no batch axis) "
                         "per store")
    xp = namespace(U0)
    lv = _normalise_levels(action, n_steps, levels)
    base = Rng(seed, xp=xp)
    show = progress and layout.rank == 0
    bar = None
    if show:
        from .progress import progress_bar
        bar = progress_bar(n_traj, desc="HMC", unit="traj")
    U = U0
    history = HMCHistory(batch_shape=U0.shape[: U0.ndim - layout.Nd - 3])
    n_acc = 0
    n_tot = 0
    try:
        for i in range(start_traj, start_traj + n_traj):
            t0 = time.perf_counter()
            U, acc, dH = hmc_trajectory(U, lv, tau, integrator, base.child(i), layout, metropolis)
            if float(xp.max(su_n.unitarity_violation(U))) > 1e-12:
                U = su_n.reunitarize(U)
            plaq = plaquette(U, layout)
            rec = TrajectoryRecord(
                traj=i, accepted=[bool(a) for a in to_host(xp.reshape(acc, (-1,)))],
                dH=[float(d) for d in to_host(xp.reshape(dH, (-1,)))],
                plaquette=[float(p) for p in to_host(xp.reshape(plaq, (-1,)))],
                exp_minus_dH=[math.exp(-float(d)) for d in to_host(xp.reshape(dH, (-1,)))],
                seconds=time.perf_counter() - t0)
            history.append(rec)
            n_acc += sum(rec.accepted)
            n_tot += len(rec.accepted)
            if store is not None and i >= n_therm and (i + 1 - n_therm) % save_every == 0:
                store.append(U, trajectory=i, plaquette=rec.plaquette[0], dH=rec.dH[0],
                             accepted=int(rec.accepted[0]), seconds=rec.seconds,
                             state={"seed": seed, "next_traj": i + 1})
            if callback is not None:
                callback(i, U, rec)
            if bar is not None:
                bar.set_postfix(plaq=f"{rec.plaquette[0]:.5f}", dH=f"{rec.dH[0]:+.3f}",
                                acc=f"{n_acc / n_tot:.2f}")
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return U, history
