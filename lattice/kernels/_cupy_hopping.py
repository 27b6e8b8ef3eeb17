"""CuPy fast path of the Wilson hopping term (:mod:`lattice.kernels.hopping`): one fused CUDA
kernel, one thread per (batch element, target site).

Each thread decodes its site coordinates, computes the 8 neighbour indices with periodic wrap
(on packed even-odd half lattices the direction-0 neighbour is packed site h + (p XOR r) or
h - 1 + (p XOR r), r = (x_1 + x_2 + x_3) mod 2, :mod:`fermions.evenodd`), and for every hop
projects the neighbour spinor onto the half spinor h = psi_up + s B_mu psi_dn (the blocks of
the tmLQCD chiral basis written out), multiplies by U_mu(x) or U_mu(x - mu^)^dag (index swap
and conjugation) and accumulates the upper rows and the reconstructed lower rows in
registers; the output spinor is written once. Spin/colour-major (SoA) operands: consecutive
threads read consecutive elements of every component (coalesced). The boundary phases are in
the links. The links are read from one stacked copy ``(4, Bu, 9, V)`` per parity set
(:func:`prepare`, cached by the caller with the links).

On a block with ghost layers (a split layout) the kernel takes a *region*: the core (sites none
of whose neighbours is a ghost) or the rest; :func:`wilson_hop` launches the core before the
halo faces have arrived and the rest after, so that the exchange overlaps the bulk of the work.

NOT YET RUN ON A GPU: written and reviewed without a device (this repository's CI has none);
``tests/test_kernels_hopping.py::test_cupy_equals_reference`` compares it with the array-API
reference where CuPy and a GPU are present.
"""
from __future__ import annotations

import functools
import math

import cupy  # this module is imported only for CuPy arrays
from lattice.backend import np  # NumPy itself: lattice.backend holds the one import

_PREAMBLE = r"""
template <typename C>
__device__ __forceinline__ C gf_mul_i(const C& z) { return C(-z.imag(), z.real()); }   // i z

// h[r*3 + c] = (psi_up + s B_mu psi_dn)[r, c] of the spinor at site j (component k at k*V + j)
template <typename C>
__device__ __forceinline__ void gf_project(const C* P, long long V, long long j, int mu, int s, C* h) {
  for (int c = 0; c < 3; ++c) {
    const C u0 = P[(long long)c * V + j];
    const C u1 = P[(long long)(3 + c) * V + j];
    const C d0 = P[(long long)(6 + c) * V + j];
    const C d1 = P[(long long)(9 + c) * V + j];
    C x0, x1;
    if (mu == 0) {          // B = [[0, -i], [-i, 0]]
      x0 = -gf_mul_i(d1); x1 = -gf_mul_i(d0);
    } else if (mu == 1) {   // B = [[0, -1], [1, 0]]
      x0 = -d1; x1 = d0;
    } else if (mu == 2) {   // B = diag(-i, i)
      x0 = -gf_mul_i(d0); x1 = gf_mul_i(d1);
    } else {                // B = -1
      x0 = -d0; x1 = -d1;
    }
    if (s > 0) { h[c] = u0 + x0; h[3 + c] = u1 + x1; }
    else       { h[c] = u0 - x0; h[3 + c] = u1 - x1; }
  }
}

// acc += (g_0, g_1, s B_mu^dag g) for the half spinor g[r*3 + a]
template <typename C>
__device__ __forceinline__ void gf_accumulate(C* acc, const C* g, int mu, int s) {
  for (int a = 0; a < 3; ++a) {
    const C g0 = g[a], g1 = g[3 + a];
    C y0, y1;
    if (mu == 0) {          // B^dag = [[0, i], [i, 0]]
      y0 = gf_mul_i(g1); y1 = gf_mul_i(g0);
    } else if (mu == 1) {   // B^dag = [[0, 1], [-1, 0]]
      y0 = g1; y1 = -g0;
    } else if (mu == 2) {   // B^dag = diag(i, -i)
      y0 = gf_mul_i(g0); y1 = -gf_mul_i(g1);
    } else {                // B^dag = -1
      y0 = -g0; y1 = -g1;
    }
    acc[a] += g0;
    acc[3 + a] += g1;
    if (s > 0) { acc[6 + a] += y0; acc[9 + a] += y1; }
    else       { acc[6 + a] -= y0; acc[9 + a] -= y1; }
  }
}

// g[r*3 + a] = sum_c op(W)_{ac} h[r*3 + c] for the link at site j (entry e at e*V + j)
template <typename C>
__device__ __forceinline__ void gf_link(const C* W, long long V, long long j, bool dag, const C* h, C* g) {
  for (int a = 0; a < 3; ++a) {
    C s0 = C(0), s1 = C(0);
    for (int c = 0; c < 3; ++c) {
      const C w = dag ? conj(W[(long long)(3 * c + a) * V + j]) : W[(long long)(3 * a + c) * V + j];
      s0 += w * h[c];
      s1 += w * h[3 + c];
    }
    g[a] = s0;
    g[3 + a] = s1;
  }
}
"""

