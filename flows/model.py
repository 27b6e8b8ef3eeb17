"""Normalizing flows for SU(N) lattice gauge fields: a sequence of invertible layers.

    x = f(z) = f_{n-1} o ... o f_0 (z),      log J(z) = sum_l log J_l,

each f_l a layer satisfying the contract of :class:`flows.protocol.GaugeLayer` (forward,
inverse, their VJPs, config). :class:`Flow` composes any such sequence, mixing layer types;
:class:`SpectralFlow` is the preset whose layers are :class:`flows.layers.CouplingLayer` on
the masks of a schedule (:func:`flows.masks.paper_schedule`: blocks of direction updates
followed by the 2^Nd location updates, as in the paper's 3 x (48 + 16) layers; or
:func:`flows.masks.simple_schedule`: direction updates only). The parameters do not depend on
the lattice size (staple networks and context convolutions are translation invariant, the
masks are rebuilt for every layout), so a flow trained on 4^4 applies to 12^3 x 24, with or
without MPI (pass the decomposed ``layout``).

At initialisation every context head is zero, so every spectral map is exactly the identity
and the spectral flow is the identity for every loop type, bit for bit (each layer updates
U by (L' - L) S_hat = 0), with log J = 0 exactly.

Memory: the differentiable API keeps only each layer's input field in its context and
recomputes one layer's internals at a time in the backward pass (one extra layer forward
per layer); ``recompute=False`` keeps every layer's internals instead (faster, ~10x more
memory).

API (fields ``(*batch, Nd, *sites, N, N)``, log-dets float64 ``(*batch,)``)::

    model = SpectralFlow(Nd=4, N=3, n_layers=24, loops="learned")
    model = Flow([layer0, layer1, ...], Nd=4, N=3)          # any layers (flows.protocol)
    params = model.init(seed)                      # keys "layer{i}.<layer key>"
    V, logJ = model.forward(params, U)            # x = f(z), log |det df/dz| (Haar measure)
    U, logJi = model.inverse(params, V)           # logJi = -logJ
    x, logJ, ctx = model.forward_ctx(params, z)   # differentiable versions (flows.train)
    z_bar, grads = model.vjp(params, ctx, x_bar, logJ_bar)
    z, logJi, ctx = model.inverse_ctx(params, x)
    x_bar, grads = model.inverse_vjp(params, ctx, z_bar, logJi_bar)
    x, logJ, ctx, gq = model.forward_path(params, z, z_bar, logJi_bar)   # fused path gradient

Saving: :func:`save` / :func:`load` write one HDF5 parameter file that also holds the class
and ``model.config()``, so ``load`` rebuilds the architecture: ``{"class": "SpectralFlow",
"config": SpectralFlow.config()}`` (the original format, still written for spectral flows) or
``{"class": "Flow", "config": {"Nd", "N", "dtype", "recompute", "layers": [{"type", "config"},
...]}}``, the layers rebuilt through the registry (:func:`flows.protocol.layer_from_config`).
"""
from __future__ import annotations

from lattice.backend import Rng, namespace
from lattice.layout import Layout

from .layers import CouplingLayer, checked_layout
from .masks import LayerMask, paper_schedule, simple_schedule
from .module import Module, add_grads, prefixed, sub_params
from .protocol import LAYER_METHODS, UnknownLayerType, layer_from_config

__all__ = ["Flow", "SpectralFlow", "save", "load", "build_schedule"]


def build_schedule(Nd: int, n_layers: int, schedule: str = "paper", loops: str = "plaquette",
                   direction_layers: int | None = None):
    """The first ``n_layers`` masks of a schedule ("paper" or "simple"), cycled as needed.

    "paper": blocks of direction updates (``direction_layers`` per block, default all
    Nd * 2 * 2(Nd - 1) orientations) followed by the 2^Nd location updates.
    """
    if schedule == "paper":
        block = paper_schedule(Nd, 1, direction_layers=direction_layers,
                               loops="rectangle" if loops == "rectangle" else "plaquette")
    elif schedule == "simple":
        return simple_schedule(Nd, n_layers, loops="rectangle" if loops == "rectangle" else "plaquette")
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use 'paper' or 'simple'")
    n = int(n_layers)
    if n < 1:
        raise ValueError(f"n_layers must be positive, got {n_layers}")
    return [block[i % len(block)] for i in range(n)]


