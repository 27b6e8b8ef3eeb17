"""TOML job configuration: defaults, command-line overrides and validation.

A configuration is a nested dict read from a TOML file and checked against
:data:`SCHEMA`, which gives every known key its type and default. Unknown keys, wrong
types and inconsistent values raise :class:`ConfigError` with the offending key and what
would fix it. Command-line overrides use dotted keys, ``--set hmc.n_traj=200``; values are
parsed as TOML literals (``--set lattice.shape=[8,8,8,16]``).

The model keys are not listed here but derived from the models' settings classes
(:mod:`flows.config`, one definition of each option, its default and its checks): ``[flow]``
holds ``kind`` ("spectral" or "residual") and the fields of that kind's class
(:class:`flows.SpectralFlowConfig`, :class:`flows.ResidualFlowConfig`); a key of the other kind
is an error. ``[pf_flow]`` holds the fields of :class:`flows.PseudofermionFlowConfig` next to
its training keys. ``run.jobs.train`` builds the models with ``<Kind>Config.from_dict``.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

from flows.config import FLOW_KINDS, PseudofermionFlowConfig, SettingError, setting_types

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ConfigError", "SCHEMA", "load_config", "apply_overrides", "validate", "config_path",
           "dump_toml", "check_command", "check_analyze", "analyze_window", "RANGES", "CHOICES", "flow_schema", "upgrade_flow_section"]


class ConfigError(ValueError):
    """An invalid or inconsistent job configuration."""


# key -> (type or tuple of types, default). A default of REQUIRED must be given by the user; a
# default of OPTIONAL (a derived setting, None in Python) leaves the key out unless given; a
# default of PER_KIND is the default of the [flow] kind chosen (flow.kind).
REQUIRED = object()
OPTIONAL = object()
PER_KIND = object()

SCHEMA: dict[str, dict[str, tuple]] = {
    "job": {"name": (str, "gaugeflow"), "output": (str, "out"), "seed": (int, 0),
            "backend": (str, "numpy"), "progress": (bool, True), "threads": (int, 1),
            "mpi_device_buffers": (str, "auto")},
    "lattice": {"shape": (list, REQUIRED), "N": (int, 3)},
    "action": {"type": (str, "wilson"), "beta": ((int, float), REQUIRED), "c1": ((int, float), -1.0 / 12.0)},
    "fermions": {"enabled": (bool, False), "kappa": ((int, float), 0.125), "mu": ((int, float), 0.0),
                 "cg_tol": ((int, float), 1e-10), "cg_maxiter": (int, 10000), "bc_time": (str, "antiperiodic")},
    "hmc": {"n_traj": (int, 100), "n_therm": (int, 20), "tau": ((int, float), 1.0), "n_steps": (int, 10),
            "n_steps_gauge": (int, 4), "integrator": (str, "omelyan"), "save_every": (int, 1),
            "start": (str, "hot"), "lam": ((int, float), 0.0)},
    "flow": None,       # derived from the model settings classes (below)
    "train": {"lam1": ((int, float), 0.0), "lam2": ((int, float), 0.0), "base": (str, "haar"),
              "steps": (int, 100), "batch_size": (int, 16), "lr": ((int, float), 1e-3), "warmup": (int, 0),
              "schedule": (str, "cosine"), "clip": ((int, float), 10.0), "estimator": (str, "path"),
              "holdout": ((int, float), 0.25), "holdout_every": (int, 10), "checkpoint_every": (int, 10),
              "shape": (list, []), "exact_fermions": (bool, False), "init": (str, "identity")},
    "pf_flow": {"enabled": (bool, False), "init": (str, "hopping"), "steps": (int, 100),
                "batch_size": (int, 2), "n_shots": (int, 4), "lr": ((int, float), 1e-3),
                "schedule": (str, "cosine"), "estimator": (str, "path"), "holdout": ((int, float), 0.25),
                "holdout_every": (int, 10), "checkpoint_every": (int, 10)},   # + the model settings (below)
    "evaluate": {"n_shots": (int, 4)},
    "measure": {"n_sources": (int, 16), "flowed": (bool, True)},
    "analyze": {"t_min": (list, []), "t_max": (int, 0), "n_states": (int, 1), "bin_size": (int, 1),
                "eps": ((int, float), 0.0), "correlated": (bool, True), "independent": (str, "")},
    "cost": {"c_gen": ((int, float), 0.17), "c_meas": ((int, float), 0.17), "c_flow": ((int, float), 0.01),
             "c_rew": ((int, float), 0.04), "train_cost": ((int, float), 4608.0), "unit": (str, "GPU h")},
}


# ---------------------------------------------------------------------- model settings
# The model keys are the fields of the model settings classes (flows.config), with their
# defaults and checks (one definition): [flow] holds `kind` and the union of the fields of the
# kinds' classes (a key that is not a field of the chosen kind is an error, see _flow_section);
# [pf_flow] holds the fields of PseudofermionFlowConfig next to its training keys.
_PY_TO_TOML = {(int,): int, (int, float): (int, float), (bool,): bool, (str,): str, (list, tuple): list}


def _settings_schema(cls) -> dict:
    """{field: (TOML type, default)} of a flows settings class (default None: OPTIONAL)."""
    return {k: (_PY_TO_TOML[t], OPTIONAL if d is None else d) for k, (t, d) in setting_types(cls).items()}


def flow_schema(kind: str) -> dict:
    """The [flow] keys of one kind: ``kind`` and its settings' fields with their defaults."""
    return {"kind": (str, "spectral"), **_settings_schema(FLOW_KINDS[kind])}


