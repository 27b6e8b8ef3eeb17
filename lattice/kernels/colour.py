"""Products of colour-first stacks of N x N matrices (see :mod:`lattice.kernels`).

A colour-first field has shape ``(N, N, *rest)``: entry (i, j) of the matrix at position r of
``rest`` is ``A[i, j, *r]``. :func:`mul` forms

    C = op_a(A) op_b(B),   op(X) = X or X^dag,   C_ij = sum_k op_a(A)_ik op_b(B)_kj,

per position, with ``rest`` broadcast between A and B. Daggers are index swaps plus a
conjugation inside the kernel: no conjugate-transposed copy is ever made by the caller.

The adjoint (for hand-written VJPs) is again a product of the same kind: for C = A B and a
real function with cotangent C_bar (d f = Re sum conj(C_bar) dC),

    A_bar = C_bar B^dag = mul(C_bar, B, db=True),   B_bar = A^dag C_bar = mul(A, C_bar, da=True),

and the dagger flags compose the same way (tests/test_kernels.py checks them against central
finite differences).
"""
from __future__ import annotations

from ..backend import namespace
from .dispatch import implementation

__all__ = ["colour_first", "colour_last", "mul", "mul_reference", "mul_gather", "real_inner", "matmul"]


def _check(A, B):
    if A.ndim < 2 or B.ndim < 2 or A.shape[0] != A.shape[1] or tuple(B.shape[:2]) != tuple(A.shape[:2]):
        raise ValueError(f"kernels.mul: expected colour-first stacks (N, N, *rest) of one N, got shapes "
                         f"{tuple(A.shape)} and {tuple(B.shape)}")


def colour_first(M):
    """``(*rest, N, N) -> (N, N, *rest)``, a contiguous copy."""
    xp = namespace(M)
    n = M.ndim
    X = xp.permute_dims(M, (n - 2, n - 1) + tuple(range(n - 2)))
    return _contiguous(X, xp)


def colour_last(X):
    """``(N, N, *rest) -> (*rest, N, N)``, a contiguous copy (inverse of :func:`colour_first`)."""
    xp = namespace(X)
    n = X.ndim
    M = xp.permute_dims(X, tuple(range(2, n)) + (0, 1))
    return _contiguous(M, xp)


def _contiguous(X, xp):
    impl = implementation(xp)
    if impl == "numba":
        from . import _numpy
        return _numpy.contiguous(X)
    if impl == "cupy":  # pragma: no cover - GPU only
        import cupy
        return cupy.ascontiguousarray(X)
    return xp.asarray(X, copy=True)


def mul_reference(A, B, *, da: bool = False, db: bool = False):
    """Array-API reference of :func:`mul` (colour-last ``xp.matmul``)."""
    _check(A, B)
    xp = namespace(A, B)
    a, b = A.ndim, B.ndim
    Al = xp.permute_dims(A, (1, 0) + tuple(range(2, a)) if da else (0, 1) + tuple(range(2, a)))
    Bl = xp.permute_dims(B, (1, 0) + tuple(range(2, b)) if db else (0, 1) + tuple(range(2, b)))
    if da:
        Al = xp.conj(Al)
    if db:
        Bl = xp.conj(Bl)
    Al = xp.permute_dims(Al, tuple(range(2, a)) + (0, 1))
    Bl = xp.permute_dims(Bl, tuple(range(2, b)) + (0, 1))
    C = xp.matmul(Al, Bl)
    n = C.ndim
    return xp.permute_dims(C, (n - 2, n - 1) + tuple(range(n - 2)))


def mul(A, B, *, da: bool = False, db: bool = False, out=None):
    """C = op_a(A) op_b(B) on colour-first stacks (module docstring), shape ``(N, N, *rest)``.

    ``out`` (optional, NumPy/CuPy fast paths write into it; the reference copies into it) must
    not overlap A or B.
    """
    _check(A, B)
    xp = namespace(A, B)
    impl = implementation(xp)
    if impl == "numba":
        from . import _numba
        return _numba.mul(A, B, da, db, out)
    if impl == "cupy":  # pragma: no cover - GPU only
        from . import _cupy
        return _cupy.mul(A, B, da, db, out)
    C = mul_reference(A, B, da=da, db=db)
    if out is None:
        return C
    out[...] = C
    return out


