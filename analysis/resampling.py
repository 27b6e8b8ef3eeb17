"""Resampling with reweighting: jackknife, bootstrap, Γ-method, ESS.

Data model
----------
``samples`` is an array of shape (N, ...) with the configuration (Monte Carlo time) axis
first, or a tuple/list of such arrays measured on the *same* N configurations (e.g. a
correlator and the Feynman–Hellmann operator). ``func`` maps the averages to a derived
quantity: ``func(mean)`` or ``func(*means)`` for a tuple; it defaults to the identity.

Reweighting
-----------
Every estimator takes optional per-configuration ``log_weights`` (shape (N,), unnormalised,
float64). The reweighted average is

    ⟨O⟩ = Σ_i w_i O_i / Σ_i w_i,    w_i = exp(log_w_i - max_j log_w_j)   (log-sum-exp),

so weights spanning hundreds of e-folds neither overflow nor underflow the sum. For a tuple
of observables, ``log_weights`` is one array (applied to every observable) or a tuple with
one entry (array or None = unweighted) per observable; all use the same configurations.
Resampling always treats numerator and denominator together: the jackknife deletes bin b
from both Σ w O and Σ w, the bootstrap redraws the configurations of both.

Binning
-------
``bin_size=b`` groups consecutive configurations into N//b bins (the last N mod b
configurations are dropped, also from the central value) and resamples bins; this is how
autocorrelations are handled by the jackknife and bootstrap. The Γ-method handles them
explicitly instead.

Conventions
-----------
Jackknife: central value f(full sample), error² = (n-1)/n Σ_k (f_k - f̄)² over leave-one-bin-out
replicas f_k (not bias corrected; see :attr:`Estimate.bias`). Leave-one-out sums are formed
from prefix and suffix sums, not as (total − bin), so a dominant weight does not cancel
catastrophically. Bootstrap: seeded ``numpy.random.Generator`` (default seed 0),
error = std of the replicas (ddof=1), central value f(full sample).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft

from .estimate import Estimate, DEFAULT_S, central_jacobian

__all__ = ["ess", "reweighted_mean", "resample_means", "jackknife", "bootstrap",
           "gamma_method", "GammaResult"]


# ----------------------------------------------------------------------------- ESS
def ess(log_weights, axis: int = -1):
    """Effective sample size per sample from log-weights (paper eq. 11), in (0, 1].

        ESS = (Σ w)² / (N Σ w²),   w = exp(log w - max log w)  in float64,

    the sample estimate of E_q[w]² / E_q[w²]. ESS = 1 for equal weights; invariant under
    adding a constant to the log-weights. ``log_weights`` of shape (..., N) gives one value
    per leading index (``axis`` selects the sample axis). Entries of -inf (zero weight) are
    allowed; NaN or +inf raise ``ValueError``.

    This is the project's one ESS implementation; other packages re-export it.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim == 0 or lw.shape[axis] == 0:
        raise ValueError(f"ess(): need a non-empty array of log-weights, got shape {lw.shape}")
    if np.any(np.isnan(lw)) or np.any(lw == np.inf):
        raise ValueError("ess(): log-weights contain NaN or +inf")
    mx = np.max(lw, axis=axis, keepdims=True)
    if np.any(mx == -np.inf):
        raise ValueError("ess(): all log-weights are -inf (every weight is zero)")
    w = np.exp(lw - mx)
    n = lw.shape[axis]
    out = np.sum(w, axis=axis) ** 2 / (n * np.sum(w * w, axis=axis))
    return float(out) if out.ndim == 0 else out


# ----------------------------------------------------------------------------- input handling
def _as_observable(x, name="samples") -> np.ndarray:
    a = np.asarray(x)
    if np.iscomplexobj(a):
        raise TypeError(f"{name} is complex; pass real and imaginary parts as separate real "
                        "observables (e.g. a tuple (C.real, C.imag))")
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        raise ValueError(f"{name} must have a leading configuration axis, got a scalar")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def _pieces(samples):
    """Normalise ``samples`` to a list of arrays (N, ...) and a flag 'was a tuple'."""
    if isinstance(samples, (tuple, list)):
        if len(samples) == 0:
            raise ValueError("empty tuple of samples")
        arrs = [_as_observable(s, f"samples[{i}]") for i, s in enumerate(samples)]
        n = arrs[0].shape[0]
        for i, a in enumerate(arrs):
            if a.shape[0] != n:
                raise ValueError(f"samples[{i}] has {a.shape[0]} configurations, samples[0] has {n}; "
                                 "a tuple of observables must be measured on the same configurations")
        return arrs, True
    return [_as_observable(samples)], False


