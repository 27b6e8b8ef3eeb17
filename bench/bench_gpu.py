"""GPU benchmarks (``make bench-gpu``; skipped with a record saying why where no GPU is usable).

On one CuPy device, 12^3x24 unless stated:

* Dslash: the Wilson hopping term in complex128 and complex64, GFLOP/s (1320 flop per site)
  and percent of the measured device copy bandwidth (2880 / 1440 bytes per site, as in
  ``bench_fermions``), and of the card's nominal HBM bandwidth when ``--hbm`` /
  GAUGEFLOW_HBM_TBS gives it (H200: 4.8 TB/s);
* the hopping kernel on a block with ghost layers (time split, the block its own neighbour):
  core launch, face wait, rest launch, against one launch -- the cost of the split that lets
  the face exchange overlap the interior on several ranks;
* exp of su(3) on every link and phi(ad X) with its adjoint on half of them: fused kernels
  against the array-API references on the device;
* the learned-loop flow training step (4^4, 16 layers, batch 16, path gradient), the residual
  flow's (M2 M4, plaquette + rectangle, field dependent) and its forward at 12^3x24;
* CG on the Schur normal operator at kappa = 0.1394, mu = 0.0025 on a random-gauge start
  (time and iterations: a cost stand-in, not the thermalised ensemble);
* the per-configuration costs of eq. (19) in GPU-hours next to the paper's A100 figures
  (generation 0.17, measurement 0.17, flow 0.01, reweighting 0.04): one HMC trajectory with
  the fermion determinant is not timed here, so "generation" is reported as the CG cost times
  the number of solves per trajectory given by ``GAUGEFLOW_SOLVES_PER_TRAJ`` (default 200) and
  the measurement as 16 point-source pion inversions.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback


def _cupy():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy, None
        return None, "CuPy sees 0 CUDA devices"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _timed(cp, fn, repeat=5):
    fn()
    cp.cuda.Device().synchronize()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        cp.cuda.Device().synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


class _SelfNeighbour:
    """A one-process layout that claims a split along one axis: the hopping kernel then runs on
    the block with ghost layers, the faces "exchanged" with the block itself."""

    def __init__(self, layout, split_axis):
        self.grid = tuple(2 if a == split_axis else 1 for a in range(4))
        self.local_shape = layout.local_shape
        self.offset = (0, 0, 0, 0)

    def start_swap(self, a, send_up, send_down):
        return send_up, send_down

    def finish_swap(self, handle):
        return handle


def _section(recs: list, title: str, fn, *args):
    """Run one benchmark section; its records go to ``recs`` and, as they come, to stderr (one
    JSON line each, so a run cut short by a time limit keeps what it measured). A section that
    raises is recorded as ``{"name": "<title> FAILED", "error": ...}`` with its traceback on
    stderr, and the next section runs: one device session shows every failure at once."""
    try:
        new = fn(*args)
    except Exception as exc:
        traceback.print_exc()
        new = [{"name": f"{title} FAILED", "seconds": 0.0, "error": f"{type(exc).__name__}: {exc}"}]
    for r in new:
        print("gpu bench record:", json.dumps(r), file=sys.stderr, flush=True)
    recs.extend(new)
    return new


def run(quick: bool = False):
    cp, why = _cupy()
    if cp is None:
        return [{"name": "gpu benchmarks skipped", "seconds": 0.0, "reason": f"no usable GPU: {why}"}]
    import lattice as L
    shape = (6, 6, 6, 12) if quick else (12, 12, 12, 24)
    lay = L.Layout(shape)
    U = cp.asarray(L.random_gauge(shape, seed=1))
    recs: list = []
    bw = _section(recs, "device copy bandwidth", _copy_bandwidth, cp)
    bw = bw[0].get("GBps", 0.0) * 1e9 if bw else 0.0
    _section(recs, "Dslash", _dslash, cp, U, lay, bw)
    _section(recs, "Dslash ghost block", _dslash_ghost_block, cp, U, lay)
    _section(recs, "expm and phi(ad X)", _exp_kernels, cp, lay)
    cg = _section(recs, "CG", _cg, cp, U, lay)
    flow = _section(recs, "flow", _flows, cp, U, lay, quick)
    t_cg = next((r["seconds"] for r in cg if "error" not in r), None)
    t_flow = next((r["seconds"] for r in flow if r["name"].startswith("spectral flow forward")), None)
    if t_cg is not None and t_flow is not None:
        _section(recs, "eq.19", _eq19_costs, t_cg, t_flow)
    return recs


def _copy_bandwidth(cp):
    buf = cp.ones(2**27, dtype=cp.float64)
    out = cp.empty_like(buf)
    t = _timed(cp, lambda: cp.copyto(out, buf))
    return [{"name": "device copy bandwidth", "seconds": t, "GBps": 2 * buf.nbytes / t / 1e9}]


def _dslash(cp, U, lay, bw):
    import numpy as np
    import lattice as L
    import fermions as F
    V = int(np.prod(lay.local_shape))
    shape = "x".join(map(str, lay.local_shape))
    hbm = float(os.environ.get("GAUGEFLOW_HBM_TBS", "0")) * 1e12
    recs = []
    for dtype, nbytes in (("complex128", 2880), ("complex64", 1440)):
        Ud = U.astype(dtype)
        op = F.TwistedMassWilson(Ud, 0.1394, 0.0025)
        psi = cp.asarray(L.Rng(2).complex_normal(layout=lay, inner=(4, 3))).astype(dtype)
        t = _timed(cp, lambda: op.hopping(psi))
        rec = {"name": f"Dslash {shape} {dtype}", "seconds": t, "gflops": 1320 * V / t / 1e9}
        if bw:
            rec.update(ratio=nbytes * V / bw / t, reference="device copy bandwidth (2880/1440 B per site)")
        if hbm:
            rec["hbm_fraction"] = nbytes * V / hbm / t
        recs.append(rec)
    return recs


def _dslash_ghost_block(cp, U, lay):
    """The hopping kernel on a block with ghost layers split in time (as on 2 ranks, the block its
    own neighbour): core launch, face wait, rest launch against one launch on the same block."""
    import lattice as L
    from fermions.gamma import PROJ
    from fermions.wilson import WilsonLinks, to_soa
    from lattice.kernels import hopping, _cupy_hopping
    links = WilsonLinks(U, lay, "antiperiodic")
    psi_s = to_soa(cp.asarray(L.Rng(2).complex_normal(layout=lay, inner=(4, 3))))
    self_split = _SelfNeighbour(lay, split_axis=3)
    t_split = _timed(cp, lambda: hopping._ghost_hop(_cupy_hopping, psi_s, links.U, links.U, self_split, (3,), PROJ,
                                                    False, {}, "full"))
    t_one = _timed(cp, lambda: _cupy_hopping.wilson_hop(psi_s, links.U, links.U))
    return [{"name": f"Dslash {'x'.join(map(str, lay.local_shape))} ghost block, core then rest",
             "seconds": t_split, "seconds_reference": t_one, "ratio": t_split / t_one,
             "reference": "one launch on the block without ghosts (the split's overhead: face products, "
                          "extended block, two launches)"}]


def _exp_kernels(cp, lay):
    """exp of su(3) on every link (an HMC update) and phi(ad X) with its adjoint on half the links
    (an M2 residual layer): the fused kernels against the array-API references on the device."""
    import numpy as np
    import lattice as L
    from lattice import kernels, su_n
    V = int(np.prod(lay.local_shape))
    P = cp.asarray(su_n.project_algebra(L.Rng(4).complex_normal(lead=(4,), layout=lay, inner=(3, 3))))
    Ad = cp.asarray(np.random.default_rng(5).normal(size=(2 * V, 8, 8)))
    Ad = 0.3 * (Ad - cp.swapaxes(Ad, -1, -2)) / float(cp.max(cp.linalg.norm(Ad, axis=(-2, -1))))
    Gd = cp.ones_like(Ad)

    def phi_both():
        phi, saved = kernels.phi_ad(Ad)
        return kernels.phi_ad_vjp(Ad, saved, Gd)

    def reference(fn):
        def run():
            with kernels.reference_only():
                return fn()
        return run
    recs = []
    for name, fn in ((f"expm su(3) {4 * V} links", lambda: kernels.expm(P)),
                     (f"phi(ad X) + adjoint {2 * V} links", phi_both)):
        t, t_ref = _timed(cp, fn), _timed(cp, reference(fn))
        recs.append({"name": name, "seconds": t, "seconds_reference": t_ref, "ratio": t / t_ref,
                     "reference": "array-API reference on the device (stacked @)"})
    return recs


def _cg(cp, U, lay):
    import lattice as L
    import fermions as F
    op = F.TwistedMassWilson(U, 0.1394, 0.0025)
    b = op.pack(cp.asarray(L.Rng(3).complex_normal(layout=lay, inner=(4, 3))))[1]
    t0 = time.perf_counter()
    x, info = F.cg(op.apply_schur_normal, b, tol=1e-10, maxiter=20000, layout=op.half_layout)
    cp.cuda.Device().synchronize()
    t_cg = time.perf_counter() - t0
    return [{"name": f"CG Schur normal {'x'.join(map(str, lay.local_shape))}", "seconds": t_cg,
             "iterations": int(info.iterations) if hasattr(info, "iterations") else None}]


def _flows(cp, U, lay, quick):
    """Training steps (4^4, path gradient) of the learned-loop model and of the residual
    (correlated-ensemble) model; their forward passes on one configuration of ``lay``."""
    import lattice as L
    import flows
    from flows.train import sample_loss_and_grad
    from lattice.actions import Wilson
    fshape = (4, 4, 4, 4)
    flay = L.Layout(fshape)
    n_layers, batch = (4, 2) if quick else (16, 16)
    m = flows.SpectralFlow(4, 3, n_layers, "learned", schedule="simple", context_hidden=(16, 16), context_kernel=1)
    p = {k: cp.asarray(v) for k, v in m.init(0).items()}
    base = flows.HaarBase(fshape, 3, layout=flay, xp=L.get_namespace("cupy"))
    target = flows.GaugeTarget(Wilson(2.0))
    z = cp.asarray(base.sample(batch, L.Rng(1)))
    recs = []
    t_step = _timed(cp, lambda: sample_loss_and_grad(m, p, base, target, z, "path", flay), repeat=2)
    recs.append({"name": f"flow train step learned path 4^4 {n_layers} layers B={batch}", "seconds": t_step})
    res = flows.residual_flow(4, 3, ("M2", "M4"), ("plaquette", "rectangle"), field_dependent=True)
    pr = {k: cp.asarray(v) for k, v in res.init(0).items()}
    t_rstep = _timed(cp, lambda: sample_loss_and_grad(res, pr, base, target, z, "path", flay), repeat=2)
    recs.append({"name": f"flow train step residual path 4^4 (M2 M4, {len(res.layers)} layers) B={batch}",
                 "seconds": t_rstep})
    shape = "x".join(map(str, lay.local_shape))
    U1 = U[None]
    if not quick:                  # M4 masks need extents divisible by 4
        t_rflow = _timed(cp, lambda: res.forward(pr, U1, lay), repeat=2)
        recs.append({"name": f"residual flow forward {shape} ({len(res.layers)} layers)", "seconds": t_rflow})
    t_flow = _timed(cp, lambda: m.forward(p, U1, lay), repeat=2)
    recs.append({"name": f"spectral flow forward {shape} ({n_layers} layers)", "seconds": t_flow})
    return recs


def _eq19_costs(t_cg, t_flow):
    """Eq. (19) per configuration from the measured CG and flow times (see the module docstring)."""
    from analysis.cost import PAPER_COSTS
    solves = int(os.environ.get("GAUGEFLOW_SOLVES_PER_TRAJ", "200"))
    per_cfg = {"generation": solves * t_cg, "measurement": 16 * 12 * t_cg, "flow_eval": t_flow,
               "reweighting": 4 * t_cg}
    return [{"name": f"eq.19 {k} per config", "seconds": v, "gpu_hours": v / 3600,
             "paper_a100_gpu_hours": PAPER_COSTS[k]} for k, v in per_cfg.items()]
