"""The Wilson hopping term of the kernel layer (lattice.kernels.hopping): array-API reference
against the compiled path for NumPy arrays, on 8^3 x 16 and 12^3 x 24.

Per lattice and operation, the reference and the compiled path are timed in turn within every
round (A B A B ...; each figure is the best over the rounds), so that slow periods of a shared
machine hit both alike. Records: seconds, GFLOP/s (1320 flop per site), ``roofline_percent``
and ``ratio`` = (bytes per site x V / copy bandwidth) / time, the fraction of the
memory-bandwidth ceiling, counted as in bench_fermions: 2880 B per site in double precision
(8 neighbour spinors, 8 links, one output spinor), 1440 B in single precision. The copy
bandwidth is that of ``bench.common.copy_bandwidth`` (``dst[:] = src``, 256 MiB, read + write
bytes), timed as a third function in the same rounds (best over the rounds like the
kernels), so that a quiet or a busy period of the machine does not favour one side of the
ratio. The compiled records also give ``over_reference`` = compiled time / reference time
(below 1 is faster).

Operations: H on the full lattice (SoA spinors, the internal layout of the operators), the
even-odd pair H_oe H_eo (two half-lattice applications = one full-lattice's worth of sites),
and H in complex64. Run single-threaded (OMP_NUM_THREADS=1 etc.: the kernels are).
"""
from __future__ import annotations

import time

import numpy as np

import lattice as L
from lattice import kernels
import fermions as F
from fermions.wilson import to_soa


BYTES_PER_SITE = 2880
FLOPS_PER_SITE = F.FLOPS_PER_SITE_HOPPING


def _interleaved(fns, rounds: int, number: int = 1):
    """Best time per call of each function, the functions timed in turn within every round."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            best[k] = min(best[k], (time.perf_counter() - t0) / number)
    return best


def _reference(fn):
    def run():
        with kernels.reference_only():
            return fn()
    return run


class _Copy:
    """The copy of bench.common.copy_bandwidth as a timed function (bytes moved: ``nbytes``)."""

    def __init__(self, nbytes: int = 256 * 2**20):
        self.src = np.ones(nbytes // 8)
        self.dst = np.empty_like(self.src)
        self.nbytes = 2 * self.src.nbytes

    def __call__(self):
        np.copyto(self.dst, self.src)


def _records(shape, copy, rounds):
    V = int(np.prod(shape))
    lat = "x".join(map(str, shape))
    U = L.random_gauge(shape, seed=1)
    op = F.TwistedMassWilson(U, 0.15, 0.05, check=False)
    op32 = op.astype(np.complex64)
    psi = to_soa(L.Rng(2).complex_normal(layout=op.layout, inner=(4, 3)))
    _, po = op.pack(L.Rng(3).complex_normal(layout=op.layout, inner=(4, 3)))
    so = to_soa(po)
    s32 = psi.astype(np.complex64)
    links, l32 = op.links, op32.links
    ops = [("H", lambda: links.hop(psi), 1),
           ("H_oe H_eo", lambda: links.hop_eo(np.concatenate(links.hop_eo(so, 0), axis=-6), 1), 1),
           ("H complex64", lambda: l32.hop(s32), 2)]
    number = 3 if V <= 8192 else 1
    recs = []
    for name, fn, shrink in ops:
        t_ref, t_fast, t_copy = _interleaved([_reference(fn), fn, copy], rounds, number)
        bw = copy.nbytes / t_copy
        roof = BYTES_PER_SITE / shrink * V / bw
        for impl, t in (("reference", t_ref), (kernels.implementation(np), t_fast)):
            r = {"name": f"{name} {lat} ({impl})", "seconds": t, "gflops": FLOPS_PER_SITE * V / t / 1e9,
                 "roofline_percent": 100 * roof / t, "ratio": roof / t,
                 "reference": f"memory-bandwidth ceiling {BYTES_PER_SITE // shrink} B/site at the measured copy "
                              f"bandwidth"}
            if impl != "reference":
                r["over_reference"] = t / t_ref
                r["copy_GB_per_s"] = bw / 1e9
            recs.append(r)
    return recs


def run(quick: bool = False):
    copy = _Copy()
    recs = []
    shapes = [(8, 8, 8, 16)] if quick else [(8, 8, 8, 16), (12, 12, 12, 24)]
    for shape in shapes:
        recs += _records(shape, copy, rounds=3 if quick else 8)
    return recs


if __name__ == "__main__":     # python -m bench.bench_kernels_hopping
    for r in run():
        extra = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                          if k not in ("name", "seconds", "reference"))
        print(f"{r['name']:<40s} {r['seconds'] * 1e3:9.3f} ms  {extra}")
