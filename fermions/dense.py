"""Dense operators, exact determinants and the exact Nf=2 force on small lattices.

Dense matrices are built by applying the operator to unit vectors, vectorised as batched
columns (``chunk`` columns at a time). Row/column index of a spinor entry: the flattened
``(sites, spin, colour)`` index of the field (C order), i.e. ((site * 4) + s) * N + c, with
sites in lexicographic order of the full lattice or of the packed half lattice.

Exact determinant (per batch element, float64)
-----------------------------------------------
    log det M^dag M = 2 log|det M| = 2 N V log(1 + mu~^2) + 2 log|det M^|

from det M = det M_ee det M^ (:mod:`fermions.twisted_mass`); only the (V/2 * 4N)-dimensional
Schur complement M^ is factorised. On lattices without an even-odd packing (an odd extent, or
L_0 = 2; :mod:`fermions.evenodd`) :func:`dense_log_det` factorises the full (V * 4N)-dimensional
M instead, 2 log|det M|, equally exact. The force, the Schur complement and the inverse blocks
need the packing (every extent even, L_0 >= 4, e.g. (4, 2, 2, 2)).

Exact force
-----------
With U_mu(x) -> exp(t X) U_mu(x), d/dt log det M^dag M = 2 Re tr(M^{-1} dM/dt)
= -2 kappa Re tr(M^{-1} dH/dt) = -2 kappa sum Re tr(X_mu(x) Omega_mu(x)), where
Omega = U B1 - B2 U^dag (:mod:`fermions.wilson`) with the nearest-neighbour blocks
G(y, x) = M^{-1}(y, x) (4N x 4N, index (spin, colour)):

    B1_mu(x)_{ji} = sum_{s,s'} (1 - gamma_mu)_{s s'} G(x + mu^, x)_{(s' j), (s i)},
    B2_mu(x)_{ji} = sum_{s,s'} (1 + gamma_mu)_{s s'} G(x, x + mu^)_{(s' j), (s i)}.

Hence grad log det M^dag M = kappa T[(Omega - Omega^dag)/2] (docs/design.md §4). The blocks
between neighbours (always of opposite parity) come from the even-odd inverse
M^{-1}_oo = M^{-1}, M^{-1}_eo = kappa A^{-1} H_eo M^{-1}, M^{-1}_oe = kappa M^{-1} H_oe A^{-1}.

Cost at V = 4^4, SU(3): M^ is 1536 x 1536 (complex128, 38 MB); see ``bench/bench_fermions.py``
for time and peak memory.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

from lattice.backend import namespace
from lattice.layout import Layout, infer_gauge_layout

from .gamma import projector
from .evenodd import EvenOddError, require_even_odd
from .twisted_mass import TwistedMassWilson
from .wilson import to_soa, omega_to_gauge, force_from_omega

__all__ = ["dense_matrix", "dense_M", "dense_schur", "dense_log_det", "dense_log_det_force", "LogDetForce",
           "dense_inverse_blocks", "log_det_ee", "ExactNf2Determinant"]

_DEFAULT_CHUNK = 384


def _require_single(layout):
    if layout.is_distributed:
        raise ValueError("dense fermion matrices are built on a single process; got a distributed layout "
                         f"{layout}. Gather the gauge field to one rank first.")


def dense_matrix(apply, field_shape, batch_shape=(), xp=None, dtype=None, chunk: int = _DEFAULT_CHUNK):
    """Dense matrix of a linear map on fields of shape ``field_shape`` (sites..., 4, N).

    ``apply`` maps ``(k, *[1]*len(batch_shape), *field_shape)`` to ``(k, *batch_shape, *out_shape)``
    (the batch axes broadcast, e.g. against a batch of gauge fields). Returns
    ``(*batch_shape, n_out, n_in)`` with column j = apply(e_j) flattened.
    """
    from lattice.backend import default_xp
    xp = default_xp() if xp is None else xp
    dtype = dtype or xp.complex128
    n = math.prod(field_shape)
    nb = len(batch_shape)
    cols = []
    for k0 in range(0, n, chunk):
        k = min(chunk, n - k0)
        E = xp.eye(k, n, k=k0, dtype=dtype)
        E = xp.reshape(E, (k,) + (1,) * nb + tuple(field_shape))
        Y = apply(E)
        Y = xp.broadcast_to(Y, (k,) + tuple(batch_shape) + tuple(Y.shape[1 + nb:]))
        Y = xp.reshape(Y, (k,) + tuple(batch_shape) + (-1,))
        cols.append(xp.permute_dims(Y, tuple(range(1, nb + 2)) + (0,)))
    return xp.concat(cols, axis=-1)


def _op(U, kappa, mu, layout, bc, check=True):
    layout = infer_gauge_layout(U, layout)
    _require_single(layout)
    return TwistedMassWilson(U, kappa, mu, layout=layout, bc=bc, check=check)


def _batch(op):
    return tuple(op.U.shape[: op.U.ndim - 7])


def _full_matrix(op, chunk):
    fs = tuple(op.layout.local_shape) + (4, op.N)
    return dense_matrix(op.apply, fs, _batch(op), op.xp, op.dtype, chunk)


def dense_M(U, kappa: float, mu: float, layout: Layout | None = None, bc="antiperiodic", chunk=_DEFAULT_CHUNK):
    """The full twisted-mass matrix M, shape (*batch, 4NV, 4NV) (any lattice, no even-odd packing)."""
    return _full_matrix(_op(U, kappa, mu, layout, bc), chunk)


def dense_schur(U, kappa: float, mu: float, layout: Layout | None = None, bc="antiperiodic",
                chunk=_DEFAULT_CHUNK, op=None):
    """The odd-site Schur complement M^, shape (*batch, 2NV, 2NV) (packed odd sites; needs the
    even-odd packing: every extent even, L_0 >= 4)."""
    op = op if op is not None else _op(U, kappa, mu, layout, bc)
    require_even_odd(op.layout, "dense_schur")
    fs = tuple(op.half_layout.local_shape) + (4, op.N)
    return dense_matrix(op.apply_schur, fs, _batch(op), op.xp, op.dtype, chunk)


def log_det_ee(op) -> float:
    """log det M_ee = N V log(1 + mu~^2) (real, U-independent)."""
    return op.N * op.layout.volume * math.log1p(op.mu_tilde ** 2)


def dense_log_det(U, kappa: float, mu: float, layout: Layout | None = None, bc="antiperiodic",
                  chunk=_DEFAULT_CHUNK):
    """log det(M^dag M) exactly (float64, per batch element), on any single-process lattice.

    Via det M = det M_ee det M^ (the Schur complement, half the dimension) where the even-odd
    packing exists (every extent even, L_0 >= 4); otherwise (an odd extent, L_0 = 2, e.g. the
    lattice (2, 2, 2, 2)) as 2 log|det M| of the full matrix.
    """
    op = _op(U, kappa, mu, layout, bc)
    xp = op.xp
    try:
        op.even_odd
    except EvenOddError:
        _, logabs = xp.linalg.slogdet(_full_matrix(op, chunk))
        return 2.0 * xp.astype(logabs, xp.float64)
    S = dense_schur(None, kappa, mu, chunk=chunk, op=op)
    _, logabs = xp.linalg.slogdet(S)
    return 2.0 * log_det_ee(op) + 2.0 * xp.astype(logabs, xp.float64)


def _apply_columns(apply, A, field_shape, nb, chunk):
    """Apply a field map to the columns of A (*batch, n_row, n_col) -> (*batch, n_out, n_col)."""
    xp = namespace(A)
    n_col = A.shape[-1]
    perm = (A.ndim - 1,) + tuple(range(A.ndim - 1))
    At = xp.permute_dims(A, perm)                        # (n_col, *batch, n_row)
    out = []
    for k0 in range(0, n_col, chunk):
        blk = At[k0:min(k0 + chunk, n_col), ...]
        k = blk.shape[0]
        Y = apply(xp.reshape(blk, (k,) + tuple(A.shape[:nb]) + tuple(field_shape)))
        Y = xp.reshape(Y, (k,) + tuple(A.shape[:nb]) + (-1,))
        out.append(xp.permute_dims(Y, tuple(range(1, nb + 2)) + (0,)))
    return xp.concat(out, axis=-1)


def dense_inverse_blocks(op, chunk=_DEFAULT_CHUNK):
    """(log|det M^|, {"oo", "eo", "oe"}: blocks of M^{-1}) for a :class:`TwistedMassWilson`.

    Rows/columns index packed half-lattice spinor entries; "eo" has even rows, odd columns.
    Needs the even-odd packing (every extent even, L_0 >= 4).
    """
    require_even_odd(op.layout, "dense_inverse_blocks")
    xp = op.xp
    nb = len(_batch(op))
    fs = tuple(op.half_layout.local_shape) + (4, op.N)
    S = dense_schur(None, op.kappa, op.mu, chunk=chunk, op=op)
    _, logabs = xp.linalg.slogdet(S)
    Sinv = xp.linalg.inv(S)
    del S
    k = op.kappa
    # M^{-1}_eo = kappa A^{-1} H_eo S^{-1}
    Meo = _apply_columns(lambda x: k * op.apply_ee_inv(op.hop_eo(x)), Sinv, fs, nb, chunk)
    # M^{-1}_oe = kappa S^{-1} H_oe A^{-1}
    D = dense_matrix(lambda x: k * op.hop_oe(op.apply_ee_inv(x)), fs, _batch(op), xp, op.dtype, chunk)
    Moe = Sinv @ D
    return xp.astype(logabs, xp.float64), {"oo": Sinv, "eo": Meo, "oe": Moe}


def _neighbour_blocks(Ginv, idx_row, idx_col, Vh, N):
    """G[(row site idx_row[x]), (col site idx_col[x])] for each packed x: (*batch, Vh, 4N, 4N)."""
    xp = namespace(Ginv)
    n4 = 4 * N
    lead = tuple(Ginv.shape[:-2])
    nb = len(lead)
    G = xp.reshape(Ginv, lead + (Vh, n4, Vh, n4))
    G = xp.permute_dims(G, tuple(range(nb)) + (nb, nb + 2, nb + 1, nb + 3))
    G = xp.reshape(G, lead + (Vh * Vh, n4, n4))
    flat = xp.reshape(idx_row * Vh + idx_col, (-1,))
    return xp.take(G, flat, axis=nb)


def _spin_contract(G, P, N):
    """B_{ji} = sum_{s,s'} P_{s s'} G_{(s' j),(s i)} for G (*, Vh, 4N, 4N) -> (*, Vh, N, N)."""
    xp = namespace(G)
    lead = tuple(G.shape[:-2])
    nl = len(lead)
    G = xp.reshape(G, lead + (4, N, 4, N))                      # [s', j, s, i]
    G = xp.permute_dims(G, tuple(range(nl)) + (nl + 1, nl + 3, nl, nl + 2))   # [j, i, s', s]
    Pt = xp.reshape(xp.matrix_transpose(P), (4, 4))             # Pt[s', s] = P[s, s']
    return xp.sum(G * Pt, axis=(-2, -1))


class LogDetForce(NamedTuple):
    """Result of :func:`dense_log_det_force` (a named tuple: ``log_det, grad = ...`` unpacks).

    log_det : float64 (*batch), log det M^dag M. grad : su(N) field of U's shape,
    grad log det M^dag M (+, not the HMC force: that is ``-grad`` for S_F = -log det M^dag M).
    """
    log_det: Any
    grad: Any


def dense_log_det_force(U, kappa: float, mu: float, layout: Layout | None = None, bc="antiperiodic",
                        chunk=_DEFAULT_CHUNK) -> LogDetForce:
    """(log det M^dag M, grad log det M^dag M) exactly, for small lattices with the even-odd
    packing (every extent even, L_0 >= 4: the smallest is (4, 2, 2, 2)).

    Returns :class:`LogDetForce` ``(log_det, grad)``: the float64 log-determinant per batch
    element and the su(N) gradient field of shape U (docs/design.md §4:
    d/dt log det M^dag M(e^{tX}U) = sum <grad, X>). For the Nf = 2 effective action
    S_F = -log det M^dag M the HMC force is -grad.
    """
    op = _op(U, kappa, mu, layout, bc)
    require_even_odd(op.layout, "dense_log_det_force")
    xp = op.xp
    N = op.N
    eo = op.even_odd
    half = eo.half
    Vh = half.volume
    logabs, inv = dense_inverse_blocks(op, chunk)
    logdet = 2.0 * log_det_ee(op) + 2.0 * logabs
    blocks = {(1, 1): inv["oo"], (0, 1): inv["eo"], (1, 0): inv["oe"]}
    idx = eo.site_index(xp)
    B1 = [[None, None] for _ in range(4)]
    B2 = [[None, None] for _ in range(4)]
    lead = tuple(op.U.shape[: op.U.ndim - 7])
    for mu_ in range(4):
        Pm = projector(mu_, -1, xp, op.dtype)
        Pp = projector(mu_, +1, xp, op.dtype)
        for p in (0, 1):
            q = 1 - p
            y = eo.fetch(idx, mu_, +1, target=p, inner=0)     # packed index (parity q) of x + mu
            G_yx = _neighbour_blocks(blocks[(q, p)], y, idx, Vh, N)
            G_xy = _neighbour_blocks(blocks[(p, q)], idx, y, Vh, N)
            shp = lead + tuple(half.local_shape) + (N, N)
            B1[mu_][p] = xp.reshape(_spin_contract(G_yx, Pm, N), shp)
            B2[mu_][p] = xp.reshape(_spin_contract(G_xy, Pp, N), shp)
    B1f = [to_soa(eo.unpack(B1[m][0], B1[m][1], inner=2)) for m in range(4)]
    B2f = [to_soa(eo.unpack(B2[m][0], B2[m][1], inner=2)) for m in range(4)]
    Om = omega_to_gauge(op.links.omega_from_blocks(B1f, B2f))
    return LogDetForce(logdet, (-2.0 * kappa) * force_from_omega(Om))


def dense_force(U, kappa: float, mu: float, layout: Layout | None = None, bc="antiperiodic",
                chunk=_DEFAULT_CHUNK):
    """Deprecated alias of :func:`dense_log_det_force` (emits a ``DeprecationWarning``).

    Despite its name it returns ``(log det M^dag M, +grad log det M^dag M)``, and the gradient
    is *minus* the force of the Nf = 2 effective action S_F = -log det M^dag M. Use
    :func:`dense_log_det_force` for the same result, or ``ExactNf2Determinant(kappa,
    mu).force(U)`` for the force grad S_F.
    """
    warnings.warn("fermions.dense_force is deprecated: it returns (log det M^dag M, +grad log det M^dag M), "
                  "which is minus the force of S_F = -log det M^dag M. Use fermions.dense_log_det_force "
                  "(same result) or fermions.ExactNf2Determinant(kappa, mu).force(U) (the force).",
                  DeprecationWarning, stacklevel=2)
    return dense_log_det_force(U, kappa, mu, layout=layout, bc=bc, chunk=chunk)


class ExactNf2Determinant:
    """The Nf = 2 twisted-mass determinant as a density term, exactly (dense, small lattices).

    p_F(U) = det M^dag M[U]: ``log_prob(U)`` = log det M^dag M (:func:`dense_log_det`, float64
    per batch element) and ``force(U)`` = grad(-log p_F) = -grad log det M^dag M
    (:func:`dense_log_det_force`), the su(N) force of the effective action
    S_F = -log det M^dag M. This is the interface of the target terms of :mod:`flows.targets`
    (``log_prob``, ``force``, ``describe``), so a flow target or an ensemble base adds it to a
    gauge action, e.g. ``flows.Target([flows.GaugeTarget(S), ExactNf2Determinant(kappa, mu)])``
    (``flows`` does not import ``fermions``; the caller joins them). Used for training on the
    paper's 4^4 volume (``gaugeflow train`` with ``train.exact_fermions``).
    """

    def __init__(self, kappa: float, mu: float, bc="antiperiodic"):
        self.kappa, self.mu, self.bc = float(kappa), float(mu), bc

    def log_prob(self, U, layout: Layout | None = None):
        return dense_log_det(U, self.kappa, self.mu, layout=layout, bc=self.bc)

    def force(self, U, layout: Layout | None = None):
        return -dense_log_det_force(U, self.kappa, self.mu, layout=layout, bc=self.bc)[1]

    def describe(self) -> dict:
        return {"type": "exact_nf2_determinant", "kappa": self.kappa, "mu": self.mu, "bc": str(self.bc)}
