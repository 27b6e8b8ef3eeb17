"""Model settings (flows.config): one dataclass per model kind with its defaults and checks,
used by the constructors, config(), the runner's TOML schema and make_model; the one
log-weight formula (flows.log_weight)."""
import dataclasses
import inspect
import json

import numpy as np
import pytest

import flows
from lattice import Layout, random_gauge
from lattice.actions import Wilson
from flows import (SpectralFlowConfig, ResidualFlowConfig, PseudofermionFlowConfig, SettingError,
                   PseudofermionFlow)
from flows.config import setting_docs, setting_types
from run.config import SCHEMA, OPTIONAL, PER_KIND, ConfigError, flow_schema, load_config, upgrade_flow_section, \
    validate, dump_toml

KINDS = {"spectral": SpectralFlowConfig, "residual": ResidualFlowConfig}
ALL = [SpectralFlowConfig, ResidualFlowConfig, PseudofermionFlowConfig]


# ---------------------------------------------------------------------- the dataclasses
def test_defaults():
    s = SpectralFlowConfig()
    assert (s.n_layers, s.loops, s.location_loops, s.schedule, s.context_hidden, s.dtype) == \
        (16, "learned", None, "paper", (16, 16), "complex128")
    r = ResidualFlowConfig()
    assert (r.masks, r.families, r.field_dependent, r.bound, r.context_hidden, r.dtype) == \
        (("M2", "M4", "M2", "M4"), ("plaquette",), False, 0.5, (8,), "complex128")
    p = PseudofermionFlowConfig()
    assert (p.n_layers, p.hidden, p.masks) == (16, 8, None)


@pytest.mark.parametrize("cls", ALL)
def test_every_field_has_a_one_line_doc_and_the_class_is_frozen(cls):
    docs = setting_docs(cls)
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}
    assert all(isinstance(d, str) and d and "\n" not in d for d in docs.values())
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cls(), dataclasses.fields(cls)[0].name, None)


@pytest.mark.parametrize("cls,kw", [
    (SpectralFlowConfig, dict(n_layers=5, loops="plaquette", location_loops="rectangle", schedule="simple",
                              context_hidden=[4], spline_kind="sine", dtype="complex64", recompute=False)),
    (SpectralFlowConfig, dict(masks=[flows.build_schedule(2, 1, "simple")[0].as_dict()])),
    (ResidualFlowConfig, dict(masks=["M2"], families=["chair", "plaquette"], field_dependent=True, bound=0.25,
                              context_hidden=[2, 3], context_kernel=1)),
    (PseudofermionFlowConfig, dict(n_layers=2, hidden=0, masks=[{"axis": 3, "parity": 1}, {"axis": 0, "parity": 0}])),
])
def test_round_trip(cls, kw):
    c = cls(**kw)
    d = c.as_dict()
    assert json.loads(json.dumps(d)) == d                      # JSON (and TOML) friendly
    assert cls.from_dict(d) == c and cls.from_dict(d).as_dict() == d


def test_shorthands_and_derived_fields():
    assert SpectralFlowConfig(context_channels=4).context_hidden == (4, 4)
    assert ResidualFlowConfig(context_channels=4).context_hidden == (4,)
    assert SpectralFlowConfig(context_channels=4) == SpectralFlowConfig(context_hidden=(4, 4))
    m = [flows.build_schedule(2, 1, "simple")[0].as_dict()] * 3
    assert SpectralFlowConfig(masks=m).n_layers == 3                  # explicit masks replace n_layers
    assert SpectralFlowConfig(loops="plaquette").location_loops_resolved == "plaquette"
    assert PseudofermionFlowConfig(n_layers=1, masks=[{"axis": 2, "parity": 1}]).masks == ({"axis": 2, "parity": 1},)