class Flow(Module):
    """A flow made of any sequence of gauge layers (:class:`flows.protocol.GaugeLayer`).

    x = f_{n-1}(... f_0(z)), log J = sum_l log J_l; the inverse runs the layers' inverses in
    reverse order. Parameters are one flat dict, layer i's keys prefixed ``"layer{i}."``.

    Parameters
    ----------
    layers : the layers, applied in order (each with ``Nd``/``N`` matching the flow's).
    Nd, N : lattice dimensions and gauge group SU(N).
    dtype : compute dtype (None: the input's; "complex128" or "complex64"); fields are cast on
        entry and results returned in the input dtype; log-dets are float64 always.
    recompute : keep only layer inputs in contexts and recompute each layer's internals in the
        backward pass (default), or keep every layer's internals.
    """

    def __init__(self, layers, *, Nd: int, N: int, dtype: str | None = None, recompute: bool = True):
        if dtype not in (None, "complex128", "complex64"):
            raise ValueError(f"dtype must be 'complex128' or 'complex64', got {dtype!r}")
        self.Nd, self.N = int(Nd), int(N)
        self.dtype = dtype
        self.recompute = bool(recompute)
        layers = list(layers)
        for i, l in enumerate(layers):
            missing = [m for m in LAYER_METHODS if not callable(getattr(l, m, None))]
            if missing:
                raise TypeError(f"layer {i} ({type(l).__name__}) does not implement the layer contract "
                                f"(flows.protocol.GaugeLayer): missing {missing}")
            for name, want in (("Nd", self.Nd), ("N", self.N)):
                got = getattr(l, name, want)
                if int(got) != want:
                    raise ValueError(f"layer {i} ({type(l).__name__}) has {name} = {got}, the flow {name} = {want}")
        self.layers = layers

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    # ------------------------------------------------------------------ parameters
    def config(self) -> dict:
        """``{"Nd", "N", "dtype", "recompute", "layers": [{"type": layer_type, "config": ...}]}``."""
        out = []
        for i, l in enumerate(self.layers):
            t = getattr(l, "layer_type", None)
            if not isinstance(t, str) or not t:
                raise TypeError(f"layer {i} ({type(l).__name__}) has no layer_type; register it with "
                                f"flows.register_layer to describe (and save) the flow")
            out.append({"type": t, "config": l.config()})
        return {"Nd": self.Nd, "N": self.N, "dtype": self.dtype, "recompute": self.recompute, "layers": out}

    @classmethod
    def from_config(cls, cfg: dict) -> "Flow":
        """The flow of :meth:`config` (layers rebuilt with :func:`flows.protocol.layer_from_config`)."""
        cfg = dict(cfg)
        layers = [layer_from_config(d) for d in cfg.pop("layers")]
        return cls(layers, **cfg)

    def param_shapes(self) -> dict:
        out = {}
        for i, l in enumerate(self.layers):
            out.update(prefixed(f"layer{i}", l.param_shapes()))
        return out

    def init(self, seed: int = 0, gain: float = 0.5) -> dict:
        """Initial parameters (float64, NumPy): layer i initialised from ``Rng(seed).child(i)``
        with ``gain`` (for spectral layers: identity flow (zero context heads), staple nets at
        the plaquette-staple sum plus Xavier noise of ``gain``)."""
        rng = Rng(seed)
        params = {}
        for i, l in enumerate(self.layers):
            params.update(prefixed(f"layer{i}", l.init(rng.child(i), gain=gain)))
        return params

    def describe(self) -> str:
        return "\n".join(f"{i:3d}: {l.describe()}" for i, l in enumerate(self.layers))

    # ------------------------------------------------------------------ helpers
    def layout_of(self, U, layout: Layout | None = None) -> Layout:
        return checked_layout(U, layout, self.Nd, self.N, "flow")

    def _cast_in(self, U):
        xp = namespace(U)
        if self.dtype is None:
            return U
        dt = getattr(xp, self.dtype)
        return U if U.dtype == dt else xp.astype(U, dt)

    @staticmethod
    def _cast_out(Y, like_dtype):
        xp = namespace(Y)
        return Y if Y.dtype == like_dtype else xp.astype(Y, like_dtype)

    def _lp(self, params, i):
        return sub_params(f"layer{i}", params)

    def _zero_logdet(self, X):
        xp = namespace(X)
        return xp.zeros(X.shape[:X.ndim - self.Nd - 3], dtype=xp.float64)

    # ------------------------------------------------------------------ plain maps
    def forward(self, params, U, layout: Layout | None = None):
        """V = f(U) and log J (float64, per batch element)."""
        V, logJ, _ = self._run(params, U, layout, inverse=False, keep=False)
        return V, logJ

    def inverse(self, params, V, layout: Layout | None = None):
        """U = f^{-1}(V) and the log-det of the inverse (= -log J(U))."""
        U, logJi, _ = self._run(params, V, layout, inverse=True, keep=False)
        return U, logJi

    def _run(self, params, X, layout, inverse: bool, keep: bool):
        layout = self.layout_of(X, layout)
        in_dtype = X.dtype
        X = self._cast_in(X)
        logJ = None
        saved = []
        order = range(self.n_layers - 1, -1, -1) if inverse else range(self.n_layers)
        for i in order:
            layer = self.layers[i]
            if keep and self.recompute:
                saved.append((i, X))
            fn = layer.inverse if inverse else layer.forward
            (X, ld), lctx = fn(self._lp(params, i), X, layout=layout)
            if keep and not self.recompute:
                saved.append((i, lctx))
            logJ = ld if logJ is None else logJ + ld
        if logJ is None:
            logJ = self._zero_logdet(X)
        ctx = dict(layout=layout, saved=saved, inverse=inverse, in_dtype=in_dtype)
        return self._cast_out(X, in_dtype), logJ, ctx

    # ------------------------------------------------------------------ differentiable API
    def forward_ctx(self, params, z, layout: Layout | None = None):
        """(x, log J, ctx) for :meth:`vjp`."""
        return self._run(params, z, layout, inverse=False, keep=True)

    def inverse_ctx(self, params, x, layout: Layout | None = None):
        """(z, log J_inv, ctx) for :meth:`inverse_vjp`."""
        return self._run(params, x, layout, inverse=True, keep=True)

    def _layer_ctx(self, params, item, layout, inverse):
        i, obj = item
        if not self.recompute:
            return i, obj
        layer = self.layers[i]
        fn = layer.inverse if inverse else layer.forward
        _, lctx = fn(self._lp(params, i), obj, layout=layout)
        return i, lctx

    def vjp(self, params, ctx, x_bar=None, logJ_bar=None):
        """(z_bar, param_grads) from cotangents of x (complex, docs/design.md §7) and log J."""
        return self._backward(params, ctx, x_bar, logJ_bar, inverse=False)

    def inverse_vjp(self, params, ctx, z_bar=None, logJ_inv_bar=None):
        """(x_bar, param_grads) from cotangents of z = f^{-1}(x) and log J_inv."""
        return self._backward(params, ctx, z_bar, logJ_inv_bar, inverse=True)

    def _backward(self, params, ctx, Y_bar, ld_bar, inverse):
        if ctx["inverse"] != inverse:
            raise ValueError("context and VJP do not match: use vjp with forward_ctx and inverse_vjp with inverse_ctx")
        layout = ctx["layout"]
        grads = {}
        g = None if Y_bar is None else self._cast_in(Y_bar)
        for item in reversed(ctx["saved"]):
            i, lctx = self._layer_ctx(params, item, layout, inverse)
            layer = self.layers[i]
            fn = layer.inverse_vjp if inverse else layer.vjp
            (g,), lg = fn(self._lp(params, i), lctx, g, ld_bar)
            add_grads(grads, lg, f"layer{i}")
        if g is not None:
            g = self._cast_out(g, ctx["in_dtype"])
        return g, grads

    def forward_path(self, params, z, z_bar=None, logJ_inv_bar=None, layout: Layout | None = None):
        """Forward pass fused with the VJP of the *inverse* flow, for path gradients.

        Returns ``(x, log J, ctx, gq)`` where ``ctx`` is the context of :meth:`forward_ctx` and
        ``gq`` the cotangent of x of the scalar  <z_bar, f^{-1}(x)> + <logJ_inv_bar, log J_inv(x)>
        (i.e. what ``inverse_vjp(inverse_ctx(x), z_bar, logJ_inv_bar)`` gives, with z = f^{-1}(x)
        taken as the z we started from). The inverse VJP of layer l runs right after its
        forward, on the layer's forward context (the contract lets a forward context serve
        ``inverse_vjp``: for a coupling layer the frozen-link staples and context are the same
        for the layer's input and output), so no separate inverse pass is needed: cost one
        forward plus one inverse VJP per layer.
        """
        layout = self.layout_of(z, layout)
        xp = namespace(z)
        in_dtype = z.dtype
        X = self._cast_in(z)
        g = None if z_bar is None else self._cast_in(z_bar)
        logJ = None
        saved = []
        for i, layer in enumerate(self.layers):
            if self.recompute:
                saved.append((i, X))
            (X, ld), lctx = layer.forward(self._lp(params, i), X, layout=layout)
            if not self.recompute:
                saved.append((i, lctx))
            (g,), _ = layer.inverse_vjp(self._lp(params, i), lctx, g, logJ_inv_bar, need_params=False)
            logJ = ld if logJ is None else logJ + ld
        if logJ is None:
            logJ = self._zero_logdet(X)
        ctx = dict(layout=layout, saved=saved, inverse=False, in_dtype=in_dtype)
        if g is None:
            g = xp.zeros_like(X)
        return self._cast_out(X, in_dtype), logJ, ctx, self._cast_out(g, in_dtype)


