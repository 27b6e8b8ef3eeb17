"""TOML job configuration: defaults, command-line overrides and validation.

A configuration is a nested dict read from a TOML file and checked against
:data:`SCHEMA`, which gives every known key its type and default. Unknown keys, wrong
types and inconsistent values raise :class:`ConfigError` with the offending key and what
would fix it. Command-line overrides use dotted keys, ``--set hmc.n_traj=200``; values are
parsed as TOML literals (``--set lattice.shape=[8,8,8,16]``).
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ConfigError", "SCHEMA", "load_config", "apply_overrides", "validate", "config_path",
           "dump_toml"]


class ConfigError(ValueError):
    """An invalid or inconsistent job configuration."""


# key -> (type or tuple of types, default). A default of REQUIRED must be given by the user.
REQUIRED = object()

SCHEMA: dict[str, dict[str, tuple]] = {
    "job": {"name": (str, "gaugeflow"), "output": (str, "out"), "seed": (int, 0),
            "backend": (str, "numpy"), "progress": (bool, True)},
    "lattice": {"shape": (list, REQUIRED), "N": (int, 3)},
    "action": {"type": (str, "wilson"), "beta": ((int, float), REQUIRED), "c1": ((int, float), -1.0 / 12.0)},
    "fermions": {"enabled": (bool, False), "kappa": ((int, float), 0.125), "mu": ((int, float), 0.0),
                 "cg_tol": ((int, float), 1e-10), "cg_maxiter": (int, 10000), "bc_time": (str, "antiperiodic")},
    "hmc": {"n_traj": (int, 100), "n_therm": (int, 20), "tau": ((int, float), 1.0), "n_steps": (int, 10),
            "n_steps_gauge": (int, 4), "integrator": (str, "omelyan"), "save_every": (int, 1),
            "start": (str, "hot"), "lam": ((int, float), 0.0)},
    "flow": {"kind": (str, "spectral"), "masks": (list, ["M2", "M4", "M2", "M4"]),
             "families": (list, ["plaquette", "rectangle"]), "field_dependent": (bool, False),
             "bound": ((int, float), 0.5),
             "loops": (str, "learned"), "n_layers": (int, 8), "schedule": (str, "simple"),
             "staple_layers": (int, 2), "staple_width": (int, 8), "context_channels": (int, 8),
             "context_kernel": (int, 3), "spline_bins": (int, 8), "dtype": (str, "complex128")},
    "train": {"lam1": ((int, float), 0.0), "lam2": ((int, float), 0.0), "base": (str, "haar"),
              "steps": (int, 100), "batch_size": (int, 16), "lr": ((int, float), 1e-3), "warmup": (int, 0),
              "schedule": (str, "cosine"), "clip": ((int, float), 10.0), "estimator": (str, "path"),
              "holdout": ((int, float), 0.25), "holdout_every": (int, 10), "checkpoint_every": (int, 10),
              "shape": (list, []), "exact_fermions": (bool, False), "init": (str, "identity")},
    "evaluate": {"n_shots": (int, 4)},
    "measure": {"n_sources": (int, 16), "flowed": (bool, True)},
    "analyze": {"t_min": (list, []), "t_max": (int, 0), "n_states": (int, 1), "bin_size": (int, 1),
                "eps": ((int, float), 0.0), "correlated": (bool, True)},
    "cost": {"c_gen": ((int, float), 0.17), "c_meas": ((int, float), 0.17), "c_flow": ((int, float), 0.01),
             "c_rew": ((int, float), 0.04), "train_cost": ((int, float), 4608.0), "unit": (str, "GPU h")},
}


def config_path(name: str) -> Path:
    """Path of a bundled config (``run/configs/<name>.toml``) or of a user file."""
    p = Path(name)
    if p.suffix == ".toml" and p.exists():
        return p
    q = Path(__file__).with_name("configs") / (name if name.endswith(".toml") else name + ".toml")
    if q.exists():
        return q
    raise ConfigError(f"config {name!r} not found (neither a file nor one of {sorted(x.stem for x in q.parent.glob('*.toml'))})")


def load_config(source, overrides=()) -> dict:
    """Read a TOML file (path or bundled name), apply ``key=value`` overrides, validate."""
    path = config_path(str(source))
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    cfg = apply_overrides(raw, overrides)
    cfg = validate(cfg, source=str(path))
    cfg["_source"] = str(path)
    return cfg


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
            else:
                o[key] = copy.deepcopy(default)
        out[sec] = o
    _check_consistency(out, source)
    return out


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
    if c["flow"]["loops"] not in ("learned", "plaquette", "rectangle"):
        raise ConfigError(f"{source}: flow.loops must be learned, plaquette or rectangle")
    if c["flow"]["dtype"] not in ("complex128", "complex64"):
        raise ConfigError(f"{source}: flow.dtype must be 'complex128' or 'complex64' (compute dtype of the flow layers)")
    if c["train"]["lam1"] == c["train"]["lam2"] and c["train"]["base"] == "ensemble":
        raise ConfigError(f"{source}: train.lam1 == train.lam2 = {c['train']['lam1']}: a correlated-ensemble flow "
                          "needs two different Feynman-Hellmann couplings (set train.lam2)")
    if c["train"]["shape"] and shape is not None and len(c["train"]["shape"]) != len(shape):
        raise ConfigError(f"{source}: train.shape {c['train']['shape']} must have as many axes as lattice.shape {shape}")
    if not (0 <= c["train"]["warmup"] < c["train"]["steps"]
            or (c["train"]["steps"] == 0 == c["train"]["warmup"] and c["train"]["init"] == "linear-response")):
        raise ConfigError(f"{source}: train.warmup = {c['train']['warmup']} must lie in [0, train.steps = "
                          f"{c['train']['steps']}) (train.steps = 0 only with train.init = 'linear-response')")
    if c["train"]["estimator"] not in ("path", "plain"):
        raise ConfigError(f"{source}: train.estimator must be 'path' or 'plain'")
    if c["train"]["base"] not in ("haar", "ensemble"):
        raise ConfigError(f"{source}: train.base must be 'haar' or 'ensemble'")
    if c["job"]["backend"] not in ("numpy", "cupy"):
        raise ConfigError(f"{source}: job.backend must be 'numpy' or 'cupy'")


def _check_flow(c: dict, source: str):
    """The flow architecture and its initialisation against the lattices it is used on."""
    f, t = c["flow"], c["train"]
    if f["kind"] not in ("spectral", "residual"):
        raise ConfigError(f"{source}: flow.kind must be 'spectral' (coupling layers with spectral maps, the paper's "
                          f"section 2) or 'residual' (U' = exp(X) U, the correlated-ensemble model of section 3), "
                          f"got {f['kind']!r}")
    if t["init"] not in ("identity", "linear-response"):
        raise ConfigError(f"{source}: train.init must be 'identity' or 'linear-response', got {t['init']!r}")
    if t["init"] == "linear-response" and (f["kind"] != "residual" or t["base"] != "ensemble"):
        raise ConfigError(f"{source}: train.init = 'linear-response' fits the constants of a residual flow on the "
                          f"lambda_1 ensemble: it needs flow.kind = 'residual' and train.base = 'ensemble'")
    if f["kind"] != "residual":
        return
    if not f["masks"] or any(m not in ("M2", "M4") for m in f["masks"]):
        raise ConfigError(f"{source}: flow.masks must be a non-empty list of 'M2' and 'M4' (one pass over all links "
                          f"each; the paper: [\"M2\", \"M4\", \"M2\", \"M4\"]), got {f['masks']}")
    fams = ("plaquette", "rectangle", "chair")
    if not f["families"] or any(x not in fams for x in f["families"]) or len(set(f["families"])) != len(f["families"]):
        raise ConfigError(f"{source}: flow.families must be distinct entries of {list(fams)}, got {f['families']}")
    if not 0 < f["bound"] <= 0.5:
        raise ConfigError(f"{source}: flow.bound must lie in (0, 0.5] (the residual coefficients' bound that keeps the "
                          f"inverse a contraction), got {f['bound']}")
    m = 4 if "M4" in f["masks"] else 2
    shapes = [("lattice.shape", c["lattice"].get("shape"))] + ([("train.shape", t["shape"])] if t["shape"] else [])
    for key, shape in shapes:
        if shape and any(L % m for L in shape):
            raise ConfigError(f"{source}: {key} = {shape}: residual flows with {'M4' if m == 4 else 'M2'} masks need "
                              f"extents divisible by {m}" + ("; use flow.masks = [\"M2\", \"M2\"] on this lattice"
                                                             if m == 4 and not any(L % 2 for L in shape) else ""))


def dump_toml(cfg: dict) -> str:
    """A TOML rendering of a (validated) configuration, stored with every output."""
    def lit(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(lit(x) for x in v) + "]"
        return repr(v)
    lines = []
    for sec, body in cfg.items():
        if sec.startswith("_") or not isinstance(body, dict):
            continue
        lines.append(f"[{sec}]")
        lines += [f"{k} = {lit(v)}" for k, v in body.items()]
        lines.append("")
    return "\n".join(lines)