@pytest.mark.parametrize("cls,kw,field,match", [
    (SpectralFlowConfig, dict(n_layers=0), "n_layers", "integer >= 1"),
    (SpectralFlowConfig, dict(n_layers=True), "n_layers", "an integer"),
    (SpectralFlowConfig, dict(n_layers="4"), "n_layers", "an integer"),
    (SpectralFlowConfig, dict(loops="wilson"), "loops", "one of 'learned', 'plaquette', 'rectangle'"),
    (SpectralFlowConfig, dict(location_loops="x"), "location_loops", "one of"),
    (SpectralFlowConfig, dict(schedule="fancy"), "schedule", "'simple', 'paper'"),
    (SpectralFlowConfig, dict(context_kernel=2), "context_kernel", "odd integer"),
    (SpectralFlowConfig, dict(context_hidden=[]), "context_hidden", "non-empty list"),
    (SpectralFlowConfig, dict(context_channels=0), "context_channels", "integer >= 1"),
    (SpectralFlowConfig, dict(context_activation="relu"), "context_activation", "one of"),
    (SpectralFlowConfig, dict(spline_bins=0), "spline_bins", "from 1 to 999"),
    (SpectralFlowConfig, dict(spline_kind="cubic"), "spline_kind", "'spline', 'sine'"),
    (SpectralFlowConfig, dict(dtype="float64"), "dtype", "'complex128', 'complex64'"),
    (SpectralFlowConfig, dict(masks=[{"mu": 0}]), "masks", "LayerMask"),
    (ResidualFlowConfig, dict(masks=["M3"]), "masks", "non-empty list of 'M2' and 'M4'"),
    (ResidualFlowConfig, dict(masks=[]), "masks", "non-empty list"),
    (ResidualFlowConfig, dict(families=["plaquette", "plaquette"]), "families", "distinct entries"),
    (ResidualFlowConfig, dict(bound=0.9), "bound", r"lie in \(0, 0.5\]"),
    (ResidualFlowConfig, dict(bound=float("nan")), "bound", "finite"),
    (PseudofermionFlowConfig, dict(hidden=-1), "hidden", "integer >= 0"),
    (PseudofermionFlowConfig, dict(n_layers=1, masks=[{"axis": 4, "parity": 0}]), "masks",
     "invalid pseudofermion mask"),
    (PseudofermionFlowConfig, dict(n_layers=2, masks=[{"axis": 0, "parity": 0}]), "masks", "1 masks for 2 layers"),
])
def test_bad_values_name_the_field(cls, kw, field, match):
    with pytest.raises(SettingError, match=match) as exc:
        cls(**kw)
    assert exc.value.field == field and str(exc.value).startswith(field)
    assert isinstance(exc.value, ValueError)


def test_unknown_key_in_from_dict():
    with pytest.raises(SettingError, match="n_layer is not a setting of SpectralFlowConfig.*n_layers"):
        SpectralFlowConfig.from_dict({"n_layer": 3})


# ---------------------------------------------------------------------- constructors and config()
def test_the_constructors_take_the_settings_or_build_them_from_keywords():
    c = SpectralFlowConfig(n_layers=3, loops="plaquette", schedule="simple", context_hidden=(2,))
    a, b = flows.SpectralFlow(2, 3, config=c), flows.SpectralFlow(2, 3, 3, "plaquette", schedule="simple",
                                                                  context_hidden=(2,))
    assert a.config() == b.config() and a.settings == b.settings
    assert a.settings.masks is not None and a.settings.location_loops == "plaquette"      # resolved
    with pytest.raises(TypeError, match="either config= or"):
        flows.SpectralFlow(2, 3, 3, config=c)
    with pytest.raises(SettingError, match="no_such is not a setting"):
        flows.SpectralFlow(2, 3, no_such=1)
    r = ResidualFlowConfig(masks=("M2",), families=("plaquette", "rectangle"))
    assert flows.ResidualFlow(4, 3, config=r).config() == flows.residual_flow(4, 3, ("M2",),
                                                                             ("plaquette", "rectangle")).config()
    p = PseudofermionFlow(config=PseudofermionFlowConfig(n_layers=2, hidden=3))
    assert p.config() == PseudofermionFlow(2, 3).config()


@pytest.mark.parametrize("cls,layer_cls", [(SpectralFlowConfig, flows.CouplingLayer),
                                           (ResidualFlowConfig, flows.ResidualLayer)])
def test_layer_defaults_agree_with_the_model_settings(cls, layer_cls):
    """The layers' keyword defaults are the models' (one set of defaults)."""
    types = setting_types(cls)
    sig = inspect.signature(layer_cls.__init__).parameters
    shared = [k for k in sig if k in types and sig[k].default is not inspect.Parameter.empty]
    assert len(shared) >= 5
    for k in shared:
        d = sig[k].default
        assert (list(d) if isinstance(d, tuple) else d) == types[k][1], k