class SpectralFlow(Flow):
    """Gauge-equivariant spectral flow: a :class:`Flow` of :class:`flows.layers.CouplingLayer`
    on the masks of a schedule (see the module docstring).

    ``SpectralFlow(Nd, N, config=SpectralFlowConfig(...))``, or with the settings as keywords,
    ``SpectralFlow(Nd, N, n_layers=16, loops="learned", **settings)``, which builds the
    :class:`flows.SpectralFlowConfig` (its fields, defaults and checks are the one definition of
    the options; TOML ``[flow] kind = "spectral"`` uses the same). ``Nd``, ``N``: lattice
    dimensions (2, 3, 4) and gauge group SU(N). The main settings:

    n_layers : number of coupling layers.
    loops : "learned" (staple networks, eqs. 3-8), "plaquette" or "rectangle" (fixed loops,
        orientation alternating across layers).
    location_loops : active loops of the location updates (default: ``loops``). The paper's
        learned model uses learned loops in its direction updates only; pass
        ``location_loops="plaquette"`` for that.
    schedule : "paper" (direction + location blocks) or "simple" (direction updates only).
    direction_layers : direction updates per block of the paper schedule (default all).
    masks : explicit list of :class:`flows.masks.LayerMask` (or their dicts; overrides
        schedule/n_layers).
    staple_width, staple_layers : N_h = 8 and N_l = 2 (mixing layers, i.e. one hidden staple
        field; the issue's "N_l = 2 hidden layers"). The paper's wording "2 hidden layers with
        N_h = 8" would be ``staple_layers=3``.
    context_hidden, context_kernel, context_loops, context_activation : context networks
        (hidden convolution widths, odd kernel size, feature loops, nonlinearity).
    context_channels : shorthand for ``context_hidden=(c, c)``; used when given.
    spline_bins, spline_basis, spline_kind : spectral maps.
    dtype : compute dtype ("complex128" default, or "complex64"; None: the input's); fields are
        cast on entry and results returned in the input dtype; log-dets are float64 always.
    recompute : keep only layer inputs in contexts (default) or every layer's internals.

    ``settings`` is the resolved :class:`flows.SpectralFlowConfig` (explicit masks,
    ``location_loops`` filled in). ``config()`` / ``from_config`` are ``{Nd, N}`` plus its
    fields but the schedule ones (the format of parameter files written for spectral flows);
    :meth:`Flow.config` gives the generic per-layer form.
    """

    def __init__(self, Nd: int, N: int, n_layers: int | None = None, loops: str | None = None, *, config=None,
                 **settings):
        from .config import SpectralFlowConfig
        if n_layers is not None:
            settings["n_layers"] = n_layers
        if loops is not None:
            settings["loops"] = loops
        config = SpectralFlowConfig.resolve(config, settings, "SpectralFlow")
        Nd, N = int(Nd), int(N)
        c = config
        if c.masks is None:
            masks = build_schedule(Nd, c.n_layers, c.schedule, c.loops, c.direction_layers)
        else:
            masks = [LayerMask.from_dict(m) for m in c.masks]
        self.masks = list(masks)
        self.settings = c.replace(masks=tuple(m.as_dict() for m in self.masks),
                                  location_loops=c.location_loops_resolved)
        self.loops, self.location_loops = c.loops, c.location_loops_resolved
        self.schedule, self.direction_layers = c.schedule, c.direction_layers
        lkw = dict(staple_width=c.staple_width, staple_layers=c.staple_layers, context_hidden=tuple(c.context_hidden),
                   context_kernel=c.context_kernel, context_loops=tuple(c.context_loops),
                   context_activation=c.context_activation, spline_bins=c.spline_bins, spline_basis=c.spline_basis,
                   spline_kind=c.spline_kind, save_memory=c.save_memory)
        self._lkw = lkw
        layers = [CouplingLayer(m, Nd, N, c.loops if m.kind == "direction" else self.location_loops, **lkw)
                  for m in self.masks]
        super().__init__(layers, Nd=Nd, N=N, dtype=c.dtype, recompute=c.recompute)

    #: settings that only choose the masks (stored explicitly) or abbreviate another field
    _NOT_STORED = ("schedule", "direction_layers", "context_channels")

    # ------------------------------------------------------------------ parameters
    def config(self) -> dict:
        """``{"Nd", "N"}`` and the resolved settings (the stored format of spectral flows)."""
        d = {k: v for k, v in self.settings.as_dict().items() if k not in self._NOT_STORED}
        return {"Nd": self.Nd, "N": self.N, **d}

    @classmethod
    def from_config(cls, cfg: dict) -> "SpectralFlow":
        from .config import SpectralFlowConfig
        cfg = dict(cfg)
        Nd, N = cfg.pop("Nd"), cfg.pop("N")
        return cls(Nd, N, config=SpectralFlowConfig.from_dict(cfg))