def _check_log_weights(lw, n, name="log_weights") -> np.ndarray:
    a = np.asarray(lw, dtype=np.float64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one per configuration), got {a.shape}")
    if np.any(np.isnan(a)) or np.any(a == np.inf):
        raise ValueError(f"{name} contains NaN or +inf")
    if np.all(a == -np.inf):
        raise ValueError(f"{name}: every weight is zero")
    return a


def _weights_per_piece(log_weights, n_pieces, n):
    """List of (normalised weights (N,) or None) per piece."""
    if log_weights is None:
        return [None] * n_pieces
    per_piece = isinstance(log_weights, (tuple, list)) and (
        any(x is None for x in log_weights) or np.ndim(log_weights[0]) >= 1)
    if per_piece:
        if len(log_weights) != n_pieces:
            raise ValueError(f"got {len(log_weights)} log-weight entries for {n_pieces} observables")
        lws = [None if x is None else _check_log_weights(x, n, f"log_weights[{i}]")
               for i, x in enumerate(log_weights)]
    else:
        lws = [_check_log_weights(log_weights, n)] * n_pieces
    return [None if lw is None else np.exp(lw - np.max(lw)) for lw in lws]


def _bin_sums(x, w, bin_size):
    """Per-bin sums of w·x and w: shapes (n_bins, ...) and (n_bins,)."""
    n = x.shape[0]
    nb = n // bin_size
    if nb < 2:
        raise ValueError(f"need at least 2 bins, have {n} configurations with bin_size={bin_size}")
    m = nb * bin_size
    x = x[:m]
    if w is None:
        sw = np.full(nb, float(bin_size))
        swx = x.reshape((nb, bin_size) + x.shape[1:]).sum(axis=1)
    else:
        w = w[:m]
        sw = w.reshape(nb, bin_size).sum(axis=1)
        swx = (w.reshape((m,) + (1,) * (x.ndim - 1)) * x).reshape((nb, bin_size) + x.shape[1:]).sum(axis=1)
    return swx, sw


def _leave_one_out(b):
    """Σ_{j≠k} b_j for every k along axis 0, from prefix and suffix sums (no cancellation)."""
    zero = np.zeros((1,) + b.shape[1:])
    pre = np.concatenate([zero, np.cumsum(b, axis=0)[:-1]], axis=0)
    suf = np.concatenate([np.cumsum(b[::-1], axis=0)[::-1][1:], zero], axis=0)
    return pre + suf


def _ratio(num, den):
    den = den.reshape(den.shape + (1,) * (num.ndim - den.ndim))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def reweighted_mean(samples, log_weights=None):
    """⟨O⟩ = Σ w_i O_i / Σ w_i over axis 0 (plain mean without weights); log-sum-exp weights."""
    pieces, is_tuple = _pieces(samples)
    ws = _weights_per_piece(log_weights, len(pieces), pieces[0].shape[0])
    out = []
    for x, w in zip(pieces, ws):
        if w is None:
            out.append(x.mean(axis=0))
        else:
            out.append(np.tensordot(w, x, axes=(0, 0)) / w.sum())
    return tuple(out) if is_tuple else out[0]


