"""Numba fast path of the Wilson hopping term (:mod:`lattice.kernels.hopping`) for NumPy arrays.

One compiled pass over the lattice, chunk by chunk: a *chunk* is ``nb`` consecutive planes
(fixed x_0, consecutive x_1; a plane is the L_2 L_3 sites of fixed (x_0, x_1)), contiguous in
the spin/colour-major layout, at most ``_CHUNK_SITES`` sites so that its buffers stay in L2.
For each of the 8 hops the kernel

1. projects the source sites of psi onto the half spinor h = psi_up + s B_mu psi_dn (the
   blocks B_mu of the tmLQCD chiral basis written out: multiplications by +-1 and +-i are sign
   flips and re/im swaps), splitting real and imaginary parts into a chunk buffer,
2. multiplies h by the links: U_mu(x), or U_mu(x - mu^)^dag by index swap and conjugation (no
   daggered copy of the links is read),
3. adds the upper rows and the reconstructed lower rows s B_mu^dag (U h) into the output.

Chunk buffers hold real and imaginary parts in separate planes, and the links are read from a
prepared copy in the same split form (:func:`prepare`, kept by the caller with the links), so
that the site loops vectorise (the complex interleaving of psi is undone in step 1 and redone
when the output is stored). Index arithmetic is unsigned (no negative-index wraparound in the
loops), and every loop runs over a whole chunk or a long segment of it: LLVM vectorises only
loops long enough to pay for its runtime alias checks.

Neighbours come from index arithmetic with periodic wrap (the boundary phases are already in
the links): direction 0 reads the neighbour slab x_0 +- 1, direction 1 the neighbour planes in
one or two contiguous segments; directions 2 and 3 stay inside each plane: they read the chunk
buffers shifted by L_3 or 1 sites, with the periodic wrap restored by copying the first (last)
row or site of each block into the position the shifted read takes for the last (first) one
(:func:`_rotate`). On packed even-odd half lattices (:mod:`fermions.evenodd`:
x_0 = 2h + (p XOR r), r = (x_1 + x_2 + x_3) mod 2) the direction-0 neighbour of a parity-p site
is packed site h + (p XOR r) (forward) or h - 1 + (p XOR r) (backward): the kernel reads both
candidate slabs and selects site by site.

SU(3) only (other N use the reference); complex64 stays single precision; single-threaded
like every kernel here.
"""
from __future__ import annotations

import functools
import math
import threading

import numba
from ..backend import np  # NumPy itself: lattice.backend holds the one import

from ._numba import _FLAGS

_U = np.uint64
_HELP = dict(nogil=True, cache=True, boundscheck=False, fastmath=_FLAGS["fastmath"])


# ---------------------------------------------------------------------------- plane pieces
# Flat float arrays, all offsets unsigned:
#   psi / output  P[((b*12 + k)*V + i)*2 + (0 re | 1 im)],   k = 3*spin + colour, i the site;
#   links         W[(((mu*Bu + u)*9 + e)*2 + (0 | 1))*V + i], e = 3*a + c (entry (a, c));
#   half spinors h, products g  [(k*2 + (0 | 1))*M + j],      k = 3*row + colour, j in [0, M);
#   accumulator   acc[(k*2 + (0 | 1))*Q + j],                 k = 3*spin + colour, j in [0, Q).
# Q = L2*L3 sites of a plane (x0, x1); M = Q + 2 (one padding element at each end).

