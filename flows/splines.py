"""Monotone maps of the unit interval onto itself with fixed end points (batched, hand-written
derivatives): the building blocks of the canonical-cell angle maps (:mod:`flows.torus`).

Two maps share one interface, :class:`IntervalMap`:

* :class:`RQSpline` -- monotone rational-quadratic spline with K bins (Durkan et al.,
  "Neural spline flows", arXiv:1906.04032), s(0) = 0, s(1) = 1, learnable knots and
  learnable derivatives at all K+1 knots (including the end points);
* :class:`SineMap` -- the fixed-form map s(x) = x - kappa sin(2 pi x) / (2 pi),
  kappa = tanh(u), one parameter; for tests and as a cheap alternative.

For an input x in [0, 1] and unconstrained parameters u (``(..., n_params)``), ``forward``
returns, besides y = s(x),

    logdy = log s'(x),
    lr0   = log(s(x) / x)             (= log s'(0) at x = 0),
    lr1   = log((1 - s(x)) / (1 - x)) (= log s'(1) at x = 1),

all computed *stably*: the two ratios are smooth functions of x evaluated without
cancellation (closed forms in the first and last bin), which is what the spectral map needs
for sin((theta'_i - theta'_j)/2) / sin((theta_i - theta_j)/2) at and near eigenvalue ties.
``vjp`` maps cotangents of (y, logdy, lr0, lr1) to cotangents of x and u; ``inverse``
solves s(x) = y analytically (RQ: the stable root of a quadratic, Durkan et al. eq. 29).

Identity at zero parameters, exactly: with u = 0 every quantity below is computed in a
*deviation form* whose deviation terms vanish exactly in floating point, so s(x) = x
bit for bit and logdy = lr0 = lr1 = 0 exactly. This is the contract with the context
network (zero-initialised output heads give the identity flow).

RQ spline parametrisation (u of length 3K + 1 = [u_w (K), u_h (K), u_d (K+1)]):
widths  w = m_w + (1 - K m_w) softmax(u_w), knots x_0 = 0, x_k = w_0 + ... + w_{k-1}, x_K = 1;
heights likewise with m_h; derivatives delta = 1 + (1 - m_d) elu(u_d) > m_d
(elu(z) = z for z >= 0, e^z - 1 otherwise; delta = 1 exactly at u_d = 0).
In bin k with xi = (x - x_k)/w_k, s_k = h_k/w_k, d0 = delta_k - s_k, d1 = delta_{k+1} - s_k:

    s(x) = y_k + h_k xi + h_k xi(1-xi) [d0 (1-xi) - d1 xi] / den,   den = s_k + (d0 + d1) xi(1-xi)
    s'(x) = s_k^2 [s_k + d1 xi^2 + d0 (1-xi)^2] / den^2,

which is Durkan et al.'s eqs. 4-5 rewritten in deviations from the linear map.
"""
from __future__ import annotations

import math

from lattice.backend import namespace

__all__ = ["IntervalMap", "RQSpline", "SineMap", "interval_map"]


class IntervalMap:
    """Interface: a monotone bijection of [0, 1] with s(0) = 0, s(1) = 1 and parameters u.

    * ``n_params``: parameters per map;
    * ``forward(x, u) -> ((y, logdy, lr0, lr1), ctx)`` with x of shape S and u of shape S + (n_params,);
    * ``vjp(ctx, y_bar, logdy_bar, lr0_bar, lr1_bar) -> (x_bar, u_bar)`` (None = zero cotangent);
    * ``inverse(y, u) -> x``;
    * ``dy(ctx)``: s'(x) of the forward evaluation.
    """

    n_params: int = 0

    def config(self) -> dict:  # pragma: no cover - interface
        return {}

    def dy(self, ctx):
        return ctx["dy"]


def _zero_if_none(v, like):
    return namespace(like).zeros_like(like) if v is None else v


