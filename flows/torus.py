"""Canonical-cell maps of the eigen-angles of SU(N) (the maximal torus modulo the Weyl group).

A spectral map (:mod:`flows.spectral`) acts on a matrix W = V diag(e^{i theta}) V^dag through
its eigen-angles. To be well defined it must be permutation-equivariant in the angles, keep
sum theta = 0 mod 2 pi, map eigenvalue ties to ties, and be smooth and invertible. We build
such maps on the *canonical cell* (alcove) of :mod:`flows.eig`: angles sorted descending,
described by the cyclic gaps

    g_k = theta_k - theta_{k+1} (k < N),  g_N = 2 pi - (theta_1 - theta_N),  g_k >= 0,  sum g = 2 pi.

The cell is a simplex whose faces {g_k = 0} are exactly the ties e^{i theta_k} = e^{i theta_{k+1}}
(cyclically), its corners the N centre elements. A map of the simplex onto itself that maps
every face into itself is automatically Weyl-equivariant (it only ever sees the unique
sorted representative), preserves ties, and is continuous across them (crossing a tie, the
cell coordinates bounce off a face, where the map is continuous).

Coordinates: stick breaking, x_k = g_k / (g_k + ... + g_N) in [0, 1] for k = 1 .. N-1
(for SU(2): x = theta_1 / pi; for SU(3): x_1 = a/2pi, x_2 = b/(b + c) with (a, b, c) the
gaps). The map is autoregressive, y_k = s_k(x_k; u_k(x_1 .. x_{k-1})), with monotone interval
maps s_k of [0, 1] fixing 0 and 1 (:mod:`flows.splines`), so x_k = 0 (g_k = 0) and x_k = 1
(g_{k+1} = ... = g_N = 0) are preserved: faces go to faces. The conditioner is linear in the
conditioning vector ``cond`` (from the context network): for stick k

    u_k = sum_f phi_f(x_1..x_{k-1}) C_k[f, :],   phi = (1, cos(m pi x_j) for j < k, m = 1 .. M-1),

so ``cond = 0`` gives the identity map *exactly* (bit for bit: theta' = theta, log-det 0).
Output gaps g'_k = g_k * exp(L_k) with L_k = log(g'_k/g_k) = sum_{j<k} lr1_j + lr0_k
(lr0, lr1 the interval maps' stable log-ratios), which stays accurate at and near ties.

Log-Jacobian (docs/design.md §7): with Delta_ij = theta_i - theta_j,

    log J = sum_{i<j} [log sin^2(Delta'_ij/2) - log sin^2(Delta_ij/2)] + log|det d theta'/d theta|,
    log|det d theta'/d theta| = sum_k log s_k'(x_k) + sum_k (N-1-k) lr1_k   (k = 1 .. N-1).

Each ratio R_ij = sin(Delta'_ij/2)/sin(Delta_ij/2) is evaluated on the shorter of the two
arcs between e^{i theta_i} and e^{i theta_j} (total gap G <= pi, sin(Delta/2) = sin(G/2)):
log R = log sinc(G'/2) - log sinc(G/2) + log(G'/G) with G'/G a weighted mean of the gap
ratios exp(L_k). Nothing divides by a vanishing angle difference; at a tie R takes its limit
(the interval map's end-point derivative), which the spectral map's adjoint uses.

Smoothness: the map is smooth inside the cell and continuous on the whole torus. Across a
tie wall it is C^1 when its derivative commutes with the reflection in that wall (always for
SU(2), where the cell is an interval); otherwise the derivative has a jump on the wall. The
walls have Haar measure zero (the density vanishes there), so densities and training are
unaffected; the adjoints return the one-sided derivative from inside the cell there.

Shapes: theta (..., N) float64 (alcove convention of :func:`flows.eig.eigen_angles`),
cond (..., n_params) float64; leading shapes broadcast.
"""
from __future__ import annotations

import math

from lattice.backend import namespace

from .splines import interval_map

__all__ = ["CellAngleMap", "n_params", "log_sinc", "gaps_from_angles", "angles_from_gaps"]

TWO_PI = 2.0 * math.pi
_U_MAX = math.pi - 1e-13