def mul_gather(A, B, ia, ib, *, da: bool = False, db: bool = False, out=None, oc=None,
               accumulate: bool = False):
    """Gathered products along axis 2: ``C[:, :, q] = op_a(A[:, :, ia[q]]) op_b(B[:, :, ib[q]])``.

    A ``(N, N, P_a, *rest)``, B ``(N, N, P_b, *rest)``; ``ia``, ``ib`` equal-length sequences of
    ints; result ``(N, N, len(ia), *rest)``. One kernel call for a whole list of products of
    fields stacked along axis 2 (e.g. all direction pairs of a staple-network layer), without
    materialising the gathered operands where a fast path exists.

    With ``out`` ``(N, N, P_out, *rest)`` the products are scattered instead:
    ``out[:, :, oc[q]] = ...`` (``oc`` default ``range(len(ia))``), or ``+=`` with
    ``accumulate=True`` (repeated slots add up, in order of q) - an adjoint's sum over the
    pairs that use a field, with no temporary. Returns ``out``.
    """
    _check(A, B)
    if len(ia) != len(ib) or (oc is not None and len(oc) != len(ia)):
        raise ValueError(f"kernels.mul_gather: {len(ia)} indices into A, {len(ib)} into B"
                         + ("" if oc is None else f" and {len(oc)} into out") + ": need the same number")
    xp = namespace(A, B)
    impl = implementation(xp)
    if impl == "numba":
        from . import _numba
        C = _numba.mul_gather(A, B, da, db, ia, ib, out, oc, accumulate)
        if C is not None:
            return C
    dev = getattr(A, "device", None)
    Ag = xp.take(A, xp.asarray(list(ia), dtype=xp.int64, device=dev), axis=2)
    Bg = xp.take(B, xp.asarray(list(ib), dtype=xp.int64, device=dev), axis=2)
    C = mul(Ag, Bg, da=da, db=db)
    if out is None:
        return C
    for q, k in enumerate(range(len(ia)) if oc is None else oc):
        if accumulate:
            out[:, :, k, ...] += C[:, :, q, ...]
        else:
            out[:, :, k, ...] = C[:, :, q, ...]
    return out


def real_inner(A, B):
    """``G[..., k, l] = Re sum_m conj(A[..., k, m]) B[..., l, m]`` in float64 (the gradient of
    a real-coefficient mixing layer, eq. 7), A ``(..., K, M)``, B ``(..., L, M)`` complex.

    The NumPy path views the complex entries as interleaved float pairs, so that this is one
    real matrix product (Re conj(a) b = a_r b_r + a_i b_i) with no conjugated copy.
    """
    xp = namespace(A, B)
    impl = implementation(xp)
    if impl == "numba":
        from . import _numpy
        return _numpy.real_inner(A, B)
    Ad = xp.astype(A, xp.complex128, copy=False)
    Bd = xp.astype(B, xp.complex128, copy=False)
    return xp.real(xp.conj(Ad) @ xp.matrix_transpose(Bd))


def real_mix(c, A, *, transpose: bool = False):
    """``c @ A`` (or ``c^T @ A``) for real coefficients c ``(..., K, L)`` and complex A ``(...,
    L, M)``: the channel mixing of a staple network (eq. 7) and its adjoint. Result ``(..., K,
    M)`` complex, dtype of A.

    Since c is real, (c A)_re = c A_re and (c A)_im = c A_im: the NumPy path multiplies c (in
    A's real precision) into the interleaved float view of A, one real GEMM, half the flops
    of a complex GEMM with a zero imaginary part; the reference casts c to A's dtype.
    """
    xp = namespace(A)
    if implementation(xp) == "numba":
        from . import _numpy
        return _numpy.real_mix(c, A, transpose)
    cc = xp.astype(c, A.dtype, copy=False)
    return (xp.matrix_transpose(cc) if transpose else cc) @ A


def matmul(A, B, *, da: bool = False, db: bool = False):
    """``op_a(A) @ op_b(B)`` on colour-LAST stacks ``(..., N, N)`` (the public field layout),
    leading axes broadcast, op = dagger where flagged; the drop-in for ``su_n.dagger(A) @ B``
    in code that keeps the colour-last layout (Wilson lines, forces). SU(3) on NumPy: one
    compiled, unrolled 3x3 product per matrix, no dagger copy."""
    xp = namespace(A, B)
    if implementation(xp) == "numba":
        from . import _numba
        C = _numba.matmul(A, B, da, db)
        if C is not None:
            return C
    a = xp.conj(xp.matrix_transpose(A)) if da else A
    b = xp.conj(xp.matrix_transpose(B)) if db else B
    return a @ b