# ----------------------------------------------------------------------------------------
# Rational-quadratic spline
# ----------------------------------------------------------------------------------------
class RQSpline(IntervalMap):
    """Monotone rational-quadratic spline of [0, 1] onto itself with K bins (see module doc)."""

    def __init__(self, K: int = 8, min_width: float = 1e-3, min_height: float = 1e-3,
                 min_derivative: float = 1e-3):
        K = int(K)
        if K < 1:
            raise ValueError(f"RQSpline: need K >= 1 bins, got {K}")
        if not (0.0 <= min_width < 1.0 / K and 0.0 <= min_height < 1.0 / K):
            raise ValueError(f"RQSpline: min_width and min_height must lie in [0, 1/K) = [0, {1.0 / K:.3g}), "
                             f"got {min_width}, {min_height}")
        if not 0.0 < min_derivative < 1.0:
            raise ValueError(f"RQSpline: min_derivative must lie in (0, 1), got {min_derivative}")
        self.K = K
        self.min_width = float(min_width)
        self.min_height = float(min_height)
        self.min_derivative = float(min_derivative)
        self.n_params = 3 * K + 1

    def config(self) -> dict:
        return {"kind": "spline", "K": self.K, "min_width": self.min_width,
                "min_height": self.min_height, "min_derivative": self.min_derivative}

    # -- parameters -> knots ---------------------------------------------------------
    def _knots(self, xp, v, mn):
        """Knots (..., K+1) from unnormalised bin sizes v (..., K); returns (knots, sizes, softmax)."""
        K = self.K
        vm = v - xp.max(v, axis=-1, keepdims=True)
        ev = xp.exp(vm)
        sm = ev / xp.sum(ev, axis=-1, keepdims=True)
        raw = mn + (1.0 - K * mn) * sm
        lead = raw.shape[:-1]
        zero = xp.zeros(lead + (1,), dtype=raw.dtype)
        one = xp.ones(lead + (1,), dtype=raw.dtype)
        if K > 1:
            inner = xp.cumulative_sum(raw[..., :K - 1], axis=-1)
            knots = xp.concat([zero, inner, one], axis=-1)
        else:
            knots = xp.concat([zero, one], axis=-1)
        sizes = knots[..., 1:] - knots[..., :-1]
        return knots, sizes, sm

    def _knots_vjp(self, xp, sm, knots_bar, sizes_bar, mn):
        """Cotangent of v from cotangents of knots (..., K+1) and sizes (..., K)."""
        K = self.K
        kb = knots_bar
        kb = kb + xp.concat([xp.zeros_like(sizes_bar[..., :1]), sizes_bar], axis=-1)
        kb = kb - xp.concat([sizes_bar, xp.zeros_like(sizes_bar[..., :1])], axis=-1)
        # knots_i = sum_{j < i} raw_j for i = 1..K-1 (knot 0 and knot K are fixed)
        if K > 1:
            # raw_j moves knots j+1 .. K-1:  raw_bar_j = sum_{i=j+1}^{K-1} knots_bar_i
            inner = kb[..., 1:K]
            rawb = xp.concat([_rev_cumsum(xp, inner), xp.zeros_like(inner[..., :1])], axis=-1)
        else:
            rawb = xp.zeros_like(sizes_bar)
        smb = (1.0 - K * mn) * rawb
        return sm * (smb - xp.sum(sm * smb, axis=-1, keepdims=True))

    def _derivs(self, xp, ud):
        md = self.min_derivative
        elu = xp.where(ud >= 0, ud, xp.expm1(xp.minimum(ud, 0.0)))
        return 1.0 + (1.0 - md) * elu

    def _derivs_vjp(self, xp, ud, db):
        md = self.min_derivative
        return db * (1.0 - md) * xp.where(ud >= 0, 1.0, xp.exp(xp.minimum(ud, 0.0)))

    def _setup(self, u):
        xp = namespace(u)
        K = self.K
        if u.shape[-1] != self.n_params:
            raise ValueError(f"RQSpline(K={K}): expected {self.n_params} parameters in the last axis, got {u.shape[-1]}")
        kx, wx, smx = self._knots(xp, u[..., :K], self.min_width)
        ky, hy, smy = self._knots(xp, u[..., K:2 * K], self.min_height)
        ud = u[..., 2 * K:]
        d = self._derivs(xp, ud)
        return xp, kx, wx, smx, ky, hy, smy, ud, d

    @staticmethod
    def _gather(xp, arr, k):
        return xp.take_along_axis(arr, k[..., None], axis=-1)[..., 0]

    # -- forward ---------------------------------------------------------------------
    def forward(self, x, u):
        xp, kx, wx, smx, ky, hy, smy, ud, dv = self._setup(u)
        K = self.K
        if K > 1:
            k = xp.sum(xp.astype(x[..., None] >= kx[..., 1:K], xp.int64), axis=-1)
        else:
            k = xp.zeros(x.shape, dtype=xp.int64)
        g = lambda a: self._gather(xp, a, k)  # noqa: E731
        xk, w, yk, h, dl, du = g(kx[..., :K]), g(wx), g(ky[..., :K]), g(hy), g(dv[..., :K]), g(dv[..., 1:])
        yk1 = g(ky[..., 1:])
        first = k == 0
        last = k == K - 1

        # deviation form (exactly the identity at u = 0, accurate for small deviations)
        s = h / w
        e = (h - w) / w
        xi = (x - xk) / w
        xic = 1.0 - xi
        d0 = dl - s
        d1 = du - s
        q = xi * xic
        dsum = d0 + d1
        den = s + dsum * q
        nc = d0 * xic - d1 * xi
        corr = h * q * nc / den
        dev = (yk - xk) + (x - xk) * e + corr
        B = (d1 * xi * xi + d0 * xic * xic) / s
        D = dsum * q / s
        # stable ratios; the "else" branches divide by x >= x_1 > 0 resp. 1 - x >= 1 - x_{K-1} > 0
        xs = xp.where(first, 1.0, x)
        oms = xp.where(last, 1.0, 1.0 - x)
        r0m1 = xp.where(first, e + s * xic * nc / den, dev / xs)
        num1 = s * e + s * d1 * xi - dsum * q
        r1m1 = xp.where(last, num1 / den, -dev / oms)
        # all-positive form (Durkan et al.), relatively accurate however far from the identity
        denp = s * (xi * xi + xic * xic) + (dl + du) * q                 # = den
        brk = du * xi * xi + 2.0 * s * q + dl * xic * xic                # = s (1 + B)
        yd = yk + h * (s * xi * xi + dl * q) / denp
        omy = (1.0 - yk1) + h * xic * (s * xic + du * xi) / denp         # 1 - y
        rho0 = xp.where(first, s * (s * xi + dl * xic) / denp, yd / xs)  # y / x
        rho1 = xp.where(last, s * (s * xic + du * xi) / denp, omy / oms)  # (1 - y)/(1 - x)
        # use the deviation form where the deviation is small (there it is exact at u = 0)
        sm0 = xp.abs(r0m1) <= 0.5
        sm1 = xp.abs(r1m1) <= 0.5
        lr0 = xp.where(sm0, xp.log1p(r0m1), xp.log(rho0))
        lr1 = xp.where(sm1, xp.log1p(r1m1), xp.log(rho1))
        logdy = (xp.log(s) + xp.where(xp.abs(B) <= 0.5, xp.log1p(B), xp.log(brk / s))
                 - 2.0 * xp.where(xp.abs(D) <= 0.5, xp.log1p(D), xp.log(denp / s)))
        y = xp.where(sm0 & sm1, x + dev, yd)
        y = xp.where(x == 1.0, 1.0, xp.where(x == 0.0, 0.0, y))          # end points exactly
        dy = xp.exp(logdy)
        ctx = dict(k=k, x=x, xk=xk, w=w, yk=yk, h=h, first=first, last=last, s=s, e=e, xi=xi, xic=xic,
                   d0=d0, d1=d1, q=q, dsum=dsum, den=den, nc=nc, corr=corr, dev=dev, B=B, D=D,
                   xs=xs, oms=oms, r0m1=r0m1, r1m1=r1m1, num1=num1, dy=dy, rho0=xp.exp(lr0),
                   rho1=xp.exp(lr1), brk=brk, denp=denp,
                   smx=smx, smy=smy, ud=ud, shape_u=u.shape)
        return (y, logdy, lr0, lr1), ctx

    # -- VJP -------------------------------------------------------------------------
    def vjp(self, ctx, y_bar=None, logdy_bar=None, lr0_bar=None, lr1_bar=None):
        c = ctx
        x = c["x"]
        xp = namespace(x)
        K = self.K
        yb = _zero_if_none(y_bar, x)
        ldb = _zero_if_none(logdy_bar, x)
        l0b = _zero_if_none(lr0_bar, x)
        l1b = _zero_if_none(lr1_bar, x)
        s, e, xi, xic, d0, d1, q, dsum, den, nc = (c[n] for n in ("s", "e", "xi", "xic", "d0", "d1", "q", "dsum", "den", "nc"))
        w, h, xk, dev, first, last = c["w"], c["h"], c["xk"], c["dev"], c["first"], c["last"]
        zero = xp.zeros_like(x)

        r0b = l0b / c["rho0"]                       # d log(1 + r) = dr / (1 + r)
        r1b = l1b / c["rho1"]
        # r1m1
        r1b_last = xp.where(last, r1b, zero)
        r1b_other = xp.where(last, zero, r1b)
        num1b = r1b_last / den
        denb = -r1b_last * c["r1m1"] / den
        sb = num1b * (e + d1 * xi)
        eb = num1b * s
        d1b = num1b * s * xi
        xib = num1b * s * d1
        dsumb = -num1b * q
        qb = -num1b * dsum
        devb = -r1b_other / c["oms"]
        xb = r1b_other * c["r1m1"] / c["oms"]
        # r0m1
        r0b_first = xp.where(first, r0b, zero)
        r0b_other = xp.where(first, zero, r0b)
        t0 = xic * nc / den
        eb = eb + r0b_first
        sb = sb + r0b_first * t0
        xicb = r0b_first * s * nc / den
        ncb = r0b_first * s * xic / den
        denb = denb - r0b_first * s * t0 / den
        devb = devb + r0b_other / c["xs"]
        xb = xb - r0b_other * c["r0m1"] / c["xs"]
        # logdy = log s + log1p(B) - 2 log1p(D)
        sb = sb + ldb / s
        Bb = ldb * s / c["brk"]                     # 1 + B = brk / s, 1 + D = den / s
        Db = -2.0 * ldb * s / c["denp"]
        d1b = d1b + Bb * xi * xi / s
        xib = xib + Bb * 2.0 * d1 * xi / s
        d0b = Bb * xic * xic / s
        xicb = xicb + Bb * 2.0 * d0 * xic / s
        sb = sb - Bb * c["B"] / s
        dsumb = dsumb + Db * q / s
        qb = qb + Db * dsum / s
        sb = sb - Db * c["D"] / s
        # y = x + dev
        xb = xb + yb
        devb = devb + yb
        # dev = (yk - xk) + (x - xk) e + corr
        ykb = devb
        xkb = -devb * (1.0 + e)
        xb = xb + devb * e
        eb = eb + devb * (x - xk)
        corrb = devb
        # corr = h q nc / den
        hb = corrb * q * nc / den
        qb = qb + corrb * h * nc / den
        ncb = ncb + corrb * h * q / den
        denb = denb - corrb * c["corr"] / den
        # nc = d0 xic - d1 xi
        d0b = d0b + ncb * xic
        xicb = xicb + ncb * d0
        d1b = d1b - ncb * xi
        xib = xib - ncb * d1
        # den = s + dsum q
        sb = sb + denb
        dsumb = dsumb + denb * q
        qb = qb + denb * dsum
        d0b = d0b + dsumb
        d1b = d1b + dsumb
        # q = xi xic, xic = 1 - xi
        xib = xib + qb * xic
        xicb = xicb + qb * xi
        xib = xib - xicb
        # d0 = dl - s, d1 = du - s
        dlb = d0b
        dub = d1b
        sb = sb - d0b - d1b
        # xi = (x - xk)/w
        xb = xb + xib / w
        xkb = xkb - xib / w
        wb = -xib * xi / w
        # e = h/w - 1, s = h/w
        hb = hb + (eb + sb) / w
        wb = wb - (eb + sb) * s / w

        # scatter bin-level cotangents into per-knot / per-bin arrays
        kidx = c["k"]
        ar = xp.arange(K + 1, dtype=xp.int64, device=getattr(x, "device", None))
        oh = xp.astype(ar == kidx[..., None], x.dtype)               # (..., K+1): knot k / bin k
        oh1 = xp.astype(ar == (kidx[..., None] + 1), x.dtype)        # knot k+1
        kxb = oh * xkb[..., None]
        kyb = oh * ykb[..., None]
        wxb = oh[..., :K] * wb[..., None]
        hyb = oh[..., :K] * hb[..., None]
        dvb = oh * dlb[..., None] + oh1 * dub[..., None]
        uwb = self._knots_vjp(xp, c["smx"], kxb, wxb, self.min_width)
        uhb = self._knots_vjp(xp, c["smy"], kyb, hyb, self.min_height)
        udb = self._derivs_vjp(xp, c["ud"], dvb)
        ub = xp.concat([uwb, uhb, udb], axis=-1)
        return xb, ub

    # -- inverse ---------------------------------------------------------------------
    def inverse(self, y, u):
        """x with s(x) = y: the root in [0, 1] of the bin's quadratic (Durkan et al. eq. 29),
        evaluated in whichever of its two algebraic forms avoids cancellation."""
        xp, kx, wx, smx, ky, hy, smy, ud, dv = self._setup(u)
        K = self.K
        if K > 1:
            k = xp.sum(xp.astype(y[..., None] >= ky[..., 1:K], xp.int64), axis=-1)
        else:
            k = xp.zeros(y.shape, dtype=xp.int64)
        g = lambda a: self._gather(xp, a, k)  # noqa: E731
        xk, w, yk, h, dl, du = g(kx[..., :K]), g(wx), g(ky[..., :K]), g(hy), g(dv[..., :K]), g(dv[..., 1:])
        s = h / w
        d0 = dl - s
        dsum = d0 + (du - s)
        Dy = y - yk
        a = -h * d0 + Dy * dsum
        b = h * dl - Dy * dsum
        cc = -s * Dy
        disc = xp.maximum(b * b - 4.0 * a * cc, 0.0)
        sq = xp.sqrt(disc)
        # the root in [0, 1] is (-b + sq)/(2a) = 2c/(-b - sq); pick the form without cancellation
        neg = (b < 0) & (a != 0)
        xi = xp.where(neg, (sq - b) / (2.0 * xp.where(neg, a, 1.0)), (2.0 * cc) / xp.where(neg, -1.0, -b - sq))
        xi = xp.clip(xi, 0.0, 1.0)
        x = xp.clip(xk + xi * w, 0.0, 1.0)
        return xp.where(y >= 1.0, 1.0, xp.where(y <= 0.0, 0.0, x))    # end points exactly