def resample_means(samples, log_weights=None, bin_size: int = 1, method: str = "jackknife",
                   n_boot: int = 1000, seed=0):
    """Central (reweighted) means and their resampling replicas.

    Returns ``(mean, replicas)``: ``mean`` has the observable's shape, ``replicas`` shape
    (n_replicas, ...) — leave-one-bin-out means (jackknife) or bootstrap means. For a tuple of
    observables both are tuples, and replica k of every observable comes from the same
    deleted bin / the same bootstrap draw. Numerator Σ w O and denominator Σ w are resampled
    together.
    """
    pieces, is_tuple = _pieces(samples)
    bin_size = _check_bin_size(bin_size)
    ws = _weights_per_piece(log_weights, len(pieces), pieces[0].shape[0])
    sums = [_bin_sums(x, w, bin_size) for x, w in zip(pieces, ws)]
    nb = sums[0][1].shape[0]
    means, reps = [], []
    if method == "jackknife":
        for swx, sw in sums:
            means.append(swx.sum(axis=0) / sw.sum())
            reps.append(_ratio(_leave_one_out(swx), _leave_one_out(sw)))
    elif method == "bootstrap":
        counts = _bootstrap_counts(nb, n_boot, seed)
        for swx, sw in sums:
            means.append(swx.sum(axis=0) / sw.sum())
            num = counts @ swx.reshape(nb, -1)
            reps.append(_ratio(num.reshape((n_boot,) + swx.shape[1:]), counts @ sw))
    else:
        raise ValueError(f"method must be 'jackknife' or 'bootstrap', got {method!r}")
    for r in reps:
        if not np.all(np.isfinite(r)):
            raise ValueError("a resampled sum of weights is zero: the weights are concentrated on "
                             "one bin (check the ESS; use a larger bin_size or more data)")
    if is_tuple:
        return tuple(means), tuple(reps)
    return means[0], reps[0]


def _check_bin_size(bin_size):
    if int(bin_size) != bin_size or bin_size < 1:
        raise ValueError(f"bin_size must be a positive integer, got {bin_size!r}")
    return int(bin_size)


def _bootstrap_counts(nb, n_boot, seed):
    """(n_boot, nb) matrix: how often bin j is drawn in bootstrap sample b."""
    if int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    idx = rng.integers(0, nb, size=(n_boot, nb))
    flat = (np.arange(n_boot)[:, None] * nb + idx).ravel()
    return np.bincount(flat, minlength=n_boot * nb).reshape(n_boot, nb).astype(np.float64)


def _apply(func, means, replicas, is_tuple, vectorized):
    if func is None:
        if is_tuple:
            raise ValueError("a tuple of observables needs a func that combines them")
        return np.asarray(means, dtype=np.float64), np.asarray(replicas, dtype=np.float64)
    args = means if is_tuple else (means,)
    central = np.asarray(func(*args), dtype=np.float64)
    n = (replicas[0] if is_tuple else replicas).shape[0]
    if vectorized:
        rargs = replicas if is_tuple else (replicas,)
        reps = np.asarray(func(*rargs), dtype=np.float64)
    else:
        reps = np.stack([np.asarray(func(*([r[k] for r in replicas] if is_tuple else [replicas[k]])),
                                    dtype=np.float64) for k in range(n)])
    if reps.shape != (n,) + central.shape:
        raise ValueError(f"func gave shape {central.shape} on the mean but {reps.shape[1:]} per replica"
                         + (" (with vectorized=True func must keep the leading replica axis)" if vectorized else ""))
    return central, reps


def jackknife(samples, func=None, log_weights=None, bin_size: int = 1, vectorized: bool = False,
              label: str = "", ensemble: str = "") -> Estimate:
    """Jackknife estimate of ``func(⟨samples⟩)`` with binning and reweighting.

    Parameters
    ----------
    samples : array (N, ...) or tuple of arrays (N, ...) on the same configurations.
    func : callable on the (reweighted) mean(s); identity if None. Called once per replica,
        or once on the stacked replicas (leading axis) if ``vectorized=True``.
    log_weights : None, array (N,), or a tuple of (array | None) per observable.
    bin_size : consecutive configurations per bin; one bin is deleted per replica.
    ensemble : name of the ensemble the samples come from; estimates of differently named
        ensembles combine as independent (see :mod:`analysis.estimate`).

    Returns
    -------
    :class:`Estimate` (``est.mean``, ``est.err``; a scalar one unpacks as ``mean, err``):
    mean = func(full-sample mean), err² = (n-1)/n Σ_k (f_k - f̄)², replicas f_k of shape (n_bins, ...).
    """
    pieces, is_tuple = _pieces(samples)
    means, reps = resample_means(tuple(pieces) if is_tuple else pieces[0], log_weights, bin_size)
    central, freps = _apply(func, means, reps, is_tuple, vectorized)
    return Estimate.from_replicas(central, freps, "jackknife", label=label,
                                  info={"bin_size": int(bin_size), "n_configs": pieces[0].shape[0]},
                                  ensembles=(ensemble,))


