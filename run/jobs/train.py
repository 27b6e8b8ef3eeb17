"""`gaugeflow train`: train a flow for the target action at lambda_2.

Base "haar": independent Haar links (plain flow-based sampling). Base "ensemble": the
configurations of the lambda_1 ensemble (`hmc` output; generated here if missing), i.e. the
correlated-ensemble flow lambda_1 -> lambda_2 of the paper's section 3, with the loss
E_{U~p_lambda1}[S_lambda2(f(U)) - S_lambda1(U) - log J(U)] (+ log det ratio terms with
`train.exact_fermions`). Training may use a smaller lattice (`train.shape`, e.g. 4^4) than
the evaluation; the trained flow applies to any volume.

Outputs: `flow.h5` (model + parameters + history), `train.ckpt.h5` (checkpoint; a killed
job resumes from it), `training.png` (ESS and loss vs step, like the paper's Fig. 1).

With ``[pf_flow] enabled = true`` (Nf = 2) a second stage trains the conditional pseudofermion
flow (:mod:`flows.pseudofermion`) on the same training configurations U and their images
U' = f(U) under the trained gauge flow: `pf_flow.h5`, `pf_train.ckpt.h5`, `pf_training.png`.
"""
from __future__ import annotations

import json
import os

import numpy as np

import lattice as L
from lattice.backend import to_host, from_host
from lattice.io import EnsembleStore, atomic_write, provenance

from ..config import ConfigError
from ..context import JobContext, make_action, sub_context
from . import hmc as hmc_job

__all__ = ["run", "make_model", "train_shape", "flow_path", "run_info", "check_flow_matches", "pf_flow_path",
           "pf_run_info", "check_pf_flow_matches", "make_pf_model"]


def train_shape(cfg) -> tuple:
    s = cfg["train"]["shape"]
    return tuple(s) if s else tuple(cfg["lattice"]["shape"])


def flow_path(ctx: JobContext):
    return ctx.path("flow.h5")


def make_model(cfg, Nd: int, N: int):
    """The flow of ``[flow]``: its settings class (``flows.flow_config``: the kind's
    :class:`flows.SpectralFlowConfig` or :class:`flows.ResidualFlowConfig`, from the section's
    keys) and the model built from it, on Nd dimensions and SU(N)."""
    import flows
    settings = flows.flow_config(cfg["flow"])
    cls = flows.SpectralFlow if isinstance(settings, flows.SpectralFlowConfig) else flows.ResidualFlow
    return cls(Nd, N, config=settings)


def _fermion_term(cfg):
    if not (cfg["fermions"]["enabled"] and cfg["train"]["exact_fermions"]):
        return None
    from ..fermion_terms import ExactNf2Determinant
    f = cfg["fermions"]
    return ExactNf2Determinant(f["kappa"], f["mu"], bc=f["bc_time"])


def _targets(cfg):
    import flows
    t = cfg["train"]
    det = _fermion_term(cfg)
    tgt = [flows.GaugeTarget(make_action(cfg, t["lam2"]))] + ([det] if det is not None else [])
    base = [flows.GaugeTarget(make_action(cfg, t["lam1"]))] + ([det] if det is not None else [])
    return flows.Target(tgt), flows.Target(base)


def _base_ensemble(ctx: JobContext, shape):
    """Configurations at lambda_1 on the training lattice (from the hmc stage, or made here)."""
    cfg = ctx.cfg
    lam1 = cfg["train"]["lam1"]
    if shape == tuple(cfg["lattice"]["shape"]):
        path = hmc_job.ensemble_path(ctx, lam1)
        if not path.exists():
            hmc_job.run(ctx, lam=lam1)
        sctx = ctx
    else:
        sctx = sub_context(ctx, shape)
        path = ctx.path("train_ensemble.h5")
        hmc_job.run(sctx, lam=lam1, path=path)
    with EnsembleStore.open(path, "r", layout=sctx.layout, expect={"action": make_action(cfg, lam1).params()}) as ens:
        U = ctx.xp.stack([ens.read(i, xp=ctx.xp) for i in range(len(ens))])
    return U, sctx.layout


