"""Result records for statistical estimates: a value, its error and (optionally) its replicas.

An :class:`Estimate` is what every resampling routine of :mod:`analysis` returns. It unpacks
as ``mean, err = est``, prints in the usual lattice notation ``0.2761(21)``, and keeps the
resampling replicas so that quantities derived from several estimates of the *same*
resampling (same deleted configurations, or same bootstrap draws) stay correlated:

    >>> E = fit.energy(0); A = fit.amplitude(0)           # same jackknife
    >>> ratio = derive(lambda e, a: a / e, E, A)           # correlated error

Error conventions (``method``):

* ``"jackknife"``: replicas f_k are the leave-one-bin-out values, and
  err² = (n-1)/n Σ_k (f_k - f̄)², f̄ = mean of the replicas. The central value is f evaluated
  on the full sample (not bias-corrected); :attr:`Estimate.bias` = (n-1)(f̄ - f) is the
  jackknife estimate of the O(1/n) bias and :attr:`Estimate.bias_corrected` = n f - (n-1) f̄.
  Independent ensembles are combined by concatenating their jackknife replicas in
  ``blocks`` (one block per ensemble, see :func:`align_ensembles`); the variance is the sum
  of the per-block jackknife variances.
* ``"bootstrap"``: replicas are bootstrap values, err = their standard deviation (ddof=1).
* ``"gamma"``, ``"hessian"``, ``"delta"``: no replicas; the error comes from the
  autocorrelation function, the curvature of χ², or linear error propagation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Estimate", "derive", "align_ensembles", "format_value", "replica_covariance"]

_REPLICA_METHODS = ("jackknife", "bootstrap")


def format_value(mean: float, err: float, digits: int = 2) -> str:
    """Format ``mean ± err`` as ``mean(err)`` with ``digits`` significant digits of the error.

    ``format_value(0.27613, 0.00214) == '0.2761(21)'``; large or small numbers get a common
    exponent: ``format_value(1.2345e-5, 5.6e-8) == '1.2345(56)e-05'``.
    """
    mean = float(mean)
    err = float(err)
    if not math.isfinite(mean):
        return str(mean)
    if not math.isfinite(err) or err <= 0.0:
        return f"{mean:.6g}" + ("" if err == 0.0 else f"({err})")
    scale = max(abs(mean), err)
    exponent = int(math.floor(math.log10(scale)))
    suffix = ""
    if exponent < -3 or exponent > 4:
        mean, err = mean / 10.0 ** exponent, err / 10.0 ** exponent
        suffix = f"e{exponent:+03d}"
    decimals = digits - 1 - int(math.floor(math.log10(err)))
    if round(err, decimals) >= 10.0 ** (digits - decimals):   # rounding 0.0996 -> 0.10
        decimals -= 1
    if decimals > 0:
        return f"{mean:.{decimals}f}({round(err * 10.0 ** decimals):d}){suffix}"
    return f"{round(mean, decimals):.0f}({round(err, decimals):.0f}){suffix}"


def replica_covariance(replicas: np.ndarray, method: str, blocks=None) -> np.ndarray:
    """Covariance matrix of the flattened quantity from its replicas, shape (k, k).

    Jackknife: Σ_blocks (n_b-1)/n_b Σ_{k∈b} δf_k δf_kᵀ with δf_k = f_k - f̄_b;
    bootstrap: sample covariance of the replicas (ddof=1).
    """
    r = np.asarray(replicas, dtype=np.float64)
    r = r.reshape(r.shape[0], -1)
    if method == "bootstrap":
        d = r - r.mean(axis=0)
        return d.T @ d / (r.shape[0] - 1)
    if method != "jackknife":
        raise ValueError(f"replica covariance needs method 'jackknife' or 'bootstrap', got {method!r}")
    blocks = (r.shape[0],) if blocks is None else tuple(blocks)
    cov = np.zeros((r.shape[1], r.shape[1]))
    start = 0
    for nb in blocks:
        rb = r[start:start + nb]
        d = rb - rb.mean(axis=0)
        cov += (nb - 1) / nb * (d.T @ d)
        start += nb
    return cov


def _replica_error(replicas: np.ndarray, method: str, blocks=None) -> np.ndarray:
    r = np.asarray(replicas, dtype=np.float64)
    if method == "bootstrap":
        return r.std(axis=0, ddof=1)
    blocks = (r.shape[0],) if blocks is None else tuple(blocks)
    var = np.zeros(r.shape[1:])
    start = 0
    for nb in blocks:
        rb = r[start:start + nb]
        var = var + (nb - 1) / nb * np.sum((rb - rb.mean(axis=0)) ** 2, axis=0)
        start += nb
    return np.sqrt(var)


def _scalar_or_array(x):
    a = np.asarray(x, dtype=np.float64)
    return float(a) if a.ndim == 0 else a


@dataclass(repr=False, eq=False)
class Estimate:
    """A statistical estimate: ``mean``, ``err`` (same shape) and optional ``replicas``.

    Attributes
    ----------
    mean, err : float or ndarray of the same shape.
    replicas : ndarray (n_replicas, *shape) or None. Jackknife: leave-one-bin-out values;
        bootstrap: bootstrap values.
    method : "jackknife" | "bootstrap" | "gamma" | "hessian" | "delta".
    blocks : jackknife only, number of replicas per independent ensemble (default: one block).
    label : optional name used when printing.
    """

    mean: object
    err: object
    replicas: np.ndarray | None = None
    method: str = "jackknife"
    blocks: tuple | None = None
    label: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.mean = _scalar_or_array(self.mean)
        self.err = _scalar_or_array(self.err)
        if np.shape(self.mean) != np.shape(self.err):
            raise ValueError(f"mean shape {np.shape(self.mean)} != err shape {np.shape(self.err)}")
        if self.replicas is not None:
            self.replicas = np.asarray(self.replicas, dtype=np.float64)
            if self.replicas.shape[1:] != np.shape(self.mean):
                raise ValueError(f"replicas shape {self.replicas.shape} does not match mean shape "
                                 f"{np.shape(self.mean)}")
            if self.blocks is None:
                self.blocks = (self.replicas.shape[0],)
            self.blocks = tuple(int(b) for b in self.blocks)
            if sum(self.blocks) != self.replicas.shape[0]:
                raise ValueError(f"blocks {self.blocks} do not add up to {self.replicas.shape[0]} replicas")

    @classmethod
    def from_replicas(cls, mean, replicas, method: str, blocks=None, label: str = "", info=None) -> "Estimate":
        """Build an estimate whose error is computed from ``replicas`` by ``method``'s rule."""
        replicas = np.asarray(replicas, dtype=np.float64)
        err = _replica_error(replicas, method, blocks)
        return cls(mean, err, replicas, method, blocks, label, dict(info or {}))

    # ----------------------------------------------------------------- conveniences
    def __iter__(self):
        yield self.mean
        yield self.err

    @property
    def shape(self):
        return np.shape(self.mean)

    @property
    def n_replicas(self) -> int:
        return 0 if self.replicas is None else self.replicas.shape[0]

    @property
    def rel_err(self):
        return np.abs(np.asarray(self.err) / np.asarray(self.mean))

    def __getitem__(self, idx) -> "Estimate":
        mean = np.asarray(self.mean)[idx]
        err = np.asarray(self.err)[idx]
        reps = None if self.replicas is None else self.replicas[(slice(None),) + np.index_exp[idx]]
        return Estimate(mean, err, reps, self.method, self.blocks, self.label, dict(self.info))

    def __len__(self):
        if np.ndim(self.mean) == 0:
            raise TypeError("scalar Estimate has no len(); unpack it as `mean, err = est`")
        return np.shape(self.mean)[0]

    def cov(self) -> np.ndarray:
        """Covariance matrix of the flattened estimate (needs replicas)."""
        self._need_replicas("cov()")
        return replica_covariance(self.replicas, self.method, self.blocks)

    @property
    def bias(self):
        """Jackknife bias estimate (n-1)(f̄_replicas - f); None for other methods."""
        if self.method != "jackknife" or self.replicas is None or len(self.blocks) != 1:
            return None
        n = self.replicas.shape[0]
        return _scalar_or_array((n - 1) * (self.replicas.mean(axis=0) - np.asarray(self.mean)))

    @property
    def bias_corrected(self):
        """Jackknife bias-corrected value n f - (n-1) f̄_replicas (single ensemble only)."""
        b = self.bias
        return None if b is None else _scalar_or_array(np.asarray(self.mean) - b)

    def apply(self, func, vectorized: bool = False, label: str = "") -> "Estimate":
        """f(estimate) with the error propagated through the replicas (same resampling)."""
        return derive(func, self, vectorized=vectorized, label=label)

    def _need_replicas(self, what):
        if self.replicas is None or self.method not in _REPLICA_METHODS:
            raise ValueError(f"{what} needs jackknife or bootstrap replicas; this estimate has "
                             f"method={self.method!r} without replicas")

    # ----------------------------------------------------------------- printing
    def __format__(self, spec):
        if np.ndim(self.mean) == 0:
            digits = int(spec) if spec else 2
            return format_value(self.mean, self.err, digits)
        return repr(self)

    def __str__(self):
        if np.ndim(self.mean) == 0:
            return format_value(self.mean, self.err)
        return repr(self)

    def __repr__(self):
        tag = self.method + (f", n={self.n_replicas}" if self.replicas is not None else "")
        if len(self.blocks or ()) > 1:
            tag += f", ensembles={len(self.blocks)}"
        name = f"{self.label}: " if self.label else ""
        if np.ndim(self.mean) == 0:
            return f"Estimate({name}{format_value(self.mean, self.err)}; {tag})"
        m = np.asarray(self.mean).ravel()
        e = np.asarray(self.err).ravel()
        idx = list(np.ndindex(np.shape(self.mean)))
        lines = [f"Estimate({name}shape={np.shape(self.mean)}; {tag})"]
        show = range(len(m)) if len(m) <= 40 else list(range(20)) + [None] + list(range(len(m) - 10, len(m)))
        for k in show:
            if k is None:
                lines.append("  ...")
                continue
            key = idx[k][0] if len(idx[k]) == 1 else idx[k]
            lines.append(f"  [{key}] {format_value(m[k], e[k])}")
        return "\n".join(lines)