_BODY = r"""
const long long V = (long long)L0 * L1 * L2 * L3;
const long long b = i / V;
const long long x = i - b * V;
const int x3 = (int)(x % L3);
const long long r23 = x / L3;
const int x2 = (int)(r23 % L2);
const long long r123 = r23 / L2;
const int x1 = (int)(r123 % L1);
const int x0 = (int)(r123 / L1);
const long long st[4] = {(long long)L1 * L2 * L3, (long long)L2 * L3, (long long)L3, 1};
const int xs[4] = {x0, x1, x2, x3};
const int ls[4] = {L0, L1, L2, L3};
// region: 0 every site; 1 the core (no neighbour in a ghost layer, gw[mu] = ghost width of
// axis mu); 2 the rest of the block without its ghost layers (needs the ghosts)
bool active = true;
if (region != 0) {
  const int gw[4] = {g0, g1, g2, g3};
  bool core = true, inner = true;
  for (int mu = 0; mu < 4; ++mu) {
    if (xs[mu] < gw[mu] || xs[mu] >= ls[mu] - gw[mu]) inner = false;
    if (xs[mu] < 2 * gw[mu] || xs[mu] >= ls[mu] - 2 * gw[mu]) core = false;
  }
  active = region == 1 ? core : (inner && !core);
}
if (active) {
const long long u = ub[b];
const T* Pb = &P[0] + b * 12 * V;
T acc[12];
for (int k = 0; k < 12; ++k) acc[k] = T(0);
T h[6], g[6];
for (int mu = 0; mu < 4; ++mu) {
  const long long fwd_step = xs[mu] < ls[mu] - 1 ? st[mu] : -(long long)(ls[mu] - 1) * st[mu];
  const long long bwd_step = xs[mu] > 0 ? st[mu] : -(long long)(ls[mu] - 1) * st[mu];
  long long jf = x + fwd_step;
  long long jb = x - bwd_step;
  if (eo && mu == 0) {           // packed half lattice: x_0 +- 1 is h + q or h - 1 + q
    const int q = (p + x1 + x2 + x3) & 1;
    if (q) { jb = x; } else { jf = x; }
  }
  const T* Wf = &Wt[0] + ((long long)mu * Bu + u) * 9 * V;
  const T* Wb = &Ws[0] + ((long long)mu * Bu + u) * 9 * V;
  gf_project(Pb, V, jf, mu, sf, h);          // forward: (1 + sf gamma_mu) U_mu(x) psi(x + mu)
  gf_link(Wf, V, x, false, h, g);
  gf_accumulate(acc, g, mu, sf);
  gf_project(Pb, V, jb, mu, -sf, h);         // backward: (1 - sf gamma_mu) U_mu(x - mu)^dag psi(x - mu)
  gf_link(Wb, V, jb, true, h, g);
  gf_accumulate(acc, g, mu, -sf);
}
T* Ob = &O[0] + b * 12 * V;
for (int k = 0; k < 12; ++k) Ob[(long long)k * V + x] = acc[k];
}
"""


_FACE_BODY = r"""
const long long b = i / n;
const long long x = i - b * n;
const long long u = ub[b];
T h[6], g[6];
gf_project(&P[0] + b * 12 * n, n, x, mu, s, h);   // the arithmetic of the backward hops above
gf_link(&W[0] + u * 9 * n, n, x, true, h, g);
T* Gb = &G[0] + b * 6 * n;
for (int k = 0; k < 6; ++k) Gb[(long long)k * n + x] = g[k];
"""


@functools.lru_cache(maxsize=None)
def _face_kernel():
    return cupy.ElementwiseKernel("raw T P, raw T W, raw int64 ub, int64 n, int32 mu, int32 s", "raw T G",
                                  _FACE_BODY, "gaugeflow_wilson_hop_face", preamble=_PREAMBLE)