def bootstrap(samples, func=None, log_weights=None, n_boot: int = 1000, seed=0, bin_size: int = 1,
              vectorized: bool = False, label: str = "", ensemble: str = "") -> Estimate:
    """Bootstrap estimate of ``func(⟨samples⟩)`` with binning and reweighting (seeded).

    Same arguments as :func:`jackknife` (including ``ensemble``) plus ``n_boot`` draws and ``seed`` (int or
    ``numpy.random.Generator``; the same seed gives the same replicas). Each draw picks
    n_bins bins with replacement and uses them for numerator and denominator alike.
    Returns an :class:`Estimate` with err = std of the replicas (ddof=1); the central value
    is func(full-sample mean). ``Estimate.replicas`` allow percentile intervals.
    """
    pieces, is_tuple = _pieces(samples)
    means, reps = resample_means(tuple(pieces) if is_tuple else pieces[0], log_weights, bin_size,
                                 method="bootstrap", n_boot=n_boot, seed=seed)
    central, freps = _apply(func, means, reps, is_tuple, vectorized)
    return Estimate.from_replicas(central, freps, "bootstrap", label=label,
                                  info={"bin_size": int(bin_size), "n_configs": pieces[0].shape[0],
                                        "seed": seed if not isinstance(seed, np.random.Generator) else None},
                                  ensembles=(ensemble,))


# ----------------------------------------------------------------------------- Γ-method
@dataclass(repr=False)
class GammaResult:
    """Result of :func:`gamma_method`; unpacks as ``mean, err, tau_int``.

    mean, err, tau_int, tau_int_err, err_err, window : float (or arrays, one per component).
    rho : bias-corrected normalised autocorrelation ρ(t), t = 0..W (per component, list if several);
        :func:`autocorrelation` gives Γ(t) at any lag.
    n : length of the series.
    deltas : (N, *shape) the analysed fluctuations δ_i in Monte Carlo order — A_i - Ā, or for a
        derived quantity Σ_α ∂f/∂Ā_α (A_iα - Ā_α) — i.e. pyerrors' ``deltas``.
    ensemble : name of the Monte Carlo chain (see :attr:`estimate`).
    """

    mean: object
    err: object
    tau_int: object
    tau_int_err: object
    err_err: object
    window: object
    rho: object
    n: int
    S: float
    deltas: np.ndarray | None = None
    ensemble: str = ""

    def __iter__(self):
        yield self.mean
        yield self.err
        yield self.tau_int

    @property
    def estimate(self) -> Estimate:
        """This result as an :class:`Estimate` that propagates errors (``method="gamma"``).

        It carries :attr:`deltas` under the name :attr:`ensemble`, so arithmetic with other
        Γ-method estimates propagates the fluctuations linearly and re-analyses them with the
        automatic window at this ``S`` (with a fixed ``window=`` only this estimate's own
        ``err`` uses that window).
        """
        return Estimate(self.mean, self.err, self.deltas, "gamma",
                        info={"tau_int": self.tau_int, "window": self.window},
                        ensembles=None if self.deltas is None else (self.ensemble,), S=self.S)

    def __repr__(self):
        from .estimate import format_value
        if np.ndim(self.mean) == 0:
            return (f"GammaResult({format_value(self.mean, self.err)}, tau_int="
                    f"{format_value(self.tau_int, self.tau_int_err)}, W={self.window}, N={self.n}, S={self.S})")
        lines = [f"GammaResult(shape={np.shape(self.mean)}, N={self.n}, S={self.S})"]
        for k in np.ndindex(np.shape(self.mean)):
            lines.append(f"  {k}: {format_value(self.mean[k], self.err[k])}  tau_int="
                         f"{format_value(self.tau_int[k], self.tau_int_err[k])}  W={self.window[k]}")
        return "\n".join(lines)


