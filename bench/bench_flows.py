"""Spectral flows: cost of a training step and ESS against layers and steps.

Records (per loop type, learned / plaquette):

* ``forward``: one flow forward pass per layer and configuration (reference);
* ``train step path (fused)``: forward + path-gradient backward (the inverse VJP fused into
  the forward sweep, :meth:`flows.SpectralFlow.forward_path`), ratio to the forward;
* ``train step path (unfused)``: the same gradient with a separate inverse pass
  (``fused=False``), ratio to the fused step;
* ``train step plain``: reparameterised estimator, ratio to the fused path step;
* peak memory of one path step (tracemalloc, NumPy allocations) with layer internals
  recomputed (default) and kept (``recompute=False``), per configuration and layer;

on 2d SU(3) 8x8 and 4d SU(3) 4^4 (batch 8, context kernel 1 in 4d, 3 in 2d). Then, for
2d SU(3) Wilson beta = 3 on 4x4, the held-out ESS (128 fresh Haar samples) after 0, S/2 and
S training steps for 2, 4 and 8 layers of each loop type. The 4d learned-versus-plaquette
training curves (the paper's Fig. 1) are produced by ``python -m bench.fig1`` (minutes to an
hour; see its docstring); ``make bench`` runs its ``--quick`` smoke version here.
"""
from __future__ import annotations

import time
import tracemalloc

import numpy as np

from .common import best_time


def _step_records(Nd, shape, loops, n_layers, batch, quick):
    import flows
    from flows.train import sample_loss_and_grad
    from lattice import Layout
    from lattice.actions import Wilson
    from lattice.backend import Rng
    lay = Layout(shape)
    kw = dict(schedule="simple", context_hidden=(16, 16), context_kernel=1 if Nd == 4 else 3)
    m = flows.SpectralFlow(Nd, 3, n_layers, loops, **kw)
    p = m.init(0)
    rng = np.random.default_rng(0)
    p = {k: v + 0.01 * rng.normal(size=v.shape) for k, v in p.items()}
    base, target = flows.HaarBase(shape, 3, layout=lay), flows.GaugeTarget(Wilson(2.0))
    z = base.sample(batch, Rng(1))
    tag = f"{Nd}d SU(3) {'x'.join(map(str, shape))} {loops} (B={batch}, {n_layers} layers)"
    norm = n_layers * batch
    rep = 1 if quick else 2
    t_fwd = best_time(lambda: m.forward(p, z, lay), repeat=rep)
    t_path = best_time(lambda: sample_loss_and_grad(m, p, base, target, z, "path", lay), repeat=rep)
    t_unf = best_time(lambda: sample_loss_and_grad(m, p, base, target, z, "path", lay, fused=False), repeat=rep)
    t_plain = best_time(lambda: sample_loss_and_grad(m, p, base, target, z, "plain", lay), repeat=rep)
    recs = [
        {"name": f"forward {tag}", "seconds": t_fwd, "ms_per_layer_cfg": 1e3 * t_fwd / norm},
        {"name": f"train step path fused {tag}", "seconds": t_path, "ms_per_layer_cfg": 1e3 * t_path / norm,
         "ratio": t_path / t_fwd, "reference": "forward"},
        {"name": f"train step path unfused {tag}", "seconds": t_unf, "ratio": t_unf / t_path,
         "reference": "fused path step"},
        {"name": f"train step plain {tag}", "seconds": t_plain, "ratio": t_plain / t_path,
         "reference": "fused path step"},
    ]
    for rec in (True, False):
        mm = flows.SpectralFlow.from_config({**m.config(), "recompute": rec})
        tracemalloc.start()
        t0 = time.perf_counter()
        sample_loss_and_grad(mm, p, base, target, z, "path", lay)
        dt = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        recs.append({"name": f"peak memory path step recompute={rec} {tag}", "seconds": dt,
                     "peak_MB": peak / 2**20, "MB_per_layer_cfg": peak / 2**20 / norm})
    return recs


def _ess_records(quick):
    import flows
    from lattice import Layout
    from lattice.actions import Wilson
    lay = Layout((4, 4))
    base, target = flows.HaarBase((4, 4), 3, layout=lay), flows.GaugeTarget(Wilson(3.0))
    steps = 10 if quick else 40
    layers = (2,) if quick else (2, 4, 8)
    recs = []
    for loops in ("learned", "plaquette"):
        for nl in layers:
            m = flows.SpectralFlow(2, 3, nl, loops, schedule="simple", context_hidden=(8,), spline_bins=4,
                                   spline_basis=2)
            p0 = m.init(0)
            e0 = flows.evaluate_holdout(m, p0, base, target, lay, 128, 64, 1)[0]
            t0 = time.perf_counter()
            p, h = flows.train(m, p0, target, base, steps=steps, batch_size=16, lr=0.02, seed=3, progress=False,
                               holdout_every=steps // 2, holdout_size=128, layout=lay)
            dt = time.perf_counter() - t0
            recs.append({"name": f"ESS 2d SU(3) 4x4 beta=3 {loops} {nl} layers", "seconds": dt,
                         "ess_step0": e0, **{f"ess_step{s}": e for s, e in zip(h.holdout_step, h.holdout_ess)},
                         "final_loss": float(np.mean(h.loss[-5:]))})
    return recs


def run(quick: bool = False):
    recs = []
    for loops in ("learned", "plaquette"):
        recs += _step_records(2, (8, 8), loops, 4, 8, quick)
        recs += _step_records(4, (4, 4, 4, 4) if not quick else (2, 2, 2, 4), loops, 2, 8 if not quick else 2, quick)
    recs += _ess_records(quick)
    from . import fig1
    t0 = time.perf_counter()
    res = fig1.main(["--quick", "--jobs", "1", "--out", "out/fig1_quick"])["runs"]
    for r in res:
        recs.append({"name": f"fig1 --quick {r['loops']}", "seconds": time.perf_counter() - t0,
                     "final_batch_ess": float(np.mean(r["history"]["ess"][-2:])),
                     "holdout_ess": r["history"]["holdout_ess"][-1]})
    return recs