SCHEMA["flow"] = {"kind": (str, "spectral")}
for _cls in FLOW_KINDS.values():
    for _k, (_t, _) in _settings_schema(_cls).items():
        SCHEMA["flow"].setdefault(_k, (_t, PER_KIND))
SCHEMA["pf_flow"] = {"enabled": SCHEMA["pf_flow"]["enabled"], **_settings_schema(PseudofermionFlowConfig),
                     **{k: v for k, v in SCHEMA["pf_flow"].items() if k != "enabled"}}
del _cls, _k, _t

def config_path(name: str) -> Path:
    """Path of a bundled config (``run/configs/<name>.toml``) or of a user file."""
    p = Path(name)
    if p.is_dir():
        raise ConfigError(f"config {name!r} is a directory: give a TOML file (e.g. {p / 'job.toml'}) or the name of "
                          f"a bundled config")
    if p.is_file():
        return p
    q = Path(__file__).with_name("configs") / (name if name.endswith(".toml") else name + ".toml")
    if q.exists():
        return q
    raise ConfigError(f"config {name!r} not found (neither a file nor one of {sorted(x.stem for x in q.parent.glob('*.toml'))})")


def load_config(source, overrides=(), command: str | None = None) -> dict:
    """Read a TOML file (path or bundled name), apply ``key=value`` overrides, validate;
    with ``command`` also the cross-checks of that stage (:func:`check_command`)."""
    path = config_path(str(source))
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text (TOML) file: {exc}") from exc
    cfg = apply_overrides(raw, overrides)
    cfg = validate(cfg, source=str(path))
    if command is not None:
        check_command(cfg, command, source=str(path))
    cfg["_source"] = str(path)
    return cfg


# What each command runs: even-odd fermion solves (hmc with fermions, evaluate with
# fermions, measure always), flows (train on train.shape, evaluate on lattice.shape).
def _stage_needs(cfg: dict, command: str) -> dict:
    """{"evenodd": [(key, shape), ...], "flow": [(key, shape), ...], "ildg": bool}."""
    shape = list(cfg["lattice"]["shape"])
    tshape = list(cfg["train"]["shape"]) or shape
    tkey = "train.shape" if cfg["train"]["shape"] else "lattice.shape"
    fermions = cfg["fermions"]["enabled"]
    needs = {"evenodd": [], "flow": [], "ildg": False, "valence": False}
    if command in ("hmc", "demo") and fermions:
        needs["evenodd"].append(("lattice.shape", shape))
    if command in ("train", "demo"):
        needs["flow"].append((tkey, tshape))
        if fermions and cfg["train"]["base"] == "ensemble":
            needs["evenodd"].append((tkey, tshape))
    if command in ("evaluate", "demo"):
        needs["flow"].append(("lattice.shape", shape))
        if fermions:
            needs["evenodd"].append(("lattice.shape", shape))
    if command in ("measure", "demo"):
        needs["evenodd"].append(("lattice.shape", shape))
        needs["valence"] = True
    if command == "import":
        needs["ildg"] = True
    return needs


