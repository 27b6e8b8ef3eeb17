"""Reverse-KL training of flows with path gradients or the plain reparameterised estimator.

Notation: z ~ r (base), x = f_theta(z), log q(x) = log r(z) - log J(z), J = |det df/dz| (Haar
measure on every link). Reverse KL, up to the constant log Z:

    KL = E_z[ log r(z) - log J(z) - log p(f(z)) ].

* **plain** (reparameterisation): grad_theta of the sample loss through x and log J, i.e. the
  VJP of (x, log J) w.r.t. theta with cotangents (-d log p/dx, -1).
* **path** (Vaitl et al. 2022, docs/design.md §7): G = grad_x[log q_theta(x) - log p(x)] with
  theta frozen, where log q is evaluated through the inverse flow,
  log q(x) = log r(f^-1(x)) + log J_inv(x); then grad_theta = VJP of f at z w.r.t. theta with
  cotangent G. The score of the base enters through d log r/dz at z = f^-1(x): zero for
  Haar, the lambda_1 force for an ensemble base. For a Haar target and an identity flow G
  vanishes per sample.

A base object may carry its own objective instead (``base.loss_and_grad(model, params, z,
estimator, layout)`` and ``base.holdout_log_weights(model, params, seed)``): the conditional
pseudofermion flow trains through the same loop, checkpoints and history that way
(:class:`flows.pseudofermion.PseudofermionObjective`).

Both estimators are unbiased for grad KL; the path gradient has lower variance near the
optimum. Log-weights log w = log p(x) - log q(x) and the ESS (eq. 11) are accumulated in
float64.

Models used here provide (see :class:`flows.model.SpectralFlow`)::

    forward(params, z, layout)             -> (x, logJ)
    forward_ctx(params, z, layout)         -> (x, logJ, ctx)
    vjp(params, ctx, x_bar, logJ_bar)      -> (z_bar, param_grads)
    inverse_ctx(params, x, layout)         -> (z, logJ_inv, ctx)
    inverse_vjp(params, ctx, z_bar, logJ_inv_bar) -> (x_bar, param_grads)

with complex cotangents in the docs/design.md §7 convention, and optionally the fused

    forward_path(params, z, z_bar, logJ_inv_bar, layout) -> (x, logJ, ctx, gq)

which returns, with the forward pass, gq = the inverse VJP at x (what inverse_ctx +
inverse_vjp give, without the separate inverse pass). The path estimator uses it when present
(``fused=True``); the base score is then evaluated at the sampled z (= f^{-1}(x) exactly).

All reductions over sites go through the layout (``layout.sum``), so log-weights are global
under MPI; parameter cotangents are per-rank sums that :func:`train` adds up over the ranks.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, asdict
from pathlib import Path
from typing import Any, NamedTuple

from lattice.backend import Rng, namespace, to_host, host_array, host_concat
from lattice.layout import Layout, infer_gauge_layout
from lattice import su_n

__all__ = ["sample_loss_and_grad", "log_weights", "train", "TrainHistory",
           "independence_metropolis", "evaluate_holdout", "save_checkpoint", "load_checkpoint",
           "reweighted_observable", "FlowLogWeights", "HoldoutResult", "MetropolisChain"]


class FlowLogWeights(NamedTuple):
    """Result of :func:`log_weights` (a named tuple: ``x, log_w = ...`` unpacks)."""
    x: Any          #: the flowed fields f(z)
    log_w: Any      #: log w = log p(x) - log r(z) + log J(z), float64 per sample


class HoldoutResult(NamedTuple):
    """Result of :func:`evaluate_holdout` (a named tuple: ``ess, loss, log_w = ...`` unpacks)."""
    ess: float      #: ESS of the held-out log-weights
    loss: float     #: mean held-out loss, -mean(log w)
    log_w: Any      #: host float64 log-weights


class MetropolisChain(NamedTuple):
    """Result of :func:`independence_metropolis` (a named tuple: unpacks as
    ``chain, accepted, log_w, acceptance``)."""
    chain: Any          #: stacked chain states, or the observable's values on them
    accepted: Any       #: bool per proposal
    log_w: Any          #: log-weight of the chain state after each proposal
    acceptance: float   #: acceptance rate (first proposal excluded)


_ORDER = ("flows.train takes (model, params, target, base, ...); log_weights, sample_loss_and_grad, "
          "evaluate_holdout, independence_metropolis and reweighted_observable take (model, params, base, "
          "target, ...). Pass base= and target= by keyword to be safe.")


def _check_roles(base, target, where: str):
    """Refuse a target and base passed in swapped positions (only a base draws samples): the
    two orders in this module differ, and a swap would otherwise train or reweight silently
    towards the base."""
    if hasattr(target, "sample") and not hasattr(base, "sample"):
        raise TypeError(f"{where}: the object passed as target ({type(target).__name__}) draws samples and the "
                        f"base ({type(base).__name__}) does not; target and base look swapped. {_ORDER}")


def _score_cotangent(term, U, layout):
    """Cotangent of log p (or log r) w.r.t. U: -2 F U with F = grad(-log p)."""
    return -su_n.cotangent_from_force(U, term.force(U, layout=layout))


def _layout(model, z, layout):
    """The layout of a batch of fields: the model knows its Nd (no ambiguity with batch axes)."""
    if hasattr(model, "layout_of"):
        return model.layout_of(z, layout)
    return infer_gauge_layout(z, layout)


def log_weight(log_p, log_r, logJ=None, log_det=None):
    """The reweighting log-weight of a flowed sample, the one place of the formula:

        log w = log p(f(z)) - log r(z) + log J(z) [+ log_det],

    ``log_p`` the target's log-density at x = f(z) (-S_lambda2(f(U)) for a gauge target),
    ``log_r`` the base's at z (-S_lambda1(U) for the lambda_1 ensemble), ``logJ`` the flow's
    log-det (None: no flow, plain reweighting), ``log_det`` a term estimated elsewhere (Nf = 2:
    the stochastic log[det M^dag M(f(U)) / det M^dag M(U)] of `gaugeflow evaluate`). Arrays
    (per sample) or floats; summed in this order."""
    lw = log_p - log_r
    if logJ is not None:
        lw = lw + logJ
    if log_det is not None:
        lw = lw + log_det
    return lw


def log_weights(model, params, base, target, z, layout: Layout | None = None) -> FlowLogWeights:
    """x = f(z) and log w(x) = log p(x) - log r(z) + log J(z), float64 per sample.

    Returns :class:`FlowLogWeights` ``(x, log_w)`` (the flowed fields first; ``.log_w`` for the
    weights alone). Note the argument order (base, target), the reverse of :func:`train`'s.
    """
    _check_roles(base, target, "flows.log_weights")
    layout = _layout(model, z, layout)
    x, logJ = model.forward(params, z, layout=layout)
    return FlowLogWeights(x, log_weight(target.log_prob(x, layout=layout), base.log_prob(z, layout=layout), logJ))


def sample_loss_and_grad(model, params, base, target, z, estimator: str = "path",
                         layout: Layout | None = None, fused: bool = True):
    """Mean sample loss (log q - log p) over the batch, its parameter gradient, and log w.

    z has shape (B, Nd, *sites, N, N) (one batch axis). Returns ``(loss, grads, log_w, x)``
    with loss a float, grads a dict (sums over this rank's sites), log_w float64 (B,).
    ``fused``: use ``model.forward_path`` for the path estimator when the model has it.
    """
    if estimator not in ("path", "plain"):
        raise ValueError(f"unknown estimator {estimator!r}; use 'path' or 'plain'")
    _check_roles(base, target, "flows.sample_loss_and_grad")
    if hasattr(base, "loss_and_grad"):     # a base that carries its own objective (pseudofermion flows)
        loss, grads, log_w = base.loss_and_grad(model, params, z, estimator, layout)
        return loss, grads, log_w, None
    layout = _layout(model, z, layout)
    xp = namespace(z)
    if z.ndim != layout.Nd + 4:
        raise ValueError(f"training batch must have shape (B, Nd, *sites, N, N); got {tuple(z.shape)}")
    B = int(z.shape[0])
    ones = xp.ones((B,), dtype=xp.float64)
    if estimator == "path" and fused and hasattr(model, "forward_path"):
        z_bar = _score_cotangent(base, z, layout) / B
        x, logJ, ctx, gq = model.forward_path(params, z, z_bar, ones / B, layout=layout)
    else:
        x, logJ, ctx = model.forward_ctx(params, z, layout=layout)
        gq = None
    log_p = target.log_prob(x, layout=layout)
    log_r = base.log_prob(z, layout=layout)
    log_w = log_weight(log_p, log_r, logJ)
    loss = float(-xp.mean(log_w))
    if estimator == "plain":
        x_bar = -_score_cotangent(target, x, layout) / B
        _, grads = model.vjp(params, ctx, x_bar, -ones / B)
    else:
        if gq is None:
            z2, logJi, ictx = model.inverse_ctx(params, x, layout=layout)
            z_bar = _score_cotangent(base, z2, layout) / B
            gq, _ = model.inverse_vjp(params, ictx, z_bar, ones / B)
        G = gq - _score_cotangent(target, x, layout) / B
        _, grads = model.vjp(params, ctx, G, None)
    return loss, grads, log_w, x


@dataclass
class TrainHistory:
    step: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    ess: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    holdout_step: list = field(default_factory=list)
    holdout_ess: list = field(default_factory=list)
    holdout_loss: list = field(default_factory=list)

    def as_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: list(v) for k, v in d.items() if k in cls.__dataclass_fields__})

    def up_to(self, n: int) -> "TrainHistory":
        """The history of steps 0 ... n-1 only (and the held-out evaluations after at most n
        steps): what a checkpoint after n steps holds, also when step n was cut off half-way
        through its bookkeeping."""
        k = sum(1 for s in self.step if s < n)
        h = sum(1 for s in self.holdout_step if s <= n)
        main = ("step", "loss", "ess", "grad_norm", "lr", "seconds")
        return TrainHistory(**{f: list(getattr(self, f)[:k]) for f in main},
                            **{f: list(getattr(self, f)[:h]) for f in ("holdout_step", "holdout_ess", "holdout_loss")})


def _ess(log_w):
    from analysis import ess
    return float(ess(to_host(log_w)))


def _device_rng(seed: int, base, params) -> Rng:
    """The base-sampling stream on the device of the model: the base's namespace if it has one,
    else that of the parameters (Philox is counter-based: the same numbers on every device)."""
    xp = getattr(base, "xp", None)
    if xp is None and params:
        xp = namespace(*[v for v in params.values()][:1])
    return Rng(seed, xp=xp)


def evaluate_holdout(model, params, base, target, layout, n: int = 64, batch_size: int = 16, seed: int = 0):
    """ESS and mean loss on held-out samples: fresh Haar draws (seed stream disjoint from
    training) or the held-out configurations of an ensemble base. Returns
    :class:`HoldoutResult` ``(ess, loss, log_w)``."""
    _check_roles(base, target, "flows.evaluate_holdout")
    lws = []
    if hasattr(base, "holdout_log_weights"):     # its own objective: per-shot log w, centred per configuration
        from .pseudofermion import _centred
        raw = base.holdout_log_weights(model, params, seed, n_configs=n)
        lw = to_host(_centred(raw)).astype("float64")
        from analysis import ess
        return HoldoutResult(float(ess(lw)), float(-to_host(raw).mean()), lw)
    if getattr(base, "kind", None) == "ensemble":
        cfgs = base.holdout(n)
        for i in range(0, int(cfgs.shape[0]), batch_size):
            _, lw = log_weights(model, params, base, target, cfgs[i:i + batch_size, ...], layout)
            lws.append(lw)
    else:
        rng = _device_rng(seed, base, params).child(2**40)
        for i in range(0, n, batch_size):
            z = base.sample(min(batch_size, n - i), rng.child(i))
            _, lw = log_weights(model, params, base, target, z, layout)
            lws.append(lw)
    lw = host_concat(lws, "float64")
    from analysis import ess
    return HoldoutResult(float(ess(lw)), float(-lw.mean()), lw)


def _sum_over_ranks(grads, layout):
    """Parameter cotangents are sums over each rank's sites: add them up across ranks."""
    if layout is None or not layout.is_distributed:
        return grads
    return {k: (None if g is None else layout.allreduce_sum(g)) for k, g in grads.items()}


def save_checkpoint(path, model, params, step: int, opt, opt_state, history: "TrainHistory", extra=None,
                    provenance: dict | None = None):
    """Atomic checkpoint: parameters, model config, optimizer state, step and history, with the
    provenance record ``provenance`` (default that of this process: :func:`flows.save_params`)."""
    from .serialize import save_params
    cfg = {"model": model.config(), "optimizer": opt.config(), "step": int(step),
           "history": history.as_dict(), **(extra or {})}
    save_params(path, params, cfg, groups={"adam": opt.state_to_arrays(opt_state)}, provenance=provenance)


def load_checkpoint(path, params_template):
    """(params, config, optimizer state) from :func:`save_checkpoint`."""
    from .serialize import load_params, load_group
    from .optim import Adam
    params, cfg = load_params(path, template=params_template)
    state = Adam.state_from_arrays(load_group(path, "adam"))
    return params, cfg, state


def _check_resumable(path, found: dict, expected: dict):
    """Raise ParamFileError naming the first entry of ``expected`` that differs in ``found``."""
    from .serialize import ParamFileError

    def diff(a, b, where):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                d = diff(a.get(k), b.get(k), f"{where}.{k}" if where else k)
                if d:
                    return d
            return None
        return None if a == b else (where, a, b)

    norm = json.loads(json.dumps(expected))
    d = diff({k: found.get(k) for k in norm}, norm, "")
    if d:
        exc = ParamFileError(f"checkpoint {str(path)!r} belongs to a different training run: {d[0]} is {d[1]!r} "
                             f"there but {d[2]!r} now")
        exc.hint = "delete it to start afresh, or restore the settings"      # what to do (printed by the runner)
        raise exc


def train(model, params, target, base, steps: int, batch_size: int, estimator: str = "path",
          seed: int = 0, optimizer=None, lr: float = 1e-3, schedule: str = "cosine", warmup: int = 0,
          clip: float | None = None, holdout_every: int = 0, holdout_size: int = 64,
          checkpoint: str | Path | None = None, checkpoint_every: int = 10, resume: bool = True,
          progress: bool = True, layout: Layout | None = None, log=None, callback=None,
          run_info: dict | None = None):
    """Train ``params`` of ``model`` by reverse KL; returns ``(params, history)``.

    With ``holdout_every`` the held-out ESS and loss (:func:`evaluate_holdout`) are recorded for
    the untrained flow (step 0) and every ``holdout_every`` steps.
    Step i draws its batch from ``Rng(seed).child(i)``, so a run resumed from a checkpoint
    continues exactly like an uninterrupted one. Checkpoints (parameters, optimizer state,
    history) are written atomically every ``checkpoint_every`` steps and at the end, and when
    the run is interrupted (KeyboardInterrupt: Ctrl-C, or a job's SIGINT/SIGTERM) after the last
    complete step, so that no finished step is lost; with ``resume`` an existing checkpoint is
    continued; it must hold the same model configuration
    and the same ``run_info`` (a JSON-able dict describing target, base and optimiser settings,
    stored with every checkpoint), else :class:`flows.ParamFileError` names the first field
    that differs (a restarted job never continues a different training run).

    Note the argument order (target, base): the sampling and evaluation functions of this
    module take (base, target). A swap is refused with a ``TypeError``.
    """
    _check_roles(base, target, "flows.train")
    from .optim import Adam, LRSchedule
    layout = layout or getattr(base, "layout", None)
    opt = optimizer or Adam(LRSchedule(lr, schedule, total_steps=steps, warmup_steps=warmup), clip_norm=clip)
    state = opt.init(params)
    hist = TrainHistory()
    start = 0
    ck = Path(checkpoint) if checkpoint else None
    if ck is not None and resume and ck.exists():
        params, cfg, state = load_checkpoint(ck, params)
        _check_resumable(ck, cfg, {"model": model.config(), "run_info": run_info})
        start = int(cfg["step"])
        hist = TrainHistory.from_dict(cfg["history"])
        if log:
            log.info(f"resumed training from {ck} at step {start}")
    root = layout is None or layout.rank == 0
    from lattice.io import provenance
    prov = provenance(layout=layout) if ck is not None and root else None     # of this job, in its checkpoints
    bar = None
    if progress and root and start < steps:
        from lattice.progress import progress_bar
        bar = progress_bar(steps, initial=start, desc=f"train ({estimator})", unit="step")
    base_rng = _device_rng(seed, base, params)
    if holdout_every and start == 0 and not hist.holdout_step:   # the untrained flow, for reference
        e, l, _ = evaluate_holdout(model, params, base, target, layout, holdout_size, batch_size, seed)
        hist.holdout_step.append(0)
        hist.holdout_ess.append(e)
        hist.holdout_loss.append(l)
    done, saved = None, start          # the last complete step (n, params, state); the last checkpoint's n
    try:
        for step in range(start, steps):
            t0 = time.perf_counter()
            z = base.sample(batch_size, base_rng.child(step))
            loss, grads, log_w, _ = sample_loss_and_grad(model, params, base, target, z, estimator, layout)
            if not math.isfinite(loss):
                raise FloatingPointError(f"training loss is not finite at step {step}; lower the learning rate")
            grads = _sum_over_ranks(grads, layout)
            params, state, info = opt.update(params, grads, state)
            hist.step.append(step)
            hist.loss.append(loss)
            hist.ess.append(_ess(log_w))
            hist.grad_norm.append(float(info["grad_norm"]))
            hist.lr.append(float(info["lr"]))
            hist.seconds.append(time.perf_counter() - t0)
            if holdout_every and ((step + 1) % holdout_every == 0 or step + 1 == steps):
                e, l, _ = evaluate_holdout(model, params, base, target, layout, holdout_size, batch_size, seed)
                hist.holdout_step.append(step + 1)
                hist.holdout_ess.append(e)
                hist.holdout_loss.append(l)
            if ck is not None and root and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                save_checkpoint(ck, model, params, step + 1, opt, state, hist, extra={"run_info": run_info},
                                provenance=prov)
                saved = step + 1
            done = (step + 1, params, state)
            if callback is not None:
                callback(step, params, hist)
            if bar is not None:
                post = {"loss": f"{loss:.3f}", "ess": f"{hist.ess[-1]:.3f}"}
                if hist.holdout_ess:
                    post["ess_ho"] = f"{hist.holdout_ess[-1]:.3f}"
                bar.set_postfix(post)
                bar.update(1)
    except KeyboardInterrupt:            # Ctrl-C, or SIGINT/SIGTERM of a job: keep the steps made
        if ck is not None and root and done is not None and done[0] > saved:
            n, p_done, s_done = done
            save_checkpoint(ck, model, p_done, n, opt, s_done, hist.up_to(n), extra={"run_info": run_info},
                            provenance=prov)
        raise
    finally:
        if bar is not None:
            bar.close()
    return params, hist


def independence_metropolis(model, params, base, target, n_samples: int, batch_size: int = 16, seed: int = 0,
                            layout: Layout | None = None, observable=None):
    """Independence Metropolis with the flow as proposal: exact samples of the target.

    Proposals x' = f(z'), z' ~ r fresh (Haar base), are accepted with probability
    min(1, w(x')/w(x)), w = p/q; the chain's states are exact samples of p (asymptotically).
    Returns :class:`MetropolisChain` ``(chain, accepted, log_w, acceptance)``: ``chain`` the stacked chain states
    (n_samples, Nd, *sites, N, N), or, with ``observable`` (a function of a batch of fields
    returning one number per field), the host array of its values on the chain states (no
    configurations kept); ``accepted`` bool per proposal; ``log_w`` the log-weight of the
    chain state after each proposal; ``acceptance`` the acceptance rate (first proposal
    excluded). Proposal k is decided with the uniform number k of the stream
    ``Rng(seed).child(2**41)``, so the chain is reproducible from the seed.
    """
    _check_roles(base, target, "flows.independence_metropolis")
    rng = Rng(seed)
    cur_x, cur_lw, cur_obs = None, None, None
    acc, lws, chain = [], [], []
    props = 0
    u_all = to_host(Rng(seed).child(2**41).uniform((n_samples,)))
    i = 0
    while props < n_samples:
        z = base.sample(min(batch_size, n_samples - props), rng.child(i))
        x, lw = log_weights(model, params, base, target, z, layout)
        lwh = to_host(lw)
        obs = None if observable is None else host_array(to_host(observable(x)), "float64")
        for k in range(lwh.shape[0]):
            if cur_lw is None or math.log(max(u_all[props], 1e-300)) < lwh[k] - cur_lw:
                cur_lw = float(lwh[k])
                if observable is None:
                    cur_x = x[k, ...]
                else:
                    cur_obs = obs[k]
                acc.append(True)
            else:
                acc.append(False)
            lws.append(cur_lw)
            chain.append(cur_x if observable is None else cur_obs)
            props += 1
        i += 1
    rate = sum(acc[1:]) / (len(acc) - 1) if len(acc) > 1 else 1.0
    if observable is None:
        out = namespace(chain[0]).stack(chain)
    else:
        out = host_array(chain, "float64")
    return MetropolisChain(out, host_array(acc), host_array(lws, "float64"), rate)


def reweighted_observable(model, params, base, target, observable, n_samples: int, batch_size: int = 16,
                          seed: int = 0, layout: Layout | None = None, bin_size: int = 1):
    """<O>_p from flow samples by reweighting: sum_i w_i O(x_i) / sum_i w_i, x_i = f(z_i),
    with a jackknife error (:func:`analysis.jackknife`); returns ``(estimate, ess)``.

    ``observable(x)`` returns one number per field of the batch. Fresh base draws from the
    stream ``Rng(seed).child(2**42)``.
    """
    _check_roles(base, target, "flows.reweighted_observable")
    from analysis import jackknife, ess
    rng = Rng(seed).child(2**42)
    vals, lws = [], []
    for i in range(0, int(n_samples), int(batch_size)):
        z = base.sample(min(batch_size, n_samples - i), rng.child(i))
        x, lw = log_weights(model, params, base, target, z, layout)
        vals.append(observable(x))
        lws.append(lw)
    v, lw = host_concat(vals, "float64"), host_concat(lws, "float64")
    return jackknife(v, log_weights=lw, bin_size=bin_size), float(ess(lw))