def _check_compatible(estimates):
    first = estimates[0]
    for e in estimates:
        if not isinstance(e, Estimate):
            raise TypeError(f"derive() takes Estimate objects, got {type(e).__name__}")
        e._need_replicas("derive()")
        if e.method != first.method or e.replicas.shape[0] != first.replicas.shape[0] or e.blocks != first.blocks:
            raise ValueError("derive(): estimates come from different resamplings "
                             f"({first.method}, {first.n_replicas} replicas, blocks {first.blocks}) vs "
                             f"({e.method}, {e.n_replicas} replicas, blocks {e.blocks}); they must share "
                             "the same deleted configurations / bootstrap draws (use align_ensembles "
                             "for independent ensembles)")


def derive(func, *estimates: Estimate, vectorized: bool = False, label: str = "") -> Estimate:
    """Derived quantity ``func(*values)`` of estimates that share one resampling.

    ``func`` is applied to the central values and to every replica; the error follows the
    replicas' method (jackknife/bootstrap), so correlations between the inputs are kept.
    With ``vectorized=True`` ``func`` receives the stacked replicas (leading axis) in one call.
    """
    if not estimates:
        raise ValueError("derive() needs at least one Estimate")
    _check_compatible(estimates)
    first = estimates[0]
    mean = np.asarray(func(*[e.mean for e in estimates]), dtype=np.float64)
    if vectorized:
        reps = np.asarray(func(*[e.replicas for e in estimates]), dtype=np.float64)
    else:
        n = first.replicas.shape[0]
        reps = np.stack([np.asarray(func(*[e.replicas[k] for e in estimates]), dtype=np.float64)
                         for k in range(n)])
    if reps.shape[1:] != mean.shape:
        raise ValueError(f"func returned shape {reps.shape[1:]} on replicas but {mean.shape} on the mean")
    return Estimate.from_replicas(mean, reps, first.method, first.blocks, label)


def align_ensembles(*estimates: Estimate) -> tuple:
    """Put jackknife estimates from *independent* ensembles on one joint replica set.

    Estimate i (from ensemble i, its own jackknife with n_i replicas) becomes an estimate
    with Σ n_j replicas in len(estimates) blocks: its own replicas in block i and its central
    value in every other block. The per-block jackknife variances then add, and
    :func:`derive` of the aligned estimates gives the correct error of any function of them.
    """
    for e in estimates:
        if not isinstance(e, Estimate) or e.method != "jackknife" or e.replicas is None:
            raise ValueError("align_ensembles() takes jackknife Estimates with replicas")
    blocks = []
    for e in estimates:
        blocks.extend(e.blocks)
    out = []
    for i, e in enumerate(estimates):
        parts = []
        for j, other in enumerate(estimates):
            if i == j:
                parts.append(e.replicas)
            else:
                parts.append(np.broadcast_to(np.asarray(e.mean), (other.n_replicas,) + e.shape))
        out.append(Estimate.from_replicas(e.mean, np.concatenate(parts, axis=0), "jackknife",
                                          tuple(blocks), e.label, e.info))
    return tuple(out)