def check_command(cfg: dict, command: str, source: str = "config") -> None:
    """Cross-checks that depend on the command: the lattice of every even-odd solve (4d, SU(3),
    even extents, L_0 >= 4), of every flow (even extents: the masks are checkerboards) and of
    ILDG import (4d SU(3)). Raises ConfigError naming the key."""
    needs = _stage_needs(cfg, command)
    N = cfg["lattice"]["N"]
    for key, shape in needs["evenodd"]:
        what = "dynamical fermions" if not needs["valence"] or cfg["fermions"]["enabled"] else \
            f"the valence quarks of `{command}`"
        if len(shape) != 4:
            raise ConfigError(f"{source}: {key} = {shape}: {what} need a 4d lattice")
        if N != 3:
            raise ConfigError(f"{source}: lattice.N = {N}: {what} are implemented for SU(3) only")
        if any(n % 2 for n in shape) or shape[0] < 4:
            raise ConfigError(f"{source}: {key} = {shape}: {what} use even-odd preconditioning, which needs "
                              f"even extents in every direction and L_0 >= 4")
    for key, shape in needs["flow"]:
        if any(n % 2 for n in shape):
            raise ConfigError(f"{source}: {key} = {shape}: the flow's masks are checkerboards and need even "
                              f"extents in every direction")
        f = cfg["flow"]
        if f["kind"] == "residual" and "M4" in f["masks"] and any(n % 4 for n in shape):
            raise ConfigError(f"{source}: {key} = {shape}: residual flows with M4 masks need extents divisible by 4; "
                              f"use flow.masks = [\"M2\", \"M2\"] on this lattice")
    if command in ("analyze", "demo"):
        check_analyze(cfg, cfg["lattice"]["shape"][-1], source=source)
    if needs["ildg"] and (len(cfg["lattice"]["shape"]) != 4 or N != 3):
        raise ConfigError(f"{source}: lattice.shape = {cfg['lattice']['shape']}, lattice.N = {N}: ILDG files hold "
                          f"SU(3) fields on 4d lattices")


def analyze_window(T: int, a: dict) -> tuple:
    """``(t_max, t_mins)`` of `gaugeflow analyze` for time extent T and the [analyze] section ``a``:
    t_max = analyze.t_max, or T/2 for 0; t_mins = analyze.t_min, or 1 ... t_max - 3 for []
    (at least [1]). The fit windows are [t_min, t_max] for every t_min."""
    t_max = a["t_max"] or T // 2
    return t_max, [int(t) for t in a["t_min"]] or list(range(1, max(2, t_max - 2)))


