"""Adam on flat parameter dicts, with global-norm gradient clipping and learning-rate schedules.

Adam (Kingma & Ba, arXiv:1412.6980, Algorithm 1), per parameter array and element, at update
t = 1, 2, ...:

    m_t = beta1 m_{t-1} + (1 - beta1) g_t
    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    p_t = p_{t-1} - lr_t * m_hat / (sqrt(v_hat) + eps),
          m_hat = m_t / (1 - beta1^t),  v_hat = v_t / (1 - beta2^t).

Optional clipping (before the moments): if ||g|| = sqrt(sum over all arrays of sum g^2)
exceeds ``clip_norm``, every gradient is scaled by clip_norm / ||g||.

The optimiser is functional, like the modules: ``state = opt.init(params)``,
``params, state, info = opt.update(params, grads, state)``. The state is a dict
``{"t": int, "m": {key: array}, "v": {key: array}}``; :meth:`Adam.state_to_arrays` /
:meth:`Adam.state_from_arrays` flatten it for checkpoints (``flows.save_params(...,
groups={"adam": ...})``). Gradient keys missing from ``grads`` count as zero (module contract).
Parameters must be real (all parameters of the flow modules are).
"""
from __future__ import annotations

import math

from lattice.backend import namespace

__all__ = ["Adam", "LRSchedule"]


class LRSchedule:
    """Learning rate as a function of the update number t = 1, 2, ...

    kind "constant": lr; "cosine": cosine decay from lr to ``min_lr`` over ``total_steps``;
    "linear": linear decay from lr to ``min_lr`` over ``total_steps``. Optional linear warm-up
    lr * t / warmup_steps for t <= warmup_steps (the decay then runs over the remaining steps).
    """

    KINDS = ("constant", "cosine", "linear")

    def __init__(self, lr: float, kind: str = "constant", total_steps: int | None = None,
                 warmup_steps: int = 0, min_lr: float = 0.0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown schedule {kind!r}; use one of {self.KINDS}")
        if kind != "constant" and (total_steps is None or int(total_steps) <= int(warmup_steps)):
            raise ValueError(f"schedule {kind!r} needs total_steps > warmup_steps, got "
                             f"total_steps={total_steps}, warmup_steps={warmup_steps}")
        if not lr > 0 or min_lr < 0 or int(warmup_steps) < 0:
            raise ValueError(f"need lr > 0, min_lr >= 0, warmup_steps >= 0 (got {lr}, {min_lr}, {warmup_steps})")
        self.lr, self.kind, self.min_lr = float(lr), kind, float(min_lr)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, t: int) -> float:
        t = int(t)
        if self.warmup_steps and t <= self.warmup_steps:
            return self.lr * t / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        span = self.total_steps - self.warmup_steps
        x = min(max((t - self.warmup_steps) / span, 0.0), 1.0)
        if self.kind == "cosine":
            return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * x))
        return self.lr + (self.min_lr - self.lr) * x

    def config(self) -> dict:
        return {"lr": self.lr, "kind": self.kind, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "min_lr": self.min_lr}