def test_config_is_the_settings():
    m = flows.SpectralFlow(2, 3, 2, context_channels=3)
    cfg = m.config()
    assert set(cfg) == {"Nd", "N"} | set(setting_types(SpectralFlowConfig)) - {"schedule", "direction_layers",
                                                                                "context_channels"}
    assert cfg["context_hidden"] == [3, 3]
    assert flows.SpectralFlow.from_config(cfg).config() == cfg
    r = flows.residual_flow(2, 3, ("M2",), field_dependent=True, context_channels=2)
    assert r.config() == {"Nd": 2, "N": 3, **{k: v for k, v in r.settings.as_dict().items()
                                               if k != "context_channels"}}
    assert r.config()["context_hidden"] == [2]


def test_residual_flow_files_of_both_formats_load(tmp_path):
    """New files store class "ResidualFlow" and the settings; a file of the per-layer "Flow"
    form (what flows.save wrote for residual flows before ResidualFlow) still loads, as a Flow
    with the same layers."""
    m = flows.residual_flow(2, 3, ("M2",), ("plaquette",))
    p = m.init(1)
    p = {k: v + 0.1 for k, v in p.items()}
    flows.save(tmp_path / "new.h5", m, p)
    assert flows.read_config(tmp_path / "new.h5")["class"] == "ResidualFlow"
    m2, p2 = flows.load(tmp_path / "new.h5")
    assert type(m2) is flows.ResidualFlow and m2.config() == m.config()
    flows.save_params(tmp_path / "old.h5", p, {"class": "Flow", "config": flows.Flow.config(m)})
    m3, p3 = flows.load(tmp_path / "old.h5")
    assert type(m3) is flows.Flow and flows.Flow.config(m3) == flows.Flow.config(m)
    U = random_gauge((4, 4), N=3, batch=(1,), seed=3)
    np.testing.assert_array_equal(m.forward(p, U)[0], m3.forward(p3, U)[0])


def test_old_spectral_flow_config_without_dtype_default_loads():
    """Old files store dtype None (the input's dtype): still a valid setting."""
    m = flows.SpectralFlow(2, 3, 2, dtype=None)
    assert m.config()["dtype"] is None and flows.SpectralFlow.from_config(m.config()).dtype is None


# ---------------------------------------------------------------------- the TOML schema
@pytest.mark.parametrize("kind", ["spectral", "residual"])
def test_every_setting_is_a_flow_key_and_vice_versa(kind):
    cls = KINDS[kind]
    schema = flow_schema(kind)
    types = setting_types(cls)
    assert set(schema) == {"kind"} | set(types)
    for k, (t, d) in types.items():
        assert schema[k][1] == (OPTIONAL if d is None else d), k
        assert SCHEMA["flow"][k][1] is PER_KIND
    assert set(SCHEMA["flow"]) == {"kind"} | set(setting_types(SpectralFlowConfig)) | set(setting_types(
        ResidualFlowConfig))


def test_every_pf_setting_is_a_pf_flow_key():
    for k, (t, d) in setting_types(PseudofermionFlowConfig).items():
        assert SCHEMA["pf_flow"][k][1] == (OPTIONAL if d is None else d), k


BASE = {"lattice": {"shape": [4, 4, 4, 4]}, "action": {"beta": 5.7}, "train": {"lam2": 0.01}}


@pytest.mark.parametrize("kind", ["spectral", "residual"])
def test_filled_flow_section_is_the_settings_defaults(kind):
    c = validate({**BASE, "flow": {"kind": kind}})
    d = {k: v for k, v in KINDS[kind]().as_dict().items() if v is not None}
    assert c["flow"] == {"kind": kind, **d}
    assert flows.flow_config(c["flow"]) == KINDS[kind]()
    assert validate({**BASE, "flow": dict(c["flow"])})["flow"] == c["flow"]         # idempotent


