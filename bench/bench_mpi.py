"""MPI scaling on one machine: the Dirac operator (hopping term H and the even-odd M^), CG to
1e-10 and flow forward passes on 12^3 x 24 at 1, 2 and 4 ranks, plus the surface-to-volume
model for larger lattices on many ranks. The residual-flow forward is also timed with the
whole-field Wilson lines it used before the line tables with ghost planes
(``over_whole_field_lines`` = time with line tables / time with whole-field lines), and the
learned-loop flow forward with the shifted copies its staple networks used before the block
with ghost planes (``over_shifted_copies``; 1 on one process, where neither is used), and a
staple network's forward + VJP with one ghost exchange per layer against one per pair chunk
(``over_exchange_per_chunk``, ``halo_over_per_chunk``; 1 on one process).

Each rank count runs in its own process group: ``mpiexec -n R python -m bench.bench_mpi
--worker ...`` (R = 1 runs plain ``python``, the single-process reference) prints one JSON
line from rank 0; the sequence R = 1, 2, 4 runs twice and each figure is the better of the two
rounds. Per operation: the best over repetitions of the slowest rank's time, the
halo bytes and messages one rank receives per operation (``Layout.halo_bytes``; rank 0, the
same on every rank for these grids), and ``ratio`` = time on R ranks / single-process time
(below 1 is a speed-up). The grid is the one :class:`lattice.Layout` chooses.
On R > 1 ranks the "no-halo baseline" runs the same kernels on the local volume as an
independent periodic lattice on every rank at the same time: the machine's throughput for R
concurrent processes without any communication; ``over_no_halo`` = MPI time / baseline
isolates the cost of the halo exchange and synchronisation from the contention of R
processes for cores and memory bandwidth.

CAVEAT: the benchmark machine has ``os.cpu_count()`` cores (2 in the reference
environment), so at 4 ranks the processes are oversubscribed (two ranks share a core and
MPICH busy-polls while waiting): those figures measure contention, not scaling; every
record says whether it was oversubscribed.

``surface_model`` (records with ``kind = "model"``) gives the halo bytes per site and a
latency/bandwidth estimate of the exchange against the local compute for 24^3 x 48 and
48^3 x 96 on 16 ... 4096 ranks; the assumptions are in its docstring.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

KAPPA, MU = 0.15, 0.05          # random (Haar) gauge field: far from critical, CG converges fast
HALF_SPINOR_BYTES = 2 * 3 * 16  # 2 spin x 3 colour complex128: what the hopping term ships
DIRAC_BYTES_PER_SITE = 2880     # memory traffic of the hopping term per site (bench_fermions)
LOCAL_ONLY = "no-halo baseline: "


# ----------------------------------------------------------------------------- worker
def _timed(comm, fns, repeat):
    """Best over ``repeat`` of the slowest rank's wall time of each fn in ``fns`` (one warm-up
    call each); the functions are timed in turn within every repetition, so that slow
    periods of a shared machine hit all of them alike."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            if comm is not None:
                comm.Barrier()
            t0 = time.perf_counter()
            fn()
            t = time.perf_counter() - t0
            if comm is not None:
                from mpi4py import MPI
                t = comm.allreduce(t, op=MPI.MAX)
            best[i] = min(best[i], t)
    return best


def _per_op(layouts, fn):
    """Halo bytes/messages received by this rank in one call of fn()."""
    for l in layouts:
        l.reset_halo_stats()
    fn()
    return sum(l.halo_bytes for l in layouts), sum(l.halo_messages for l in layouts)


