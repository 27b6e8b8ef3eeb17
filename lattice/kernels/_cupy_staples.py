"""CuPy path of :func:`lattice.kernels.staple_pairs` / :func:`staple_pairs_vjp` (N = 3): the
whole product chain of a pair in one fused CUDA kernel, the intermediates in registers.

Fields are colour-first and flattened to (9, slots, M): entry e = 3 a + b of slot s at position
m is X[(e * slots + s) * M + m], so consecutive threads (consecutive m) read consecutive
addresses.

* forward, one thread per (pair q, position m): load S_mu, S_nu, T_mn, T_nm, form
  Y_mn = S_mu T_mn and Y_nm = S_nu T_nm, write D_q = S_nu^dag Y_mn and R = Y_nm T_mn^dag (P1-P3);
* adjoint, one thread per position m running over the pairs in order: (A1)-(A2) with the
  cotangents of S and T added in place. The pairs of one call share slots of S_bar and T_bar;
  a thread owns its position in every slot, so there are no atomics and the summation order is
  fixed (results are reproducible bit for bit).

NOT YET RUN ON A GPU: checked on the CPU by tests/test_cuda_emulated.py (the CUDA source
compiled as C++); ``make test-gpu`` compares it with the reference on a device.
"""
from __future__ import annotations

import functools

import cupy

from ._cuda_src import MAT3

_PREAMBLE = MAT3 + r"""
template <typename C>
__device__ inline void ld9(const C* X, long long P, long long M, long long s, long long m, C* f) {
  for (int e = 0; e < 9; ++e) f[e] = X[((long long)e * P + s) * M + m];
}
template <typename C>
__device__ inline void st9(C* X, long long P, long long M, long long s, long long m, const C* f) {
  for (int e = 0; e < 9; ++e) X[((long long)e * P + s) * M + m] = f[e];
}
template <typename C>
__device__ inline void add9(C* X, long long P, long long M, long long s, long long m, const C* f) {
  for (int e = 0; e < 9; ++e) X[((long long)e * P + s) * M + m] += f[e];
}
"""

_FORWARD = r"""
const long long q = i / M, m = i % M;
T sm[9], sn[9], tmn[9], tnm[9], ymn[9], ynm[9], o[9];
ld9(&S[0], PS, M, imu[q], m, sm);
ld9(&S[0], PS, M, inu[q], m, sn);
ld9(&Tf[0], PT, M, imn[q], m, tmn);
ld9(&Tf[0], PT, M, inm[q], m, tnm);
mm3(sm, tmn, ymn);                                 // (P1)
mm3(sn, tnm, ynm);
dm3(sn, ymn, o);                                   // (P2) D_q = S_nu^dag Y_mn
st9(&D[0], PD, M, q, m, o);
md3(ynm, tmn, o);                                  // (P3) R = Y_nm T_mn^dag
st9(&R[0], PR, M, oR[q], m, o);
"""

_ADJOINT = r"""
const long long m = i;
T sm[9], sn[9], tmn[9], tnm[9], ymn[9], ynm[9], rb[9], db[9], yb[9], o[9];
for (int q = 0; q < nq; ++q) {
  ld9(&S[0], PS, M, imu[q], m, sm);
  ld9(&S[0], PS, M, inu[q], m, sn);
  ld9(&Tf[0], PT, M, imn[q], m, tmn);
  ld9(&Tf[0], PT, M, inm[q], m, tnm);
  ld9(&Rb[0], PR, M, iR[q], m, rb);
  ld9(&Db[0], PD, M, q, m, db);
  mm3(sm, tmn, ymn);
  mm3(sn, tnm, ynm);
  mm3(rb, tmn, yb);                                // (A1) Ynm_b = Rb T_mn
  dm3(rb, ynm, o);  add9(&Tb[0], PT, M, imn[q], m, o);     // T_mn_b += Rb^dag Y_nm
  md3(yb, tnm, o);  add9(&Sb[0], PS, M, inu[q], m, o);     // S_nu_b += Ynm_b T_nm^dag
  dm3(sn, yb, o);   add9(&Tb[0], PT, M, inm[q], m, o);     // T_nm_b += S_nu^dag Ynm_b
  md3(ymn, db, o);  add9(&Sb[0], PS, M, inu[q], m, o);     // (A2) S_nu_b += Y_mn Db^dag
  mm3(sn, db, yb);                                 //      Ymn_b = S_nu Db
  dm3(sm, yb, o);   add9(&Tb[0], PT, M, imn[q], m, o);     // T_mn_b += S_mu^dag Ymn_b
  md3(yb, tmn, o);  add9(&Sb[0], PS, M, imu[q], m, o);     // S_mu_b += Ymn_b T_mn^dag
}
"""