def check_analyze(cfg: dict, T: int, n_configs: int | None = None, source: str = "config") -> None:
    """The [analyze] settings against the time extent T and, once it is known, the number of
    measured configurations. Raises ConfigError naming the key, the value and what is allowed.

    Fit windows [t_min, t_max] with t_max <= T/2 and t_min < t_max; a k-state cosh fit has 2k
    parameters (E_n, A_n) and no priors, so every window needs nt = t_max - t_min + 1 >= 2k
    points. The jackknife of N configurations in bins of b has N_b = floor(N/b) bins; it needs
    N_b >= 2, and a correlated fit of nt points needs N_b - 1 >= nt (the jackknife covariance of
    the window has rank at most N_b - 1; a singular one cannot be inverted).
    """
    a = cfg["analyze"]
    t_max, t_mins = analyze_window(T, a)
    if t_max > T // 2:
        raise _bad(source, "analyze.t_max", a["t_max"], f"at most T/2 = {T // 2} (T = lattice.shape[-1] = {T}; "
                   f"0 means T/2)")
    if any(t >= t_max for t in t_mins):
        if a["t_min"]:
            raise _bad(source, "analyze.t_min", a["t_min"], f"a list of fit starts below analyze.t_max = {t_max}")
        raise _bad(source, "analyze.t_max", a["t_max"], f"at least 2 for the default analyze.t_min = [1] (T = {T}; "
                   f"give analyze.t_min = [0] for a fit from t = 0)")
    k, t_last, t_first = a["n_states"], max(t_mins), min(t_mins)
    nt_short, nt_long = t_max - t_last + 1, t_max - t_first + 1
    if 2 * k > nt_short:
        raise _bad(source, "analyze.n_states", k,
                   f"at most {nt_short // 2}: a {k}-state fit has {2 * k} parameters (E_n, A_n per state) and the "
                   f"fit window [t_min = {t_last}, t_max = {t_max}] has {nt_short} points"
                   + (f" (or use analyze.t_min <= {t_max - 2 * k + 1} with {k} states)" if t_max >= 2 * k - 1 else
                      f" ({k} states need t_max >= {2 * k - 1}, and t_max <= T/2 = {T // 2})"))
    if n_configs is None:
        return
    n, b = int(n_configs), a["bin_size"]
    if n // b < 2:
        raise _bad(source, "analyze.bin_size", b, f"at most {n // 2}: the jackknife needs at least 2 bins of the "
                   f"{n} measured configurations")
    if a["correlated"] and n // b < nt_long + 1:
        need = nt_long + 1
        if n // need >= 1:
            raise _bad(source, "analyze.bin_size", b,
                       f"at most {n // need} for correlated fits: the covariance of the fit window [t_min = "
                       f"{t_first}, t_max = {t_max}] ({nt_long} points) needs at least {need} jackknife bins of the "
                       f"{n} measured configurations (or set analyze.correlated = false)")
        raise _bad(source, "analyze.correlated", True,
                   f"false with {n} measured configurations: the covariance of the fit window [t_min = {t_first}, "
                   f"t_max = {t_max}] ({nt_long} points) needs at least {need} configurations (or use analyze.t_min "
                   f">= {t_max - n + 2})")


def apply_overrides(cfg: dict, overrides) -> dict:
    cfg = copy.deepcopy(cfg)
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, val = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override key {key!r} must be section.key (e.g. hmc.n_traj)")
        try:
            value = tomllib.loads(f"v = {val}")["v"]
        except tomllib.TOMLDecodeError:
            value = val  # bare strings
        cfg.setdefault(parts[0], {})[parts[1]] = value
    return cfg


def validate(cfg: dict, source: str = "config") -> dict:
    """Fill defaults, reject unknown keys and wrong types, check consistency."""
    out: dict[str, Any] = {}
    for sec, body in cfg.items():
        if sec.startswith("_"):
            continue
        if sec not in SCHEMA:
            raise ConfigError(f"{source}: unknown section [{sec}]; known sections: {', '.join(SCHEMA)}")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{sec}] must be a table")
        for key in body:
            if key not in SCHEMA[sec]:
                raise ConfigError(f"{source}: unknown key {sec}.{key}; known keys in [{sec}]: {', '.join(SCHEMA[sec])}")
    for sec, keys in SCHEMA.items():
        body = cfg.get(sec, {})
        o = {}
        if sec == "flow":       # the kind's keys and defaults: _flow_section (in _check_flow)
            o = dict(body)
            if not isinstance(o.get("kind", "spectral"), str):
                raise ConfigError(f"{source}: flow.kind must be str, got {o['kind']!r}")
            o.setdefault("kind", "spectral")
            out[sec] = o
            continue
        for key, (typ, default) in keys.items():
            if key in body:
                v = body[key]
                if isinstance(v, bool) and typ in (int, (int, float)):
                    raise ConfigError(f"{source}: {sec}.{key} must be a number, got {v!r}")
                if not isinstance(v, typ):
                    tn = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
                    raise ConfigError(f"{source}: {sec}.{key} must be {tn}, got {v!r}")
                o[key] = v
            elif default is REQUIRED:
                if sec in cfg or sec in ("lattice", "action"):
                    raise ConfigError(f"{source}: missing required key {sec}.{key}")
            elif default is OPTIONAL:
                continue
            else:
                o[key] = copy.deepcopy(default)
        out[sec] = o
    _check_ranges(out, source)
    _check_consistency(out, source)
    return out


