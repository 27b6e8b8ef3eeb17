"""Gradient-check harness: hand-written VJPs against central finite differences (float64).

For a module ``forward(params, *inputs) -> (outputs, ctx)`` with ``vjp(params, ctx, *cot)``
we draw random output cotangents v and directions u and compare

    analytic  <x_bar, u>_R                      (x_bar from the VJP with cotangent v)
    numerical d/dt L(x + t u) at t = 0,         L = sum_k <v_k, out_k>_R

where <a, b>_R = sum Re(conj(a) b) is the real inner product (complex numbers as R^2), which
is exactly the pairing of the cotangent convention dL/dRe z + i dL/dIm z. The derivative uses
the fourth-order central stencil [-f(2h) + 8 f(h) - 8 f(-h) + f(-2h)] / 12h, whose truncation
error O(h^4) lets the tolerances stay tight (default rtol 1e-7).

A check passes when |analytic - numeric| <= rtol max(|analytic|, |numeric|) + noise, where
noise = 10 eps sum_k |v_k| |out_k| / h is the rounding floor of the stencil (eps of float64,
the loss summed with absolute values): a derivative that is exactly zero (e.g. with respect
to masked links) is then compared with a numerical value that is zero up to rounding, instead
of failing on a relative error of 1. For O(1) derivatives the floor is far below rtol.

Inputs listed in ``group`` are SU(N) fields: they are perturbed on the group,
U -> exp(t X) U with X in su(N), and the analytic side is <U_bar, X U>_R.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lattice.backend import Rng, namespace
from lattice import su_n

__all__ = ["real_inner", "check_vjp", "GradCheckResult", "assert_vjp"]


def real_inner(a, b) -> float:
    """<a, b>_R = sum Re(conj(a) b) over all elements (float64)."""
    xp = namespace(a, b)
    if xp.isdtype(a.dtype, "complex floating") or xp.isdtype(b.dtype, "complex floating"):
        return float(xp.sum(xp.real(xp.conj(a) * b)))
    return float(xp.sum(a * b))


def _random_like(x, rng: Rng):
    xp = namespace(x)
    if xp.isdtype(x.dtype, "complex floating"):
        return xp.astype(rng.complex_normal(tuple(x.shape)), x.dtype)
    return xp.astype(rng.normal(tuple(x.shape)), x.dtype)


@dataclass
class GradCheckResult:
    analytic: list = field(default_factory=list)
    numeric: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    noise: list = field(default_factory=list)

    def max_rel_error(self, floor: float = 1e-12) -> float:
        worst = 0.0
        for a, n in zip(self.analytic, self.numeric):
            scale = max(abs(a), abs(n), floor)
            worst = max(worst, abs(a - n) / scale)
        return worst

    def ok(self, rtol: float) -> bool:
        """Every |a - n| <= rtol max(|a|, |n|) + noise (the finite-difference rounding floor)."""
        noise = self.noise if len(self.noise) == len(self.analytic) else [0.0] * len(self.analytic)
        return all(abs(a - n) <= rtol * max(abs(a), abs(n)) + z
                   for a, n, z in zip(self.analytic, self.numeric, noise))

    def __str__(self):
        noise = self.noise if len(self.noise) == len(self.analytic) else [0.0] * len(self.analytic)
        rows = [f"{l:>24s}: analytic {a: .12e}  numeric {n: .12e}  rel {abs(a - n) / max(abs(a), abs(n), 1e-300):.2e}"
                f"  fd-noise {z:.1e}"
                for l, a, n, z in zip(self.labels, self.analytic, self.numeric, noise)]
        return "\n".join(rows)


def check_vjp(forward, vjp, params, inputs, *, wrt=("inputs", "params"), group=(), skip=(),
              h: float = 1e-3, seed: int = 0, n_dirs: int = 2, cotangents=None) -> GradCheckResult:
    """Compare the VJP of a module with finite differences along random directions.

    Parameters
    ----------
    forward, vjp : callables following the module contract (``flows.module``).
    params : dict of parameter arrays (may be empty).
    inputs : tuple of input arrays.
    wrt : check input cotangents, parameter cotangents, or both.
    group : indices of inputs that are SU(N) fields (perturbed as exp(tX) U).
    skip : indices of inputs not to check (e.g. integer masks).
    h : finite-difference step (fourth-order stencil).
    cotangents : optional explicit output cotangents (default: random).
    """
    rng = Rng(seed)
    inputs = tuple(inputs)
    outs, ctx = forward(params, *inputs)
    outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
    v = tuple(cotangents) if cotangents is not None else tuple(
        None if o is None else _random_like(o, rng) for o in outs)
    in_cot, par_cot = vjp(params, ctx, *v)

    def loss(p, xs):
        o, _ = forward(p, *xs)
        o = tuple(o) if isinstance(o, (tuple, list)) else (o,)
        val = sum(real_inner(vk, ok) for vk, ok in zip(v, o) if vk is not None)
        mag = sum(float(namespace(ok).sum(namespace(ok).abs(vk) * namespace(ok).abs(ok)))
                  for vk, ok in zip(v, o) if vk is not None)
        return val, mag

    res = GradCheckResult()
    eps64 = 2.220446049250313e-16

    def fd(perturb):
        f, mag = {}, 0.0
        for s in (-2, -1, 1, 2):
            f[s], m = loss(*perturb(s * h))
            mag = max(mag, m)
        res.noise.append(10.0 * eps64 * mag / h)
        return (-f[2] + 8 * f[1] - 8 * f[-1] + f[-2]) / (12 * h)

    if "inputs" in wrt:
        for i, x in enumerate(inputs):
            if i in skip or x is None:
                continue
            for d in range(n_dirs):
                if i in group:
                    N = x.shape[-1]
                    X = su_n.random_algebra(rng, N, lead=tuple(x.shape[:-2]))
                    X = namespace(x).astype(X, x.dtype)
                    ana = 0.0 if in_cot[i] is None else real_inner(in_cot[i], X @ x)

                    def pert(t, i=i, X=X):
                        xs = list(inputs)
                        xs[i] = su_n.expm(t * X) @ inputs[i]
                        return params, tuple(xs)
                else:
                    u = _random_like(x, rng)
                    ana = 0.0 if in_cot[i] is None else real_inner(in_cot[i], u)

                    def pert(t, i=i, u=u):
                        xs = list(inputs)
                        xs[i] = inputs[i] + t * u
                        return params, tuple(xs)
                res.analytic.append(ana)
                res.numeric.append(fd(pert))
                res.labels.append(f"input {i} dir {d}")
    if "params" in wrt and params:
        for d in range(n_dirs):
            u = {k: _random_like(p, rng) for k, p in params.items()}
            ana = sum(real_inner(par_cot[k], u[k]) for k in params if par_cot.get(k) is not None)

            def pert(t, u=u):
                return {k: p + t * u[k] for k, p in params.items()}, inputs
            res.analytic.append(ana)
            res.numeric.append(fd(pert))
            res.labels.append(f"params dir {d}")
    return res


def assert_vjp(forward, vjp, params, inputs, rtol: float = 1e-7, **kw) -> GradCheckResult:
    """:func:`check_vjp` and raise AssertionError (with the table) if any relative error > rtol."""
    r = check_vjp(forward, vjp, params, inputs, **kw)
    err = r.max_rel_error()
    if not r.ok(rtol):
        raise AssertionError(f"VJP disagrees with finite differences (max rel. error {err:.2e} > {rtol:.0e}):\n{r}")
    return r