def log_sinc(xp, u):
    """log(sin(u)/u) and its derivative cot(u) - 1/u for u in [0, pi) (series below 0.1)."""
    u = xp.clip(u, 0.0, _U_MAX)
    small = u < 0.1
    us = xp.where(small, 1.0, u)
    u2 = u * u
    sn = xp.sin(us)
    val = xp.where(small, -u2 * (1.0 / 6.0 + u2 * (1.0 / 180.0 + u2 * (1.0 / 2835.0 + u2 / 37800.0))),
                   xp.log(sn / us))
    der = xp.where(small, -u * (1.0 / 3.0 + u2 * (1.0 / 45.0 + u2 * (2.0 / 945.0 + u2 * (1.0 / 4725.0 + u2 * 2.0 / 93555.0)))),
                   xp.cos(us) / sn - 1.0 / us)
    return val, der


def gaps_from_angles(xp, theta):
    """Cyclic gaps (list of N arrays) of alcove angles (clamped at 0 against rounding)."""
    N = theta.shape[-1]
    g = [theta[..., k] - theta[..., k + 1] for k in range(N - 1)]
    g.append(TWO_PI - (theta[..., 0] - theta[..., N - 1]))
    return [xp.maximum(gk, 0.0) for gk in g]


def angles_from_gaps(xp, dg):
    """Angle changes (list of N) with zero sum from changes of the first N-1 gaps:
    d theta_1 = (1/N) sum_j (N - j) d g_j,  d theta_k = d theta_1 - sum_{j<k} d g_j."""
    N = len(dg) + 1
    t0 = sum(((N - 1 - j) / N) * dg[j] for j in range(N - 1))
    out = [t0]
    for k in range(1, N):
        out.append(out[-1] - dg[k - 1])
    return out


def _angles_from_gaps_vjp(tb):
    """Transpose of :func:`angles_from_gaps`: cotangents of the N-1 gap changes."""
    N = len(tb)
    S = sum(tb)
    out = []
    suffix = 0.0 * tb[0]
    suff = [None] * N
    for k in range(N - 1, -1, -1):
        suff[k] = suffix           # sum_{k' > k} tb_k'
        suffix = suffix + tb[k]
    for j in range(N - 1):
        out.append(((N - 1 - j) / N) * S - suff[j])
    return out


def _gaps_vjp(gb):
    """Transpose of :func:`gaps_from_angles` (list of N gap cotangents -> N angle cotangents)."""
    N = len(gb)
    tb = [0.0 * gb[0] for _ in range(N)]
    for k in range(N - 1):
        tb[k] = tb[k] + gb[k]
        tb[k + 1] = tb[k + 1] - gb[k]
    tb[0] = tb[0] - gb[N - 1]
    tb[N - 1] = tb[N - 1] + gb[N - 1]
    return tb


def _suffix_sums(g):
    r = [None] * len(g)
    acc = 0.0 * g[0]
    for k in range(len(g) - 1, -1, -1):
        acc = acc + g[k]
        r[k] = acc
    return r


def _safe_div(xp, a, b):
    pos = b > 0
    return xp.where(pos, a / xp.where(pos, b, 1.0), 0.0 * a)


def n_params(N: int, K: int = 8, n_basis: int = 3, kind: str = "spline") -> int:
    """Conditioning parameters per matrix of :class:`CellAngleMap` (N, K, n_basis, kind)."""
    return CellAngleMap(N, K=K, n_basis=n_basis, kind=kind).n_params