def _warn_uncovered_links(ctx: JobContext, model, layout):
    """A flow whose masks leave links untouched cannot move them (e.g. a spectral "simple"
    schedule with fewer than 2 Nd layers): say so before training."""
    import flows
    try:
        flows.check_covers_every_link(layout, [l.mask for l in model.layers])
    except ValueError:
        ctx.say(f"warning: the flow's {len(model.layers)} layers leave some links untouched (a spectral 'simple' "
                f"schedule needs 2 Nd = {2 * layout.Nd} layers, 4 Nd with rectangle loops, to update every link "
                f"once): those links keep their lambda_1 distribution; raise flow.n_layers")


def _linear_response_init(ctx: JobContext, model, params, base, base_target, target, layout):
    """Fit the residual flow's tied constants on the training configurations (first order of
    log w, :mod:`flows.linear_response`) and report the held-out ESS and var(log w) of the
    identity and of the fitted flow."""
    import time
    import flows
    t0 = time.perf_counter()
    bs = ctx.cfg["train"]["batch_size"]
    configs = base.configs[:base.n_train]
    fitted, fit = flows.linear_response_fit(model, params, configs, base_target, target, layout=layout,
                                            batch_size=bs)
    ctx.say(fit.describe())
    out = {"linear_response": fit.as_dict()}
    for name, p in (("identity", params), ("linear_response", fitted)):
        e, _, lw = flows.evaluate_holdout(model, p, base, target, layout, base.n_holdout, bs)
        out[f"holdout_{name}"] = {"ess": e, "var_log_w": float(np.var(lw))}
    v0, v1 = out["holdout_identity"]["var_log_w"], out["holdout_linear_response"]["var_log_w"]
    ctx.say(f"held out ({base.n_holdout} configurations): var(log w) {v0:.4g} (identity) -> {v1:.4g} (linear response), "
            f"{100 * (1 - v1 / v0) if v0 > 0 else 0.0:.1f}% removed; ESS {out['holdout_identity']['ess']:.3f} -> "
            f"{out['holdout_linear_response']['ess']:.3f} ({time.perf_counter() - t0:.1f} s)")
    return fitted, out


def _running_mean(x, n: int):
    """Mean over the last (up to) n entries at every position."""
    x = np.asarray(x, float)
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(1, x.size + 1)
    k = np.minimum(i, n)
    return (c[i] - c[i - k]) / k


def run_info(cfg) -> dict:
    """The settings a trained flow depends on, stored as ``run_info`` in `flow.h5` and its
    checkpoint: the [train] keys (but the bookkeeping intervals), the target and base
    densities, the training lattice, the seed and the [flow] section."""
    t = cfg["train"]
    target, base_target = _targets(cfg)
    return {"train": {k: v for k, v in t.items() if k not in ("checkpoint_every", "holdout_every")},
            "target": target.describe(), "base": base_target.describe() if t["base"] == "ensemble" else "haar",
            "lattice": list(train_shape(cfg)), "seed": cfg["job"]["seed"], "flow": dict(cfg["flow"])}


def _differences(found, want, prefix="") -> list:
    """Dotted keys where two run_info dicts differ, with both values."""
    if isinstance(found, dict) and isinstance(want, dict):
        out = []
        for k in sorted(set(found) | set(want), key=str):
            out += _differences(found.get(k), want.get(k), f"{prefix}{k}.")
        return out
    return [] if found == want else [f"{prefix[:-1] or 'run_info'} (file {found!r}, config {want!r})"]


def check_flow_matches(cfg, path=None, ctx: JobContext | None = None) -> bool:
    """True if the flow file ``path`` (default `<output>/flow.h5`) exists and was trained with
    exactly the settings of ``cfg`` (:func:`run_info`); False if there is none. A flow trained
    with other settings is a ConfigError naming what differs. The one check of a flow file
    against a config: `train` (skip or refuse) and `evaluate` (refuse) both use it."""
    return _file_matches(path if path is not None else flow_path(ctx), run_info(cfg))


