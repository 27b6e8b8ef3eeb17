"""Array backend: namespaces, dtype policy, host transfer and counter-based random numbers.

This is the only module of ``lattice/``, ``flows/`` and ``fermions/`` that imports NumPy; the
NumPy/Numba fast paths of :mod:`lattice.kernels` (``_numpy.py``, ``_numba*.py``) and the host
staging of ``_cupy*.py`` take the module from here (``from lattice.backend import np``).
Everything else obtains its array namespace with :func:`namespace` (the array API standard,
via ``array_api_compat``), so the same code runs on NumPy (CPU), CuPy (GPU) and
``array_api_strict`` (the standard's reference implementation, used by the tests).

Random numbers
--------------
Lattice QCD codes need random fields that do not depend on how the lattice is split over
MPI ranks, nor on the device. We therefore use a *counter-based* generator,
Philox4x32-10 (Salmon et al., SC'11; the generator of cuRAND and Random123), evaluated
element-wise on the array backend:

    bits(element) = Philox4x32-10(counter = (e_lo, e_hi, call, 0), key = seed)

where ``e`` is the *global* lexicographic index of the element (batch axes, then the
global lattice axes, then the inner axes) and ``call`` counts the draws made by one
:class:`Rng`. A rank that holds only part of the lattice computes the global indices of
its own sites and obtains exactly the bits the single-process run would use there. The
implementation is checked against the Random123 known-answer vectors.

Each Philox call yields four 32-bit words, i.e. two 53-bit uniforms, i.e. two Gaussians
by Box-Muller, i.e. one complex Gaussian; every element of a draw uses one call.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "namespace", "get_namespace", "is_numpy", "to_host", "from_host", "default_xp",
    "real_dtype", "DEFAULT_COMPLEX", "philox4x32", "Rng", "finfo_eps", "host_array", "host_concat",
    "host_argmax",
]

DEFAULT_COMPLEX = "complex128"


def namespace(*arrays) -> Any:
    """The array-API namespace of ``arrays`` (NumPy, CuPy, array_api_strict, ...)."""
    return array_api_compat.array_namespace(*arrays)


def default_xp():
    """The default namespace: array_api_compat's NumPy wrapper (plain ``numpy.ndarray``)."""
    import array_api_compat.numpy as xnp
    return xnp


def get_namespace(name: str | None = None):
    """Namespace by name: ``"numpy"`` (default), ``"cupy"`` or ``"array_api_strict"``."""
    if name in (None, "numpy"):
        return default_xp()
    if name == "cupy":
        try:
            import array_api_compat.cupy as xcp  # noqa: F401
        except ImportError as exc:  # pragma: no cover - only without CuPy
            raise RuntimeError("backend 'cupy' requested but CuPy is not importable; "
                               "install the 'gpu' extra (pip install 'gaugeflow[gpu]')") from exc
        return xcp
    if name == "array_api_strict":
        import array_api_strict
        return array_api_strict
    raise ValueError(f"unknown array backend {name!r}; use 'numpy', 'cupy' or 'array_api_strict'")


def is_numpy(xp) -> bool:
    return array_api_compat.is_numpy_namespace(xp)