class CellAngleMap:
    """Autoregressive canonical-cell map of SU(N) eigen-angles (see the module docstring).

    Parameters
    ----------
    N : matrix size (N >= 2).
    K : bins of the rational-quadratic splines (``kind="spline"``).
    n_basis : M, conditioner basis functions per earlier cell coordinate (cos(m pi x), m < M).
    kind : ``"spline"`` (:class:`flows.splines.RQSpline`) or ``"sine"`` (fixed-form
        :class:`flows.splines.SineMap`, one parameter per stick; for tests).
    """

    def __init__(self, N: int, K: int = 8, n_basis: int = 3, kind: str = "spline", **interval_kw):
        N = int(N)
        if N < 2:
            raise ValueError(f"CellAngleMap: need N >= 2, got {N}")
        if int(n_basis) < 1:
            raise ValueError(f"CellAngleMap: n_basis must be >= 1, got {n_basis}")
        self.N = N
        self.K = int(K)
        self.M = int(n_basis)
        self.kind = kind
        self.interval_kw = dict(interval_kw)
        self.imap = interval_map(kind, K=self.K, **interval_kw) if kind == "spline" else interval_map(kind, **interval_kw)
        self.P = self.imap.n_params
        self.F = [1 + k * (self.M - 1) for k in range(N - 1)]        # conditioner features per stick
        self.offsets = [0]
        for k in range(N - 1):
            self.offsets.append(self.offsets[-1] + self.F[k] * self.P)
        self.n_params = self.offsets[-1]
        self.pairs = [(i, j) for i in range(N) for j in range(i + 1, N)]
        self.arcs = [(list(range(i, j)), list(range(j, N)) + list(range(0, i))) for i, j in self.pairs]

    def config(self) -> dict:
        return {"N": self.N, "K": self.K, "n_basis": self.M, "kind": self.kind, **self.interval_kw}

    # -- conditioner -------------------------------------------------------------------
    def _features(self, xp, xs, k, shape, dtype):
        """Conditioner features phi for stick k from the earlier coordinates xs[0..k-1]:
        a list of F_k arrays (the constant 1, then cos(m pi x_j) for j < k, m = 1..M-1) and
        the (j, m) labels of the non-constant ones."""
        feats = [xp.ones(shape, dtype=dtype)]
        labels = []
        for j in range(k):
            for m in range(1, self.M):
                feats.append(xp.cos((m * math.pi) * xs[j]))
                labels.append((j, m))
        return feats, labels

    def _cond_block(self, xp, cond, k):
        blk = cond[..., self.offsets[k]:self.offsets[k + 1]]
        return xp.reshape(blk, blk.shape[:-1] + (self.F[k], self.P))

    def _u(self, xp, cond, xs, k, shape):
        """Interval-map parameters of stick k: u_k = sum_f phi_f C_k[f, :] (..., P)."""
        C = self._cond_block(xp, cond, k)
        feats, labels = self._features(xp, xs, k, shape, cond.dtype)
        u = feats[0][..., None] * C[..., 0, :]
        for f in range(1, len(feats)):
            u = u + feats[f][..., None] * C[..., f, :]
        return u, feats, labels, C

    # -- validation --------------------------------------------------------------------
    def _check(self, xp, theta, cond):
        if theta.shape[-1] != self.N:
            raise ValueError(f"CellAngleMap(N={self.N}): angles must have shape (..., {self.N}), got {tuple(theta.shape)}")
        if cond.shape[-1] != self.n_params:
            raise ValueError(f"CellAngleMap(N={self.N}, K={self.K}, n_basis={self.M}, kind={self.kind!r}): "
                             f"cond must have {self.n_params} entries in its last axis, got {cond.shape[-1]}")
        lead = _bshape(theta.shape[:-1], cond.shape[:-1])
        theta = xp.broadcast_to(theta, lead + (self.N,))
        cond = xp.broadcast_to(cond, lead + (self.n_params,))
        return theta, cond, lead

    # -- arcs (pair ratios) --------------------------------------------------------------
    @staticmethod
    def _arc(xp, g, L, eL, arc):
        """(G, G', log(G'/G)) for the gaps of one arc; G'/G = sum_k w_k exp(L_k), w = g/G."""
        if len(arc) == 1:
            k = arc[0]
            return g[k], g[k] * eL[k], None
        G = sum(g[k] for k in arc)
        pos = G > 0
        Gs = xp.where(pos, G, 1.0)
        # mean - 1 = sum_k w_k expm1(L_k): exactly 0 at the identity map
        mm1 = sum(xp.where(pos, g[k] / Gs, 1.0 / len(arc)) * xp.expm1(L[k]) for k in arc)
        return G, G + G * mm1, xp.log1p(mm1)

    def _pair_terms(self, xp, g, L, eL):
        """log R_ij for every pair on its shorter arc; also the arc choice and the log-sinc
        derivatives (reused by the VJP)."""
        logR, use_in, dsinc = [], [], []
        for (inner, outer) in self.arcs:
            arcs = [self._arc(xp, g, L, eL, arc) for arc in (inner, outer)]
            m = arcs[0][0] <= arcs[1][0]
            G = xp.where(m, arcs[0][0], arcs[1][0])
            Gp = xp.where(m, arcs[0][1], arcs[1][1])
            lr = [L[arc[0]] if a[2] is None else a[2] for arc, a in zip((inner, outer), arcs)]
            a, dA = log_sinc(xp, 0.5 * Gp)
            b, dB = log_sinc(xp, 0.5 * G)
            use_in.append(m)
            dsinc.append((dA, dB))
            logR.append(a - b + xp.where(m, lr[0], lr[1]))
        return logR, use_in, dsinc

    def _arc_vjp(self, xp, g, eL, arc, lRb, dA, dB, gb, Lb):
        """Accumulate cotangents of g and L from that of log R on one arc (dA, dB: log-sinc
        derivatives at G'/2 and G/2)."""
        if len(arc) == 1:
            k = arc[0]
            gb[k] = gb[k] + lRb * (0.5 * dA * eL[k] - 0.5 * dB)
            Lb[k] = Lb[k] + lRb * (0.5 * dA * g[k] * eL[k] + 1.0)
            return
        G = sum(g[k] for k in arc)
        pos = G > 0
        Gs = xp.where(pos, G, 1.0)
        w = {k: xp.where(pos, g[k] / Gs, 1.0 / len(arc)) for k in arc}
        mean = sum(w[k] * eL[k] for k in arc)
        Gp = G * mean
        lRp = xp.where(pos, lRb, 0.0)
        for k in arc:
            # d/dg_k [log(G'/G)] = (e^{L_k} G - G') / (G G') = sum_j w_j (e^{L_k} - e^{L_j}) / G'
            dlr = sum(w[j] * (eL[k] - eL[j]) for j in arc if j != k) / xp.where(pos, Gp, 1.0)
            gb[k] = gb[k] + lRp * (0.5 * dA * eL[k] - 0.5 * dB + dlr)
            Lb[k] = Lb[k] + lRp * eL[k] * (0.5 * dA * g[k] + w[k] / mean)

    # -- forward -----------------------------------------------------------------------
    def forward(self, theta, cond):
        """theta' = g(theta; cond) and the spectral log-Jacobian.

        Returns ``(out, ctx)`` with ``out`` a dict: ``theta`` (..., N) new angles (alcove
        convention, sum exactly 0), ``dtheta`` (..., N) = theta' - theta (accurate, exactly 0
        at cond = 0), ``logdet`` (...) the log-Jacobian of W -> h(W) (Haar ratio plus angle
        Jacobian), ``logdet_angles`` (...) = log|det d theta'/d theta|, ``log_ratio``
        (..., n_pairs) log R_ij for the pairs ``self.pairs``.
        """
        xp = namespace(theta, cond)
        theta, cond, lead = self._check(xp, theta, cond)
        N = self.N
        g = gaps_from_angles(xp, theta)
        r = _suffix_sums(g)
        x = [_safe_div(xp, g[k], r[k]) for k in range(N - 1)]
        feats, labels, Cs, ictx, logdy, lr0, lr1, ys = [], [], [], [], [], [], [], []
        for k in range(N - 1):
            u, f, lab, C = self._u(xp, cond, x[:k], k, lead)
            (y, ld, l0, l1), c = self.imap.forward(x[k], u)
            feats.append(f), labels.append(lab), Cs.append(C), ictx.append(c)
            logdy.append(ld), lr0.append(l0), lr1.append(l1), ys.append(y)
        L = []
        acc = 0.0 * g[0]
        for k in range(N - 1):
            L.append(acc + lr0[k])
            acc = acc + lr1[k]
        L.append(acc)
        eL = [xp.exp(Lk) for Lk in L]
        dg = [g[k] * xp.expm1(L[k]) for k in range(N - 1)]
        dth = angles_from_gaps(xp, dg)
        dtheta = xp.stack(dth, axis=-1)
        tn = theta + dtheta
        tn = xp.concat([tn[..., :N - 1], -xp.sum(tn[..., :N - 1], axis=-1, keepdims=True)], axis=-1)
        ldj = sum(logdy)
        for j in range(N - 1):
            if N - 2 - j:
                ldj = ldj + (N - 2 - j) * lr1[j]
        logR, use_in, dsinc = self._pair_terms(xp, g, L, eL)
        logdet = 2.0 * sum(logR) + ldj
        gp = [g[k] * eL[k] for k in range(N)]
        out = dict(theta=tn, dtheta=dtheta, logdet=logdet, logdet_angles=ldj,
                   log_ratio=xp.stack(logR, axis=-1))
        ctx = dict(theta=theta, cond=cond, lead=lead, g=g, r=r, x=x, feats=feats, labels=labels,
                   Cs=Cs, ictx=ictx, L=L, eL=eL, use_in=use_in, dsinc=dsinc, gp=gp, ys=ys, dtheta=dtheta, out=out)
        return out, ctx

    # -- VJP of the forward --------------------------------------------------------------
    def vjp(self, ctx, theta_bar=None, logdet_bar=None):
        """Cotangents (theta_bar (..., N), cond_bar (..., n_params)) from cotangents of the new
        angles (..., N) and of ``logdet`` (...). theta_bar is defined modulo constant shifts
        (the map only sees angle differences); it is returned with zero sum."""
        c = ctx
        xp = namespace(c["theta"])
        N = self.N
        g, r, x, L, eL = c["g"], c["r"], c["x"], c["L"], c["eL"]
        zero = xp.zeros_like(g[0])
        tb = [zero if theta_bar is None else theta_bar[..., k] for k in range(N)]
        lb = zero if logdet_bar is None else logdet_bar
        gb = [zero for _ in range(N)]
        Lb = [zero for _ in range(N)]
        # theta' = theta + dtheta(dg), dg_k = g_k expm1(L_k)
        dgb = _angles_from_gaps_vjp(tb)
        for k in range(N - 1):
            gb[k] = gb[k] + dgb[k] * xp.expm1(L[k])
            Lb[k] = Lb[k] + dgb[k] * g[k] * eL[k]
        # logdet = 2 sum log R + sum logdy + sum (N-2-j) lr1_j
        for p, (inner, outer) in enumerate(self.arcs):
            m = c["use_in"][p]
            dA, dB = c["dsinc"][p]
            self._arc_vjp(xp, g, eL, inner, xp.where(m, 2.0 * lb, 0.0), dA, dB, gb, Lb)
            self._arc_vjp(xp, g, eL, outer, xp.where(m, 0.0, 2.0 * lb), dA, dB, gb, Lb)
        lr0b = [Lb[k] for k in range(N - 1)]
        lr1b = []
        for j in range(N - 1):
            lr1b.append(sum(Lb[k] for k in range(j + 1, N)) + (N - 2 - j) * lb)
        xb = [zero for _ in range(N - 1)]
        condb = []
        for k in range(N - 1):
            xbk, ub = self.imap.vjp(c["ictx"][k], None, lb, lr0b[k], lr1b[k])
            xb[k] = xb[k] + xbk
            condb.append(self._conditioner_vjp(xp, c, k, ub, xb))
        # stick breaking x_k = g_k / r_k, r_k = sum_{j >= k} g_j
        for k in range(N - 1):
            pos = r[k] > 0
            rs = xp.where(pos, r[k], 1.0)
            a = xp.where(pos, xb[k] / rs, 0.0)
            gb[k] = gb[k] + a
            for j in range(k, N):
                gb[j] = gb[j] - a * x[k]
        thb = _gaps_vjp(gb)
        thb = [thb[k] + tb[k] for k in range(N)]
        th = xp.stack(thb, axis=-1)
        th = th - xp.mean(th, axis=-1, keepdims=True)
        return th, xp.concat(condb, axis=-1)

    def _conditioner_vjp(self, xp, c, k, ub, xb):
        """Cotangent of stick k's cond block from u_bar; adds the x_{<k} cotangents into xb."""
        feats, labels, C = c["feats"][k], c["labels"][k], c["Cs"][k]
        blocks = [feats[0][..., None] * ub]
        for f, (j, m) in enumerate(labels, start=1):
            blocks.append(feats[f][..., None] * ub)
            phib = xp.sum(C[..., f, :] * ub, axis=-1)
            xb[j] = xb[j] - phib * (m * math.pi) * xp.sin((m * math.pi) * c["x"][j])
        Cb = xp.stack(blocks, axis=-2)
        return xp.reshape(Cb, Cb.shape[:-2] + (self.F[k] * self.P,))

    # -- inverse -------------------------------------------------------------------------
    def inverse(self, theta_new, cond):
        """theta = g^{-1}(theta'; cond). Returns ``(out, ctx)`` where ``out`` has ``theta``
        (..., N), ``dtheta`` = theta' - theta, ``logdet`` = log-Jacobian of the *forward* map
        at theta (the inverse's is its negative); ``ctx`` is the forward context at theta."""
        xp = namespace(theta_new, cond)
        theta_new, cond, lead = self._check(xp, theta_new, cond)
        N = self.N
        gp = gaps_from_angles(xp, theta_new)
        rp = _suffix_sums(gp)
        xs, lr0, lr1 = [], [], []
        for k in range(N - 1):
            y = _safe_div(xp, gp[k], rp[k])
            u = self._u(xp, cond, xs, k, lead)[0]
            xk = self.imap.inverse(y, u)
            (_, _, l0, l1), _ = self.imap.forward(xk, u)
            xs.append(xk), lr0.append(l0), lr1.append(l1)
        L = []
        acc = 0.0 * gp[0]
        for k in range(N - 1):
            L.append(acc + lr0[k])
            acc = acc + lr1[k]
        dg = [-gp[k] * xp.expm1(-L[k]) for k in range(N - 1)]   # g'_k - g_k
        dtheta = xp.stack(angles_from_gaps(xp, dg), axis=-1)
        th = theta_new - dtheta
        th = xp.concat([th[..., :N - 1], -xp.sum(th[..., :N - 1], axis=-1, keepdims=True)], axis=-1)
        fout, ctx = self.forward(th, cond)
        out = dict(theta=th, dtheta=dtheta, logdet=fout["logdet"], logdet_angles=fout["logdet_angles"],
                   log_ratio=fout["log_ratio"])
        return out, ctx

    def inverse_vjp(self, ctx, theta_bar):
        """VJP of theta = g^{-1}(theta'; cond) at the forward context ``ctx`` (from
        :meth:`inverse` or :meth:`forward` at theta): returns (theta'_bar, cond_bar).
        The logdet of the inverse is -logdet(theta); its cotangent is handled by the caller
        through :meth:`vjp` (see :class:`flows.spectral.SpectralMap`)."""
        c = ctx
        xp = namespace(c["theta"])
        N = self.N
        x, r, gp, ys = c["x"], c["r"], c["gp"], c["ys"]
        tb = [theta_bar[..., k] for k in range(N)]
        zero = xp.zeros_like(tb[0])
        gb = _angles_from_gaps_vjp(tb)                     # theta(g_1..g_{N-1})
        # g = P^{-1}(x): g_k = R_k x_k, R_{k+1} = R_k (1 - x_k), R_k = r_k
        xb = [zero for _ in range(N - 1)]
        Rb_next = zero
        for k in range(N - 2, -1, -1):
            xb[k] = xb[k] + (gb[k] - Rb_next) * r[k]
            Rb_next = gb[k] * x[k] + Rb_next * (1.0 - x[k])
        # x_k = s_k^{-1}(y_k; u_k(x_<k)), processed last to first
        yb = [None] * (N - 1)
        condb = [None] * (N - 1)
        for k in range(N - 2, -1, -1):
            dy = self.imap.dy(c["ictx"][k])
            yb[k] = xb[k] / dy
            _, ub = self.imap.vjp(c["ictx"][k], yb[k], None, None, None)
            condb[k] = self._conditioner_vjp(xp, c, k, -ub, xb)
        # y_k = g'_k / r'_k, r'_k = sum_{j >= k} g'_j
        rp = _suffix_sums(gp)
        gpb = [zero for _ in range(N)]
        for k in range(N - 1):
            pos = rp[k] > 0
            a = xp.where(pos, yb[k] / xp.where(pos, rp[k], 1.0), 0.0)
            gpb[k] = gpb[k] + a
            for j in range(k, N):
                gpb[j] = gpb[j] - a * ys[k]
        tnb = xp.stack(_gaps_vjp(gpb), axis=-1)
        tnb = tnb - xp.mean(tnb, axis=-1, keepdims=True)
        return tnb, xp.concat(condb, axis=-1)


def _bshape(a, b):
    a, b = tuple(a), tuple(b)
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + a
    b = (1,) * (n - len(b)) + b
    out = []
    for p, q in zip(a, b):
        if p != q and 1 not in (p, q):
            raise ValueError(f"shapes {a} and {b} do not broadcast")
        out.append(max(p, q))
    return tuple(out)