def _file_matches(p, info) -> bool:
    import flows
    if not os.path.exists(p):
        return False
    found = flows.read_config(p).get("run_info")
    if isinstance(found, dict) and "flow" in found:     # a flow file of an older version: today's [flow] form
        from ..config import upgrade_flow_section
        found = {**found, "flow": upgrade_flow_section(found["flow"])}
    want = json.loads(json.dumps(info))
    if found != want:
        diff = _differences(found or {}, want)
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise ConfigError(f"{p} was trained with other settings ({shown or 'unknown'} differ): delete it "
                          f"(and the later stages' files) to retrain, or use another job.output")
    return True


def pf_flow_path(ctx: JobContext):
    return ctx.path("pf_flow.h5")


def make_pf_model(cfg):
    """The conditional pseudofermion flow of ``[pf_flow]`` (its model keys:
    :class:`flows.PseudofermionFlowConfig`; boundary phases of ``[fermions]``)."""
    from flows import PseudofermionFlow, PseudofermionFlowConfig
    names = PseudofermionFlowConfig.__dataclass_fields__
    settings = PseudofermionFlowConfig.from_dict({k: v for k, v in cfg["pf_flow"].items() if k in names})
    return PseudofermionFlow(bc=cfg["fermions"]["bc_time"], config=settings)


def pf_run_info(cfg, marginal_sha256: str) -> dict:
    """What a trained pseudofermion flow depends on: the [pf_flow] keys (but the bookkeeping
    intervals), the fermion operator, the training lattice, the seed and the exact gauge flow
    file it was trained behind."""
    f = cfg["fermions"]
    return {"pf_flow": {k: v for k, v in cfg["pf_flow"].items() if k not in ("checkpoint_every", "holdout_every")},
            "fermions": {k: f[k] for k in ("kappa", "mu", "bc_time", "cg_tol")}, "lattice": list(train_shape(cfg)),
            "seed": cfg["job"]["seed"], "gauge_flow_sha256": marginal_sha256}


def check_pf_flow_matches(cfg, ctx: JobContext, path=None) -> bool:
    """As :func:`check_flow_matches`, for `pf_flow.h5` behind the current `flow.h5`."""
    from ..context import file_digest
    return _file_matches(path if path is not None else pf_flow_path(ctx),
                         pf_run_info(cfg, file_digest(flow_path(ctx))))


