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

import os
import time


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


def run(quick: bool = False):
    cp, why = _cupy()
    if cp is None:
        return [{"name": "gpu benchmarks skipped", "seconds": 0.0, "reason": f"no usable GPU: {why}"}]
    import numpy as np
    import lattice as L
    import fermions as F
    from analysis.cost import PAPER_COSTS
    recs = []
    shape = (6, 6, 6, 12) if quick else (12, 12, 12, 24)
    V = int(np.prod(shape))
    lay = L.Layout(shape)
    buf = cp.ones(2**27, dtype=cp.float64)
    out = cp.empty_like(buf)
    t = _timed(cp, lambda: cp.copyto(out, buf))
    bw = 2 * buf.nbytes / t
    hbm = float(os.environ.get("GAUGEFLOW_HBM_TBS", "0")) * 1e12
    recs.append({"name": "device copy bandwidth", "seconds": t, "GBps": bw / 1e9})
    U = cp.asarray(L.random_gauge(shape, seed=1))
    for dtype, nbytes in (("complex128", 2880), ("complex64", 1440)):
        Ud = U.astype(dtype)
        op = F.TwistedMassWilson(Ud, 0.1394, 0.0025)
        psi = cp.asarray(L.Rng(2).complex_normal(layout=lay, inner=(4, 3))).astype(dtype)
        t = _timed(cp, lambda: op.hopping(psi))
        rec = {"name": f"Dslash {'x'.join(map(str, shape))} {dtype}", "seconds": t,
               "gflops": 1320 * V / t / 1e9, "ratio": nbytes * V / bw / t,
               "reference": "device copy bandwidth (2880/1440 B per site)"}
        if hbm:
            rec["hbm_fraction"] = nbytes * V / hbm / t
        recs.append(rec)
    # the hopping kernel on a block with ghost layers split in time (as on 2 ranks, the block its
    # own neighbour): core launch, face wait, rest launch against one launch on the same block
    from fermions.gamma import PROJ
    from fermions.wilson import WilsonLinks, to_soa
    from lattice.kernels import hopping, _cupy_hopping
    links = WilsonLinks(U, lay, "antiperiodic")
    psi_s = to_soa(cp.asarray(L.Rng(2).complex_normal(layout=lay, inner=(4, 3))))
    self_split = _SelfNeighbour(lay, split_axis=3)
    t_split = _timed(cp, lambda: hopping._ghost_hop(_cupy_hopping, psi_s, links.U, links.U, self_split, (3,), PROJ,
                                                    False, {}, "full"))
    t_one = _timed(cp, lambda: _cupy_hopping.wilson_hop(psi_s, links.U, links.U))
    recs.append({"name": f"Dslash {'x'.join(map(str, shape))} ghost block, core then rest", "seconds": t_split,
                 "seconds_reference": t_one, "ratio": t_split / t_one,
                 "reference": "one launch on the block without ghosts (the split's overhead: face products, "
                              "extended block, two launches)"})
    # exp of su(3) on every link (an HMC update) and phi(ad X) with its adjoint on half the links
    # (an M2 residual layer): the fused kernels against the array-API references on the device
    from lattice import kernels, su_n
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
    for name, fn in ((f"expm su(3) {4 * V} links", lambda: kernels.expm(P)),
                     (f"phi(ad X) + adjoint {2 * V} links", phi_both)):
        t, t_ref = _timed(cp, fn), _timed(cp, reference(fn))
        recs.append({"name": name, "seconds": t, "seconds_reference": t_ref, "ratio": t / t_ref,
                     "reference": "array-API reference on the device (stacked @)"})
    op = F.TwistedMassWilson(U, 0.1394, 0.0025)
    b = op.pack(cp.asarray(L.Rng(3).complex_normal(layout=lay, inner=(4, 3))))[1]
    t0 = time.perf_counter()
    x, info = F.cg(op.apply_schur_normal, b, tol=1e-10, maxiter=20000, layout=op.half_layout)
    cp.cuda.Device().synchronize()
    t_cg = time.perf_counter() - t0
    recs.append({"name": f"CG Schur normal {'x'.join(map(str, shape))}", "seconds": t_cg,
                 "iterations": int(info.iterations) if hasattr(info, "iterations") else None})
    # flow training step
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
    t_step = _timed(cp, lambda: sample_loss_and_grad(m, p, base, target, z, "path", flay), repeat=2)
    recs.append({"name": f"flow train step learned path 4^4 {n_layers} layers B={batch}", "seconds": t_step})
    # the residual (correlated-ensemble) model: training step at 4^4, forward at 12^3x24
    res = flows.residual_flow(4, 3, ("M2", "M4"), ("plaquette", "rectangle"), field_dependent=True)
    pr = {k: cp.asarray(v) for k, v in res.init(0).items()}
    t_rstep = _timed(cp, lambda: sample_loss_and_grad(res, pr, base, target, z, "path", flay), repeat=2)
    recs.append({"name": f"flow train step residual path 4^4 (M2 M4, {len(res.layers)} layers) B={batch}",
                 "seconds": t_rstep})
    # flow evaluation per 12^3x24 configuration
    U1 = U[None]
    if not quick:                  # M4 masks need extents divisible by 4
        t_rflow = _timed(cp, lambda: res.forward(pr, U1, lay), repeat=2)
        recs.append({"name": f"residual flow forward {'x'.join(map(str, shape))} ({len(res.layers)} layers)",
                     "seconds": t_rflow})
    t_flow = _timed(cp, lambda: m.forward(p, U1, lay), repeat=2)
    solves = int(os.environ.get("GAUGEFLOW_SOLVES_PER_TRAJ", "200"))
    per_cfg = {"generation": solves * t_cg, "measurement": 16 * 12 * t_cg, "flow_eval": t_flow,
               "reweighting": 4 * t_cg}
    for k, v in per_cfg.items():
        recs.append({"name": f"eq.19 {k} per config", "seconds": v, "gpu_hours": v / 3600,
                     "paper_a100_gpu_hours": PAPER_COSTS[k]})
    return recs