@numba.jit(**_HELP)
def _project(h, ho, P, pb, n, V, M, mu, s):
    """h[., ho + j] = (psi_up + s B_mu psi_dn)(P at float offset pb, site j), j < n."""
    two, one = _U(2), _U(1)
    V2 = two * V
    for c in range(3):
        cu = _U(c)
        u0 = pb + cu * V2
        u1 = pb + (cu + _U(3)) * V2
        d0 = pb + (cu + _U(6)) * V2
        d1 = pb + (cu + _U(9)) * V2
        h0 = two * cu * M + ho
        h1 = two * (cu + _U(3)) * M + ho
        if mu == 0:       # B = [[0, -i], [-i, 0]]: (B d)_0 = -i d_1, (B d)_1 = -i d_0
            for t in range(n):
                tt = two * t
                h[h0 + t] = P[u0 + tt] + s * P[d1 + tt + one]
                h[h0 + M + t] = P[u0 + tt + one] - s * P[d1 + tt]
                h[h1 + t] = P[u1 + tt] + s * P[d0 + tt + one]
                h[h1 + M + t] = P[u1 + tt + one] - s * P[d0 + tt]
        elif mu == 1:     # B = [[0, -1], [1, 0]]: -d_1, d_0
            for t in range(n):
                tt = two * t
                h[h0 + t] = P[u0 + tt] - s * P[d1 + tt]
                h[h0 + M + t] = P[u0 + tt + one] - s * P[d1 + tt + one]
                h[h1 + t] = P[u1 + tt] + s * P[d0 + tt]
                h[h1 + M + t] = P[u1 + tt + one] + s * P[d0 + tt + one]
        elif mu == 2:     # B = diag(-i, i): -i d_0, i d_1
            for t in range(n):
                tt = two * t
                h[h0 + t] = P[u0 + tt] + s * P[d0 + tt + one]
                h[h0 + M + t] = P[u0 + tt + one] - s * P[d0 + tt]
                h[h1 + t] = P[u1 + tt] - s * P[d1 + tt + one]
                h[h1 + M + t] = P[u1 + tt + one] + s * P[d1 + tt]
        else:             # B = -1
            for t in range(n):
                tt = two * t
                h[h0 + t] = P[u0 + tt] - s * P[d0 + tt]
                h[h0 + M + t] = P[u0 + tt + one] - s * P[d0 + tt + one]
                h[h1 + t] = P[u1 + tt] - s * P[d1 + tt]
                h[h1 + M + t] = P[u1 + tt + one] - s * P[d1 + tt + one]


@numba.jit(**_HELP)
def _blend(h, g, o, sel, so, n, M):
    """h[., o + j] = g[., o + j] where sel[so + j] != 0 (the per-site choice between two
    projected candidates of the packed direction-0 neighbour), j < n."""
    for k in range(12):
        base = _U(k) * M + o
        for t in range(n):
            x = h[base + t]
            y = g[base + t]
            h[base + t] = y if sel[so + t] != 0 else x


@numba.jit(**_HELP)
def _mul(g, go, W, wa, wb, sel, so, n, V, dag, h, ho, M, one_r):
    """g[., go + j] = op(W)(site j) h[., ho + j] for both spin rows, j < n, op = dagger if ``dag``;
    the link of site j is at offset wb where sel[so + j] != 0, else wa (wa = wb: one row)."""
    two = _U(2)
    sg = -one_r if dag else one_r          # conjugation of the imaginary parts
    for a in range(3):
        if dag:                            # (W^dag)_{ac} = conj(W_{ca})
            e0, e1, e2 = a, 3 + a, 6 + a
        else:
            e0, e1, e2 = 3 * a, 3 * a + 1, 3 * a + 2
        x0 = two * _U(e0) * V
        x1 = two * _U(e1) * V
        x2 = two * _U(e2) * V
        ga = two * _U(a) * M + go
        gb = two * _U(3 + a) * M + go
        for t in range(n):
            odd = sel[so + t] != 0
            # both candidate links are loaded, then selected (vectorises)
            ya = (W[wa + x0 + t], W[wa + x0 + V + t], W[wa + x1 + t], W[wa + x1 + V + t],
                  W[wa + x2 + t], W[wa + x2 + V + t])
            yb = (W[wb + x0 + t], W[wb + x0 + V + t], W[wb + x1 + t], W[wb + x1 + V + t],
                  W[wb + x2 + t], W[wb + x2 + V + t])
            w0r = yb[0] if odd else ya[0]
            w0i = sg * (yb[1] if odd else ya[1])
            w1r = yb[2] if odd else ya[2]
            w1i = sg * (yb[3] if odd else ya[3])
            w2r = yb[4] if odd else ya[4]
            w2i = sg * (yb[5] if odd else ya[5])
            j = ho + t
            a0r, a0i = h[j], h[M + j]
            a1r, a1i = h[_U(2) * M + j], h[_U(3) * M + j]
            a2r, a2i = h[_U(4) * M + j], h[_U(5) * M + j]
            b0r, b0i = h[_U(6) * M + j], h[_U(7) * M + j]
            b1r, b1i = h[_U(8) * M + j], h[_U(9) * M + j]
            b2r, b2i = h[_U(10) * M + j], h[_U(11) * M + j]
            g[ga + t] = w0r * a0r - w0i * a0i + w1r * a1r - w1i * a1i + w2r * a2r - w2i * a2i
            g[ga + M + t] = w0r * a0i + w0i * a0r + w1r * a1i + w1i * a1r + w2r * a2i + w2i * a2r
            g[gb + t] = w0r * b0r - w0i * b0i + w1r * b1r - w1i * b1i + w2r * b2r - w2i * b2i
            g[gb + M + t] = w0r * b0i + w0i * b0r + w1r * b1i + w1i * b1r + w2r * b2i + w2i * b2r


