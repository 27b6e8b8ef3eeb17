"""Periodic shift of one axis of an array (the local part of ``Layout.shift``).

``periodic_shift(F, axis, k)[..., x, ...] = F[..., (x + k) mod L, ...]`` with L = F.shape[axis],
i.e. ``xp.roll(F, -k, axis=axis)`` - the sign convention of :meth:`lattice.Layout.shift`
(``shift(F, mu, n)[x] = F[x + n mu^]``). With ``out`` the result is written into a slot of a
preallocated stack (any strides), with no temporary.

Why a kernel: the site extents of the flows' lattices are short (4 or 8), so a shift along the
last site axis written as two slice copies moves contiguous runs of 1-7 numbers and runs at a
fraction of the copy bandwidth. The compiled path (NumPy + Numba) treats the trailing block
of axes from ``axis`` on - extended backwards to at least :data:`BLOCK` entries - as one
vector and permutes it with a cached index table, rows outermost: one contiguous store stream
per row, at close to the copy bandwidth for every axis. The reference (any other namespace:
CuPy's roll and slice copies are fused device kernels already) is the two slice copies.
"""
from __future__ import annotations

from ..backend import namespace
from .dispatch import implementation

__all__ = ["periodic_shift", "periodic_shift_reference"]

#: the compiled path permutes trailing blocks of at least this many entries (or the whole row)
BLOCK = 256


def _check(F, axis, out):
    if not -F.ndim <= int(axis) < F.ndim:
        raise ValueError(f"kernels.periodic_shift: axis {axis} out of range for an array of shape {tuple(F.shape)}")
    if out is not None and tuple(out.shape) != tuple(F.shape):
        raise ValueError(f"kernels.periodic_shift: out of shape {tuple(out.shape)} for an array of shape "
                         f"{tuple(F.shape)}: need the same shape")
    return int(axis) % F.ndim


def periodic_shift_reference(F, axis: int, k: int, out=None):
    """Array-API reference of :func:`periodic_shift`: two slice copies (or ``xp.roll``)."""
    xp = namespace(F)
    axis = _check(F, axis, out)
    L = F.shape[axis]
    k = int(k) % L if L else 0
    if out is None:
        return xp.roll(F, -k, axis=axis) if k else F
    lead = (slice(None),) * axis
    out[lead + (slice(0, L - k), Ellipsis)] = F[lead + (slice(k, L), Ellipsis)]
    if k:
        out[lead + (slice(L - k, L), Ellipsis)] = F[lead + (slice(0, k), Ellipsis)]
    return out


def periodic_shift(F, axis: int, k: int, out=None):
    """``out[..., x, ...] = F[..., (x + k) mod F.shape[axis], ...]`` (module docstring).

    Without ``out`` a new array is returned (F itself where k = 0 mod L); ``out`` must not
    overlap F. Any integer k.
    """
    xp = namespace(F)
    axis = _check(F, axis, out)
    if implementation(xp) == "numba":
        from . import _numba_shift
        res = _numba_shift.periodic_shift(F, axis, int(k), out)
        if res is not None:
            return res
    return periodic_shift_reference(F, axis, k, out)
