"""`gaugeflow demo`: the whole workflow at toy scale (the default of `make demo`).

hmc (lambda_1 ensemble) -> train (flow lambda_1 -> lambda_2 on that ensemble) -> evaluate
(flowed ensemble, reweighting factors, ESS) -> measure (pion correlators and O on U and
f(U)) -> analyze (<x>_g vs t_min with flows and epsilon-reweighting, variance reduction,
cost model, plots). Each stage resumes if the demo is interrupted and rerun.
"""
from __future__ import annotations

import time

from ..context import JobContext
from . import hmc, train, evaluate, measure, analyze

__all__ = ["run"]


def run(ctx: JobContext):
    stages = [("hmc", lambda: hmc.run(ctx, lam=ctx.cfg["train"]["lam1"])), ("train", lambda: train.run(ctx)),
              ("evaluate", lambda: evaluate.run(ctx)), ("measure", lambda: measure.run(ctx)),
              ("analyze", lambda: analyze.run(ctx))]
    wall = {}
    for name, fn in stages:
        ctx.say(f"\n== {name}")
        t0 = time.perf_counter()
        fn()
        wall[name] = time.perf_counter() - t0
    ctx.say("\nwall time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in wall.items())
            + f" (total {sum(wall.values()):.0f} s)")
    files = ["ensemble.h5", "flow.h5", "training.png", "flowed.h5", "evaluate.h5", "measure.h5", "results.json",
             "x_g_vs_tmin.png", "effective_mass.png", "gaugeflow.log"]
    ctx.say(f"files in {ctx.out}/: " + ", ".join(f for f in files if ctx.path(f).exists()))