class Adam:
    """Bias-corrected Adam on a flat ``dict[str, array]`` of real parameters.

    Parameters
    ----------
    lr : a float or an :class:`LRSchedule` (or any callable t -> lr).
    betas, eps : Adam's beta1, beta2, epsilon.
    clip_norm : global gradient-norm clipping threshold (None: no clipping).
    skip_nonfinite : if True, an update with NaN/inf gradients is skipped (reported in
        ``info["skipped"]``); by default it raises ``FloatingPointError`` naming the arrays.
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps: float = 1e-8, clip_norm: float | None = None,
                 skip_nonfinite: bool = False):
        self.schedule = lr if callable(lr) else LRSchedule(float(lr))
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0) or not eps > 0:
            raise ValueError(f"need 0 <= beta < 1 and eps > 0, got betas={betas}, eps={eps}")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {clip_norm}")
        self.b1, self.b2, self.eps = b1, b2, float(eps)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.skip_nonfinite = bool(skip_nonfinite)

    def config(self) -> dict:
        sched = self.schedule.config() if hasattr(self.schedule, "config") else repr(self.schedule)
        return {"schedule": sched, "betas": [self.b1, self.b2], "eps": self.eps,
                "clip_norm": self.clip_norm, "skip_nonfinite": self.skip_nonfinite}

    # ------------------------------------------------------------------ state
    def init(self, params) -> dict:
        for k, p in params.items():
            if namespace(p).isdtype(p.dtype, "complex floating"):
                raise TypeError(f"Adam: parameter {k!r} is complex; only real parameters are supported")
        return {"t": 0,
                "m": {k: namespace(p).zeros_like(p) for k, p in params.items()},
                "v": {k: namespace(p).zeros_like(p) for k, p in params.items()}}

    @staticmethod
    def state_to_arrays(state, xp=None) -> dict:
        """Flat dict of arrays ``{"t": 0-d int64, "m.<key>": ..., "v.<key>": ...}``."""
        if xp is None:
            arrs = list(state["m"].values())
            from lattice.backend import default_xp
            xp = namespace(*arrs) if arrs else default_xp()
        out = {"t": xp.asarray(int(state["t"]), dtype=xp.int64)}
        out.update({f"m.{k}": v for k, v in state["m"].items()})
        out.update({f"v.{k}": v for k, v in state["v"].items()})
        return out

    @staticmethod
    def state_from_arrays(arrays) -> dict:
        if "t" not in arrays:
            raise KeyError("Adam state: missing the step counter 't'")
        m = {k[2:]: v for k, v in arrays.items() if k.startswith("m.")}
        v = {k[2:]: a for k, a in arrays.items() if k.startswith("v.")}
        if set(m) != set(v):
            raise KeyError(f"Adam state: first and second moments cover different keys: "
                           f"{sorted(set(m) ^ set(v))}")
        return {"t": int(arrays["t"]), "m": m, "v": v}

    # ------------------------------------------------------------------ update
    def update(self, params, grads, state):
        """One Adam step; returns ``(new_params, new_state, info)``.

        ``info``: lr, grad_norm (before clipping), clip scale, skipped.
        """
        extra = set(grads) - set(params)
        if extra:
            raise KeyError(f"Adam: gradients for unknown parameters {sorted(extra)}")
        missing = set(params) - set(state["m"])
        if missing:
            raise KeyError(f"Adam: optimiser state has no moments for {sorted(missing)} (re-run init)")
        sq, bad = 0.0, []
        for k, g in grads.items():
            if g is None:
                continue
            if tuple(g.shape) != tuple(params[k].shape):
                raise ValueError(f"Adam: gradient of {k!r} has shape {tuple(g.shape)}, parameter has "
                                 f"{tuple(params[k].shape)}")
            s = float(namespace(g).sum(g * g))
            if not math.isfinite(s):
                bad.append(k)
            sq += s
        norm = math.sqrt(sq) if not bad else float("nan")
        t = state["t"] + 1
        lr = float(self.schedule(t))
        info = {"lr": lr, "grad_norm": norm, "clip_scale": 1.0, "skipped": False, "step": t}
        if bad:
            if self.skip_nonfinite:
                info["skipped"] = True
                return params, state, info
            raise FloatingPointError(f"Adam: non-finite gradients in {bad}")
        scale = 1.0
        if self.clip_norm is not None and norm > self.clip_norm:
            scale = self.clip_norm / norm
        info["clip_scale"] = scale
        c1 = 1.0 - self.b1 ** t
        c2 = 1.0 - self.b2 ** t
        new_p, new_m, new_v = {}, {}, {}
        for k, p in params.items():
            xp = namespace(p)
            g = grads.get(k)
            m, v = state["m"][k], state["v"][k]
            if g is None:
                m = self.b1 * m
                v = self.b2 * v
            else:
                g = xp.astype(g, p.dtype) * scale if scale != 1.0 else xp.astype(g, p.dtype)
                m = self.b1 * m + (1.0 - self.b1) * g
                v = self.b2 * v + (1.0 - self.b2) * (g * g)
            new_p[k] = p - lr * (m / c1) / (xp.sqrt(v / c2) + self.eps)
            new_m[k], new_v[k] = m, v
        return new_p, {"t": t, "m": new_m, "v": new_v}, info