def autocorrelation(a: np.ndarray, t_max: int | None = None) -> np.ndarray:
    """Γ(t) = 1/(N-t) Σ_{i=0}^{N-1-t} a_i a_{i+t} for mean-zero columns of a (N, m), by FFT.

    Returns shape (t_max+1, m) (default t_max = N-1).
    """
    n = a.shape[0]
    t_max = n - 1 if t_max is None else min(int(t_max), n - 1)
    size = sp_fft.next_fast_len(2 * n - 1, real=True)       # zero padding: no wrap-around
    f = sp_fft.rfft(a, n=size, axis=0)
    g = sp_fft.irfft(f.real ** 2 + f.imag ** 2, n=size, axis=0)[: t_max + 1]
    return g / (n - np.arange(t_max + 1))[:, None]


def _wolff_window(gamma, n, S):
    """Automatic window of Wolff (2004), eq. (52): first W with g(W) < 0. Returns W or None."""
    g0 = gamma[0]
    tau = 0.5 + np.cumsum(gamma[1:] / g0)              # τ_int(W) for W = 1, 2, ...
    W = np.arange(1, len(gamma))
    with np.errstate(divide="ignore", invalid="ignore"):
        tau_w = np.where(tau > 0.5, S / np.log((2 * tau + 1) / (2 * tau - 1)), 1e-300)
        g = np.exp(-W / tau_w) - tau_w / np.sqrt(W * n)
    neg = np.nonzero(g < 0)[0]
    return None if neg.size == 0 else int(W[neg[0]])


def _gamma_and_window(a, S, W_max, window):
    """Γ(t) of one mean-zero series and its window W (fixed, or Wolff's automatic one).

    Short windows are the common case, so lags are first summed directly (O(N) each) while
    the window criterion is checked lag by lag; only if it has not closed after 8·log2(N)
    lags — where the direct sums start to cost more than an FFT — is Γ computed by FFT,
    O(N log N).
    """
    n = a.shape[0]
    t_direct = min(W_max + 1, 8 * max(1, math.ceil(math.log2(n))))
    g0 = float(a @ a) / n
    gam = [g0]
    W = None if window is None else int(window)
    s = 0.0
    for t in range(1, t_direct + 1):
        gt = float(a[:-t] @ a[t:]) / (n - t)
        gam.append(gt)
        if W is None:
            s += gt / g0
            tau = 0.5 + s
            tau_w = S / math.log((2 * tau + 1) / (2 * tau - 1)) if tau > 0.5 else 1e-300
            if math.exp(-t / tau_w) - tau_w / math.sqrt(t * n) < 0:
                W = t
        if W is not None and t >= W:
            return np.array(gam), W
    g = autocorrelation(a[:, None], t_max=W_max + 1)[:, 0]
    if W is None:
        W = _wolff_window(g[: W_max + 1], n, S)
    return g, W


