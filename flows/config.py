"""Model settings: one frozen dataclass per model kind, the one definition of every option.

Each model kind has one settings class; its fields (name, type, default and a one-line
description in the field's metadata) are the model's options everywhere:

* the constructor takes it (``SpectralFlow(Nd, N, config=SpectralFlowConfig(...))``; the
  keyword constructors, ``SpectralFlow(Nd, N, n_layers=8, ...)``, build it from their
  keywords, with the same defaults);
* the model's ``config()`` (what parameter files store) is ``{Nd, N} + as_dict()`` of the
  resolved settings (file formats unchanged, see each model);
* the TOML schema of the runner (``[flow]``, ``[pf_flow]`` in :mod:`run.config`) lists the
  fields as keys with these defaults, and its range checks are the ``__post_init__`` checks
  here (a :class:`SettingError` naming the field);
* the runner builds models with ``<Kind>Config.from_dict(section)`` and the constructor.

Lattice facts are not settings: ``Nd`` and ``N`` come from the lattice, the pseudofermion
flow's boundary phases from ``[fermions]``. A field whose default is ``None`` ("derived": e.g.
``location_loops`` = ``loops``) is absent from TOML unless given.

=====================  ======================================================================
kind                   class (model)
=====================  ======================================================================
``"spectral"``         :class:`SpectralFlowConfig` (:class:`flows.SpectralFlow`)
``"residual"``         :class:`ResidualFlowConfig` (:class:`flows.ResidualFlow`,
                       :func:`flows.residual_flow`)
(pseudofermion)        :class:`PseudofermionFlowConfig` (:class:`flows.PseudofermionFlow`)
=====================  ======================================================================

Where the constructors and the runner disagreed before (issue 16) the constructors' defaults
won (they are what Python code, tests and saved files rely on), except ``dtype``, which is
``"complex128"`` everywhere (the runner's and the documented default; the computation on
complex128 fields is the same as with ``None``, "the input's dtype", which stays allowed).
See docs/design.md §7.7.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

__all__ = ["SettingError", "SpectralFlowConfig", "ResidualFlowConfig", "PseudofermionFlowConfig", "FLOW_KINDS",
           "flow_config", "setting_docs", "setting_types"]

LOOPS = ("learned", "plaquette", "rectangle")
LOOP_FAMILIES = ("plaquette", "rectangle", "chair")
DTYPES = ("complex128", "complex64")


class SettingError(ValueError):
    """An invalid model setting; ``.field`` names it and the message starts with its name."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


def _opt(default, doc: str, types, *, factory=False, nullable=False):
    """A field with its default, one-line description and the TOML types it accepts
    (``nullable``: None is also allowed, though not in TOML)."""
    meta = {"doc": doc, "types": types, "nullable": nullable or default is None}
    if factory:
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


_INT, _NUM, _BOOL, _STR, _LIST = (int,), (int, float), (bool,), (str,), (list, tuple)


def _bad(name, value, allowed):
    return SettingError(name, f"{name} must be {allowed}, got {value!r}")