def to_host(x) -> np.ndarray:
    """Copy an array of any backend to a NumPy array on the host."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_cupy_array(x):  # pragma: no cover - GPU only
        return x.get()
    try:
        return np.asarray(x)
    except Exception:  # array_api_strict and other __dlpack__ providers
        return np.from_dlpack(x)


def from_host(a, xp=None, dtype=None):
    """Move a host (NumPy) array into namespace ``xp`` (default: NumPy)."""
    xp = default_xp() if xp is None else xp
    a = np.asarray(a)
    if is_numpy(xp):
        return a if dtype is None else a.astype(np.dtype(dtype), copy=False)
    out = xp.asarray(a)
    return out if dtype is None else xp.astype(out, dtype)


def host_array(values, dtype=None) -> np.ndarray:
    """Host (NumPy) array from host values (lists, scalars, host arrays), e.g. per-sample
    diagnostics gathered on the host."""
    return np.asarray(values, dtype=dtype)


def host_concat(arrays, dtype=None) -> np.ndarray:
    """Concatenate arrays of any backend along axis 0 on the host (e.g. per-batch log-weights)."""
    return np.concatenate([np.asarray(to_host(a), dtype=dtype) for a in arrays])


def host_argmax(x) -> tuple:
    """Multi-index (ints) of the largest element of ``x`` (any backend), for error messages."""
    h = to_host(x)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(h)), h.shape))


def real_dtype(xp, cplx):
    """real dtype matching a complex (or real) dtype."""
    if cplx in (xp.complex64, xp.float32):
        return xp.float32
    return xp.float64


def finfo_eps(xp, dtype) -> float:
    return float(xp.finfo(real_dtype(xp, dtype)).eps)



# --------------------------------------------------------------------------------------
# Philox4x32-10, element-wise on any backend
# --------------------------------------------------------------------------------------
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = 10):
    """Philox4x32-R on arrays of 32-bit counters stored in uint64 arrays.

    ``c0..c3`` are broadcastable uint64 arrays holding values below 2**32; ``k0, k1`` are
    Python ints (the key). Returns four uint64 arrays with values below 2**32.
    The 32x32->64 bit products fit exactly in uint64.
    """
    xp = namespace(c0, c1, c2, c3)
    for r in range(rounds):
        if r:
            k0 = (k0 + _W0) & _MASK32
            k1 = (k1 + _W1) & _MASK32
        p0 = c0 * _M0
        p1 = c2 * _M1
        hi0, lo0 = p0 >> 32, p0 & _MASK32
        hi1, lo1 = p1 >> 32, p1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    del xp
    return c0, c1, c2, c3


def _global_index(xp, shape_local, shape_global, offsets, device=None):
    """Global lexicographic index (uint64) of every element of a local block.

    ``offsets[i]`` is the global start of the local block along axis ``i``.
    """
    idx = xp.zeros((), dtype=xp.uint64, device=device)
    stride = 1
    nd = len(shape_local)
    for ax in range(nd - 1, -1, -1):
        n_loc = int(shape_local[ax])
        coord = xp.arange(n_loc, dtype=xp.uint64, device=device) + int(offsets[ax])
        coord = xp.reshape(coord, (n_loc,) + (1,) * (nd - 1 - ax))
        idx = idx + coord * stride
        stride *= int(shape_global[ax])
    if stride > 2**64:
        raise ValueError("random field too large for 64-bit element counters")
    return xp.broadcast_to(idx, tuple(int(s) for s in shape_local))


def derive_seed(seed: int, *labels) -> int:
    """The seed, in [0, 2**63), of the random stream that ``labels`` name under ``seed``.

    A BLAKE2b hash of ``seed`` and the labels (strings, integers, floats; -0.0 counts as 0.0),
    so streams of different purposes under one job seed -- HMC at each lambda, training batches,
    the determinant-ratio noise and the pion sources of configuration i -- get unrelated Philox
    keys and never coincide, however many configurations there are. (Offsets such as
    ``seed + 1000 + i`` and ``seed + 2000 + i`` meet once i reaches 1000.)
    """
    parts = [str(int(seed))]
    for label in labels:
        if isinstance(label, float):
            parts.append(repr(float(label) + 0.0))
        elif isinstance(label, (str, int)):
            parts.append(f"{type(label).__name__}:{label}")
        else:
            raise TypeError(f"derive_seed: labels are str, int or float, got {type(label).__name__}")
    digest = hashlib.blake2b("/".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class Rng:
    """Reproducible counter-based random numbers, identical on every backend and rank count.

    ``Rng(seed)`` draws fields through :meth:`uniform`, :meth:`normal`,
    :meth:`complex_normal` and :meth:`haar` (Haar SU(N)). Each draw advances an internal
    call counter, so a fixed sequence of draws from a fixed seed is reproducible.

    Site fields: pass ``layout`` (a :class:`lattice.Layout`) and the draw has shape
    ``(*lead, *layout.local_shape, *inner)``; element indices are taken on the *global*
    lattice, so every decomposition sees the same numbers. Without a layout the draw has
    shape ``(*lead, *inner)``.
    """

    def __init__(self, seed: int = 0, xp=None, device=None, _stream: int = 0):
        seed = int(seed)
        if seed < 0 or seed >= 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
        self.seed = seed
        self.xp = default_xp() if xp is None else xp
        self.device = device
        self._stream = int(_stream)
        k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
        if _stream:
            # derive an independent key for a child stream from the parent key
            z = self.xp.zeros((), dtype=self.xp.uint64)
            w = philox4x32(z + (_stream & _MASK32), z + (_stream >> 32), z + 0xC0FFEE, z + 0x5EED,
                           k0, k1)
            k0, k1 = int(w[0]), int(w[1])
        self._key = (k0, k1)
        self.calls = 0

    # -- state -------------------------------------------------------------------------
    def state(self) -> dict:
        """What is needed to continue this stream exactly (for checkpoints)."""
        return {"seed": self.seed, "stream": self._stream, "calls": self.calls}

    @classmethod
    def from_state(cls, state: dict, xp=None, device=None) -> "Rng":
        r = cls(state["seed"], xp=xp, device=device, _stream=state.get("stream", 0))
        r.calls = int(state["calls"])
        return r

    def child(self, stream: int) -> "Rng":
        """An independent generator labelled by ``stream`` (e.g. a trajectory number)."""
        return Rng(self.seed, xp=self.xp, device=self.device,
                   _stream=(self._stream * 1_000_003 + int(stream) + 1) % 2**64)

    # -- raw bits ----------------------------------------------------------------------
    def _bits(self, lead=(), layout=None, inner=()):
        xp = self.xp
        lead, inner = tuple(int(n) for n in lead), tuple(int(n) for n in inner)
        if layout is None:
            shape_loc = shape_glob = lead + inner
            offsets = (0,) * len(shape_loc)
        else:
            shape_loc = lead + tuple(layout.local_shape) + inner
            shape_glob = lead + tuple(layout.global_shape) + inner
            offsets = (0,) * len(lead) + tuple(layout.offset) + (0,) * len(inner)
        e = _global_index(xp, shape_loc, shape_glob, offsets, self.device)
        call = self.calls
        self.calls += 1
        c0 = e & _MASK32
        c1 = e >> 32
        c2 = xp.zeros_like(c0) + (call & _MASK32)
        c3 = xp.zeros_like(c0) + ((call >> 32) & _MASK32)
        return philox4x32(c0, c1, c2, c3, *self._key)

    @staticmethod
    def _to_unit(xp, a, b):
        """Two 32-bit words -> uniform float64 in [0, 1) with 53 random bits."""
        m = ((a >> 5) << 26) | (b >> 6)
        return xp.astype(m, xp.float64) * (1.0 / 9007199254740992.0)

    def _uniform_pair(self, lead, layout, inner):
        w = self._bits(lead, layout, inner)
        xp = self.xp
        return self._to_unit(xp, w[0], w[1]), self._to_unit(xp, w[2], w[3])

    # -- public draws ------------------------------------------------------------------
    def uniform(self, lead=(), layout=None, inner=(), dtype=None):
        """Uniform numbers in [0, 1), float64 unless ``dtype`` is given."""
        u, _ = self._uniform_pair(lead, layout, inner)
        return u if dtype is None else self.xp.astype(u, dtype)

    def _box_muller(self, lead, layout, inner):
        xp = self.xp
        u1, u2 = self._uniform_pair(lead, layout, inner)
        r = xp.sqrt(-2.0 * xp.log(1.0 - u1))  # 1 - u1 is in (0, 1]
        phi = (2.0 * math.pi) * u2
        return r * xp.cos(phi), r * xp.sin(phi)

    def normal(self, lead=(), layout=None, inner=(), dtype=None):
        """Standard normal numbers (mean 0, variance 1), float64 unless ``dtype``."""
        z, _ = self._box_muller(lead, layout, inner)
        return z if dtype is None else self.xp.astype(z, dtype)

    def complex_normal(self, lead=(), layout=None, inner=(), dtype=None):
        """Complex Gaussian numbers with E z = 0, E|z|^2 = 1 (real, imag each variance 1/2)."""
        xp = self.xp
        a, b = self._box_muller(lead, layout, inner)
        s = 1.0 / math.sqrt(2.0)
        z = xp.astype(a * s, xp.complex128) + 1j * xp.astype(b * s, xp.complex128)
        return z if dtype is None else xp.astype(z, dtype)

    def integers(self, high: int, lead=()):
        """Uniform integers in [0, high) (host-side sizes, e.g. random source timeslices)."""
        xp = self.xp
        u = self.uniform(lead)
        return xp.astype(xp.floor(u * high), xp.int64)

    def haar(self, N: int, lead=(), layout=None, dtype=None):
        """Haar-distributed SU(N) matrices, shape ``(*lead, *sites, N, N)``.

        A complex Ginibre matrix Z is orthonormalised by modified Gram-Schmidt on its
        columns (equivalent to QR with a positive-diagonal R, which makes the U(N) factor
        Haar distributed); dividing by det^(1/N) keeps the distribution left-invariant
        under SU(N), hence Haar on SU(N).
        """
        from . import su_n
        xp = self.xp
        Z = self.complex_normal(lead, layout, inner=(N, N))
        Q = su_n.gram_schmidt(Z)
        Q = su_n.remove_det_phase(Q)
        return Q if dtype is None else xp.astype(Q, dtype)