# Ranges of numeric keys: (section, key) -> (test, what is allowed). Every number must also be
# finite. Kept apart from SCHEMA (and from _check_consistency's cross-checks) so that new keys
# only need a line here. The model settings ([flow], the model keys of [pf_flow]) are checked
# by their settings classes (flows.config), not here.
def _int_at_least(lo):
    return (lambda v: v >= lo), f"an integer >= {lo}"


def _positive_float():
    return (lambda v: v > 0), "a number > 0"


def _any_number():
    return (lambda v: True), "a finite number"


RANGES: dict[tuple, tuple] = {
    ("job", "seed"): ((lambda v: 0 <= v < 2**63), "an integer in [0, 2^63)"),
    ("job", "threads"): ((lambda v: 0 <= v <= 1024), "an integer >= 0 (BLAS/OpenMP threads per rank; 0 = the "
                                                        "libraries' defaults)"),
    ("lattice", "N"): ((lambda v: 2 <= v <= 16), "an integer from 2 to 16 (the gauge group SU(N))"),
    ("action", "beta"): _positive_float(),
    ("action", "c1"): _any_number(),
    ("fermions", "kappa"): ((lambda v: 0 < v < 0.25), "a number in (0, 0.25)"),
    ("fermions", "mu"): _any_number(),
    ("fermions", "cg_tol"): ((lambda v: 0 < v < 1), "a relative residual in (0, 1), e.g. 1e-10"),
    ("fermions", "cg_maxiter"): _int_at_least(1),
    ("hmc", "n_traj"): _int_at_least(1),
    ("hmc", "n_therm"): _int_at_least(0),
    ("hmc", "tau"): _positive_float(),
    ("hmc", "n_steps"): _int_at_least(1),
    ("hmc", "n_steps_gauge"): _int_at_least(1),
    ("hmc", "save_every"): _int_at_least(1),
    ("hmc", "lam"): _any_number(),
    ("train", "lam1"): _any_number(),
    ("train", "lam2"): _any_number(),
    ("train", "steps"): _int_at_least(0),          # 0 only with train.init = "linear-response" (below)
    ("train", "batch_size"): _int_at_least(1),
    ("train", "lr"): _positive_float(),
    ("train", "warmup"): _int_at_least(0),
    ("train", "clip"): _positive_float(),
    ("train", "holdout"): ((lambda v: 0 < v < 1 if isinstance(v, float) else v >= 1),
                           "a fraction in (0, 1) or a whole number of configurations >= 1"),
    ("train", "holdout_every"): ((lambda v: v >= 0), "an integer >= 0 (0: no held-out evaluation)"),
    ("train", "checkpoint_every"): _int_at_least(1),
    ("pf_flow", "steps"): _int_at_least(0),          # 0 only with pf_flow.init = "hopping" (below)
    ("pf_flow", "batch_size"): _int_at_least(1),
    ("pf_flow", "n_shots"): _int_at_least(1),
    ("pf_flow", "lr"): _positive_float(),
    ("pf_flow", "holdout"): ((lambda v: 0 < v < 1 if isinstance(v, float) else v >= 1),
                             "a fraction in (0, 1) or a whole number of configurations >= 1"),
    ("pf_flow", "holdout_every"): ((lambda v: v >= 0), "an integer >= 0 (0: no held-out evaluation)"),
    ("pf_flow", "checkpoint_every"): _int_at_least(1),
    ("evaluate", "n_shots"): _int_at_least(1),
    ("measure", "n_sources"): _int_at_least(1),
    ("analyze", "t_max"): ((lambda v: v >= 0), "an integer >= 0 (0: T/2)"),
    ("analyze", "n_states"): _int_at_least(1),
    ("analyze", "bin_size"): _int_at_least(1),
    ("analyze", "eps"): ((lambda v: v >= 0), "a number >= 0 (0: exact derivative)"),
    ("cost", "c_gen"): ((lambda v: v >= 0), "a number >= 0"),
    ("cost", "c_meas"): ((lambda v: v >= 0), "a number >= 0"),
    ("cost", "c_flow"): ((lambda v: v >= 0), "a number >= 0"),
    ("cost", "c_rew"): ((lambda v: v >= 0), "a number >= 0"),
    ("cost", "train_cost"): ((lambda v: v >= 0), "a number >= 0"),
}

