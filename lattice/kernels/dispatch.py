"""Which implementation of a kernel an array namespace gets (see :mod:`lattice.kernels`)."""
from __future__ import annotations

import contextlib
import contextvars

import array_api_compat

__all__ = ["implementation", "reference_only"]

_FORCE_REFERENCE = contextvars.ContextVar("gaugeflow_kernels_reference", default=False)


def _numba_available() -> bool:
    global _NUMBA
    if _NUMBA is None:
        try:
            import numba  # noqa: F401
            _NUMBA = True
        except ImportError:   # pragma: no cover - numba is a dependency; kept for stripped installs
            _NUMBA = False
    return _NUMBA


_NUMBA = None


def _env_reference() -> bool:
    import os
    mode = os.environ.get("GAUGEFLOW_KERNELS", "auto").strip().lower() or "auto"
    if mode not in ("auto", "reference"):
        raise ValueError(f"GAUGEFLOW_KERNELS={mode!r}: use 'auto' (fast paths where available) or 'reference'")
    return mode == "reference"


def implementation(xp) -> str:
    """``"numba"``, ``"cupy"`` or ``"reference"``: the implementation ``xp`` arrays get now
    (NumPy arrays get the reference where Numba is not installed).

    The environment variable ``GAUGEFLOW_KERNELS=reference`` forces the reference in the whole
    process (to compare a run with its array-API reference, or to rule out a compiled kernel
    when hunting a bug)."""
    if _FORCE_REFERENCE.get() or _env_reference():
        return "reference"
    if array_api_compat.is_numpy_namespace(xp):
        return "numba" if _numba_available() else "reference"
    if array_api_compat.is_cupy_namespace(xp):
        return "cupy"
    return "reference"


@contextlib.contextmanager
def reference_only():
    """Inside this block every kernel uses its array-API reference implementation (the test
    oracle; ``make bench`` times both in one run)."""
    token = _FORCE_REFERENCE.set(True)
    try:
        yield
    finally:
        _FORCE_REFERENCE.reset(token)
