"""Scaled-down version of the paper's Fig. 1: learned versus fixed (plaquette) active loops.

Two spectral flows that differ only in their active loops (``loops="learned"``: staple
networks N_l = 2, N_h = 8, gain-0.5 Xavier start; ``loops="plaquette"``: the untraced
plaquette in an orientation that alternates across layers) are trained by reverse KL with
path gradients (Adam, cosine learning rate) on the SU(3) Wilson action at beta = 2 on 4^4,
with the same masks, layers, context networks, splines, steps, batch and seeds. The paper
(192 layers, GPU) reaches ESS ~ 0.8 (learned) versus ~ 0.2 (plaquette); here the model and
the run are sized to a CPU budget of ~30 minutes per model.

Outputs (``--out`` directory): ``fig1.json`` (configuration, per-step loss / batch ESS /
seconds, held-out ESS and loss on fresh Haar draws at ``--holdout-every`` steps, time per
step, peak memory) and ``fig1.png`` (:func:`analysis.plot_training`).

    OMP_NUM_THREADS=1 PYTHONPATH=. python -m bench.fig1 --layers 16 --batch 8 --steps 240 \
        --out out/fig1                                  # the run reported in the notes
    python -m bench.fig1 --quick --out out/fig1_quick   # a smoke run (seconds)

The two models run in parallel processes (``--jobs``), one core each.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def model_kwargs(a) -> dict:
    return dict(schedule=a.schedule, context_hidden=tuple(a.context_hidden), context_kernel=a.context_kernel,
                spline_bins=a.spline_bins, spline_basis=a.spline_basis, staple_width=8, staple_layers=2,
                recompute=False)


def train_one(loops: str, a_dict: dict) -> dict:
    """Train one model; returns its record (run in a worker process)."""
    import flows
    from lattice import Layout
    from lattice.actions import Wilson
    a = argparse.Namespace(**a_dict)
    shape = tuple(a.shape)
    lay = Layout(shape)
    model = flows.SpectralFlow(len(shape), 3, a.layers, loops, **model_kwargs(a))
    params = model.init(a.seed)
    base = flows.HaarBase(shape, 3, layout=lay)
    target = flows.GaugeTarget(Wilson(a.beta))
    t0 = time.perf_counter()
    params, hist = flows.train(model, params, target, base, steps=a.steps, batch_size=a.batch, lr=a.lr,
                               warmup=a.warmup, seed=a.seed + 1, holdout_every=a.holdout_every,
                               holdout_size=a.holdout, progress=False, layout=lay,
                               checkpoint=os.path.join(a.out, f"ckpt_{loops}.h5") if a.checkpoint else None)
    wall = time.perf_counter() - t0
    e0, l0, _ = flows.evaluate_holdout(model, model.init(a.seed), base, target, lay, a.holdout, a.batch, a.seed)
    h = hist.as_dict()
    train_s = float(np.sum(h["seconds"]))
    return {"loops": loops, "history": h, "untrained_holdout_ess": e0, "untrained_holdout_loss": l0,
            "seconds_total": wall, "seconds_per_step": train_s / max(1, len(h["step"])),
            "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "n_params": int(sum(np.size(v) for v in params.values())), "config": model.config()["loops"]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs="+", default=[4, 4, 4, 4])
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--schedule", default="simple", choices=["simple", "paper"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--holdout-every", type=int, default=60)
    ap.add_argument("--holdout", type=int, default=128, help="fresh samples per held-out ESS")
    ap.add_argument("--context-hidden", type=int, nargs="*", default=[16, 16])
    ap.add_argument("--context-kernel", type=int, default=1)
    ap.add_argument("--spline-bins", type=int, default=8)
    ap.add_argument("--spline-basis", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=["learned", "plaquette"])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--checkpoint", action="store_true", help="checkpoint (and resume) each model's training")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--out", default="out/fig1")
    a = ap.parse_args(argv)
    if a.quick:
        a.shape, a.layers, a.steps, a.batch, a.holdout_every, a.holdout = [2, 2, 2, 4], 2, 4, 2, 2, 8
        a.context_hidden, a.spline_bins, a.spline_basis, a.warmup = [4], 4, 2, 1
    Path(a.out).mkdir(parents=True, exist_ok=True)
    res = run_models(a)
    out = {"description": "learned vs plaquette active loops, SU(3) Wilson, reverse KL with path gradients",
           "args": vars(a), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": res}
    (Path(a.out) / "fig1.json").write_text(json.dumps(out, indent=1))
    from analysis import plot_training
    plot_training({f"{r['loops']} loops": {"step": r["history"]["step"], "ess": r["history"]["ess"],
                                            "loss": r["history"]["loss"]} for r in res},
                  smooth=max(1, a.steps // 20), filename=str(Path(a.out) / "fig1.png"))
    print(summary(res))
    return out


def run_models(a):
    d = vars(a)
    if a.jobs > 1 and len(a.models) > 1:
        with ProcessPoolExecutor(max_workers=min(a.jobs, len(a.models))) as ex:
            return list(ex.map(train_one, a.models, [d] * len(a.models)))
    return [train_one(m, d) for m in a.models]


def summary(res) -> str:
    rows = []
    for r in res:
        h = r["history"]
        n = max(1, len(h["ess"]) // 10)
        ho = ", ".join(f"{s}: {e:.3f}" for s, e in zip(h["holdout_step"], h["holdout_ess"]))
        rows.append(f"{r['loops']:>10s}: loss {np.mean(h['loss'][:n]):9.2f} -> {np.mean(h['loss'][-n:]):9.2f}, "
                    f"batch ESS (last 10%) {np.mean(h['ess'][-n:]):.3f}, held-out ESS {{{ho}}} "
                    f"(untrained {r['untrained_holdout_ess']:.3g}), {r['seconds_per_step']:.2f} s/step, "
                    f"peak RSS {r['peak_rss_MB']:.0f} MB")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