def test_location_loops_and_every_option_from_toml(tmp_path):
    from run.jobs.train import make_model
    f = {"kind": "spectral", "n_layers": 4, "loops": "learned", "location_loops": "plaquette", "direction_layers": 2,
         "context_hidden": [3], "context_loops": ["plaquette", "rectangle"], "spline_basis": 2, "spline_kind": "sine",
         "save_memory": True, "recompute": False, "dtype": "complex64"}
    c = validate({**BASE, "flow": f})
    m = make_model(c, 4, 3)
    assert [l.loops for l in m.layers] == ["learned", "learned", "plaquette", "plaquette"]
    assert m.settings == SpectralFlowConfig(**{k: v for k, v in f.items() if k != "kind"}).replace(
        masks=m.settings.masks, location_loops="plaquette")
    # explicit masks as inline tables, through dump_toml and back
    f2 = {"kind": "spectral", "masks": [flows.build_schedule(4, 2, "simple")[1].as_dict()]}
    c2 = validate({**BASE, "flow": f2})
    p = tmp_path / "c.toml"
    p.write_text(dump_toml(c2))
    c3 = load_config(str(p))
    assert c3["flow"] == c2["flow"] and make_model(c3, 4, 3).masks == [flows.build_schedule(4, 2, "simple")[1]]


@pytest.mark.parametrize("flow,match", [
    ({"kind": "residual", "n_layers": 4}, "flow.n_layers is not a setting of flow.kind = 'residual' "
                                          r"\(it is a setting of flow.kind = 'spectral'\)"),
    ({"kind": "spectral", "families": ["plaquette"]}, "flow.families is not a setting of flow.kind = 'spectral'"),
    ({"kind": "spectral", "n_layers": 0}, "flow.n_layers must be an integer >= 1, got 0"),
    ({"kind": "spectral", "loops": 3}, "flow.loops must be a string, got 3"),
    ({"kind": "residual", "bound": 0.9}, r"flow.bound must lie in \(0, 0.5\]"),
    ({"kind": "residual", "masks": "M2"}, "flow.masks must be a list"),
    ({"kind": "other"}, "flow.kind must be 'spectral'"),
    ({"no_such_key": 1}, "unknown key flow.no_such_key"),
])
def test_bad_flow_sections(flow, match):
    with pytest.raises(ConfigError, match=match):
        validate({**BASE, "flow": flow})


def test_pf_flow_model_keys():
    from run.jobs.train import make_pf_model
    c = validate({**BASE, "fermions": {"enabled": True}, "train": {"lam2": 0.01, "base": "ensemble"},
                  "pf_flow": {"enabled": True, "n_layers": 2, "hidden": 3,
                              "masks": [{"axis": 1, "parity": 1}, {"axis": 2, "parity": 0}]}})
    m = make_pf_model(c)
    assert m.settings == PseudofermionFlowConfig(2, 3, ({"axis": 1, "parity": 1}, {"axis": 2, "parity": 0}))
    assert "masks" not in validate(BASE)["pf_flow"]           # derived: left out unless given
    with pytest.raises(ConfigError, match="pf_flow.hidden must be an integer >= 0"):
        validate({**BASE, "pf_flow": {"hidden": -1}})
    with pytest.raises(ConfigError, match="pf_flow.masks: 1 masks for 16 layers"):
        validate({**BASE, "pf_flow": {"masks": [{"axis": 0, "parity": 0}]}})


# ---------------------------------------------------------------------- bundled configs: same models as before
def _old_make_model(cfg, Nd, N):
    """What run.jobs.train.make_model built before the settings classes, with the old [flow]
    defaults spelled out (kind "spectral", n_layers 8, schedule "simple", context_channels 8,
    masks M2, M4, M2, M4, families plaquette + rectangle, dtype complex128, ...)."""
    old = {"kind": "spectral", "masks": ["M2", "M4", "M2", "M4"], "families": ["plaquette", "rectangle"],
           "field_dependent": False, "bound": 0.5, "loops": "learned", "n_layers": 8, "schedule": "simple",
           "staple_layers": 2, "staple_width": 8, "context_channels": 8, "context_kernel": 3, "spline_bins": 8,
           "dtype": "complex128"}
    f = {**old, **cfg}
    if f["kind"] == "residual":
        from flows.residual import ResidualLayer
        from flows.masks import residual_schedule
        layers = []
        for m in residual_schedule(Nd, tuple(f["masks"])):
            fams = tuple(x for x in f["families"] if not (x == "rectangle" and m.modulus == 2)) or ("plaquette",)
            layers.append(ResidualLayer(m, Nd, N, fams, field_dependent=f["field_dependent"],
                                        context_hidden=(f["context_channels"],), context_kernel=f["context_kernel"],
                                        bound=f["bound"]))
        return flows.Flow(layers, Nd=Nd, N=N, dtype=f["dtype"])
    raise AssertionError("the bundled configs use residual flows")


