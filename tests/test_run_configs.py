"""The bundled run configs: every one parses, and `paper-12c24.toml` (the paper's production
setting, eq. 18; not run here) builds all of its objects."""
from pathlib import Path

import numpy as np
import pytest

from run.config import load_config, ConfigError

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "run" / "configs").glob("*.toml"))


def test_the_bundled_configs_are_there():
    assert {"demo", "quenched-fh", "nf2-fh-small", "paper-12c24"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_bundled_config_parses(name):
    cfg = load_config(name)
    assert cfg["train"]["lam1"] != cfg["train"]["lam2"]         # every bundled workflow has a signal
    if cfg["train"]["shape"]:
        assert len(cfg["train"]["shape"]) == len(cfg["lattice"]["shape"])


def test_paper_12c24_is_the_papers_setting():
    c = load_config("paper-12c24")
    assert c["lattice"]["shape"] == [12, 12, 12, 24] and c["lattice"]["N"] == 3
    assert c["action"] == {"type": "luscher_weisz", "beta": 3.8, "c1": -1.0 / 12.0}
    f = c["fermions"]
    assert f["enabled"] and f["kappa"] == 0.164111 and f["mu"] == 0.012 and f["bc_time"] == "antiperiodic"
    assert c["train"]["lam2"] - c["train"]["lam1"] == 0.005
    assert c["train"]["shape"] == [4, 4, 4, 4] and c["train"]["exact_fermions"]
    assert c["flow"]["kind"] == "residual" and c["flow"]["masks"] == ["M2", "M4", "M2", "M4"]   # 48 layers
    assert c["train"]["init"] == "linear-response"
    assert c["evaluate"]["n_shots"] == 4 and c["measure"]["n_sources"] == 16


def test_paper_12c24_builds_all_objects():
    import lattice as L
    import flows
    from fermions import TwistedMassWilson
    from run.context import make_action
    from run.jobs.train import make_model, _targets, train_shape
    c = load_config("paper-12c24")
    S1, S2 = make_action(c, c["train"]["lam1"]), make_action(c, c["train"]["lam2"])
    assert S2.params()["lam"] == 0.005 and S1.params()["beta"] == 3.8
    big = L.Layout(tuple(c["lattice"]["shape"]))
    small = L.Layout(train_shape(c))
    model = make_model(c, 4, 3)
    assert model.n_layers == 48 and all(type(l).__name__ == "ResidualLayer" for l in model.layers)
    params = model.init(c["job"]["seed"])
    assert set(params) == set(model.param_shapes())
    # the masks of every layer exist on the training and on the evaluation lattice, and each
    # of the four passes M2, M4, M2, M4 updates every link once
    masks = [l.mask for l in model.layers]
    for layout in (small, big):
        for a, b in ((0, 8), (8, 24), (24, 32), (32, 48)):
            count = flows.check_covers_every_link(layout, masks[a:b])
            assert int(count.max()) == 1
        for m in masks:
            assert m.active(layout).shape == (4,) + tuple(layout.global_shape)
    target, base = _targets(c)
    kinds = [t.describe()["type"] for t in target.terms]
    assert "exact_nf2_determinant" in kinds
    # the Dirac operator of `evaluate`/`measure` on a 12^3 x 24 field
    U = L.unit_gauge(tuple(c["lattice"]["shape"]), N=3)
    D = TwistedMassWilson(U, c["fermions"]["kappa"], c["fermions"]["mu"], bc=c["fermions"]["bc_time"])
    assert D is not None


def test_unknown_config_name_is_a_clear_error():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-config")


@pytest.mark.parametrize("overrides,match", [
    (["flow.kind=weird"], "flow.kind must be 'spectral'"),
    (["flow.masks=[\"M3\"]"], "flow.masks must be a non-empty list of 'M2' and 'M4'"),
    (["flow.masks=[]"], "flow.masks must be a non-empty list"),
    (["flow.families=[\"plaquette\", \"hexagon\"]"], "flow.families must be distinct entries"),
    (["flow.families=[\"plaquette\", \"plaquette\"]"], "flow.families must be distinct entries"),
    (["flow.bound=0.9"], r"flow.bound must lie in \(0, 0.5\]"),
    (["train.init=magic"], "train.init must be 'identity' or 'linear-response'"),
    (["flow.kind=spectral"], "train.init = 'linear-response' fits the constants of a residual flow"),
    (["train.base=haar"], "needs flow.kind = 'residual' and train.base = 'ensemble'"),
    (["lattice.shape=[4,4,4,6]"], r"lattice.shape = \[4, 4, 4, 6\]: residual flows with M4 masks need extents "
                                  r"divisible by 4; use flow.masks"),
    (["train.shape=[4,4,2,4]"], r"train.shape = \[4, 4, 2, 4\]: residual flows with M4 masks need extents divisible by 4"),
    (["train.init=identity"], "train.steps = 0 trains nothing"),
])
def test_residual_flow_settings_are_checked(overrides, match):
    """The demo's residual flow settings, each broken in one way: one ConfigError naming the
    key, the value and what would work."""
    with pytest.raises(ConfigError, match=match):
        load_config("demo", overrides, command="train")


def test_m2_only_residual_flows_run_on_extents_divisible_by_2():
    c = load_config("demo", ["lattice.shape=[4,4,4,6]", "flow.masks=[\"M2\", \"M2\"]"], command="train")
    assert c["flow"]["masks"] == ["M2", "M2"]
    load_config("demo", ["lattice.shape=[4,4,4,6]"], command="hmc")       # hmc runs no flow