class _Settings:
    """Shared behaviour: type checks, ``from_dict``/``as_dict``, ``replace``."""

    @classmethod
    def resolve(cls, config, settings: dict, owner: str):
        """The settings of a model constructor called with ``config=`` or with keywords (not both)."""
        if config is None:
            return cls.from_dict(settings)
        if settings:
            raise TypeError(f"{owner}: pass either config= or the settings {sorted(settings)} as keywords, not both")
        if not isinstance(config, cls):
            raise TypeError(f"{owner}: config must be a flows.{cls.__name__}, got {type(config).__name__}")
        return config

    def _check_types(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.metadata["nullable"]:
                continue
            types = f.metadata["types"]
            if isinstance(v, bool) and bool not in types:
                ok = False
            else:
                ok = isinstance(v, types)
            if not ok:
                names = {_INT: "an integer", _NUM: "a number", _BOOL: "true or false", _STR: "a string",
                         _LIST: "a list"}.get(types, " or ".join(t.__name__ for t in types))
                raise _bad(f.name, v, names)
            if isinstance(v, float) and not math.isfinite(v):
                raise _bad(f.name, v, "a finite number")
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))

    def _set(self, name, value):
        object.__setattr__(self, name, value)

    def _int_at_least(self, name, lo, what=None):
        v = getattr(self, name)
        if v is not None and v < lo:
            raise _bad(name, v, what or f"an integer >= {lo}")

    def _choice(self, name, choices):
        v = getattr(self, name)
        if v is not None and v not in choices:
            raise _bad(name, v, "one of " + ", ".join(repr(c) for c in choices))

    def _strings(self, name, choices, distinct=False, nonempty=True, what=None):
        v = getattr(self, name)
        if (nonempty and not v) or any(x not in choices for x in v) or (distinct and len(set(v)) != len(v)):
            raise _bad(name, list(v), what or f"a list of entries of {list(choices)}")

    def _ints(self, name, lo, what):
        v = getattr(self, name)
        if not v or any(isinstance(x, bool) or not isinstance(x, int) or x < lo for x in v):
            raise _bad(name, list(v), what)

    @classmethod
    def from_dict(cls, d: dict):
        """The settings of ``d`` (keys: field names; missing keys take the defaults). An unknown
        key is a :class:`SettingError` naming it and listing the known ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            raise SettingError(unknown[0], f"{unknown[0]} is not a setting of {cls.__name__} "
                                           f"(settings: {', '.join(names)})")
        return cls(**d)

    def as_dict(self) -> dict:
        """Every field, tuples as lists (JSON and TOML friendly); ``from_dict`` inverts it."""
        def plain(v):
            if isinstance(v, (tuple, list)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def _context_hidden(self, n_copies):
    """``context_channels`` c is shorthand for ``context_hidden`` = (c,) * n_copies."""
    if self.context_channels is not None:
        self._int_at_least("context_channels", 1)
        self._set("context_hidden", (int(self.context_channels),) * n_copies)
        self._set("context_channels", None)
    self._set("context_hidden", tuple(self.context_hidden))
    self._ints("context_hidden", 1, "a non-empty list of integer widths >= 1")


def _context_checks(self):
    self._int_at_least("context_kernel", 1)
    if self.context_kernel % 2 != 1:
        raise _bad("context_kernel", self.context_kernel, "an odd integer >= 1")
    self._strings("context_loops", ("plaquette", "rectangle"), distinct=True)
    from .context import _ACTIVATIONS
    self._choice("context_activation", _ACTIVATIONS)
    self._choice("dtype", DTYPES)


@dataclass(frozen=True)
class SpectralFlowConfig(_Settings):
    """Settings of :class:`flows.SpectralFlow` (coupling layers with spectral maps; TOML
    ``[flow] kind = "spectral"``)."""

    n_layers: int = _opt(16, "number of coupling layers (with explicit masks: their number)", _INT)
    loops: str = _opt("learned", "active loops of the direction updates: learned (staple networks, eqs. 3-8), "
                                 "plaquette or rectangle", _STR)
    location_loops: str | None = _opt(None, "active loops of the location updates (default: loops; the paper's "
                                            "learned model uses plaquette)", _STR)
    schedule: str = _opt("paper", "mask schedule: paper (direction blocks + location updates) or simple "
                                  "(direction updates only)", _STR)
    direction_layers: int | None = _opt(None, "direction updates per block of the paper schedule (default all "
                                              "Nd 2 2(Nd-1) orientations)", _INT)
    masks: tuple | None = _opt(None, "explicit masks (flows.LayerMask dicts; replace schedule, n_layers and "
                                     "direction_layers)", _LIST)
    staple_width: int = _opt(8, "staple network width N_h", _INT)
    staple_layers: int = _opt(2, "staple network layers N_l (mixing layers)", _INT)
    context_hidden: tuple = _opt((16, 16), "hidden widths of the context networks' convolutions", _LIST)
    context_channels: int | None = _opt(None, "shorthand: context_hidden = [c, c]", _INT)
    context_kernel: int = _opt(3, "odd kernel size of the context convolutions", _INT)
    context_loops: tuple = _opt(("plaquette",), "gauge-invariant loop features of the context networks", _LIST)
    context_activation: str = _opt("tanh", "nonlinearity of the context networks", _STR)
    spline_bins: int = _opt(8, "bins of the spectral maps' splines", _INT)
    spline_basis: int = _opt(3, "basis functions of the spectral maps", _INT)
    spline_kind: str = _opt("spline", "spectral map: spline or sine", _STR)
    dtype: str | None = _opt("complex128", "compute dtype, complex128 or complex64 (None: the input's)", _STR,
                                nullable=True)
    recompute: bool = _opt(True, "keep only layer inputs in contexts and recompute in the backward pass", _BOOL)
    save_memory: bool = _opt(False, "trade speed for memory inside the coupling layers", _BOOL)

    def __post_init__(self):
        self._check_types()
        self._int_at_least("n_layers", 1)
        self._choice("loops", LOOPS)
        self._choice("location_loops", LOOPS)
        self._choice("schedule", ("simple", "paper"))
        self._int_at_least("direction_layers", 1)
        if self.masks is not None:
            from .masks import LayerMask
            try:
                masks = tuple(m.as_dict() if isinstance(m, LayerMask) else LayerMask.from_dict(dict(m)).as_dict()
                              for m in self.masks)
            except (KeyError, TypeError, ValueError) as exc:
                raise _bad("masks", self.masks, f"a non-empty list of flows.LayerMask dicts ({exc})") from None
            if not masks:
                raise _bad("masks", [], "a non-empty list of flows.LayerMask dicts")
            self._set("masks", masks)
            self._set("n_layers", len(masks))
        self._int_at_least("staple_width", 1)
        self._int_at_least("staple_layers", 1)
        _context_hidden(self, 2)
        _context_checks(self)
        if not 1 <= self.spline_bins <= 999:
            raise _bad("spline_bins", self.spline_bins, "an integer from 1 to 999")
        self._int_at_least("spline_basis", 1)
        self._choice("spline_kind", ("spline", "sine"))

    @property
    def location_loops_resolved(self) -> str:
        return self.loops if self.location_loops is None else self.location_loops


@dataclass(frozen=True)
class ResidualFlowConfig(_Settings):
    """Settings of :class:`flows.ResidualFlow` (residual layers U' = exp(X) U, the
    correlated-ensemble marginal model; TOML ``[flow] kind = "residual"``)."""

    masks: tuple = _opt(("M2", "M4", "M2", "M4"), "mask pattern, one pass over all links per entry (M2 or M4; "
                                                  "the paper: M2, M4, M2, M4 = 48 layers in 4d)", _LIST)
    families: tuple = _opt(("plaquette",), "loop families of the staple terms (plaquette, rectangle, chair)", _LIST)
    field_dependent: bool = _opt(False, "add context-network terms to the learned constants", _BOOL)
    bound: float = _opt(0.5, "bound rho on ||Xi|| in (0, 0.5] (contraction of the inverse)", _NUM)
    context_hidden: tuple = _opt((8,), "hidden widths of the context networks (field_dependent only)", _LIST)
    context_channels: int | None = _opt(None, "shorthand: context_hidden = [c]", _INT)
    context_kernel: int = _opt(3, "odd kernel size of the context convolutions", _INT)
    context_loops: tuple = _opt(("plaquette",), "gauge-invariant loop features of the context networks", _LIST)
    context_activation: str = _opt("tanh", "nonlinearity of the context networks", _STR)
    dtype: str | None = _opt("complex128", "compute dtype, complex128 or complex64 (None: the input's)", _STR,
                                nullable=True)
    recompute: bool = _opt(True, "keep only layer inputs in contexts and recompute in the backward pass", _BOOL)

    def __post_init__(self):
        self._check_types()
        self._strings("masks", ("M2", "M4"), what="a non-empty list of 'M2' and 'M4' (one pass over all links each; "
                                                  "the paper: [\"M2\", \"M4\", \"M2\", \"M4\"])")
        self._strings("families", LOOP_FAMILIES, distinct=True,
                      what=f"distinct entries of {list(LOOP_FAMILIES)}")
        if not 0 < self.bound <= 0.5:
            raise SettingError("bound", f"bound must lie in (0, 0.5] (the residual coefficients' bound that keeps "
                                        f"the inverse a contraction), got {self.bound!r}")
        self._set("bound", float(self.bound))
        _context_hidden(self, 1)
        _context_checks(self)


@dataclass(frozen=True)
class PseudofermionFlowConfig(_Settings):
    """Settings of :class:`flows.PseudofermionFlow` (the conditional pseudofermion model; TOML
    ``[pf_flow]``, next to its training keys)."""

    n_layers: int = _opt(16, "number of coupling layers (with explicit masks: must be their number)", _INT)
    hidden: int = _opt(8, "width of the per-site networks (0: coefficients linear in the loop features)", _INT)
    masks: tuple | None = _opt(None, "explicit masks, {axis, parity} tables (default: axis (i // 2) mod 4, "
                                     "parity i mod 2)", _LIST)

    def __post_init__(self):
        self._check_types()
        self._int_at_least("n_layers", 1, "an integer >= 1 (a pseudofermion flow needs at least one layer)")
        self._int_at_least("hidden", 0, "an integer >= 0 (0: coefficients linear in the loop features)")
        if self.masks is not None:
            from .pseudofermion import _as_mask
            out = []
            for m in self.masks:
                try:
                    pm = _as_mask(m)
                except ValueError as exc:
                    raise SettingError("masks", f"masks: {exc}") from None
                if pm.axis not in range(4) or pm.parity not in (0, 1):
                    raise SettingError("masks", f"masks: invalid pseudofermion mask {m!r}: axis in 0..3, parity 0 or 1")
                out.append(pm.as_dict())
            if len(out) != self.n_layers:
                raise SettingError("masks", f"masks: {len(out)} masks for {self.n_layers} layers (n_layers must be "
                                            f"the number of masks)")
            self._set("masks", tuple(out))


#: the gauge-flow kinds of TOML ``[flow] kind``
FLOW_KINDS = {"spectral": SpectralFlowConfig, "residual": ResidualFlowConfig}


def flow_config(d: dict):
    """The settings object of a ``{"kind": ..., <fields>}`` dict (TOML ``[flow]``)."""
    d = dict(d)
    kind = d.pop("kind", "spectral")
    if kind not in FLOW_KINDS:
        raise SettingError("kind", f"kind must be one of {', '.join(repr(k) for k in FLOW_KINDS)}, got {kind!r}")
    return FLOW_KINDS[kind].from_dict(d)


def setting_docs(cls) -> dict:
    """{field: one-line description}."""
    return {f.name: f.metadata["doc"] for f in dataclasses.fields(cls)}


def setting_types(cls) -> dict:
    """{field: (accepted types, default)} (default None: derived, absent unless given)."""
    out = {}
    for f in dataclasses.fields(cls):
        d = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = (f.metadata["types"], list(d) if isinstance(d, tuple) else d)
    return out