@functools.lru_cache(maxsize=None)
def _kernels():
    fwd = cupy.ElementwiseKernel(
        "raw T S, raw T Tf, raw int64 imu, raw int64 inu, raw int64 imn, raw int64 inm, raw int64 oR, "
        "int64 M, int64 PS, int64 PT, int64 PD, int64 PR", "raw T D, raw T R", _FORWARD,
        "gaugeflow_staple_pairs", preamble=_PREAMBLE)
    adj = cupy.ElementwiseKernel(
        "raw T S, raw T Tf, raw int64 imu, raw int64 inu, raw int64 imn, raw int64 inm, raw int64 iR, raw T Rb, "
        "raw T Db, int64 M, int64 PS, int64 PT, int64 PD, int64 PR, int32 nq", "raw T Sb, raw T Tb", _ADJOINT,
        "gaugeflow_staple_pairs_vjp", preamble=_PREAMBLE)
    return fwd, adj


def _flat(X, dtype, M):
    """(slots, ok): X as a C-contiguous (3, 3, slots, *rest) array of ``dtype`` with prod(rest) = M."""
    if X.shape[0] != 3 or X.shape[1] != 3 or X.dtype != dtype or not X.flags.c_contiguous:
        return None
    rest = 1
    for n in X.shape[3:]:
        rest *= int(n)
    return X.shape[2] if rest == M else None


@functools.lru_cache(maxsize=256)
def _index_on_device(v: tuple, device: int):
    return cupy.asarray(v, dtype=cupy.int64)


def _index(v, bound, what):
    """The slot list ``v`` on the device (cached: a network layer passes the same lists every
    step), checked against ``bound`` slots: the kernel does not check its indices."""
    t = tuple(int(k) for k in v)
    if any(not 0 <= k < bound for k in t):
        raise IndexError(f"kernels.staple_pairs: {what} slots {t} out of range for an axis of {bound} slots")
    return _index_on_device(t, _device_id())


def _device_id():
    try:
        return cupy.cuda.Device().id
    except AttributeError:         # the CPU stand-in of the tests
        return -1


def _slots(S, others):
    dtype = S.dtype
    if dtype.kind != "c":
        return None
    M = 1
    for n in S.shape[3:]:
        M *= int(n)
    slots = [_flat(X, dtype, M) for X in (S,) + tuple(others)]
    return None if any(p is None for p in slots) else (M, slots)


def forward(S, T, i_mu, i_nu, i_mn, i_nm, D, R, oR) -> bool:
    """(P1)-(P3) fused; False where the arrays do not fit (the caller composes instead)."""
    got = _slots(S, (T, D, R))
    if got is None:
        return False
    M, (PS, PT, PD, PR) = got
    nq = len(i_mu)
    if len(set(int(k) for k in oR)) != nq or PD < nq:
        return False                   # repeated R slots (written twice) or too few D slots: the reference
    if nq and M:
        _kernels()[0](S, T, _index(i_mu, PS, "S"), _index(i_nu, PS, "S"), _index(i_mn, PT, "T"),
                      _index(i_nm, PT, "T"), _index(oR, PR, "R"), M, PS, PT, PD, PR, D, R, size=nq * M)
    return True


def vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb, iR, Db, S_bar, T_bar) -> bool:
    """(A1)-(A2) fused, accumulating into S_bar and T_bar; False where the arrays do not fit."""
    got = _slots(S, (T, Rb, Db, S_bar, T_bar))
    if got is None:
        return False
    M, (PS, PT, PR, PD, PSb, PTb) = got
    if PSb != PS or PTb != PT:
        return False
    nq = len(i_mu)
    if PD < nq:
        return False
    if nq and M:
        _kernels()[1](S, T, _index(i_mu, PS, "S"), _index(i_nu, PS, "S"), _index(i_mn, PT, "T"),
                      _index(i_nm, PT, "T"), _index(iR, PR, "R"), Rb, Db, M, PS, PT, PD, PR, nq, S_bar, T_bar,
                      size=M)
    return True