def _rev_cumsum(xp, a):
    """r_j = sum_{i >= j} a_i (reverse inclusive cumulative sum along the last axis)."""
    tot = xp.sum(a, axis=-1, keepdims=True)
    cs = xp.cumulative_sum(a, axis=-1)
    return tot - cs + a


# ----------------------------------------------------------------------------------------
# Fixed-form sine map
# ----------------------------------------------------------------------------------------
def _sinc(xp, t):
    """sin(t)/t and its derivative (cos t - sin t / t)/t, stable near t = 0 (series for |t| < 0.1)."""
    small = xp.abs(t) < 0.1
    ts = xp.where(small, 1.0, t)
    t2 = t * t
    f_big = xp.sin(ts) / ts
    f_small = 1.0 - t2 / 6.0 * (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0 * (1.0 - t2 / 72.0)))
    g_big = (xp.cos(ts) - f_big) / ts
    g_small = -t / 3.0 * (1.0 - t2 / 10.0 * (1.0 - t2 / 28.0 * (1.0 - t2 / 54.0)))
    return xp.where(small, f_small, f_big), xp.where(small, g_small, g_big)


class SineMap(IntervalMap):
    """s(x) = x - kappa sin(2 pi x)/(2 pi), kappa = tanh(u) in (-1, 1); one parameter.

    s'(x) = 1 - kappa cos(2 pi x) > 0, s(x)/x = 1 - kappa sinc(2 pi x),
    (1 - s(x))/(1 - x) = 1 - kappa sinc(2 pi (1 - x)). Identity at u = 0 exactly.
    """

    n_params = 1

    def config(self) -> dict:
        return {"kind": "sine"}

    def forward(self, x, u):
        xp = namespace(x, u)
        if u.shape[-1] != 1:
            raise ValueError(f"SineMap: expected 1 parameter in the last axis, got {u.shape[-1]}")
        kap = xp.tanh(u[..., 0])
        tp = 2.0 * math.pi
        sx = xp.sin(tp * x)
        cx = xp.cos(tp * x)
        dev = -kap * sx / tp
        y = xp.where(x == 1.0, 1.0, xp.where(x == 0.0, 0.0, x + dev))
        logdy = xp.log1p(-kap * cx)
        f0, g0 = _sinc(xp, tp * x)
        f1, g1 = _sinc(xp, tp * (1.0 - x))
        lr0 = xp.log1p(-kap * f0)
        lr1 = xp.log1p(-kap * f1)
        ctx = dict(x=x, u=u, kap=kap, sx=sx, cx=cx, f0=f0, g0=g0, f1=f1, g1=g1, dy=1.0 - kap * cx)
        return (y, logdy, lr0, lr1), ctx

    def vjp(self, ctx, y_bar=None, logdy_bar=None, lr0_bar=None, lr1_bar=None):
        c = ctx
        x = c["x"]
        tp = 2.0 * math.pi
        yb = _zero_if_none(y_bar, x)
        ldb = _zero_if_none(logdy_bar, x)
        l0b = _zero_if_none(lr0_bar, x)
        l1b = _zero_if_none(lr1_bar, x)
        kap, sx, cx = c["kap"], c["sx"], c["cx"]
        a0 = l0b / (1.0 - kap * c["f0"])
        a1 = l1b / (1.0 - kap * c["f1"])
        al = ldb / (1.0 - kap * cx)
        xb = yb * (1.0 - kap * cx) + al * kap * tp * sx - a0 * kap * tp * c["g0"] + a1 * kap * tp * c["g1"]
        kb = -yb * sx / tp - al * cx - a0 * c["f0"] - a1 * c["f1"]
        ub = (kb * (1.0 - kap * kap))[..., None]
        return xb, ub

    def inverse(self, y, u):
        """Safeguarded Newton iteration (the map is monotone; bracket [0, 1])."""
        xp = namespace(y, u)
        kap = xp.tanh(u[..., 0])
        tp = 2.0 * math.pi
        x = y
        lo = xp.zeros_like(y)
        hi = xp.ones_like(y)
        for _ in range(60):
            f = x - kap * xp.sin(tp * x) / tp - y
            lo = xp.where(f <= 0, x, lo)
            hi = xp.where(f >= 0, x, hi)
            xn = x - f / (1.0 - kap * xp.cos(tp * x))
            bad = (xn <= lo) | (xn >= hi)
            xn = xp.where(bad, 0.5 * (lo + hi), xn)
            done = xp.all(xp.abs(xn - x) <= 1e-15)
            x = xn
            if bool(done):
                break
        return xp.where(y >= 1.0, 1.0, xp.where(y <= 0.0, 0.0, x))


def interval_map(kind: str = "spline", **kw) -> IntervalMap:
    """Factory: ``"spline"`` (:class:`RQSpline`, keywords K, min_width, ...) or ``"sine"``."""
    if kind == "spline":
        return RQSpline(**kw)
    if kind == "sine":
        if kw:
            raise ValueError(f"SineMap takes no options, got {sorted(kw)}")
        return SineMap()
    raise ValueError(f"unknown interval map kind {kind!r}; use 'spline' or 'sine'")