def worker(shape, repeat, flow: bool):
    import numpy as np
    import lattice as L
    import fermions as F
    from fermions.wilson import to_soa
    comm = None
    if any(v in os.environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")):
        from mpi4py import MPI
        comm = MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None
    lay = L.Layout(shape, comm=comm)
    U = L.random_gauge(shape, seed=1, layout=lay)
    op = F.TwistedMassWilson(U, KAPPA, MU, layout=lay, check=False)
    half = op.half_layout
    lays = (lay, half)
    psi = L.Rng(2).complex_normal(layout=lay, inner=(4, 3))
    s = to_soa(psi)
    _, po = op.pack(psi)
    so = to_soa(po)
    rec = {"ranks": lay.size, "grid": list(lay.grid), "local_shape": list(lay.local_shape), "ops": {}}

    def add(name, fn, rep=repeat, baseline=None):
        """Time fn (and, interleaved with it, the no-halo baseline when given)."""
        b, m = _per_op(lays, fn)
        fns = [fn] if baseline is None else [fn, baseline]
        t = _timed(comm, fns, rep)
        rec["ops"][name] = {"seconds": t[0], "halo_bytes": b, "halo_messages": m}
        if baseline is not None:
            rec["ops"][LOCAL_ONLY + name] = {"seconds": t[1], "halo_bytes": 0, "halo_messages": 0}

    hop_base = schur_base = None
    if comm is not None:
        # the same local volume as a periodic single-process lattice, run by all ranks at the
        # same time: what the machine delivers without any halo exchange (contention baseline)
        loc = L.Layout(lay.local_shape, tile=(1,) * 4)
        opl = F.TwistedMassWilson(L.random_gauge(lay.local_shape, seed=1, layout=loc), KAPPA, MU, layout=loc,
                                  check=False)
        sl = to_soa(L.Rng(2).complex_normal(layout=loc, inner=(4, 3)))
        sol = to_soa(opl.pack(L.Rng(2).complex_normal(layout=loc, inner=(4, 3)))[1])

        def hop_base():
            opl.links.hop(sl)

        def schur_base():
            opl._schur(sol)
    add("hopping H", lambda: op.links.hop(s), baseline=hop_base)
    add("Schur M^", lambda: op._schur(so), baseline=schur_base)

    # the halo exchange alone: the 8 shifts of a half-spinor field one H application makes
    h = s[..., 0:2, :, :, :, :, :]
    h = h + 0                                 # contiguous copy, SoA (2, 3, *sites)

    def shifts():
        for mu in range(4):
            lay.shift(h, mu, +1, inner=0)
            lay.shift(h, mu, -1, inner=0)
    add("8 half-spinor shifts (H's neighbour access)", shifts)

    # CG on M^dag M^ to 1e-10 (global reductions in block order: iterations identical for every R)
    b = L.Rng(3).complex_normal(layout=half, inner=(4, 3))
    bb = np.real(b * np.conj(b))
    add("reproducible global sum (a CG inner product)", lambda: half.sum(bb, inner=2))
    info = {}

    def solve():
        x, inf = F.cg(op.apply_schur_normal, b, tol=1e-10, layout=half)
        info["it"] = inf.iterations
    add("CG M^dag M^ to 1e-10", solve, rep=max(1, repeat // 3))
    rec["ops"]["CG M^dag M^ to 1e-10"]["iterations"] = info["it"]

    if flow:
        rec["ops"].update(_flow_ops(lay, comm, repeat))
    if lay.rank == 0:
        print("BENCH_MPI " + json.dumps(rec), flush=True)


def _flow_ops(lay, comm, repeat):
    """Forward pass (with log-det) of a small spectral flow on the full lattice: 2 coupling
    layers of the paper schedule with learned active loops (staple networks of width 4),
    3^4 context convolutions with one hidden layer of 4 channels, 4-bin splines; batch 1."""
    try:
        import flows
        from lattice.backend import Rng
        model_cls = flows.SpectralFlow
    except (ImportError, AttributeError):
        return {}
    import numpy as np
    m = model_cls(4, 3, 2, "learned", schedule="paper", direction_layers=1, staple_width=4,
                  context_hidden=(4,), context_kernel=3, spline_bins=4, spline_basis=2)
    rng = np.random.default_rng(1)
    p = {k: v + 0.1 * rng.normal(size=v.shape) for k, v in m.init(0).items()}
    base = flows.HaarBase(lay.global_shape, 3, layout=lay)
    z = base.sample(1, Rng(3))
    import importlib
    sp, sm = (importlib.import_module(f"lattice.kernels.{k}") for k in ("staple_pairs", "staple_mix"))
    saved = (sp._ghosted, sm._compiled)

    def shifted_copies():                    # the staple networks' path before the ghost block
        sp._ghosted = lambda *a: False
        sm._compiled = lambda layout, *a: not any(g > 1 for g in layout.grid) and saved[1](layout, *a)
        try:
            return m.forward(p, z, layout=lay)
        finally:
            sp._ghosted, sm._compiled = saved
    out = {}
    for name, fn in ((FLOW, lambda: m.forward(p, z, layout=lay)), (FLOW + SHIFTED, shifted_copies)):
        lay.reset_halo_stats()
        fn()
        out[name] = {"halo_bytes": lay.halo_bytes, "halo_messages": lay.halo_messages}
    t = _timed(comm, [lambda: m.forward(p, z, layout=lay), shifted_copies], max(1, repeat // 4))
    out[FLOW]["seconds"], out[FLOW + SHIFTED]["seconds"] = t
    out.update(_residual_ops(lay, comm, z, repeat))
    out.update(_staple_net_ops(lay, comm, repeat))
    return out


def _staple_net_ops(lay, comm, repeat):
    """A staple network's forward + VJP (width 8, 2 layers, batch 4: layer 0 goes to the kernel
    in several pair chunks) with one ghost exchange of each layer's input for all its chunks
    (``kernels.ghosted_input``) and -- timed in turn -- with one exchange per chunk (before)."""
    try:
        import flows
        import flows.staples as fs
        from lattice import kernels, random_gauge
        from lattice.backend import Rng
        if not hasattr(kernels, "ghosted_input"):
            return {}
    except ImportError:
        return {}
    import numpy as np
    net = flows.StapleNet(4, 1, width=8, n_layers=2)
    p = net.init(Rng(2))
    U = random_gauge(lay.global_shape, N=3, batch=(4,), seed=1, layout=lay)
    m = np.zeros((4,) + tuple(lay.global_shape))
    m[1] = 1
    mask = lay.local_part(m, inner=0)
    shared = kernels.ghosted_input

    def run():
        (o,), ctx = net.forward(p, U, mask, layout=lay)
        net.vjp(p, ctx, o)

    def per_chunk():
        fs.kernels.ghosted_input = lambda S, layout: None
        try:
            run()
        finally:
            fs.kernels.ghosted_input = shared
    out = {}
    for name, fn in ((STAPLES, run), (STAPLES + PER_CHUNK, per_chunk)):
        lay.reset_halo_stats()
        fn()
        out[name] = {"halo_bytes": lay.halo_bytes, "halo_messages": lay.halo_messages}
    t = _timed(comm, [run, per_chunk], max(1, repeat // 3))
    out[STAPLES]["seconds"], out[STAPLES + PER_CHUNK]["seconds"] = t
    return out


STAPLES = "staple network forward + VJP (width 8, batch 4)"
PER_CHUNK = " [exchange per chunk]"


FLOW = "flow forward + log det (2 learned-loop layers)"
SHIFTED = " [shifted copies]"


def _residual_ops(lay, comm, z, repeat):
    """Forward pass of two residual layers (M2 plaquette, M4 plaquette + rectangle, field
    dependent with a 3^4 context of 4 channels): staple sums at the active links through line
    tables on the block with ghost planes, and -- timed in turn, same process -- through the
    whole-field shifted products of flows.paths (the mechanism before)."""
    try:
        import flows
        import flows.residual as R
        import flows.context as C
        if not hasattr(R.ResidualLayer, "_line_set"):
            return {}
    except ImportError:
        return {}
    import numpy as np
    m = flows.residual_flow(4, 3, ("M2", "M4"), ("plaquette", "rectangle"), field_dependent=True,
                            context_hidden=(4,), context_kernel=3)
    m.layers = [m.layers[0], m.layers[-1]]
    rng = np.random.default_rng(2)
    p = {k: v + 0.3 * rng.normal(size=v.shape) for k, v in m.init(0).items()}
    saved = (R.ResidualLayer._line_set, C.ContextNet._line_set)

    def whole_field():
        R.ResidualLayer._line_set = lambda layer, layout, s: None
        C.ContextNet._line_set = lambda net, layout: None
        try:
            return m.forward(p, z, layout=lay)
        finally:
            R.ResidualLayer._line_set, C.ContextNet._line_set = saved
    out = {}
    for name, fn in ((RESIDUAL, lambda: m.forward(p, z, layout=lay)), (RESIDUAL + WHOLE_FIELD, whole_field)):
        lay.reset_halo_stats()
        fn()
        out[name] = {"halo_bytes": lay.halo_bytes, "halo_messages": lay.halo_messages}
    a, b = m.forward(p, z, layout=lay)[1], whole_field()[1]
    t = _timed(comm, [lambda: m.forward(p, z, layout=lay), whole_field], max(1, repeat // 3))
    out[RESIDUAL]["seconds"], out[RESIDUAL + WHOLE_FIELD]["seconds"] = t
    out[RESIDUAL]["logdet_rel_diff"] = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    return out


RESIDUAL = "residual flow forward + log det (M2, M4 layers)"
WHOLE_FIELD = " [whole-field lines]"


# ----------------------------------------------------------------------------- model
def surface_model(shape, ranks, bandwidth=12.5e9, latency=2e-6, mem_bandwidth=100e9, itemsize=16,
                  staging_bandwidth=None, staging_latency=0.0):
    """Halo traffic of one hopping-term application H on ``ranks`` ranks (grid from
    :class:`lattice.Layout`), and the time it would take.

    Model (per rank, per application of H, double precision):
      * bytes = sum over split axes mu of 2 faces x (V_loc / l_mu) sites x 96 B (half spinors,
        2 spin x 3 colour complex128 -- the projection trick halves the halo);
      * messages = 2 per split axis (one per direction);
      * t_comm = messages x latency + bytes / bandwidth (no overlap, faces sent one after the
        other as the current shift() does; the two directions share the link);
      * t_comp = V_loc x 2880 B / mem_bandwidth (memory-bound hopping term, bench_fermions).
      * host staging (device arrays without GPU-aware MPI, what ``shift`` does with CuPy):
        with ``staging_bandwidth`` set, every face also crosses PCIe twice (device -> host
        before the send, host -> device after the receive) and every message pays
        ``staging_latency`` (stream synchronisation, copy launch):
        t_comm += 2 bytes / staging_bandwidth + messages x staging_latency.
    Defaults: 12.5 GB/s and 2 us (one 100 Gb/s InfiniBand link per rank), 100 GB/s memory
    bandwidth per rank (a CPU socket); pass other values for other machines.
    """
    import lattice as L
    lay = L.Layout(shape)
    grid = lay._choose_grid(ranks)
    loc = [n // g for n, g in zip(shape, grid)]
    V = math.prod(loc)
    half_spinor = 2 * 3 * itemsize
    nbytes = sum(2 * (V // l) * half_spinor for l, g in zip(loc, grid) if g > 1)
    msgs = 2 * sum(g > 1 for g in grid)
    t_comm = msgs * latency + nbytes / bandwidth
    if staging_bandwidth:
        t_comm += 2 * nbytes / staging_bandwidth + msgs * staging_latency
    t_comp = V * DIRAC_BYTES_PER_SITE * itemsize / 16 / mem_bandwidth
    return {"lattice": "x".join(map(str, shape)), "ranks": ranks, "grid": list(grid), "local_shape": loc,
            "local_volume": V, "halo_bytes": nbytes, "halo_bytes_per_site": nbytes / V,
            "halo_fraction_of_memory_traffic": nbytes / (V * DIRAC_BYTES_PER_SITE * itemsize / 16),
            "messages": msgs, "t_comm_us": 1e6 * t_comm, "t_comp_us": 1e6 * t_comp,
            "comm_over_comp": t_comm / t_comp}


MODEL_SHAPES = ((24, 24, 24, 48), (48, 48, 48, 96))
MODEL_RANKS = (16, 64, 256, 1024, 4096)


def model_records():
    recs = []
    for shape in MODEL_SHAPES:
        for R in MODEL_RANKS:
            try:
                m = surface_model(shape, R)
            except Exception as exc:           # a rank count the default tile does not allow
                recs.append({"name": f"model H {'x'.join(map(str, shape))} R={R}", "kind": "model",
                             "seconds": float("nan"), "error": str(exc)[:120]})
                continue
            recs.append({"name": f"model H {m['lattice']} R={R}", "kind": "model",
                         "seconds": (m["t_comm_us"] + m["t_comp_us"]) * 1e-6,
                         "grid": "x".join(map(str, m["grid"])), "local": "x".join(map(str, m["local_shape"])),
                         "halo_B_per_site": m["halo_bytes_per_site"], "halo_kB": m["halo_bytes"] / 1e3,
                         "comm_over_comp": m["comm_over_comp"],
                         "reference": "12.5 GB/s, 2 us link; 100 GB/s memory per rank; no overlap"})
    return recs


# ----------------------------------------------------------------------------- driver
def _spawn(R, shape, repeat, flow, timeout=1200):
    here = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDI_", "OMPI_", "PMIX_"))}
    env["PYTHONPATH"] = str(here) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "bench.bench_mpi", "--worker", "--shape", ",".join(map(str, shape)),
           "--repeat", str(repeat)] + (["--flow"] if flow else [])
    if R > 1:
        cmd = [str(Path(sys.executable).with_name("mpiexec")), "-n", str(R)] + cmd
    r = subprocess.run(cmd, cwd=here, env=env, capture_output=True, text=True, timeout=timeout)
    for line in r.stdout.splitlines():
        if line.startswith("BENCH_MPI "):
            return json.loads(line[len("BENCH_MPI "):])
    raise RuntimeError(f"bench worker on {R} ranks failed (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")


def run(quick: bool = False):
    shape = (8, 8, 8, 8) if quick else (12, 12, 12, 24)
    ranks = (1, 2) if quick else (1, 2, 4)
    repeat = 3 if quick else 9
    cores = os.cpu_count() or 1
    lat = "x".join(map(str, shape))
    # rounds R = 1, 2, 4, 1, 2, 4: the best of the rounds per operation, so that a slow period
    # of the (shared, virtual) machine does not land on one rank count only; the flow (slow)
    # is measured in the first round only
    rounds = 1 if quick else 2
    results = {}
    for k in range(rounds):
        for R in ranks:
            res = _spawn(R, shape, repeat, flow=(k == 0))
            if R not in results:
                results[R] = res
            else:
                for name, o in res["ops"].items():
                    if o["seconds"] < results[R]["ops"][name]["seconds"]:
                        results[R]["ops"][name] = o
    recs = []
    ref = results[1]["ops"]
    for R in ranks:
        res = results[R]
        for name, o in res["ops"].items():
            base = name[len(LOCAL_ONLY):] if name.startswith(LOCAL_ONLY) else name
            r = {"name": f"{name} {lat} R={R}", "seconds": o["seconds"], "ranks": R,
                 "grid": "x".join(map(str, res["grid"])), "local": "x".join(map(str, res["local_shape"])),
                 "halo_kB": o["halo_bytes"] / 1e3, "halo_msgs": o["halo_messages"],
                 "ratio": o["seconds"] / ref[base]["seconds"],
                 "reference": "single-process time of the whole lattice (ratio < 1: faster)",
                 "oversubscribed": R > cores}
            if LOCAL_ONLY + name in res["ops"]:
                r["over_no_halo"] = o["seconds"] / res["ops"][LOCAL_ONLY + name]["seconds"]
            if "iterations" in o:
                r["iterations"] = o["iterations"]
            if name + SHIFTED in res["ops"]:
                r["over_shifted_copies"] = o["seconds"] / res["ops"][name + SHIFTED]["seconds"]
            if name + PER_CHUNK in res["ops"]:
                r["over_exchange_per_chunk"] = o["seconds"] / res["ops"][name + PER_CHUNK]["seconds"]
                before = res["ops"][name + PER_CHUNK]["halo_bytes"]
                r["halo_over_per_chunk"] = o["halo_bytes"] / before if before else 1.0
            if name + WHOLE_FIELD in res["ops"]:
                r["over_whole_field_lines"] = o["seconds"] / res["ops"][name + WHOLE_FIELD]["seconds"]
                r["logdet_rel_diff"] = o["logdet_rel_diff"]
            recs.append(r)
    return recs + model_records()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help="(internal) run the measurements in this process group")
    ap.add_argument("--shape", default="12,12,12,24")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--flow", action="store_true")
    ap.add_argument("--model", action="store_true", help="print the surface-to-volume model table")
    a = ap.parse_args(argv)
    if a.worker:
        worker(tuple(int(s) for s in a.shape.split(",")), a.repeat, a.flow)
    elif a.model:
        for shape in MODEL_SHAPES:
            for R in MODEL_RANKS:
                print(json.dumps(surface_model(shape, R)))
    else:
        for r in run():
            print(r)


if __name__ == "__main__":
    main()