def face_products(psi, W, mu: int, s: int):
    """U_mu(y)^dag (psi_up + s B_mu psi_dn)(y) on a slab of sites with the device functions of the
    backward hops (the faces a rank sends for its neighbour's ghost layers,
    :mod:`lattice.kernels.hopping`); same contract as
    :func:`lattice.kernels._numba_hopping.face_products`."""
    from lattice.kernels.hopping import face_operands
    shapes = face_operands(psi, W, cupy.result_type)
    if shapes is None:
        return None
    dtype, sites, full, bu = shapes
    n, B, Bu = math.prod(sites), math.prod(full), math.prod(bu)
    out = cupy.empty(full + (2, 3) + sites, dtype=dtype)
    if n and B:
        P = cupy.ascontiguousarray(cupy.broadcast_to(psi.astype(dtype, copy=False), full + (4, 3) + sites)).reshape(-1)
        Wc = cupy.ascontiguousarray(W.astype(dtype, copy=False)).reshape(-1)
        ub = cupy.ascontiguousarray(cupy.broadcast_to(cupy.arange(Bu, dtype=cupy.int64).reshape(bu), full)).reshape(-1)
        _face_kernel()(P, Wc, ub, n, int(mu), int(s), out.reshape(-1), size=B * n)
    return out


@functools.lru_cache(maxsize=None)
def _kernel():
    return cupy.ElementwiseKernel(
        "raw T P, raw T Wt, raw T Ws, raw int64 ub, int64 Bu, int32 L0, int32 L1, int32 L2, int32 L3, "
        "bool eo, int32 p, int32 sf, int32 region, int32 g0, int32 g1, int32 g2, int32 g3",
        "raw T O", _BODY, "gaugeflow_wilson_hop", preamble=_PREAMBLE)


def prepare(links, dtype):
    """The 4 SoA SU(3) link fields (*bu, 3, 3, *sites) stacked into one contiguous array
    (4, Bu, 9, V) of ``dtype``, flattened."""
    V = math.prod(links[0].shape[-4:])
    Bu = math.prod(links[0].shape[:-6])
    return cupy.ascontiguousarray(cupy.stack([cupy.asarray(w, dtype=dtype).reshape(Bu, 9, V) for w in links])).reshape(-1)


def wilson_hop(psi, Wt, Ws, dagger: bool = False, target: int | None = None, cache=None,
               row_parity: int = 0, ghosts=None, fill=None):
    """(up, dn) of H psi, same contract as :func:`lattice.kernels._numba_hopping.wilson_hop`
    (None for inputs it does not handle).

    ``ghosts`` / ``fill``: psi's block has ghost layers of widths ``ghosts`` (per axis, 0 or 1)
    that ``fill()`` completes (the halo exchange of :mod:`lattice.kernels.hopping`). The kernel is
    then launched twice on the stream: first on the core (sites none of whose neighbours lies in
    a ghost layer), then -- after ``fill()`` returns -- on the remaining non-ghost sites. The
    launches are asynchronous, so the core runs on the device while ``fill`` waits for the faces.
    Each site gets the same arithmetic as in one launch (bit for bit); output at ghost sites is
    undefined. Where psi is not used in place (broadcast, another dtype), ``fill()`` runs first."""
    from lattice.kernels.hopping import fast_operands, prepared_links
    if fill is not None and (ghosts is None or len(ghosts) != 4):
        raise ValueError(f"wilson_hop: a fill callback needs the ghost widths of the block's 4 axes, got {ghosts!r}")
    shapes = fast_operands(psi, Wt, Ws, cupy.result_type)
    if shapes is None:
        return None
    sites, dtype, bp, bu, full = shapes
    N = 3
    V = math.prod(sites)
    B = math.prod(full)
    out = cupy.empty(full + (4, N) + sites, dtype=dtype)
    in_place = bp == full and psi.dtype == dtype and psi.flags.c_contiguous
    if fill is not None and not (in_place and B and V):
        fill()
        fill = None
    if B and V:
        if bp != full:
            psi = cupy.broadcast_to(psi, full + (4, N) + sites)
        P = cupy.ascontiguousarray(psi.astype(dtype, copy=False)).reshape(-1)
        Bu = math.prod(bu)
        ub = cupy.ascontiguousarray(cupy.broadcast_to(cupy.arange(Bu, dtype=cupy.int64).reshape(bu), full)).reshape(-1)
        eo = target is not None
        wt = prepared_links("cupy", prepare, Wt, dtype, cache, "full" if target is None else int(target))
        ws = wt if Ws is Wt else prepared_links("cupy", prepare, Ws, dtype, cache, 1 - int(target))
        p = (int(target) + int(row_parity)) % 2 if eo else 0
        args = (P, wt, ws, ub, Bu, *sites, eo, p, 1 if dagger else -1)
        if fill is None:
            _kernel()(*args, 0, 0, 0, 0, 0, out.reshape(-1), size=B * V)
        else:
            gw = tuple(int(g) for g in ghosts)
            _kernel()(*args, 1, *gw, out.reshape(-1), size=B * V)     # the core, faces in flight
            fill()
            _kernel()(*args, 2, *gw, out.reshape(-1), size=B * V)     # the sites next to the ghosts
    return out[..., 0:2, :, :, :, :, :], out[..., 2:4, :, :, :, :, :]