# ---------------------------------------------------------------------- files
#: classes that :func:`load` rebuilds, by the name stored in the file
_CLASSES = {"Flow": Flow, "SpectralFlow": SpectralFlow}


def save(path, model, params, extra: dict | None = None, provenance: dict | None = None):
    """Write ``params`` with the model's class and configuration (atomic, one HDF5 file, with
    the provenance record ``provenance``, default that of this process: :func:`flows.save_params`).

    Stored config: ``{"class": name, "config": model.config(), **extra}`` with name the
    model's class when :func:`load` knows it ("Flow", "SpectralFlow"); any other
    :class:`Flow` subclass is stored as a plain "Flow" (its layers, via :meth:`Flow.config`).
    """
    from .serialize import save_params
    name = type(model).__name__
    if _CLASSES.get(name) is type(model):
        mcfg = model.config()
    elif isinstance(model, Flow):
        name, mcfg = "Flow", Flow.config(model)
    else:
        raise TypeError(f"flows.save stores Flow models, got {type(model).__name__}")
    cfg = {"class": name, "config": mcfg, **(extra or {})}
    return save_params(path, params, cfg, provenance=provenance)


def load(path, xp=None):
    """``(model, params)`` from a file written by :func:`save` (architecture rebuilt from the
    stored configuration, parameters validated against it). A layer type that is not
    registered, or a configuration the class cannot be built from, raises
    :class:`flows.ParamFileError`."""
    from .serialize import load_params, read_config, ParamFileError
    cfg = read_config(path)
    cls = _CLASSES.get(cfg.get("class"))
    if cls is None or "config" not in cfg:
        raise ParamFileError(f"{path!r} holds no flow model (class {cfg.get('class')!r}); it was not written "
                             f"by flows.save (known classes: {sorted(_CLASSES)})")
    try:
        model = cls.from_config(cfg["config"])
    except UnknownLayerType as exc:
        raise ParamFileError(f"{path!r}: the model uses layer type {exc.layer_type!r}, which is not registered; "
                             f"known types: {list(exc.known)} (import the module that defines it)") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ParamFileError(f"{path!r}: cannot build a {cfg['class']} from the stored configuration: "
                             f"{type(exc).__name__}: {exc}") from exc
    params, _ = load_params(path, template=model.param_shapes(), xp=xp)
    return model, params