# Keys with a fixed set of values (checked in _check_ranges).
CHOICES: dict[tuple, tuple] = {
    ("job", "backend"): ("numpy", "cupy", "array_api_strict"),
    ("job", "mpi_device_buffers"): ("auto", "device", "host"),
    ("action", "type"): ("wilson", "luscher_weisz"),
    ("fermions", "bc_time"): ("antiperiodic", "periodic"),
    ("hmc", "integrator"): ("omelyan", "leapfrog"),
    ("hmc", "start"): ("hot", "cold"),
    ("train", "base"): ("haar", "ensemble"),
    ("train", "schedule"): ("cosine", "linear", "constant"),
    ("train", "estimator"): ("path", "plain"),
    ("pf_flow", "init"): ("hopping", "identity"),
    ("pf_flow", "schedule"): ("cosine", "linear", "constant"),
    ("pf_flow", "estimator"): ("path", "plain"),
}


def _bad(source, key, value, allowed):
    return ConfigError(f"{source}: {key} must be {allowed}, got {value!r}")


def _check_ranges(c: dict, source: str):
    """Finiteness and range of every numeric key, the values of enumerated keys, list entries.
    One ConfigError naming the key, the value and what is allowed."""
    import math
    for (sec, key), (ok, allowed) in RANGES.items():
        if sec not in c or key not in c[sec]:
            continue
        v = c[sec][key]
        if isinstance(v, float) and not math.isfinite(v):
            raise _bad(source, f"{sec}.{key}", v, f"{allowed} (finite)")
        if not ok(v):
            raise _bad(source, f"{sec}.{key}", v, allowed)
    for (sec, key), choices in CHOICES.items():
        if sec in c and key in c[sec] and c[sec][key] not in choices:
            raise _bad(source, f"{sec}.{key}", c[sec][key], "one of " + ", ".join(repr(x) for x in choices))
    for key in ("name", "output"):
        if not c["job"][key].strip():
            raise _bad(source, f"job.{key}", c["job"][key], "a non-empty string")

    def extents(key, shape, empty_ok):
        if empty_ok and shape == []:
            return
        if not (2 <= len(shape) <= 4) or not all(isinstance(n, int) and not isinstance(n, bool) and 2 <= n <= 4096
                                                 for n in shape):
            raise _bad(source, key, shape, "a list of 2 to 4 integer extents from 2 to 4096 (time last)"
                       + (", or [] for lattice.shape" if empty_ok else ""))

    if c["lattice"].get("shape") is not None:
        extents("lattice.shape", c["lattice"]["shape"], False)
    extents("train.shape", c["train"]["shape"], True)
    tm = c["analyze"]["t_min"]
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tm):
        raise _bad(source, "analyze.t_min", tm, "a list of integers >= 0 ([] = 1 ... t_max - 3)")


