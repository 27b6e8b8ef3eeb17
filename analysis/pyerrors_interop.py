"""Exchange of estimates with pyerrors (https://github.com/fjosw/pyerrors) — optional.

pyerrors is not a dependency of gaugeflow; install it with the extra ``analysis``
(``pip install "gaugeflow[analysis]"``). This module imports it only when a function is called.

Correspondence. A pyerrors ``Obs`` holds, per ensemble, the fluctuations δ_i of each
configuration around the value, and analyses them with the Γ-method when
``gamma_method()`` is called. That is exactly a :class:`~analysis.Estimate` with
``method="gamma"``: its replicas are the δ_i of its ensembles, in Monte Carlo order.

* :func:`to_pyerrors` — Γ-method estimates are exported as they are. Jackknife estimates are
  converted per ensemble as ``pyerrors.import_jackknife`` does, δ_k = (n-1)(f̄ - f_k) for the
  leave-one-out replicas f_k (for a binned jackknife the "configurations" are the bins); this
  is exact for a linear function of the means and agrees with the jackknife to O(1/n)
  otherwise. Bootstrap replicas do not determine the per-configuration fluctuations and are
  refused. The unnamed ensemble ``""`` is exported as ``unnamed`` (pyerrors needs a name).
  Values agree to rounding (pyerrors recomputes the value as the mean of value + δ).
* :func:`from_pyerrors` — an ``Obs`` (or an array of them, all on the same ensembles) becomes
  a Γ-method estimate. Supported: one replicum per ensemble on a regular index range (the
  default when an ``Obs`` is built from arrays); ``cov_Obs`` parts (no fluctuations) and
  several replica per ensemble raise an error.

The Γ-method conventions of both packages are the same (Wolff's automatic window, first W
with g(W) < 0; Γ(t) = Σ δ_i δ_{i+t}/(N-t); bias-corrected error err² = C_F(W)(1 + (2W+1)/N)/N),
except for two points (checked by tests/test_analysis_pyerrors.py):

* the printed τ_int: this package gives Wolff's C_F'/(2Γ'(0)) of the bias-corrected
  Γ' = Γ + C_F/N, pyerrors τ_int(W)(1 + (2W+1)/N)/(1 + 1/N); they differ by the factor
  (Γ(0) + C_F/N)/(Γ(0)(1 + 1/N)) = 1 + O(τ_int/N);
* when the window closes with τ_int(W) = C_F(W)/(2Γ(0)) ≤ 1/2 (negative summed
  autocorrelation, frequent for uncorrelated data), pyerrors raises τ_int(W) to 1/2, so its
  error is never below the naive standard error; this package keeps C_F(W), as Wolff's UWerr
  (err² stays unbiased). The errors then differ by a few per cent.

pyerrors' default S is 2.0, this package's 1.5 (:data:`~analysis.estimate.DEFAULT_S`).
"""
from __future__ import annotations

import numpy as np

from .estimate import Estimate

__all__ = ["to_pyerrors", "from_pyerrors"]


def _pyerrors():
    try:
        import pyerrors
    except ImportError as exc:
        raise ImportError("pyerrors is not installed; install the optional extra: "
                          "pip install 'gaugeflow[analysis]' (or pip install pyerrors)") from exc
    return pyerrors


def to_pyerrors(est: Estimate, S: float | None = None, gamma_method: bool = True, unnamed: str = "ensemble"):
    """``est`` as a ``pyerrors.Obs`` (scalar) or a NumPy object array of ``Obs`` (its shape).

    S : window parameter for ``Obs.gamma_method`` (default: the estimate's own S for a
        Γ-method estimate, pyerrors' default otherwise). gamma_method : run
        ``Obs.gamma_method(S=...)`` so that the Obs carries its error (``dvalue``) at once.
    unnamed : pyerrors name of the unnamed ensemble ``""``.
    """
    pe = _pyerrors()
    if not isinstance(est, Estimate):
        raise TypeError(f"to_pyerrors() takes an Estimate, got {type(est).__name__}")
    if est.replicas is None or est.method not in ("gamma", "jackknife"):
        why = ("bootstrap replicas do not determine per-configuration fluctuations"
               if est.method == "bootstrap" else "it has no replicas")
        raise ValueError(f"cannot export a method={est.method!r} estimate to pyerrors: {why}; "
                         "use a Γ-method or jackknife estimate")
    deltas = {}
    for name, r in est.by_ensemble().items():
        if est.method == "jackknife":
            r = (r.shape[0] - 1) * (r.mean(axis=0) - r)           # as pyerrors.import_jackknife
        key = name or unnamed
        if key in deltas or (not name and unnamed in est.ensembles):
            raise ValueError(f"ensemble name {key!r} is used twice; pass another unnamed=")
        deltas[key] = r.reshape(r.shape[0], -1)
    if S is None and est.method == "gamma":
        S = est.S
    mean = np.ravel(est.mean)
    out = []
    for c in range(mean.size):
        obs = None
        for name, d in deltas.items():
            part = pe.Obs([mean[c] + d[:, c]], [name])
            obs = part if obs is None else obs + part - mean[c]
        if gamma_method:
            obs.gamma_method(**({} if S is None else {"S": float(S)}))
        out.append(obs)
    if est.ndim == 0:
        return out[0]
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    return arr.reshape(est.shape)


def from_pyerrors(obs, S: float | None = None, label: str = "") -> Estimate:
    """A Γ-method :class:`~analysis.Estimate` from a ``pyerrors.Obs`` or an array/list of them.

    The ensembles keep their pyerrors names; S defaults to the one the Obs was analysed with
    (``Obs.gamma_method(S=...)``), else pyerrors' default ``Obs.S_global``.
    """
    pe = _pyerrors()
    if isinstance(obs, pe.Obs):
        items, shape = [obs], ()
    else:
        arr = np.asarray(obs, dtype=object)
        items, shape = list(arr.ravel()), arr.shape
    if not items or not all(isinstance(o, pe.Obs) for o in items):
        raise TypeError("from_pyerrors() takes a pyerrors.Obs or an array of them")
    ref = items[0]
    names = list(ref.names)
    for o in items:
        if o.cov_names:
            raise ValueError(f"cov_Obs parts {o.cov_names} have no Monte Carlo fluctuations and cannot be imported")
        if list(o.names) != names:
            raise ValueError(f"all Obs must be defined on the same ensembles: {names} vs {list(o.names)}")
    for e_name, content in ref.e_content.items():
        if len(content) != 1:
            raise NotImplementedError(f"ensemble {e_name!r} has several replica {content}; only one Monte "
                                      "Carlo chain per ensemble is supported")
    for name in names:
        idls = [o.idl[name] for o in items]
        if not isinstance(idls[0], range) or any(i != idls[0] for i in idls):
            raise NotImplementedError(f"ensemble {name!r}: only Obs on one regular index range (no gaps, "
                                      "same configurations for every component) can be imported")
    if S is None:
        used = set(getattr(ref, "S", None).values()) if isinstance(getattr(ref, "S", None), dict) else set()
        S = used.pop() if len(used) == 1 else pe.Obs.S_global
    reps = np.concatenate([np.stack([np.asarray(o.deltas[name], dtype=np.float64) for o in items], axis=1)
                           for name in names], axis=0)
    n = reps.shape[0]
    return Estimate.from_replicas(np.reshape([o.value for o in items], shape), reps.reshape((n,) + shape),
                                  "gamma", tuple(ref.shape[name] for name in names), label,
                                  ensembles=tuple(names), S=float(S))
