"""The module contract for differentiable pieces (no autodiff framework).

Every differentiable piece of a flow is a :class:`Module`:

* parameters are a *flat* ``dict[str, array]``; composite modules prefix their children's
  names with ``"<child>."`` (e.g. ``"layer3.staples.c1"``), so a whole model's parameters are
  one flat dict that :func:`flows.save_params` / :func:`flows.load_params` write and read
  together with the model configuration (``config()``);
* ``forward(params, *inputs) -> (outputs, ctx)``: ``outputs`` is a tuple, ``ctx`` holds what
  the backward pass needs (opaque to callers);
* ``vjp(params, ctx, *out_cotangents) -> (in_cotangents, param_cotangents)``: the
  vector-Jacobian product. ``in_cotangents`` is a tuple aligned with the inputs
  (``None`` for inputs that need no gradient), ``param_cotangents`` a dict with the same keys
  as the parameters (missing keys mean zero);
* ``inverse(params, *outputs) -> (inputs, ctx)`` where the map is invertible.

Further conventions used by the lattice modules (``StapleNet``, ``ContextNet``):

* lattice geometry is passed as a keyword, ``forward(params, U, mask, *, layout=None)``
  (inferred for single-process runs), so that one model applies to any volume and MPI only
  swaps the layout; it is not a parameter and not part of ``config()``;
* non-differentiable inputs (masks, integer data) get ``None`` in ``in_cotangents``;
* parameters are stored in float64; modules compute in the precision of their array inputs
  (complex64 or complex128) and return parameter cotangents in float64, summed in float64;
* ``param_shapes()`` gives ``{key: shape}``, usable as a template for
  :func:`flows.serialize.load_params` (which validates keys and shapes);
* ``init(rng, ...)`` draws from a :class:`lattice.Rng`; the arrays live in ``rng.xp``.

Cotangent convention (docs/design.md §7): for a real loss L and a complex array z the
cotangent is  z_bar = dL/dRe z + i dL/dIm z, so that dL = sum Re(conj(z_bar) dz). Real
arrays have ordinary gradients. For SU(N)-valued inputs the cotangent is that of the complex
matrix entries; :func:`lattice.su_n.force_from_cotangent` turns it into an su(N) force.
``None`` may stand for a zero cotangent everywhere.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

Params = Dict[str, Any]

__all__ = ["Module", "Params", "prefixed", "sub_params", "add_grads"]


class Module:
    """Base class documenting the contract; subclasses implement the methods they support."""

    def init(self, rng) -> Params:  # pragma: no cover - interface
        """Initial parameters from a :class:`lattice.Rng`."""
        return {}

    def forward(self, params: Params, *inputs) -> Tuple[tuple, Any]:  # pragma: no cover
        raise NotImplementedError

    def vjp(self, params: Params, ctx, *out_cotangents) -> Tuple[tuple, Params]:  # pragma: no cover
        raise NotImplementedError

    def inverse(self, params: Params, *outputs) -> Tuple[tuple, Any]:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} is not invertible")

    def config(self) -> dict:
        """JSON-serialisable constructor arguments (for saving models with their architecture)."""
        return {}


def prefixed(prefix: str, params: Params) -> Params:
    """Rename ``{k: v}`` to ``{prefix.k: v}``."""
    return {f"{prefix}.{k}": v for k, v in params.items()}


def sub_params(prefix: str, params: Params) -> Params:
    """The parameters of child ``prefix`` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in params.items() if k.startswith(p)}


def add_grads(acc: Params, new: Params, prefix: str | None = None) -> Params:
    """Accumulate parameter cotangents in place (optionally prefixing ``new``'s keys)."""
    for k, v in new.items():
        key = f"{prefix}.{k}" if prefix else k
        if v is None:
            continue
        acc[key] = v if key not in acc or acc[key] is None else acc[key] + v
    return acc