@numba.jit(**_HELP)
def _mul_row(g, go, W, w, n, V, dag, h, ho, M, one_r):
    """:func:`_mul` with one link row (no select)."""
    two = _U(2)
    sg = -one_r if dag else one_r
    for a in range(3):
        if dag:
            e0, e1, e2 = a, 3 + a, 6 + a
        else:
            e0, e1, e2 = 3 * a, 3 * a + 1, 3 * a + 2
        x0 = w + two * _U(e0) * V
        x1 = w + two * _U(e1) * V
        x2 = w + two * _U(e2) * V
        ga = two * _U(a) * M + go
        gb = two * _U(3 + a) * M + go
        for t in range(n):
            w0r = W[x0 + t]
            w0i = sg * W[x0 + V + t]
            w1r = W[x1 + t]
            w1i = sg * W[x1 + V + t]
            w2r = W[x2 + t]
            w2i = sg * W[x2 + V + t]
            j = ho + t
            a0r, a0i = h[j], h[M + j]
            a1r, a1i = h[_U(2) * M + j], h[_U(3) * M + j]
            a2r, a2i = h[_U(4) * M + j], h[_U(5) * M + j]
            b0r, b0i = h[_U(6) * M + j], h[_U(7) * M + j]
            b1r, b1i = h[_U(8) * M + j], h[_U(9) * M + j]
            b2r, b2i = h[_U(10) * M + j], h[_U(11) * M + j]
            g[ga + t] = w0r * a0r - w0i * a0i + w1r * a1r - w1i * a1i + w2r * a2r - w2i * a2i
            g[ga + M + t] = w0r * a0i + w0i * a0r + w1r * a1i + w1i * a1r + w2r * a2i + w2i * a2r
            g[gb + t] = w0r * b0r - w0i * b0i + w1r * b1r - w1i * b1i + w2r * b2r - w2i * b2i
            g[gb + M + t] = w0r * b0i + w0i * b0r + w1r * b1i + w1i * b1r + w2r * b2i + w2i * b2r


@numba.jit(**_HELP)
def _accumulate(acc, ao, g, go, n, Q, M, mu, s):
    """acc[upper, ao + j] += g[., go + j], acc[lower, ao + j] += s B_mu^dag g[., go + j], j < n."""
    two = _U(2)
    for c in range(3):
        cu = _U(c)
        g0 = two * cu * M + go
        g1 = two * (cu + _U(3)) * M + go
        a0 = two * cu * Q + ao
        a1 = two * (cu + _U(3)) * Q + ao
        a2 = two * (cu + _U(6)) * Q + ao
        a3 = two * (cu + _U(9)) * Q + ao
        for t in range(n):
            acc[a0 + t] += g[g0 + t]
            acc[a0 + Q + t] += g[g0 + M + t]
            acc[a1 + t] += g[g1 + t]
            acc[a1 + Q + t] += g[g1 + M + t]
        if mu == 0:       # B^dag = [[0, i], [i, 0]]: i g_1, i g_0
            for t in range(n):
                acc[a2 + t] -= s * g[g1 + M + t]
                acc[a2 + Q + t] += s * g[g1 + t]
                acc[a3 + t] -= s * g[g0 + M + t]
                acc[a3 + Q + t] += s * g[g0 + t]
        elif mu == 1:     # B^dag = [[0, 1], [-1, 0]]: g_1, -g_0
            for t in range(n):
                acc[a2 + t] += s * g[g1 + t]
                acc[a2 + Q + t] += s * g[g1 + M + t]
                acc[a3 + t] -= s * g[g0 + t]
                acc[a3 + Q + t] -= s * g[g0 + M + t]
        elif mu == 2:     # B^dag = diag(i, -i): i g_0, -i g_1
            for t in range(n):
                acc[a2 + t] -= s * g[g0 + M + t]
                acc[a2 + Q + t] += s * g[g0 + t]
                acc[a3 + t] += s * g[g1 + M + t]
                acc[a3 + Q + t] -= s * g[g1 + t]
        else:             # B^dag = -1
            for t in range(n):
                acc[a2 + t] -= s * g[g0 + t]
                acc[a2 + Q + t] -= s * g[g0 + M + t]
                acc[a3 + t] -= s * g[g1 + t]
                acc[a3 + Q + t] -= s * g[g1 + M + t]


