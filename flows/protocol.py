"""The contract of an invertible gauge-field layer, and the registry of layer types.

A :class:`flows.model.Flow` composes any sequence of objects that satisfy :class:`GaugeLayer`.
Fields are gauge fields ``U`` of shape ``(*batch, Nd, *sites, N, N)`` (complex64 or
complex128; a layer computes in the dtype it is given and returns that dtype), log-dets are
float64 of shape ``(*batch,)``. ``params`` is the layer's flat parameter dict (keys without
the model's ``"layer{i}."`` prefix; float64 arrays). ``layout`` is the
:class:`lattice.layout.Layout` of the field; the flow always passes it (needed under MPI and
when batch axes make Nd ambiguous), a layer may infer it when ``None``.

The contract (``f`` the layer's map, ``V = f(U)``, ``J = |det df/dU|`` with respect to the
Haar measure on every link)::

    forward(params, U, *, layout=None)      -> ((V, logdet), ctx)         logdet = log J(U)
    inverse(params, V, *, layout=None)      -> ((U, logdet_inv), ctx)     logdet_inv = -log J(U)
    vjp(params, ctx, U_out_bar=None, logdet_bar=None, *, need_params=True)
                                            -> ((U_bar,), grads)
    inverse_vjp(params, ctx, U_bar=None, logdet_inv_bar=None, *, need_params=True)
                                            -> ((V_bar,), grads)
    config()                                -> JSON-able dict (constructor arguments)
    from_config(cfg)                        (classmethod) -> an equal layer
    param_shapes()                          -> {key: shape tuple}
    init(rng, gain=0.5)                     -> {key: float64 array}, from a lattice.Rng
    describe()                              -> one-line string
    layer_type                              (class attribute) registry key, e.g. "spectral"

Details:

* ``inverse`` is the exact inverse of ``forward``: ``inverse(forward(U)) = U`` up to rounding,
  and ``logdet_inv(V) = -logdet(U)``.
* VJPs follow the cotangent convention of :mod:`flows.module` (docs/design.md §7): for a real
  loss L and a complex array z, z_bar = dL/dRe z + i dL/dIm z. ``vjp`` takes the cotangents of
  the forward outputs (V, logdet) and returns that of U; ``inverse_vjp`` takes the cotangents
  of the inverse outputs (U, logdet_inv) and returns that of V. ``None`` means a zero
  cotangent (the returned cotangent is then still an array of the field's shape and dtype).
  Link cotangents need only be valid for perturbations along the group (U -> e^{tX} U,
  X in su(N)), which is how :func:`flows.gradcheck.check_vjp` perturbs links.
* ``grads`` is a dict of float64 parameter cotangents keyed like ``params`` (missing keys mean
  zero). With ``need_params=False`` the caller does not want them: the layer may return
  ``{}`` and skip their computation.
* A context describes the pair (U, V = f(U)) whichever direction produced it: a context from
  ``forward`` may be passed to ``inverse_vjp`` and one from ``inverse`` to ``vjp``. The fused
  path gradient (:meth:`flows.model.Flow.forward_path`) relies on the first.
* A context is consumed by at most one VJP call per pass but must not be mutated by it (the
  flow may call ``vjp`` on a context it kept, e.g. with ``recompute=False``).
* Layers expose ``Nd`` and ``N`` (the flow checks them against its own); their parameters do
  not depend on the lattice volume, so one set of parameters applies to every layout.
* ``config()`` must round trip: ``type(layer).from_config(layer.config())`` builds a layer
  with the same ``param_shapes()`` and the same map. It is stored in parameter files as
  ``{"type": layer.layer_type, "config": layer.config()}`` and rebuilt with
  :func:`layer_from_config`, so a layer type that is saved must be registered
  (:func:`register_layer`) under a ``layer_type`` that never changes.

Registered types: ``"spectral"`` (:class:`flows.layers.CouplingLayer`) and ``"residual"``
(:class:`flows.residual.ResidualLayer`).
"""
from __future__ import annotations

from typing import Any, Dict, Protocol, Tuple, runtime_checkable

__all__ = ["GaugeLayer", "MaskedLayer", "register_layer", "layer_from_config", "registered_layers",
           "UnknownLayerType", "LAYER_METHODS"]

Params = Dict[str, Any]

#: methods every layer must have (checked by :class:`flows.model.Flow`)
LAYER_METHODS = ("forward", "inverse", "vjp", "inverse_vjp", "config", "from_config", "param_shapes",
                 "init", "describe")


