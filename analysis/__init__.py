"""gaugeflow.analysis — statistics for lattice ensembles: NumPy arrays in, arrays and records out.

Only NumPy, SciPy and matplotlib are used; nothing else of gaugeflow is imported, so this
package can be used on its own in a notebook.

Resampling (configuration axis first; optional per-configuration log-weights everywhere):
    jackknife, bootstrap, gamma_method, ess, reweighted_mean, resample_means, control_variate_fit
Records and propagation (see analysis.estimate: arithmetic, ensembles, indexing):
    Estimate (+ - * / ** and NumPy ufuncs with error propagation; components est[i];
    a scalar unpacks as mean, err; f"{est:.3f}" -> 0.276(2)), derive, align_ensembles, format_value,
    format_estimate
pyerrors interop (optional extra `analysis`, see analysis.pyerrors_interop):
    to_pyerrors (also Estimate.to_pyerrors()), from_pyerrors
Correlators and fits:
    symmetrize, fold, effective_mass, cosh_model, fit_correlator, scan_t_min, FitResult
Feynman–Hellmann (paper eqs. 12–17):
    gluon_momentum_fraction, flow_derivative, reweighting_derivative, x_g_from_slope
Cost model (paper eq. 19):
    break_even, per_config_costs, total_costs, paper_example
Plots (imported lazily, see analysis.plots):
    plot_effective_mass, plot_fh_scan, plot_training
Synthetic data with known answers:
    synthetic_correlators, ToyFeynmanHellmann
"""
from .estimate import Estimate, derive, align_ensembles, format_value, format_estimate
from .pyerrors_interop import to_pyerrors, from_pyerrors
from .resampling import (ess, reweighted_mean, resample_means, jackknife, bootstrap, gamma_method,
                         GammaResult, control_variate_fit)
from .correlators import symmetrize, fold, effective_mass, cosh_model
from .fits import fit_correlator, scan_t_min, FitResult, FitScan, FitError, regularize_covariance
from .feynman_hellmann import (gluon_momentum_fraction, flow_derivative, reweighting_derivative,
                               x_g_from_slope, FHResult, FHScan)
from .cost import break_even, per_config_costs, total_costs, paper_example, PAPER_COSTS
from .synthetic import synthetic_correlators, ToyFeynmanHellmann

__all__ = [
    "Estimate", "derive", "align_ensembles", "format_value", "format_estimate", "to_pyerrors", "from_pyerrors",
    "ess", "reweighted_mean", "resample_means", "jackknife", "bootstrap", "gamma_method", "GammaResult",
    "control_variate_fit",
    "symmetrize", "fold", "effective_mass", "cosh_model",
    "fit_correlator", "scan_t_min", "FitResult", "FitScan", "FitError", "regularize_covariance",
    "gluon_momentum_fraction", "flow_derivative", "reweighting_derivative", "x_g_from_slope",
    "FHResult", "FHScan",
    "break_even", "per_config_costs", "total_costs", "paper_example", "PAPER_COSTS",
    "synthetic_correlators", "ToyFeynmanHellmann",
    "plot_effective_mass", "plot_fh_scan", "plot_training",
]

_PLOTS = ("plot_effective_mass", "plot_fh_scan", "plot_training")


def __getattr__(name):
    # matplotlib is imported only when a plot function is first used
    if name in _PLOTS:
        from . import plots
        return getattr(plots, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