@numba.jit(**_HELP)
def _rotate(X, M, o, n_blocks, period, width, forward):
    """Periodic wrap of a shifted read on chunk buffers (12 planes of M floats, site j at o + j;
    the chunk is ``n_blocks`` blocks of ``period`` sites, the shift is +-``width`` sites with
    wrap inside each block: direction 3 has period L3 and width 1, direction 2 period
    L2*L3 and width L3).

    forward (a read at j + width): the ``width`` positions after block k, read for the last
    sites of block k, := the first sites of block k (blocks in decreasing order);
    backward (a read at j - width): the ``width`` positions before block k := the last sites
    of block k (increasing order). Each step reads positions that no earlier step wrote; the
    buffers have ``width`` spare positions before and after the chunk."""
    w = _U(width)
    for k in range(12):
        base = _U(k) * M + o
        if forward:
            for blk in range(n_blocks - 1, -1, -1):
                start = base + _U(blk * period)
                for t in range(w):
                    X[start + _U(period) + t] = X[start + t]
        else:
            for blk in range(n_blocks):
                start = base + _U(blk * period)
                for t in range(w):
                    X[start - w + t] = X[start + _U(period) - w + t]


@numba.jit(**_HELP)
def _store(O, ob, acc, Q, V):
    """Interleave the accumulator into the output plane at float offset ob."""
    two, one = _U(2), _U(1)
    for k in range(12):
        ku = _U(k)
        o = ob + ku * two * V
        a = ku * two * Q
        for t in range(Q):
            O[o + two * t] = acc[a + t]
            O[o + two * t + one] = acc[a + Q + t]


