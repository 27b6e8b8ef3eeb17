"""`gaugeflow hmc`: generate an ensemble (pure gauge, or Nf=2 twisted mass when
[fermions] enabled = true) into `<output>/ensemble.h5`; resumes from the store when rerun.

The ensemble's seed is ``lattice.derive_seed(job.seed, "hmc", lam)`` (recorded in its meta;
each lambda, +lambda and -lambda included, its own stream), and trajectory i always uses the
random stream child(i) of it, so a killed job rerun with the same config continues the
identical chain.

Nf = 2 solver settings: every pseudofermion CG -- the action of the accept/reject step and
the force of the molecular dynamics -- runs to the true relative residual
``fermions.cg_tol`` with at most ``fermions.cg_maxiter`` iterations (:func:`solver_settings`).
The action is the energy functional, whose error is quadratic in the residual, so the
default 1e-10 leaves dH exact to far below its fluctuations; a looser ``cg_tol`` makes the
force less reversible and lowers the acceptance, never the correctness of the chain. The
tolerances used are recorded in the provenance of the job's session in the ensemble
(``cg_action_tol``, ``cg_force_tol``, ``cg_maxiter``; ``EnsembleStore.sessions``) and in the log."""
from __future__ import annotations

import time

import numpy as np

import lattice as L
from lattice import hmc
from lattice.io import EnsembleStore

from ..context import JobContext, make_action

__all__ = ["run", "ensemble_path", "summarise_plaquette", "solver_settings"]


def ensemble_path(ctx: JobContext, lam: float | None = None):
    from ..inputs import ensemble_name
    lam = ctx.cfg["hmc"]["lam"] if lam is None else lam
    return ctx.path(ensemble_name(lam))


def _fermion_settings(cfg) -> dict:
    """The [fermions] settings that define an ensemble or a measurement (recorded in its file
    and checked on resume): all but ``cg_maxiter``, which only bounds the work of a solve (a
    rerun with a larger limit continues the same file)."""
    return {k: v for k, v in cfg["fermions"].items() if k != "cg_maxiter"}


def solver_settings(cfg) -> dict:
    """The CG settings of the Nf = 2 pseudofermion in `hmc` (both solves at ``fermions.cg_tol``,
    see the module docstring), as recorded in the ensemble's session provenance."""
    f = cfg["fermions"]
    return {"cg_action_tol": float(f["cg_tol"]), "cg_force_tol": float(f["cg_tol"]),
            "cg_maxiter": int(f["cg_maxiter"])}


def _monomials(ctx: JobContext, action):
    """Integration levels: gauge only, or fermions outside / gauge inside."""
    cfg = ctx.cfg
    if not cfg["fermions"]["enabled"]:
        return None, [action]
    from fermions import PseudofermionNf2, nf2_levels
    f, s = cfg["fermions"], solver_settings(cfg)
    pf = PseudofermionNf2(f["kappa"], f["mu"], bc=f["bc_time"], action_tol=s["cg_action_tol"],
                          force_tol=s["cg_force_tol"], maxiter=s["cg_maxiter"])
    return nf2_levels(action, pf, cfg["hmc"]["n_steps"], cfg["hmc"]["n_steps_gauge"]), None


def run(ctx: JobContext, lam: float | None = None, n_traj: int | None = None, path=None):
    cfg = ctx.cfg
    h = cfg["hmc"]
    lam = h["lam"] if lam is None else lam
    action = make_action(cfg, lam)
    path = path or ensemble_path(ctx, lam)
    n_traj = h["n_traj"] if n_traj is None else n_traj
    seed = L.derive_seed(cfg["job"]["seed"], "hmc", float(lam))
    shape, N = tuple(cfg["lattice"]["shape"]), cfg["lattice"]["N"]
    meta = {"seed": seed, "tau": h["tau"], "n_steps": h["n_steps"], "integrator": h["integrator"],
            "n_therm": h["n_therm"], "save_every": h["save_every"], "start": h["start"],
            "fermions": _fermion_settings(cfg) if cfg["fermions"]["enabled"] else "none"}
    levels, monos = _monomials(ctx, action)
    solver = solver_settings(cfg) if cfg["fermions"]["enabled"] else None
    if solver:
        ctx.say(f"pseudofermion CG: action (accept/reject) and force to relative residual {solver['cg_action_tol']:g}, "
                f"at most {solver['cg_maxiter']} iterations")
    total = h["n_therm"] + n_traj * h["save_every"]
    with EnsembleStore.open_or_create(path, lattice_shape=shape, N=N, action=action.params(), meta=meta,
                                      layout=ctx.layout, provenance_extra=solver) as ens:
        rp = hmc.resume_point(ens)
        if rp is None:
            U0 = (L.random_gauge(shape, N=N, seed=seed, layout=ctx.layout, xp=ctx.xp) if h["start"] == "hot"
                  else L.unit_gauge(shape, N=N, layout=ctx.layout, xp=ctx.xp))
            start = 0
        else:
            U0, start = rp
            ctx.say(f"resuming {path.name}: {len(ens)} configurations stored, next trajectory {start}")
        n_before = len(ens)
        t0 = time.perf_counter()
        if start < total:
            hmc.run_hmc(monos, U0, total - start, tau=h["tau"], n_steps=h["n_steps"],
                        integrator=h["integrator"], seed=seed, levels=levels, layout=ctx.layout,
                        start_traj=start, store=ens, save_every=h["save_every"], n_therm=h["n_therm"],
                        progress=ctx.progress)
        sc = ens.scalars()
        if len(ens) > n_before and lam == ctx.cfg["train"]["lam1"] and tuple(ctx.layout.global_shape) == shape:
            ctx.record_timing("hmc", time.perf_counter() - t0, len(ens) - n_before)
    mean, err, tau = summarise_plaquette(sc["plaquette"])
    acc = float(np.mean(sc["accepted"])) if len(sc["accepted"]) else float("nan")
    ctx.say(f"{path.name}: {len(sc['plaquette'])} configurations, plaquette {mean:.6f} +- {err:.6f} "
            f"(tau_int {tau:.2f}), acceptance {acc:.2f}, <exp(-dH)> {np.mean(np.exp(-sc['dH'])):.4f}")
    return path


def summarise_plaquette(series):
    """Mean, error and tau_int of a Markov-chain series (Gamma method)."""
    from analysis import gamma_method
    series = np.asarray(series, float)
    if series.size < 4:
        return float(series.mean()) if series.size else float("nan"), float("nan"), float("nan")
    g = gamma_method(series)
    return float(g.mean), float(g.err), float(g.tau_int)
