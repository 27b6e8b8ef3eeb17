"""Nf = 2 twisted-mass HMC: the pseudofermion monomial on top of any gauge action, nested time scales.

Built on :func:`lattice.hmc.run_hmc` (momenta, nested Omelyan/leapfrog integrators, Metropolis,
progress bar, ensemble store with resume state): this module only assembles the monomials.
The default nesting is Sexton-Weingarten with the (expensive, smooth) fermion force on the
outer level and the gauge force on the inner one:

    levels = [([PseudofermionNf2(kappa, mu)], n_steps_fermion), ([gauge_action], n_steps_gauge)]

(each outer step integrates the gauge part with n_steps_gauge inner steps). The store records
the gauge action as ``action`` and the fermion parameters under ``meta["fermions"]``.
"""
from __future__ import annotations

from lattice import hmc as _hmc
from lattice.layout import Layout

from .pseudofermion import PseudofermionNf2

__all__ = ["nf2_levels", "run_hmc_nf2", "nf2_reversibility_check", "nf2_meta", "create_nf2_store"]


def nf2_levels(gauge_action, pseudofermion: PseudofermionNf2, n_steps_fermion: int = 5,
               n_steps_gauge: int = 4):
    """Integration levels (outermost first) for :func:`lattice.hmc.run_hmc`."""
    if n_steps_gauge < 1 or n_steps_fermion < 1:
        raise ValueError("n_steps_fermion and n_steps_gauge must be >= 1")
    return [([pseudofermion], int(n_steps_fermion)), ([gauge_action], int(n_steps_gauge))]


def nf2_meta(gauge_action, pseudofermion: PseudofermionNf2, **extra) -> dict:
    """Header metadata describing an Nf=2 ensemble (JSON-serialisable)."""
    meta = {"fermions": pseudofermion.params(), "Nf": 2}
    if hasattr(gauge_action, "params"):
        meta["gauge_action"] = gauge_action.params()
    meta.update(extra)
    return meta


def create_nf2_store(path, *, lattice_shape, N: int, gauge_action, pseudofermion: PseudofermionNf2,
                     meta: dict | None = None, layout: Layout | None = None, **kwargs):
    """An :class:`lattice.io.EnsembleStore` for an Nf=2 run (gauge action + fermion parameters)."""
    from lattice.io import EnsembleStore
    m = nf2_meta(gauge_action, pseudofermion, **(meta or {}))
    return EnsembleStore.create(path, lattice_shape=lattice_shape, N=N, action=gauge_action.params(), meta=m,
                                layout=layout, **kwargs)


def run_hmc_nf2(gauge_action, U0, kappa: float, mu: float, n_traj: int, tau: float = 1.0,
                n_steps_fermion: int = 5, n_steps_gauge: int = 4, integrator: str = "omelyan", seed: int = 0,
                pseudofermion: PseudofermionNf2 | None = None, layout: Layout | None = None, **hmc_kwargs):
    """Nf=2 HMC with the twisted-mass pseudofermion on top of ``gauge_action``.

    ``hmc_kwargs`` go to :func:`lattice.hmc.run_hmc` (``store``, ``start_traj``, ``n_therm``,
    ``save_every``, ``progress``, ``callback``, ...). Pass ``pseudofermion`` to choose solver
    tolerances or precision. Returns ``(U, history)`` with history a
    :class:`lattice.hmc.HMCHistory` (list of trajectory records; ``history.column("dH")`` is
    a NumPy array of shape ``(n_traj, *batch)``).
    """
    pf = pseudofermion if pseudofermion is not None else PseudofermionNf2(kappa, mu)
    if pseudofermion is not None and (pf.kappa != float(kappa) or pf.mu != float(mu)):
        raise ValueError(f"pseudofermion has kappa={pf.kappa}, mu={pf.mu} but kappa={kappa}, mu={mu} were given")
    levels = nf2_levels(gauge_action, pf, n_steps_fermion, n_steps_gauge)
    return _hmc.run_hmc(None, U0, n_traj, tau=tau, integrator=integrator, seed=seed, levels=levels,
                        layout=layout, **hmc_kwargs)


def nf2_reversibility_check(U, gauge_action, kappa: float, mu: float, tau: float = 1.0, n_steps_fermion: int = 4,
                            n_steps_gauge: int = 3, integrator: str = "omelyan", seed: int = 0,
                            pseudofermion: PseudofermionNf2 | None = None, layout: Layout | None = None):
    """Forward, momentum flip, backward (see :func:`lattice.hmc.reversibility_check`)."""
    pf = pseudofermion if pseudofermion is not None else PseudofermionNf2(kappa, mu, force_tol=1e-12,
                                                                          action_tol=1e-12)
    levels = nf2_levels(gauge_action, pf, n_steps_fermion, n_steps_gauge)
    return _hmc.reversibility_check(U, None, tau=tau, integrator=integrator, seed=seed, levels=levels,
                                    layout=layout)