@numba.jit(**_FLAGS)
def _kernel(P, Wt, Ws, ub, Bu, L0, L1, L2, L3, nb, eo, p, sel, sf, one_r, O, h, g, acc):
    """H psi (or its adjoint, sf = +1) chunk by chunk (``nb`` consecutive planes of fixed x0);
    see the module docstring."""
    Qi = L2 * L3                       # sites per plane (fixed x0, x1)
    Si = nb * Qi                       # sites per chunk
    Ti = L1 * Qi                       # sites per slab (fixed x0)
    B = P.shape[0] // (24 * L0 * Ti)
    V = _U(L0 * Ti)
    S = _U(Si)
    M = S + _U(2 * Qi)                 # chunk buffers: Q spare sites before and after the chunk
    o = _U(Qi)                         # buffer position of the first site of the chunk
    two, zero = _U(2), _U(0)
    sb = -sf
    for b in range(B):
        u = ub[b]
        pb = _U(b * 12) * two * V      # float offset of (b, k = 0, site 0) in P / O
        for x0 in range(L0):
            s0 = x0 * Ti
            sp = (x0 + 1 if x0 < L0 - 1 else 0) * Ti
            sm = (x0 - 1 if x0 > 0 else L0 - 1) * Ti
            for c in range(0, L1, nb):
                ch = s0 + c * Qi                        # first site of the chunk
                for k in range(24 * Si):
                    acc[k] = 0
                here = pb + two * _U(ch)
                # ---- direction 0: the neighbour slabs
                w0 = _U(u * 18) * V
                if eo:
                    # packed half lattice: site j has x_0 + 1 in slab sp where sel[j] != 0
                    # (p XOR r = 1), else in this slab; x_0 - 1 in this slab where sel[j] != 0,
                    # else in slab sm
                    so = _U(((p + c) & 1) * Si)
                    _project(h, o, P, here, S, V, M, 0, sf)
                    _project(g, o, P, pb + two * _U(sp + c * Qi), S, V, M, 0, sf)
                    _blend(h, g, o, sel, so, S, M)
                    _mul_row(g, o, Wt, w0 + _U(ch), S, V, False, h, o, M, one_r)
                    _accumulate(acc, zero, g, o, S, S, M, 0, sf)
                    _project(h, o, P, pb + two * _U(sm + c * Qi), S, V, M, 0, sb)
                    _project(g, o, P, here, S, V, M, 0, sb)
                    _blend(h, g, o, sel, so, S, M)
                    _mul(g, o, Ws, w0 + _U(sm + c * Qi), w0 + _U(ch), sel, so, S, V, True, h, o, M, one_r)
                    _accumulate(acc, zero, g, o, S, S, M, 0, sb)
                else:
                    _project(h, o, P, pb + two * _U(sp + c * Qi), S, V, M, 0, sf)
                    _mul_row(g, o, Wt, w0 + _U(ch), S, V, False, h, o, M, one_r)
                    _accumulate(acc, zero, g, o, S, S, M, 0, sf)
                    _project(h, o, P, pb + two * _U(sm + c * Qi), S, V, M, 0, sb)
                    _mul_row(g, o, Ws, w0 + _U(sm + c * Qi), S, V, True, h, o, M, one_r)
                    _accumulate(acc, zero, g, o, S, S, M, 0, sb)
                # ---- direction 1: planes x1 +- 1 of this slab, in one or two contiguous segments
                w1 = _U((Bu + u) * 18) * V
                if c + nb < L1:                          # forward: all from x1 + 1
                    _project(h, o, P, here + two * _U(Qi), S, V, M, 1, sf)
                else:                                    # the last plane from x1 = 0
                    _project(h, o, P, here + two * _U(Qi), S - _U(Qi), V, M, 1, sf)
                    _project(h, o + S - _U(Qi), P, pb + two * _U(s0), _U(Qi), V, M, 1, sf)
                _mul_row(g, o, Wt, w1 + _U(ch), S, V, False, h, o, M, one_r)
                _accumulate(acc, zero, g, o, S, S, M, 1, sf)
                if c > 0:                                # backward: all from x1 - 1
                    _project(h, o, P, here - two * _U(Qi), S, V, M, 1, sb)
                    _mul_row(g, o, Ws, w1 + _U(ch - Qi), S, V, True, h, o, M, one_r)
                else:                                    # the first plane from x1 = L1 - 1
                    last = s0 + (L1 - 1) * Qi
                    _project(h, o, P, pb + two * _U(last), _U(Qi), V, M, 1, sb)
                    _mul_row(g, o, Ws, w1 + _U(last), _U(Qi), V, True, h, o, M, one_r)
                    if nb > 1:
                        _project(h, o + _U(Qi), P, here, S - _U(Qi), V, M, 1, sb)
                        _mul_row(g, o + _U(Qi), Ws, w1 + _U(ch), S - _U(Qi), V, True, h, o + _U(Qi), M, one_r)
                _accumulate(acc, zero, g, o, S, S, M, 1, sb)
                # ---- directions 2 and 3 stay inside each plane: shifted reads of the chunk buffers
                # with the periodic wrap restored by _rotate; the backward hops multiply at the
                # source sites and accumulate shifted
                w2 = _U((2 * Bu + u) * 18) * V + _U(ch)
                w3 = _U((3 * Bu + u) * 18) * V + _U(ch)
                _project(h, o, P, here, S, V, M, 2, sf)
                _rotate(h, M, o, nb, Qi, L3, True)
                _mul_row(g, o, Wt, w2, S, V, False, h, o + _U(L3), M, one_r)
                _accumulate(acc, zero, g, o, S, S, M, 2, sf)
                _project(h, o, P, here, S, V, M, 2, sb)
                _mul_row(g, o, Ws, w2, S, V, True, h, o, M, one_r)
                _rotate(g, M, o, nb, Qi, L3, False)
                _accumulate(acc, zero, g, o - _U(L3), S, S, M, 2, sb)
                _project(h, o, P, here, S, V, M, 3, sf)
                _rotate(h, M, o, nb * L2, L3, 1, True)
                _mul_row(g, o, Wt, w3, S, V, False, h, o + _U(1), M, one_r)
                _accumulate(acc, zero, g, o, S, S, M, 3, sf)
                _project(h, o, P, here, S, V, M, 3, sb)
                _mul_row(g, o, Ws, w3, S, V, True, h, o, M, one_r)
                _rotate(g, M, o, nb * L2, L3, 1, False)
                _accumulate(acc, zero, g, o - _U(1), S, S, M, 3, sb)
                _store(O, here, acc, S, V)