def _check_consistency(c: dict, source: str):
    shape = c["lattice"].get("shape")
    if shape is not None:
        if not (2 <= len(shape) <= 4) or not all(isinstance(n, int) and n >= 2 for n in shape):
            raise ConfigError(f"{source}: lattice.shape must list 2 to 4 extents >= 2 (time last), got {shape}")
    if c["action"]["type"] not in ("wilson", "luscher_weisz"):
        raise ConfigError(f"{source}: action.type must be 'wilson' or 'luscher_weisz', got {c['action']['type']!r}")
    if c["fermions"]["enabled"]:
        if shape is not None and len(shape) != 4:
            raise ConfigError(f"{source}: dynamical fermions need a 4d lattice, got shape {shape}")
        if c["lattice"]["N"] != 3:
            raise ConfigError(f"{source}: fermions are implemented for SU(3) only")
        if not 0 < c["fermions"]["kappa"] < 0.25:
            raise ConfigError(f"{source}: fermions.kappa must lie in (0, 0.25), got {c['fermions']['kappa']}")
    if c["hmc"]["integrator"] not in ("omelyan", "leapfrog"):
        raise ConfigError(f"{source}: hmc.integrator must be 'omelyan' or 'leapfrog'")
    if c["hmc"]["start"] not in ("hot", "cold"):
        raise ConfigError(f"{source}: hmc.start must be 'hot' or 'cold'")
    _check_flow(c, source)
    c["pf_flow"] = _pf_flow_section(c["pf_flow"], source)
    if c["train"]["lam1"] == c["train"]["lam2"] and c["train"]["base"] == "ensemble":
        raise ConfigError(f"{source}: train.lam1 == train.lam2 = {c['train']['lam1']}: a correlated-ensemble flow "
                          "needs two different Feynman-Hellmann couplings (set train.lam2)")
    if c["train"]["shape"] and shape is not None and len(c["train"]["shape"]) != len(shape):
        raise ConfigError(f"{source}: train.shape {c['train']['shape']} must have as many axes as lattice.shape {shape}")
    if c["train"]["steps"] == 0 and c["train"]["init"] != "linear-response":
        raise ConfigError(f"{source}: train.steps = 0 trains nothing: give train.steps >= 1, or fit a residual flow "
                          f"without gradient steps with train.init = 'linear-response'")
    if not (0 <= c["train"]["warmup"] < c["train"]["steps"] or c["train"]["steps"] == 0 == c["train"]["warmup"]):
        raise ConfigError(f"{source}: train.warmup = {c['train']['warmup']} must lie in [0, train.steps = "
                          f"{c['train']['steps']}) (train.steps = 0 only with train.init = 'linear-response')")
    if c["train"]["estimator"] not in ("path", "plain"):
        raise ConfigError(f"{source}: train.estimator must be 'path' or 'plain'")
    if c["train"]["base"] not in ("haar", "ensemble"):
        raise ConfigError(f"{source}: train.base must be 'haar' or 'ensemble'")
    if c["job"]["backend"] not in ("numpy", "cupy", "array_api_strict"):
        raise ConfigError(f"{source}: job.backend must be 'numpy', 'cupy' or 'array_api_strict' (the array-API "
                          f"test backend)")
    if c["pf_flow"]["enabled"] and not c["fermions"]["enabled"]:
        raise ConfigError(f"{source}: pf_flow.enabled = true needs dynamical fermions (fermions.enabled = true): the "
                          f"pseudofermion flow improves the determinant-ratio estimator of Nf = 2 reweighting")
    if c["pf_flow"]["steps"] == 0 and c["pf_flow"]["init"] != "hopping":
        raise ConfigError(f"{source}: pf_flow.steps = 0 with pf_flow.init = 'identity' is the plain estimator: give "
                          f"pf_flow.steps >= 1, use pf_flow.init = 'hopping', or set pf_flow.enabled = false")
    if c["pf_flow"]["enabled"] and c["train"]["base"] != "ensemble":
        raise ConfigError(f"{source}: pf_flow.enabled = true needs train.base = 'ensemble' (it is trained on the "
                          f"lambda_1 configurations and their images under the trained gauge flow)")