def _train_pf_flow(ctx: JobContext):
    """Second stage: the conditional pseudofermion flow on (U, f(U)) of the training configurations."""
    import time
    import flows
    from flows.pseudofermion import PseudofermionObjective, save_pf_flow
    from ..context import file_digest
    cfg = ctx.cfg
    p, fe = cfg["pf_flow"], cfg["fermions"]
    info = pf_run_info(cfg, file_digest(flow_path(ctx)))
    if _file_matches(pf_flow_path(ctx), info):
        ctx.say(f"{pf_flow_path(ctx)} exists and matches the config: pseudofermion flow training skipped")
        return
    t0 = time.perf_counter()
    U, layout = _base_ensemble(ctx, train_shape(cfg))
    gauge_model, gauge_params = flows.load(flow_path(ctx), xp=ctx.xp)
    bs = cfg["train"]["batch_size"]
    Up = ctx.xp.concat([gauge_model.forward(gauge_params, U[i:i + bs, ...], layout=layout)[0]
                        for i in range(0, int(U.shape[0]), bs)], axis=0)
    obj = PseudofermionObjective(U, Up, fe["kappa"], fe["mu"], bc=fe["bc_time"], n_shots=p["n_shots"],
                                 holdout=p["holdout"], tol=fe["cg_tol"], maxiter=fe["cg_maxiter"], layout=layout)
    if obj.n_holdout < 1:
        raise ConfigError(f"pf_flow.holdout = {p['holdout']} holds out none of the {int(U.shape[0])} configurations")
    model = make_pf_model(cfg)
    identity = model.init(cfg["job"]["seed"] + 23, xp=ctx.xp)
    params0 = model.hopping_init(identity, fe["kappa"], fe["mu"]) if p["init"] == "hopping" else identity
    ctx.say(f"{model.describe()}; {obj.n_train} training pairs (U, f(U)), "
            f"{obj.n_holdout} held out, {p['n_shots']} shots per configuration and step")
    params, hist = params0, flows.TrainHistory()
    if p["steps"]:
        params, hist = flows.train(model, params0, None, obj, steps=p["steps"], batch_size=p["batch_size"],
                                   estimator=p["estimator"], seed=cfg["job"]["seed"] + 29, lr=p["lr"],
                                   schedule=p["schedule"], holdout_every=p["holdout_every"],
                                   holdout_size=min(obj.n_holdout, 4 * p["batch_size"]),
                                   checkpoint=ctx.path("pf_train.ckpt.h5"), checkpoint_every=p["checkpoint_every"],
                                   progress=ctx.progress, layout=layout, log=ctx.log, run_info=info)
    n_eval = 16
    v = {}
    starts = (("identity", identity),) + ((("hopping", params0),) if p["init"] == "hopping" else ())
    for name, q in starts + (("trained", params),):
        lw = np.asarray(to_host(obj.holdout_log_weights(model, q, n_shots=n_eval, n_configs=8)), float)
        v[name] = {"var_log_w_shots": float(np.mean(np.var(lw, axis=0, ddof=1))),
                   "log_W": [float(x) for x in np.log(np.mean(np.exp(lw - lw.max(0)), 0)) + lw.max(0)]}
    ctx.record_timing("train_pf_flow", time.perf_counter() - t0, 0, lattice=list(train_shape(cfg)))
    v0, v1 = v["identity"]["var_log_w_shots"], v["trained"]["var_log_w_shots"]
    start = f" -> {v['hopping']['var_log_w_shots']:.4g} (O(kappa^2) start)" if "hopping" in v else ""
    ctx.say(f"pseudofermion flow, held out ({min(obj.n_holdout, 8)} configurations x {n_eval} shots): per-shot var(log w) "
            f"{v0:.4g} (identity){start} -> {v1:.4g} (trained, {p['steps']} steps), "
            f"{100 * (1 - v1 / v0) if v0 > 0 else 0.0:.1f}% removed")
    if ctx.root:
        save_pf_flow(pf_flow_path(ctx), model, params, extra={"run_info": info, "history": hist.as_dict(),
                                                              "holdout": v, "lattice": list(train_shape(cfg))},
                     provenance=provenance(layout=layout))
        if hist.step:
            from analysis import plot_training
            curves = {"pseudofermion flow, batch (mean of 10 steps)":
                      {"step": hist.step, "ess": _running_mean(hist.ess, 10), "loss": _running_mean(hist.loss, 10)}}
            if hist.holdout_ess:
                curves["held out"] = {"step": hist.holdout_step, "ess": hist.holdout_ess, "loss": hist.holdout_loss}
            plot_training(curves, filename=str(ctx.path("pf_training.png")))
    ctx.say(f"pseudofermion flow written to {pf_flow_path(ctx)}")


def run(ctx: JobContext):
    """Train the gauge flow (skipped when `flow.h5` matches the config), then, with
    ``pf_flow.enabled``, the conditional pseudofermion flow."""
    _train_gauge_flow(ctx)
    if ctx.cfg["pf_flow"]["enabled"]:
        _train_pf_flow(ctx)
    return flow_path(ctx)