@pytest.mark.parametrize("name", ["demo", "nf2-fh-small", "paper-12c24", "quenched-fh"])
def test_bundled_configs_build_the_same_models_as_before(name):
    import tomllib
    from run.config import config_path
    from run.jobs.train import make_model, make_pf_model, train_shape
    with open(config_path(name), "rb") as fh:
        raw = tomllib.load(fh)
    c = load_config(name)
    Nd = len(train_shape(c))
    new, old = make_model(c, Nd, 3), _old_make_model(raw.get("flow", {}), Nd, 3)
    assert flows.Flow.config(new) == flows.Flow.config(old)
    assert new.param_shapes() == old.param_shapes()
    if c["pf_flow"]["enabled"]:
        p = raw["pf_flow"]
        old_pf = PseudofermionFlow(p.get("n_layers", 16), p.get("hidden", 8), bc=c["fermions"]["bc_time"])
        assert make_pf_model(c).config() == old_pf.config()


def test_old_run_info_flow_sections_still_match():
    """run_info["flow"] of a flow trained by the old runner (every kind's keys, old values) is
    today's section for the same settings; other settings still differ."""
    old = {"kind": "residual", "masks": ["M2", "M4"], "families": ["plaquette", "rectangle"], "field_dependent": False,
           "bound": 0.5, "loops": "learned", "n_layers": 8, "schedule": "simple", "staple_layers": 2,
           "staple_width": 8, "context_channels": 8, "context_kernel": 3, "spline_bins": 8, "dtype": "complex128"}
    assert upgrade_flow_section(old) == load_config("demo")["flow"]
    spectral = {**old, "kind": "spectral"}
    up = upgrade_flow_section(spectral)
    assert up["schedule"] == "simple" and up["n_layers"] == 8 and up["context_hidden"] == [8, 8]
    assert up != validate({**BASE, "flow": {"kind": "spectral"}})["flow"]       # the defaults changed: retrain
    assert up == validate({**BASE, "flow": {"kind": "spectral", "n_layers": 8, "schedule": "simple",
                                            "context_channels": 8}})["flow"]
    assert upgrade_flow_section(load_config("demo")["flow"]) == load_config("demo")["flow"]


# ---------------------------------------------------------------------- one log-weight formula
def test_log_weight_is_the_formula_of_log_weights():
    model = flows.SpectralFlow(2, 2, 2, "plaquette", schedule="simple", context_hidden=(2,))
    params = {k: v + 0.05 for k, v in model.init(0).items()}
    lay = Layout((4, 4))
    target, base = flows.GaugeTarget(Wilson(2.0)), flows.EnsembleBase(
        random_gauge((4, 4), N=2, batch=(4,), seed=1), flows.GaugeTarget(Wilson(1.0)), holdout=1, layout=lay)
    z = random_gauge((4, 4), N=2, batch=(2,), seed=2)
    x, lw = flows.log_weights(model, params, base, target, z, lay)
    _, logJ = model.forward(params, z, layout=lay)
    ref = target.log_prob(x, layout=lay) - base.log_prob(z, layout=lay) + logJ
    np.testing.assert_array_equal(lw, ref)
    np.testing.assert_array_equal(flows.log_weight(1.5, 0.25, np.array([1.0]), 2.0), [4.25])


def test_log_weight_reproduces_evaluate_columns_bit_for_bit():
    """`evaluate` stored -dS + log J + log W with dS = S_2(f(U)) - S_1(U); flows.log_weight of
    (-S_2, -S_1, log J, log W) is the same float."""
    r = np.random.default_rng(0)
    for s1, s2, lj, lw in r.normal(size=(2000, 4)) * np.array([1e4, 1e4, 3.0, 1.0]):
        dS = float(np.float64(s2) - np.float64(s1))
        assert flows.log_weight(-float(s2), -float(s1), float(lj), float(lw)) == -dS + float(lj) + float(lw)
        assert flows.log_weight(-float(s2), -float(s1)) == -dS
