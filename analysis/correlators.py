"""Two-point correlators on a periodic lattice: symmetrising, folding, effective masses.

Conventions
-----------
A correlator array has the Euclidean time t = 0, 1, ..., T-1 on its *last* axis; leading
axes (configurations, jackknife replicas, ...) are carried along. For a state of energy E on
a lattice of periodic time extent T the forward and backward propagating pieces give

    C(t) = A [e^{-E t} + e^{-E (T - t)}] = 2 A e^{-E T/2} cosh(E (T/2 - t)),

which is the normalisation used throughout :mod:`analysis` (``A = |Z|²/(2E)`` for the
usual C(t) = Σ_x ⟨O(x,t) O†(0)⟩). A folded correlator of length T//2 + 1 keeps t = 0..T//2.
"""
from __future__ import annotations

import numpy as np

__all__ = ["symmetrize", "fold", "effective_mass", "cosh_model"]


def _time_axis(C, T):
    C = np.asarray(C)
    if np.iscomplexobj(C):
        raise TypeError("correlator is complex; take the real part (or the appropriate part) first")
    C = np.asarray(C, dtype=np.float64)
    if C.ndim == 0:
        raise ValueError("correlator must have a time axis (the last one)")
    T = C.shape[-1] if T is None else int(T)
    return C, T


def symmetrize(C, parity: int = +1):
    """C_s(t) = [C(t) + parity·C((T - t) mod T)] / 2 on the full range t = 0..T-1.

    ``parity=+1`` for cosh-like (e.g. pseudoscalar–pseudoscalar), ``-1`` for sinh-like
    (e.g. axial–pseudoscalar) correlators. Shape (..., T) → (..., T).
    """
    if parity not in (1, -1):
        raise ValueError(f"parity must be +1 or -1, got {parity!r}")
    C, T = _time_axis(C, None)
    C_rev = np.roll(C[..., ::-1], 1, axis=-1)           # C_rev[t] = C[(T - t) mod T]
    return 0.5 * (C + parity * C_rev)


def fold(C, parity: int = +1):
    """Symmetrise and keep t = 0..T//2: shape (..., T) → (..., T//2 + 1)."""
    C = np.asarray(C)
    T = C.shape[-1]
    return symmetrize(C, parity)[..., : T // 2 + 1]


def cosh_model(t, T, energies, amplitudes):
    """Σ_n A_n [e^{-E_n t} + e^{-E_n (T-t)}] for times ``t`` (broadcast over leading axes).

    ``energies``/``amplitudes`` have shape (..., n_states); result shape (..., len(t)).
    """
    t = np.asarray(t, dtype=np.float64)
    E = np.asarray(energies, dtype=np.float64)[..., None, :]
    A = np.asarray(amplitudes, dtype=np.float64)[..., None, :]
    tt = t[:, None]
    return np.sum(A * (np.exp(-E * tt) + np.exp(-E * (T - tt))), axis=-1)


def _log_cosh(x):
    ax = np.abs(x)
    return ax + np.log1p(np.exp(-2.0 * ax)) - np.log(2.0)


def effective_mass(C, kind: str = "cosh", T: int | None = None, t0: int = 0, iterations: int = 64):
    """Effective mass m_eff(t) between t and t+1, shape (..., n_t - 1).

    ``kind="log"``:  m(t) = log[C(t)/C(t+1)]  (pure exponential decay).

    ``kind="cosh"``: m(t) solves  C(t)/C(t+1) = cosh(m (T/2 - t)) / cosh(m (T/2 - t - 1)),
    exact for a single state on the periodic lattice. The root is found by bisection,
    vectorised over all entries, on the bracket [log r, log r + log 2] (the ratio of the
    cosh's lies between e^m/2 and e^m); on the second half (t + 1/2 > T/2) the mirrored
    relation is used. ``T`` is the lattice time extent (default: the length of the last
    axis; pass it for folded correlators of length T//2 + 1). ``t0`` is the time of the
    first entry (for a window C[..., t0:]); entry k of the result is m_eff(t0 + k).

    Entries without a solution are NaN: for ``"cosh"`` a ratio ≤ 1 in the direction of decay,
    a non-positive correlator, or the pair straddling T/2 on odd T; for ``"log"`` a ratio that
    is not finite and positive (C(t+1) = 0, or a sign change). No warning is given: noisy data
    at large t are expected to produce some.
    """
    if kind not in ("cosh", "log"):
        raise ValueError(f"kind must be 'cosh' or 'log', got {kind!r}")
    C, T = _time_axis(C, T)
    n_t = C.shape[-1]
    if n_t < 2:
        raise ValueError("need at least two time slices")
    c0, c1 = C[..., :-1], C[..., 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "log":
            r = c0 / c1
            ok = np.isfinite(r) & (r > 0)
            return np.where(ok, np.log(np.where(ok, r, 1.0)), np.nan)
        t = t0 + np.arange(n_t - 1, dtype=np.float64)
        first_half = t + 0.5 < T / 2.0
        u = np.where(first_half, T / 2.0 - t, t + 1.0 - T / 2.0)      # ≥ 1 away from the middle
        r = np.where(first_half, c0 / c1, c1 / c0)
        ok = (c0 > 0) & (c1 > 0) & np.isfinite(r) & (r > 1.0) & (np.abs(T / 2.0 - t - 0.5) > 1e-9)
        log_r = np.log(np.where(ok, r, 2.0))
    u = np.broadcast_to(u, log_r.shape)
    lo = log_r.copy()
    hi = log_r + np.log(2.0)

    def f(m):                                   # log[cosh(m u)/cosh(m(u-1))] - log r, increasing in m
        return _log_cosh(m * u) - _log_cosh(m * (u - 1.0)) - log_r

    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        pos = f(mid) > 0
        hi = np.where(pos, mid, hi)
        lo = np.where(pos, lo, mid)
    return np.where(ok, 0.5 * (lo + hi), np.nan)