def gamma_method(series, func=None, log_weights=None, S: float = DEFAULT_S, W_max: int | None = None,
                 window: int | None = None, ensemble: str = "") -> GammaResult:
    """Γ-method error analysis of a Markov-chain series (U. Wolff, hep-lat/0306017).

    Parameters
    ----------
    series : array (N,) or (N, ...) in Monte Carlo order, or a tuple of such arrays.
        Without ``func`` every component is analysed separately.
    func : derived quantity of the mean(s) (like :func:`jackknife`); it is linearised with
        central differences of step h_α = sqrt(Γ_αα(0)/N) (Wolff's choice) and the
        projected series a_i = Σ_α ∂f/∂Ā_α (A_iα - Ā_α) is analysed. Output may be an array.
    log_weights : per-configuration log-weights (N,). The reweighted mean Ō = Σ w O/Σ w is
        linearised as Ō + (w_i/w̄)(O_i - Ō), i.e. the ratio ⟨wO⟩/⟨w⟩ with numerator and
        denominator fluctuating together.
    S : Wolff's τ-ratio parameter for the automatic window (1 ≤ S ≤ 2 typical).
    W_max : largest window tried (default N//2); if the criterion never fires the result uses
        W_max and a warning is issued.
    window : fixed summation window W instead of the automatic one.
    ensemble : name of the Monte Carlo chain, carried by :attr:`GammaResult.estimate` so that
        estimates from independent chains combine in quadrature.

    Returns
    -------
    :class:`GammaResult` (unpacks as ``mean, err, tau_int``): with the bias-corrected
    Γ(t) → Γ(t) + C_F/N, C_F = Γ(0) + 2 Σ_{t=1}^{W} Γ(t),
    err = sqrt(C_F/N), τ_int = C_F/(2Γ(0)), δτ_int = 2 τ_int sqrt((W + 1/2 - τ_int)/N) (eq. 42),
    δerr = err sqrt((W + 1/2)/N). For an AR(1) chain x_t = ρ x_{t-1} + ε_t,
    τ_int = (1+ρ)/(2(1-ρ)).

    With a fixed window the bias-corrected err² is unbiased to O(1/N²). The automatic
    window depends on the same noisy Γ(t) and makes err slightly conservative for short
    chains (e.g. err² about 4% high on average for N = 200, τ_int = 1.5; 1% at N = 800).
    Where the bias-corrected C_F at the window is <= 0 (a chain too short for its window: Wolff's
    "Gamma pathological", where his UWerr stops), a RuntimeWarning is given and W = 0 is used,
    err = sqrt(Γ(0)(1 + 1/N)/N), never err = 0.
    """
    pieces, is_tuple = _pieces(series)
    n = pieces[0].shape[0]
    if n < 4:
        raise ValueError(f"gamma_method needs at least 4 measurements, got {n}")
    ws = _weights_per_piece(log_weights, len(pieces), n)
    ys = []
    for x, w in zip(pieces, ws):
        if w is None:
            ys.append(x)
        else:
            mean = np.tensordot(w, x, axes=(0, 0)) / w.sum()
            scale = (w / w.mean()).reshape((n,) + (1,) * (x.ndim - 1))
            ys.append(mean + scale * (x - mean))
    shapes = [y.shape[1:] for y in ys]
    sizes = [int(np.prod(s)) for s in shapes]
    Y = np.concatenate([y.reshape(n, -1) for y in ys], axis=1)         # (N, k) primaries
    ybar = Y.mean(axis=0)
    dY = Y - ybar

    def unpack(v):
        parts, start = [], 0
        for s, sz in zip(shapes, sizes):
            parts.append(v[start:start + sz].reshape(s))
            start += sz
        return parts

    if func is None:
        if is_tuple:
            raise ValueError("a tuple of series needs a func that combines them")
        value = ybar.reshape(shapes[0])
        a = dY
    else:
        value = np.asarray(func(*unpack(ybar)), dtype=np.float64)
        jac = central_jacobian(lambda v: func(*unpack(v)), ybar, np.sqrt(np.mean(dY * dY, axis=0) / n))
        a = dY @ jac.T
    return gamma_result(value, a, S, W_max, window, ensemble, stacklevel=3)