@numba.jit(**_FLAGS)
def _face_kernel(P, W, ub, n, mu, s, one_r, h, g, G):
    """G = U^dag (psi_up + s B_mu psi_dn) on n sites with the helpers of :func:`_kernel` (the same
    arithmetic as its backward hops). P (B, 12, n) interleaved, W split (Bu, 9, 2, n), G (B, 6, n)
    interleaved."""
    nu = _U(n)
    B = P.shape[0] // (24 * n)
    two, one = _U(2), _U(1)
    for b in range(B):
        _project(h, _U(0), P, _U(b * 24 * n), nu, nu, nu, mu, s)
        _mul_row(g, _U(0), W, _U(ub[b] * 18 * n), nu, nu, True, h, _U(0), nu, one_r)
        for k in range(6):
            o = _U((b * 6 + k) * 2 * n)
            a = _U(2 * k * n)
            for t in range(nu):
                G[o + two * t] = g[a + t]
                G[o + two * t + one] = g[a + nu + t]


def face_products(psi, W, mu: int, s: int):
    """U_mu(y)^dag (psi_up + s B_mu psi_dn)(y) on a slab of sites, computed exactly as the backward
    hops of :func:`wilson_hop` compute it (the faces a rank sends for the ghost layers of its
    neighbour, :mod:`lattice.kernels.hopping`). psi (*bp, 4, 3, *slab), W (*bu, 3, 3, *slab);
    returns (*batch, 2, 3, *slab), or None where :func:`wilson_hop` would decline."""
    from .hopping import face_operands
    shapes = face_operands(psi, W, np.result_type)
    if shapes is None:
        return None
    dtype, sites, full, bu = shapes
    n, B, Bu = math.prod(sites), math.prod(full), math.prod(bu)
    out = np.empty(full + (2, 3) + sites, dtype=dtype)
    if n and B:
        P = np.ascontiguousarray(np.broadcast_to(psi, full + (4, 3) + sites), dtype=dtype).reshape(-1)
        P = P.view(np.dtype(dtype).type(0).real.dtype)
        Wc = np.asarray(W, dtype=dtype).reshape(Bu, 9, n)
        Wf = np.empty((Bu, 9, 2, n), dtype=P.dtype)                # the split form of prepare()
        Wf[:, :, 0] = Wc.real
        Wf[:, :, 1] = Wc.imag
        Wf = Wf.reshape(-1)
        ub = np.ascontiguousarray(np.broadcast_to(np.arange(Bu, dtype=np.int64).reshape(bu), full).reshape(-1))
        rt = P.dtype.type
        h = np.empty(12 * n, dtype=P.dtype)
        g = np.empty(12 * n, dtype=P.dtype)
        _face_kernel(P, Wf, ub, n, int(mu), rt(s), rt(1), h, g, out.reshape(-1).view(P.dtype))
    return out


# ---------------------------------------------------------------------------- entry points
def prepare(links, dtype):
    """Split copy of 4 SoA SU(3) link fields (*bu, 3, 3, *sites): float array
    (4, Bu, 9, 2, V) (real and imaginary planes), flattened, the form :func:`wilson_hop` reads."""
    rdt = np.dtype(dtype).type(0).real.dtype
    sites = tuple(links[0].shape[-4:])
    V = math.prod(sites)
    bu = tuple(links[0].shape[:-6])
    Bu = math.prod(bu)
    out = np.empty((4, Bu, 9, 2, V), dtype=rdt)
    for mu, w in enumerate(links):
        w = np.asarray(w).reshape(Bu, 9, V)
        out[mu, :, :, 0] = w.real
        out[mu, :, :, 1] = w.imag
    return out.reshape(-1)


_CHUNK_SITES = 1024     # sites per chunk at most (the chunk buffers then stay in L2)


def _planes_per_chunk(L1, Q):
    """The largest divisor nb of L1 with nb * Q <= _CHUNK_SITES (at least 1)."""
    return max([d for d in range(1, L1 + 1) if L1 % d == 0 and d * Q <= _CHUNK_SITES] or [1])


