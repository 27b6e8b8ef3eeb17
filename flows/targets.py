"""Targets p(U) and base distributions r(U) for flow training.

A *target term* is any object with

* ``log_prob(U, layout=None)`` -> float64 per batch element (unnormalised log density), and
* ``force(U, layout=None)``   -> grad(-log p) as an su(N) field in the docs/design.md §4
  convention (for p = exp(-S) this is the usual force grad S).

Gauge actions of :mod:`lattice.actions` become terms through :class:`GaugeTarget`; the runner
adds the exact Nf=2 determinant log det M^dag M through the same interface (this package does
not import ``fermions``). :class:`Target` sums terms.

Bases:

* :class:`HaarBase` -- independent Haar links, log r = 0 (the Haar measure is normalised);
* :class:`EnsembleBase` -- configurations from an existing Markov chain at action lambda_1
  (flows between nearby actions, paper section 3). Its log density is known up to a
  constant, log r = -S_lambda1 (+ log det M^dag M for dynamical fermions), so it is itself a
  :class:`Target`; training and held-out configurations are kept apart so the ESS measured
  on held-out data is honest (docs/design.md §7).
"""
from __future__ import annotations

from typing import Sequence

from lattice.backend import Rng, namespace
from lattice.layout import Layout, infer_gauge_layout

__all__ = ["GaugeTarget", "Target", "HaarBase", "EnsembleBase", "as_target"]


class GaugeTarget:
    """p(U) = exp(-S(U)) for a gauge action with ``action`` and ``force``."""

    def __init__(self, action):
        self.action = action

    def log_prob(self, U, layout: Layout | None = None):
        return -self.action.action(U, layout=layout)

    def force(self, U, layout: Layout | None = None):
        return self.action.force(U, layout=layout)

    def describe(self) -> dict:
        p = self.action.params() if hasattr(self.action, "params") else {"repr": repr(self.action)}
        return {"type": "gauge", **p}


class Target:
    """Sum of target terms: log p = sum_k log p_k, force = sum_k force_k."""

    def __init__(self, terms: Sequence):
        self.terms = [as_target(t) for t in terms]
        if not self.terms:
            raise ValueError("a target needs at least one term")

    def log_prob(self, U, layout: Layout | None = None):
        out = None
        for t in self.terms:
            v = t.log_prob(U, layout=layout)
            out = v if out is None else out + v
        return out

    def force(self, U, layout: Layout | None = None):
        out = None
        for t in self.terms:
            v = t.force(U, layout=layout)
            out = v if out is None else out + v
        return out

    def describe(self) -> dict:
        return {"type": "sum", "terms": [t.describe() if hasattr(t, "describe") else repr(t) for t in self.terms]}


def as_target(obj):
    """A target term from a gauge action or anything with log_prob and force."""
    if hasattr(obj, "log_prob") and hasattr(obj, "force"):
        return obj
    if hasattr(obj, "action") and hasattr(obj, "force"):
        return GaugeTarget(obj)
    raise TypeError(f"{obj!r} is neither a gauge action nor a target term (log_prob + force)")


class HaarBase:
    """Independent Haar-random SU(N) links; log r(U) = 0 and its score vanishes."""

    kind = "haar"

    def __init__(self, lattice_shape, N: int = 3, layout: Layout | None = None, xp=None):
        self.layout = layout if layout is not None else Layout(lattice_shape)
        self.N = int(N)
        self.xp = xp

    def sample(self, batch_size: int, rng: Rng):
        return rng.haar(self.N, lead=(int(batch_size), self.layout.Nd), layout=self.layout)

    def log_prob(self, U, layout: Layout | None = None):
        xp = namespace(U)
        lay = infer_gauge_layout(U, layout or self.layout)
        return xp.zeros(U.shape[: U.ndim - lay.Nd - 3], dtype=xp.float64)

    def force(self, U, layout: Layout | None = None):
        return namespace(U).zeros_like(U)

    def describe(self) -> dict:
        return {"type": "haar", "N": self.N, "lattice": list(self.layout.global_shape)}


class EnsembleBase:
    """Configurations U ~ p_lambda1 from a Markov chain, split into training and held-out sets.

    Parameters
    ----------
    configs : array (n_configs, Nd, *sites, N, N) (or a callable ``get(indices)`` with
        ``n_configs``) of configurations at the base action.
    target : the base density as a target term (e.g. ``GaugeTarget(Wilson(beta, lam1))``,
        plus the fermion determinant term for Nf=2); provides log r and its score.
    holdout : number (int) or fraction (float < 1) of configurations kept for evaluation;
        they are the *last* ones of the chain, never used for training.
    """

    kind = "ensemble"

    def __init__(self, configs, target, holdout=0.25, layout: Layout | None = None):
        self.configs = configs
        n = int(configs.shape[0])
        h = int(round(holdout * n)) if isinstance(holdout, float) and holdout < 1 else int(holdout)
        if not 0 < h < n:
            raise ValueError(f"need 0 < held-out < {n} configurations, got {h}")
        self.n_train, self.n_holdout = n - h, h
        self.target = as_target(target)
        self.layout = infer_gauge_layout(configs[:1, ...], layout)

    def sample(self, batch_size: int, rng: Rng):
        xp = namespace(self.configs)
        idx = rng.integers(self.n_train, lead=(int(batch_size),))
        return xp.take(self.configs, idx, axis=0)

    def holdout(self, max_n: int | None = None):
        start = self.n_train
        stop = self.n_train + (self.n_holdout if max_n is None else min(self.n_holdout, int(max_n)))
        return self.configs[start:stop, ...]

    def log_prob(self, U, layout: Layout | None = None):
        return self.target.log_prob(U, layout=layout)

    def force(self, U, layout: Layout | None = None):
        return self.target.force(U, layout=layout)

    def describe(self) -> dict:
        return {"type": "ensemble", "n_train": self.n_train, "n_holdout": self.n_holdout,
                "target": self.target.describe() if hasattr(self.target, "describe") else repr(self.target)}