def gamma_columns(a, S: float = DEFAULT_S, W_max: int | None = None, window: int | None = None,
                  stacklevel: int = 2):
    """Γ-method of every column of mean-zero fluctuations ``a`` (N, m) in Monte Carlo order.

    The conventions of :func:`gamma_method` (Wolff's window, bias-corrected Γ). Returns the
    arrays (err, tau_int, tau_int_err, err_err, window) of shape (m,) and the list of ρ(t).
    """
    n, m = a.shape
    W_max = n // 2 if W_max is None else min(int(W_max), n - 1)
    if window is not None:
        if int(window) != window or not 0 <= window < n - 1:
            raise ValueError(f"window must be an integer in [0, N-1), got {window!r}")
        W_max = max(W_max, int(window))
    err = np.empty(m)
    tau = np.empty(m)
    dtau = np.empty(m)
    derr = np.empty(m)
    win = np.empty(m, dtype=int)
    rhos = []
    for c in range(m):
        ac = np.ascontiguousarray(a[:, c])
        if not np.any(ac):
            err[c], tau[c], dtau[c], derr[c], win[c] = 0.0, 0.5, 0.0, 0.0, 0
            rhos.append(np.ones(1))
            continue
        g, W = _gamma_and_window(ac, S, W_max, window)
        if W is None:
            warnings.warn(f"gamma_method: automatic window did not terminate before W_max={W_max}; "
                          "the series is too short for its autocorrelation time", RuntimeWarning,
                          stacklevel=stacklevel)
            W = W_max
        g0 = g
        cf = g[0] + 2.0 * g[1:W + 1].sum()
        g = g0 + cf / n                                      # bias correction of Γ
        cf = g[0] + 2.0 * g[1:W + 1].sum()
        if cf <= 0.0:
            # Wolff's UWerr stops here ("Gamma pathological: estimated error^2 < 0"): on a short
            # chain the window closed on a negative Γ(t) sum. Fall back to W = 0 (the naive,
            # bias-corrected variance, > 0 for non-constant data) and say so.
            how = "automatic" if window is None else "fixed"
            warnings.warn(f"gamma_method: the estimated error^2 is <= 0 at the {how} window W={W} "
                          f"(N={n} measurements are too few for it); using W=0, the error without "
                          "autocorrelation: take more measurements, or bin them and use the jackknife",
                          RuntimeWarning, stacklevel=stacklevel)
            W = 0
            g = g0 + g0[0] / n
            cf = g[0]
        err[c] = math.sqrt(cf / n)
        tau[c] = cf / (2.0 * g[0])
        dtau[c] = 2.0 * tau[c] * math.sqrt(max(W + 0.5 - tau[c], 0.0) / n)
        derr[c] = err[c] * math.sqrt((W + 0.5) / n)
        win[c] = W
        rhos.append(g[: W + 1] / g[0])
    return err, tau, dtau, derr, win, rhos


def gamma_result(value, a, S: float = DEFAULT_S, W_max: int | None = None, window: int | None = None,
                 ensemble: str = "", stacklevel: int = 2) -> GammaResult:
    """:class:`GammaResult` of the central value ``value`` (any shape) and its fluctuations
    ``a`` (N, value.size) in Monte Carlo order (used by :func:`gamma_method` and
    :meth:`Estimate.gamma_details`)."""
    value = np.asarray(value, dtype=np.float64)
    n = a.shape[0]
    err, tau, dtau, derr, win, rhos = gamma_columns(a, S, W_max, window, stacklevel + 1)
    shape = value.shape

    def out(v):
        v = np.asarray(v).reshape(shape)
        return v.item() if v.ndim == 0 else v

    return GammaResult(mean=out(value), err=out(err), tau_int=out(tau), tau_int_err=out(dtau),
                       err_err=out(derr), window=out(win), rho=rhos[0] if len(rhos) == 1 else rhos,
                       n=n, S=float(S), deltas=a.reshape((n,) + shape), ensemble=str(ensemble))


def control_variate_fit(y, F):
    """Coefficients c minimising the sample variance of y + F c (least squares on centred data).

    ``y``: (n,) samples; ``F``: (n, k) regressors (control variates). Returns ``(c, share)``
    with c of shape (k,) and share = 1 - var(y + F c) / var(y), the fraction of the variance
    removed (0 when var(y) = 0). Used for the linear-response initialisation of residual flows
    (flows.linear_response), where y is log w of the identity flow and F its first-order
    derivatives in the flow's coefficients.
    """
    y = np.asarray(y, dtype=np.float64)
    F = np.asarray(F, dtype=np.float64)
    if y.ndim != 1 or F.ndim != 2 or F.shape[0] != y.shape[0]:
        raise ValueError(f"control_variate_fit needs y of shape (n,) and F of shape (n, k); got {y.shape}, {F.shape}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(F))):
        raise ValueError("control_variate_fit: y or F contains NaN or inf")
    Fc = F - F.mean(axis=0)
    yc = y - y.mean()
    c, *_ = np.linalg.lstsq(Fc, -yc, rcond=None)
    var_y = float(np.var(yc))
    share = 1.0 - float(np.var(yc + Fc @ c)) / var_y if var_y > 0 else 0.0
    return c, share