def _check_flow(c: dict, source: str):
    """The flow kind and its initialisation, then the kind's settings (:func:`_flow_section`)."""
    f, t = c["flow"], c["train"]
    if f["kind"] not in FLOW_KINDS:
        raise ConfigError(f"{source}: flow.kind must be 'spectral' (coupling layers with spectral maps, the paper's "
                          f"section 2) or 'residual' (U' = exp(X) U, the correlated-ensemble model of section 3), "
                          f"got {f['kind']!r}")
    if t["init"] not in ("identity", "linear-response"):
        raise ConfigError(f"{source}: train.init must be 'identity' or 'linear-response', got {t['init']!r}")
    if t["init"] == "linear-response" and (f["kind"] != "residual" or t["base"] != "ensemble"):
        raise ConfigError(f"{source}: train.init = 'linear-response' fits the constants of a residual flow on the "
                          f"lambda_1 ensemble: it needs flow.kind = 'residual' and train.base = 'ensemble'")
    c["flow"] = _flow_section(f, source)


def _flow_section(body: dict, source: str = "config") -> dict:
    """The validated [flow] section: ``kind`` and every field of that kind's settings class
    (defaults filled, ``context_channels`` resolved into ``context_hidden``; fields whose value
    is None -- derived, e.g. ``location_loops`` -- left out). A key that is not a setting of the
    chosen kind is a ConfigError (it would do nothing); so is a value the settings class refuses,
    named ``flow.<field>``."""
    kind = body.get("kind", "spectral")
    cls = FLOW_KINDS[kind]
    fields = setting_types(cls)
    foreign = [k for k in body if k != "kind" and k not in fields]
    if foreign:
        other = [k for k, c in FLOW_KINDS.items() if k != kind and foreign[0] in setting_types(c)]
        why = f"it is a setting of flow.kind = {other[0]!r}" if other else "no flow kind has it"
        raise ConfigError(f"{source}: flow.{foreign[0]} is not a setting of flow.kind = {kind!r} ({why}); remove it. "
                          f"The settings of {kind!r}: {', '.join(fields)}")
    try:
        settings = cls.from_dict({k: v for k, v in body.items() if k != "kind"})
    except SettingError as exc:
        raise ConfigError(f"{source}: flow.{exc}") from None
    return {"kind": kind, **{k: v for k, v in settings.as_dict().items() if v is not None}}


def _pf_flow_section(p: dict, source: str = "config") -> dict:
    """[pf_flow] with its model keys checked and normalised by PseudofermionFlowConfig."""
    names = setting_types(PseudofermionFlowConfig)
    try:
        settings = PseudofermionFlowConfig.from_dict({k: v for k, v in p.items() if k in names})
    except SettingError as exc:
        raise ConfigError(f"{source}: pf_flow.{exc}") from None
    return {**p, **{k: v for k, v in settings.as_dict().items() if v is not None}}


def upgrade_flow_section(d):
    """A [flow] section stored by an older version (``run_info["flow"]`` of a trained flow file:
    the keys of every kind with the old runner's values) in today's form (:func:`_flow_section`),
    so that a flow trained with the same settings still matches its config. Anything else is
    returned unchanged."""
    if not isinstance(d, dict) or d.get("kind") not in FLOW_KINDS:
        return d
    fields = setting_types(FLOW_KINDS[d["kind"]])
    if all(k == "kind" or k in fields for k in d):
        return d
    body = {k: v for k, v in d.items() if k == "kind" or k in fields}
    if d["kind"] == "spectral":
        body.pop("masks", None)       # the old [flow].masks was the residual mask pattern
    try:
        return _flow_section(body)
    except ConfigError:
        return d


def dump_toml(cfg: dict) -> str:
    """A TOML rendering of a (validated) configuration, stored with every output."""
    def lit(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(lit(x) for x in v) + "]"
        if isinstance(v, dict):          # inline table (None entries left out: TOML has no null)
            return "{" + ", ".join(f"{k} = {lit(x)}" for k, x in v.items() if x is not None) + "}"
        return repr(v)
    lines = []
    for sec, body in cfg.items():
        if sec.startswith("_") or not isinstance(body, dict):
            continue
        lines.append(f"[{sec}]")
        lines += [f"{k} = {lit(v)}" for k, v in body.items()]
        lines.append("")
    return "\n".join(lines)
