"""Plots produce figures and files without a display (analysis.plots)."""
import numpy as np
import pytest

import analysis as an


@pytest.fixture(scope="module")
def fh_scans():
    toy = an.ToyFeynmanHellmann(excited=(0.8, 0.5))
    ens = toy.ensemble(0.0, 300, seed=1)
    Cf, lw = toy.flow(ens, 0.005)
    flows = an.gluon_momentum_fraction(ens.C, t_min=range(4, 9), method="flow", lam2=0.005, C_flowed=Cf,
                                       log_weights=lw)
    eps = an.gluon_momentum_fraction(ens.C, t_min=range(4, 9), method="epsilon", operator=ens.O)
    return ens, flows, eps, toy


def test_plots_write_files(tmp_path, fh_scans):
    import matplotlib.figure
    ens, flows, eps, toy = fh_scans
    f1 = an.fit_correlator(ens.C, 8, 12)
    f2 = an.fit_correlator(ens.C, 3, 12, n_states=2, priors={"E1": (0.8, 0.3)})
    fig = an.plot_effective_mass(ens.C, [f1, f2], filename=tmp_path / "meff.png")
    assert isinstance(fig, matplotlib.figure.Figure)
    fig = an.plot_fh_scan({"flows": flows, "ε-reweighting": eps}, truth=toy.x_g, filename=tmp_path / "fig2.pdf")
    assert isinstance(fig, matplotlib.figure.Figure)
    steps = np.arange(500)
    runs = {"learned loops": {"step": steps, "ess": 0.8 * (1 - np.exp(-steps / 100)), "loss": np.exp(-steps / 200)},
            "fixed loops": {"step": steps, "ess": 0.2 * (1 - np.exp(-steps / 100)), "loss": np.exp(-steps / 300)}}
    an.plot_training(runs, smooth=20, filename=tmp_path / "fig1.png")
    an.plot_training({"ess": np.linspace(0, 1, 30)}, filename=tmp_path / "ess_only.svg")
    for name in ("meff.png", "fig2.pdf", "fig1.png", "ess_only.svg"):
        assert (tmp_path / name).stat().st_size > 1000
    # drawing into a user's axes
    other = matplotlib.figure.Figure()
    ax = other.add_subplot()
    assert an.plot_effective_mass(ens.C, ax=ax) is other
