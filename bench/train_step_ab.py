"""Time one path-gradient training step of this checkout, for A/B comparisons across commits.

    git worktree add /tmp/before <commit>
    for i in 1 2 3; do for t in /tmp/before .; do
        (cd $t && OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=$t python <this file> learned); done; done

Runs the steps of ``bench/bench_kernels.py::_train_records`` in a fresh process: SU(3) Wilson
beta = 2 on 4^4, 16 layers, batch 16, ``learned`` (SpectralFlow, learned loops, simple
schedule, pointwise contexts) or ``residual`` (M2 M4, plaquette + rectangle, field
dependent). Prints one JSON line: the best of 2 timed steps after a warm-up, the tracemalloc
peak of one more step (MiB) and the loss (equal across commits to rounding). Uses only APIs
that predate the kernel layer, so the same file times old checkouts; interleave the runs
(A B A B) and compare ratios per pair.
"""
from __future__ import annotations

import json
import sys
import time
import tracemalloc

import numpy as np


def main(kind: str) -> dict:
    import flows
    from flows.train import sample_loss_and_grad
    from lattice import Layout
    from lattice.actions import Wilson
    from lattice.backend import Rng
    try:
        from lattice.threads import set_threads
        set_threads(1)
    except ImportError:                       # checkouts before job.threads
        pass
    shape = (4, 4, 4, 4)
    lay = Layout(shape)
    if kind == "learned":
        model = flows.SpectralFlow(4, 3, 16, "learned", schedule="simple", context_hidden=(16, 16), context_kernel=1)
    elif kind == "residual":
        model = flows.residual_flow(4, 3, ("M2", "M4"), ("plaquette", "rectangle"), field_dependent=True)
    else:
        raise SystemExit(f"unknown step {kind!r}: use 'learned' or 'residual'")
    p = model.init(0)
    rng = np.random.default_rng(0)
    p = {k: v + 0.01 * rng.normal(size=v.shape) for k, v in p.items()}
    base, target = flows.HaarBase(shape, 3, layout=lay), flows.GaugeTarget(Wilson(2.0))
    z = base.sample(16, Rng(1))

    def step():
        return sample_loss_and_grad(model, p, base, target, z, "path", lay)
    loss = float(step()[0])
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    step()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {"step": kind, "seconds": min(times), "peak_MiB": peak, "loss": loss}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "learned")))
