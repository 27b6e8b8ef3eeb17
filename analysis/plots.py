"""Matplotlib figures: effective mass with fit bands, ⟨x⟩_g against t_min (paper Fig. 2),
ESS and loss against training step (paper Fig. 1).

Every function returns the :class:`matplotlib.figure.Figure` and writes it to ``filename``
if given (format from the extension). Pass ``ax=`` to draw into an existing axes. Without a
display (or with a non-interactive backend) figures are built on the Agg canvas directly
(``matplotlib.figure.Figure``), so nothing here needs a GUI and no global backend is
switched; with an interactive backend and a display, pyplot figures are used so that
``plt.show()`` and notebooks work as usual.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from .correlators import effective_mass
from .estimate import Estimate
from .resampling import jackknife

__all__ = ["plot_effective_mass", "plot_fh_scan", "plot_training"]

FLOW_STYLE = dict(marker="s", color="tab:orange")       # paper Fig. 2: orange squares = flows
EPS_STYLE = dict(marker="o", color="tab:blue")          # blue circles = ε-reweighting


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _new_figure(nrows=1, ncols=1, figsize=(6.0, 4.0), sharex=False):
    import matplotlib
    interactive_backend = matplotlib.get_backend().lower() not in (
        "agg", "pdf", "ps", "svg", "cairo", "pgf", "template")
    in_notebook = "ipykernel" in sys.modules
    if in_notebook or (interactive_backend and _has_display()):
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(nrows, ncols, figsize=figsize, sharex=sharex, squeeze=False)
    else:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        fig = Figure(figsize=figsize)
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    return fig, axes


def _finish(fig, filename):
    fig.tight_layout()
    if filename is not None:
        fig.savefig(os.fspath(filename), dpi=150)
    return fig


def plot_effective_mass(C, fit=None, *, T: int | None = None, kind: str = "cosh", bin_size: int = 1,
                        log_weights=None, ax=None, label: str = "data", filename=None, t_range=None):
    """Effective mass with jackknife errors and, optionally, the fit as a band.

    C : (N, n_t) per-configuration correlators, or an :class:`Estimate` of m_eff, or a
        (mean, err) pair of arrays. fit : a :class:`~analysis.fits.FitResult` (or a list of
        them): its effective mass over the fit window is drawn as a band (from the replica
        fits; for one state the band is E_0 ± δE_0), labelled with the window, the number of
        states, "uncorrelated" for an uncorrelated fit and χ²/dof. The fit is drawn as given
        (never refitted): pass the fit whose numbers you report, and the ``bin_size`` (and
        ``log_weights``) it was made with, so that the points and the band agree.
    """
    if isinstance(C, Estimate):
        m, e = np.asarray(C.mean), np.asarray(C.err)
    elif isinstance(C, tuple) and len(C) == 2:
        m, e = np.asarray(C[0]), np.asarray(C[1])
    else:
        C = np.asarray(C)
        Tn = C.shape[-1] if T is None else T
        est = jackknife(C, func=lambda c: effective_mass(c, kind, T=Tn), log_weights=log_weights,
                        bin_size=bin_size, vectorized=True)
        m, e = est.mean, est.err
    t = np.arange(len(m)) + 0.5
    if ax is None:
        fig, axes = _new_figure()
        ax = axes[0, 0]
    else:
        fig = ax.figure
    sel = np.isfinite(m) if t_range is None else (np.isfinite(m) & (t >= t_range[0]) & (t <= t_range[1]))
    ax.errorbar(t[sel], m[sel], e[sel], fmt="o", ms=4, capsize=2, label=label, color="k")
    fits = [] if fit is None else (fit if isinstance(fit, (list, tuple)) else [fit])
    for i, f in enumerate(fits):
        color = f"C{i + 1}"
        tt = np.linspace(f.t_min, f.t_max, 50)
        if f.n_states == 1:
            lo = np.full_like(tt, f.energies[0] - f.energies_err[0])
            hi = np.full_like(tt, f.energies[0] + f.energies_err[0])
            mid = np.full_like(tt, f.energies[0])
        else:
            tw = np.arange(f.t_min, f.t_max + 1)
            if f.energies_replicas is not None:
                band = f.model_estimate(tw).apply(lambda c: effective_mass(c, kind, T=f.T, t0=f.t_min),
                                                  vectorized=True)
                mid_w, err_w = band.mean, band.err
            else:
                mid_w = effective_mass(f.model(tw), kind, T=f.T, t0=f.t_min)
                err_w = np.zeros_like(mid_w)
            tt = tw[:-1] + 0.5
            mid, lo, hi = mid_w, mid_w - err_w, mid_w + err_w
        ax.fill_between(tt, lo, hi, color=color, alpha=0.3, lw=0)
        ax.plot(tt, mid, color=color, lw=1.2,
                label=f"fit [{f.t_min},{f.t_max}] {f.n_states}-state{'' if f.correlated else ' uncorrelated'}, "
                      f"$\\chi^2$/dof={f.chi2_dof:.2f}")
    ax.set_xlabel("$t + 1/2$")
    ax.set_ylabel(f"$m_\\mathrm{{eff}}$ ({kind})")
    ax.legend(frameon=False, fontsize="small")
    return _finish(fig, filename)


def plot_fh_scan(scans, *, ax=None, filename=None, offset: float = 0.12, truth: float | None = None,
                 ylabel=r"$\langle x\rangle_g^\mathrm{latt}$"):
    """⟨x⟩_g^latt against t_min for several methods side by side (like the paper's Fig. 2).

    scans : {label: FHScan} (or a single FHScan). Labels containing "flow" get orange
    squares, labels containing "eps" or "ε" blue circles, as in the paper; the series are
    offset horizontally by ``offset`` so error bars do not overlap. ``truth`` draws a line.
    """
    if not isinstance(scans, dict):
        scans = {getattr(scans, "label", "") or scans[0].method: scans}
    if ax is None:
        fig, axes = _new_figure()
        ax = axes[0, 0]
    else:
        fig = ax.figure
    k = len(scans)
    for i, (label, scan) in enumerate(scans.items()):
        tm = scan.t_min + (i - (k - 1) / 2) * offset
        y, e = scan.x_g
        low = label.lower()
        style = FLOW_STYLE if "flow" in low else (EPS_STYLE if ("eps" in low or "ε" in low) else
                                                  dict(marker="^", color=f"C{i + 2}"))
        ax.errorbar(tm, y, e, ls="none", ms=5, capsize=2, label=label, **style)
    if truth is not None:
        ax.axhline(truth, color="gray", lw=0.8, ls="--", label="truth")
    ax.set_xlabel(r"$t_\mathrm{min}$")
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False)
    return _finish(fig, filename)


def _running_mean(y, window):
    if window is None or window <= 1:
        return np.asarray(y, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    c = np.cumsum(np.insert(y, 0, 0.0))
    i = np.arange(len(y))
    lo = np.maximum(0, i - int(window) + 1)
    return (c[i + 1] - c[lo]) / (i + 1 - lo)


def plot_training(runs, *, smooth: int | None = None, filename=None, log_loss: bool = False):
    """Loss and ESS against training step (like the paper's Fig. 1).

    runs : {label: {"step": ..., "ess": ..., "loss": ...}} or a single such mapping; "loss"
        is optional, "step" defaults to 0, 1, .... ``smooth``: running mean over that many
        steps (the raw curve is drawn faintly behind).
    """
    if isinstance(runs, dict) and "ess" in runs:
        runs = {"": runs}
    has_loss = any("loss" in r for r in runs.values())
    fig, axes = _new_figure(nrows=2 if has_loss else 1, figsize=(6.0, 5.5 if has_loss else 3.5), sharex=True)
    ax_ess = axes[-1, 0]
    for i, (label, r) in enumerate(runs.items()):
        ess_v = np.asarray(r["ess"], dtype=np.float64)
        step = np.asarray(r.get("step", np.arange(len(ess_v))))
        color = f"C{i}"
        if smooth and smooth > 1:
            ax_ess.plot(step, ess_v, color=color, alpha=0.25, lw=0.8)
        ax_ess.plot(step, _running_mean(ess_v, smooth), color=color, label=label or None)
        if has_loss and "loss" in r:
            loss = np.asarray(r["loss"], dtype=np.float64)
            if smooth and smooth > 1:
                axes[0, 0].plot(step, loss, color=color, alpha=0.25, lw=0.8)
            axes[0, 0].plot(step, _running_mean(loss, smooth), color=color, label=label or None)
    ax_ess.set_ylim(0, 1.02)
    ax_ess.set_ylabel("ESS")
    ax_ess.set_xlabel("training step")
    if has_loss:
        axes[0, 0].set_ylabel("loss (reverse KL)")
        if log_loss:
            axes[0, 0].set_yscale("log")
    if any(runs.keys()):
        ax_ess.legend(frameon=False)
    return _finish(fig, filename)