def _train_gauge_flow(ctx: JobContext):
    import flows
    cfg = ctx.cfg
    t = cfg["train"]
    shape = train_shape(cfg)
    N = cfg["lattice"]["N"]
    if _fermion_term(cfg) is not None and ctx.layout.size > 1:
        raise ConfigError("train.exact_fermions uses dense determinants on one process: run `train` without "
                          "mpirun (the trained flow is then evaluated under mpirun), or set train.exact_fermions = false")
    target, base_target = _targets(cfg)
    info = run_info(cfg)
    if check_flow_matches(cfg, ctx=ctx):
        ctx.say(f"{flow_path(ctx)} exists and matches the config: training skipped")
        return flow_path(ctx)
    if t["base"] == "ensemble":
        U, layout = _base_ensemble(ctx, shape)
        n, ho = int(U.shape[0]), t["holdout"]
        h = int(round(ho * n)) if isinstance(ho, float) else int(ho)
        if not 0 < h < n:
            raise ConfigError(f"train.holdout = {ho} holds out {h} of the {n} base configurations: need at least one "
                              f"held out and one to train on (raise hmc.n_traj or change train.holdout)")
        base = flows.EnsembleBase(U, base_target, holdout=t["holdout"], layout=layout)
        ctx.say(f"training base: {base.n_train} configurations at lambda1={t['lam1']} "
                f"({base.n_holdout} held out), target lambda2={t['lam2']}")
    else:
        layout = L.Layout(shape, comm=ctx.comm)
        base = flows.HaarBase(shape, N=N, layout=layout, xp=ctx.xp)
        ctx.say(f"training base: Haar, target lambda2={t['lam2']}")
    import time
    t0 = time.perf_counter()
    model = make_model(cfg, len(shape), N)
    _warn_uncovered_links(ctx, model, layout)
    params = {k: from_host(v, ctx.xp) for k, v in model.init(cfg["job"]["seed"]).items()}   # on the device
    extra = {}
    if t["init"] == "linear-response":
        params, extra = _linear_response_init(ctx, model, params, base, base_target, target, layout)
    hist = flows.TrainHistory()
    if t["steps"] > 0:
        params, hist = flows.train(model, params, target, base, steps=t["steps"], batch_size=t["batch_size"],
                                   estimator=t["estimator"], seed=cfg["job"]["seed"] + 17, lr=t["lr"], warmup=t["warmup"],
                                   schedule=t["schedule"], clip=t["clip"], holdout_every=t["holdout_every"],
                                   holdout_size=max(t["batch_size"], 16), checkpoint=ctx.path("train.ckpt.h5"),
                                   checkpoint_every=t["checkpoint_every"], progress=ctx.progress,
                                   layout=layout, log=ctx.log, run_info=info)
    ctx.record_timing("train", time.perf_counter() - t0, 0, lattice=shape)
    if ctx.root:
        flows.save(flow_path(ctx), model, params, extra={"run_info": info, "history": hist.as_dict(),
                                                        "lattice": list(shape), **extra},
                   provenance=provenance(layout=layout))
        atomic_write(ctx.path("train_history.json"), json.dumps(hist.as_dict()).encode())
        if hist.step:
            from analysis import plot_training
            name = (f"{cfg['flow']['loops']} loops" if cfg["flow"]["kind"] == "spectral" else "residual flow")
            curves = {f"{name}, batch (mean of 10 steps)":
                      {"step": hist.step, "ess": _running_mean(hist.ess, 10), "loss": _running_mean(hist.loss, 10)}}
            if hist.holdout_ess:
                curves["held out"] = {"step": hist.holdout_step, "ess": hist.holdout_ess, "loss": hist.holdout_loss}
            plot_training(curves, filename=str(ctx.path("training.png")))
    if hist.ess:
        ho = (f", held-out ESS {hist.holdout_ess[0]:.3f} (start) -> {hist.holdout_ess[-1]:.3f}"
              if len(hist.holdout_ess) > 1 else "")
        ctx.say(f"trained {t['steps']} steps: batch ESS {hist.ess[0]:.3f} -> {np.mean(hist.ess[-10:]):.3f}{ho}; "
                f"flow written to {flow_path(ctx)}")
    else:
        ctx.say(f"no training steps (train.steps = 0); flow written to {flow_path(ctx)}")
    return flow_path(ctx)