@functools.lru_cache(maxsize=16)
def _select_mask(nb, L2, L3):
    """sel[q*S + x1'*L2*L3 + x2*L3 + x3] = (q + x1' + x2 + x3) mod 2 for a chunk of nb planes
    (x1' = x1 - first x1 of the chunk, q = (p + first x1) mod 2): the sites of a packed chunk
    whose direction-0 neighbours have p XOR r = 1 (module docstring)."""
    x1, x2, x3 = np.meshgrid(np.arange(nb), np.arange(L2), np.arange(L3), indexing="ij")
    m = np.stack([(x1 + x2 + x3) % 2, (x1 + x2 + x3 + 1) % 2]).astype(np.uint8).reshape(-1)
    m.flags.writeable = False
    return m


_SCRATCH = threading.local()


def _scratch(rdt, nb, Q):
    """Chunk buffers (h, g, acc), kept per thread between calls (allocating and first-touching
    them on every call was a measurable part of a call at 8^3 x 16)."""
    key = (np.dtype(rdt).str, nb, Q)
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None or bufs[0] != key:
        n = 12 * (nb + 2) * Q
        bufs = _SCRATCH.bufs = (key, np.empty(n, dtype=rdt), np.empty(n, dtype=rdt), np.empty(24 * nb * Q, dtype=rdt))
    return bufs[1:]


def wilson_hop(psi, Wt, Ws, dagger: bool = False, target: int | None = None, cache=None,
               row_parity: int = 0, ghosts=None, fill=None):
    """(up, dn) of H psi (module docstring). psi (*bp, 4, 3, *sites); Wt[mu] / Ws[mu] the links
    at the target / source sites (the same for the full lattice), (*bu, 3, 3, *sites).
    ``target``: the parity of the output sites of a packed half lattice (None: full lattice).
    ``cache``: a dict kept with the links, for their prepared (split) form.
    ``row_parity``: (x_1 + x_2 + x_3) mod 2 of the block's first site (nonzero for a block with
    ghost layers of a distributed half lattice, :mod:`lattice.kernels.hopping`).
    ``ghosts`` / ``fill``: psi's block has ghost layers (widths ``ghosts``) that ``fill()``
    completes; this kernel is synchronous and works chunk by chunk over whole planes, so it
    calls ``fill()`` first and then runs once (the CuPy kernel overlaps the two).
    Returns None for inputs it does not handle (the caller uses the reference)."""
    from .hopping import fast_operands, prepared_links
    if fill is not None:
        fill()
    shapes = fast_operands(psi, Wt, Ws, np.result_type)
    if shapes is None:
        return None
    sites, dtype, bp, bu, full = shapes
    N = 3
    V = math.prod(sites)
    B = math.prod(full)
    out = np.empty(full + (4, N) + sites, dtype=dtype)
    if B and V:
        if bp != full:
            psi = np.broadcast_to(psi, full + (4, N) + sites)
        P = np.ascontiguousarray(psi, dtype=dtype).reshape(-1).view(np.dtype(dtype).type(0).real.dtype)
        Bu = math.prod(bu)
        if Bu == 1:
            ub = np.zeros(B, dtype=np.int64)
        else:
            ub = np.ascontiguousarray(np.broadcast_to(np.arange(Bu, dtype=np.int64).reshape(bu), full).reshape(-1))
        eo = target is not None
        wt = prepared_links("numba", prepare, Wt, dtype, cache,
                            "full" if target is None else int(target))   # key: parity of the sites
        ws = wt if Ws is Wt else prepared_links("numba", prepare, Ws, dtype, cache, 1 - int(target))
        Q = sites[2] * sites[3]
        nb = _planes_per_chunk(sites[1], Q)
        rt = P.dtype.type
        h, g, acc = _scratch(P.dtype, nb, Q)
        p = (int(target) + int(row_parity)) % 2 if eo else 0
        _kernel(P, wt, ws, ub, Bu, *sites, nb, eo, p, _select_mask(nb, sites[2], sites[3]),
                rt(1 if dagger else -1), rt(1), out.reshape(-1).view(P.dtype), h, g, acc)
    return out[..., 0:2, :, :, :, :, :], out[..., 2:4, :, :, :, :, :]
