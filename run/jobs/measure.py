"""`gaugeflow measure`: charged-pion correlators (stochastic timeslice sources, one-end trick)
and the Feynman-Hellmann operator O (paper eq. 16) on every configuration U of the lambda_1
ensemble and on its flowed image f(U) (`flowed.h5`, from `evaluate`).

Valence quarks use [fermions] kappa, mu (also for a quenched ensemble). The same noise
sources (seed per configuration) are used on U and f(U), so that their fluctuations cancel
in the correlated difference. Output `measure.h5` (resumes after a kill).

With ``measure.flowed = true`` (the default) the flowed ensemble must exist: without it the
job is refused before it writes anything (run `gaugeflow evaluate` first, or set
``measure.flowed = false`` to measure on U only). `measure.h5` records the choice in its
header attribute ``flowed`` (bool; readable as ``RecordStore.attrs["flowed"]``): true means
``C_flow``, ``O_flow``, ``plaquette_flow`` hold measurements on f(U), false that they are
zeros (no flowed measurement was made), so an analysis can tell the two apart.
"""
from __future__ import annotations

import time

import numpy as np

from lattice.io import EnsembleStore
import lattice as L

from ..config import ConfigError
from ..context import JobContext, make_action
from ..inputs import require_ensemble, require_file, run_checks
from ..records import RankStore, Column
from . import hmc as hmc_job

__all__ = ["run", "KIND", "check_inputs"]

KIND = "pion-measurements"


def check_inputs(cfg: dict) -> None:
    """The lambda_1 ensemble and, with ``measure.flowed``, the flowed ensemble of `evaluate`
    (before anything is written; :mod:`run.inputs`)."""
    require_ensemble(cfg, cfg["train"]["lam1"], "measure")
    if cfg["measure"]["flowed"]:
        require_file(cfg, "flowed.h5", "flowed ensemble",
                     "run `gaugeflow evaluate` first, or set measure.flowed=false")


def run(ctx: JobContext):
    from fermions import pion_correlator
    cfg = ctx.cfg
    t, f, m = cfg["train"], cfg["fermions"], cfg["measure"]
    lam1 = t["lam1"]
    S1 = make_action(cfg, lam1)
    T = cfg["lattice"]["shape"][-1]
    seed = cfg["job"]["seed"]          # configuration i: sources from derive_seed(seed, "measure", i)
    flowed_path = ctx.path("flowed.h5")
    run_checks(ctx.comm, check_inputs, cfg)
    use_flow = bool(m["flowed"])
    attrs = {"kappa": f["kappa"], "mu": f["mu"], "bc_time": f["bc_time"], "n_sources": m["n_sources"],
             "seed": seed, "seed_streams": "lattice.derive_seed(seed, 'measure', i)", "lam1": lam1,
             "beta": cfg["action"]["beta"], "flowed": use_flow}
    cols = {"index": Column((), "i8"), "C": Column((T,)), "O": Column(), "plaquette": Column(),
            "C_flow": Column((T,)), "O_flow": Column(), "plaquette_flow": Column()}
    src = EnsembleStore.open(hmc_job.ensemble_path(ctx, lam1), "r", layout=ctx.layout,
                             expect={"action": S1.params()})
    flowed = EnsembleStore.open(flowed_path, "r", layout=ctx.layout) if use_flow else None
    if flowed is not None:
        if tuple(flowed.lattice_shape) != tuple(src.lattice_shape):
            raise ConfigError(f"{flowed_path} has lattice {flowed.lattice_shape}, the ensemble {src.lattice_shape}")
        attrs["flow_sha256"] = flowed.meta.get("flow_sha256", "")
    t0 = time.perf_counter()
    with RankStore(ctx.layout, ctx.path("measure.h5"), kind=KIND, attrs=attrs, columns=cols) as out:
        n = len(src) if flowed is None else min(len(src), len(flowed))
        start = out.n
        bar = None
        if ctx.progress:
            from lattice.progress import progress_bar
            bar = progress_bar(n, initial=start, desc="measure", unit="cfg")

        def one(U, i):
            C = pion_correlator(U, f["kappa"], f["mu"], n_sources=m["n_sources"],
                                seed=L.derive_seed(seed, "measure", i), layout=ctx.layout, bc=f["bc_time"],
                                tol=f["cg_tol"], maxiter=f["cg_maxiter"])
            return (np.asarray(L.to_host(C), float).reshape(T), float(S1.operator(U, ctx.layout)),
                    float(L.plaquette(U, ctx.layout)))

        for i in range(start, n):
            C, O, P = one(src.read(i, xp=ctx.xp), i)
            Cf, Of, Pf = one(flowed.read(i, xp=ctx.xp), i) if flowed is not None else (np.zeros(T), 0.0, 0.0)
            out.append({"index": i, "C": C, "O": O, "plaquette": P, "C_flow": Cf, "O_flow": Of,
                        "plaquette_flow": Pf})
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
    src.close()
    if flowed is not None:
        flowed.close()
    if n > start:
        ctx.record_timing("measure", (time.perf_counter() - t0) / (2 if flowed is not None else 1), n - start)
    ctx.say(f"measured {n} configurations ({'and their flowed images, ' if flowed is not None else ''}"
            f"{m['n_sources']} sources each) into {ctx.path('measure.h5')}")
    return ctx.path("measure.h5")