@runtime_checkable
class GaugeLayer(Protocol):
    """An invertible gauge-field layer (see the module docstring for the exact contract)."""

    layer_type: str

    def forward(self, params: Params, U, *, layout=None) -> Tuple[tuple, Any]:
        """((V, logdet), ctx) with V = f(U), logdet = log J(U) (float64, (*batch,))."""
        ...

    def inverse(self, params: Params, V, *, layout=None) -> Tuple[tuple, Any]:
        """((U, logdet_inv), ctx) with U = f^{-1}(V), logdet_inv = -log J(U)."""
        ...

    def vjp(self, params: Params, ctx, U_out_bar=None, logdet_bar=None, *,
            need_params: bool = True) -> Tuple[tuple, Params]:
        """((U_bar,), grads) from the cotangents of (V, logdet)."""
        ...

    def inverse_vjp(self, params: Params, ctx, U_bar=None, logdet_inv_bar=None, *,
                    need_params: bool = True) -> Tuple[tuple, Params]:
        """((V_bar,), grads) from the cotangents of (U, logdet_inv); ctx from forward or inverse."""
        ...

    def config(self) -> dict:
        """JSON-able constructor arguments."""
        ...

    @classmethod
    def from_config(cls, cfg: dict) -> "GaugeLayer":
        """The layer described by ``config()``."""
        ...

    def param_shapes(self) -> dict:
        """{key: shape} of the parameters."""
        ...

    def init(self, rng, gain: float = 0.5) -> Params:
        """Initial parameters from a :class:`lattice.Rng`."""
        ...

    def describe(self) -> str:
        """One line for model summaries."""
        ...


class MaskedLayer:
    """The four map methods of the contract for a layer that implements one shared pass
    ``_apply(params, X, layout, inverse) -> ((Y, logdet), ctx)`` and one shared adjoint
    ``_backward(params, ctx, Y_bar, logdet_bar, inverse, need_params) -> ((X_bar,), grads)``
    (the adjoint of the map that ran: forward U -> U', or inverse U' -> U)."""

    def forward(self, params, U, *, layout=None):
        """(U', log det) and the context for :meth:`vjp` (or :meth:`inverse_vjp`)."""
        return self._apply(params, U, layout, inverse=False)

    def inverse(self, params, V, *, layout=None):
        """(U, log det of the inverse at V = -log det at U) and the context for :meth:`inverse_vjp`."""
        return self._apply(params, V, layout, inverse=True)

    def vjp(self, params, ctx, U_out_bar=None, logdet_bar=None, *, need_params: bool = True):
        """Cotangent of the input U of the forward map from those of (U', log det)."""
        return self._backward(params, ctx, U_out_bar, logdet_bar, inverse=False, need_params=need_params)

    def inverse_vjp(self, params, ctx, U_bar=None, logdet_inv_bar=None, *, need_params: bool = True):
        """Cotangent of the input V of the inverse map from those of (U, log det of the inverse)."""
        return self._backward(params, ctx, U_bar, logdet_inv_bar, inverse=True, need_params=need_params)


class UnknownLayerType(ValueError):
    """A layer description names a type that is not registered."""

    def __init__(self, layer_type, known):
        self.layer_type, self.known = layer_type, tuple(known)
        super().__init__(f"unknown layer type {layer_type!r}; known types: {list(self.known)} "
                         f"(register new layer classes with flows.register_layer)")


_REGISTRY: Dict[str, type] = {}


def register_layer(cls):
    """Class decorator: register ``cls`` under ``cls.layer_type`` for :func:`layer_from_config`.

    The class must define ``layer_type`` (non-empty str) and the methods of :class:`GaugeLayer`.
    Registering a second, different class under a taken type is an error (re-registering the
    same qualified name, e.g. on module reload, replaces the entry).
    """
    t = getattr(cls, "layer_type", None)
    if not isinstance(t, str) or not t:
        raise TypeError(f"{cls.__name__} needs a class attribute layer_type (a non-empty string) to be registered")
    missing = [m for m in LAYER_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        raise TypeError(f"{cls.__name__} does not implement the layer contract: missing {missing}")
    old = _REGISTRY.get(t)
    if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"layer type {t!r} is already registered for {old.__module__}.{old.__qualname__}")
    _REGISTRY[t] = cls
    return cls


def registered_layers() -> Dict[str, type]:
    """A copy of the registry ``{layer_type: class}``."""
    return dict(_REGISTRY)


def layer_from_config(d: dict):
    """Build a layer from ``{"type": layer_type, "config": cfg}`` (what :class:`flows.model.Flow`
    stores per layer). Raises :class:`UnknownLayerType` (a ValueError) for an unregistered type."""
    if not isinstance(d, dict) or "type" not in d or "config" not in d:
        raise ValueError(f"a layer description is {{'type': ..., 'config': ...}}, got {d!r}")
    cls = _REGISTRY.get(d["type"])
    if cls is None:
        raise UnknownLayerType(d["type"], sorted(_REGISTRY))
    return cls.from_config(d["config"])
