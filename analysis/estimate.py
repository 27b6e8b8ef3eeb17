"""Result records for statistical estimates: a value, its error and its per-ensemble replicas.

An :class:`Estimate` is what every resampling routine of :mod:`analysis` returns. It prints in
the usual lattice notation ``0.2761(21)`` (also under float format specs: ``f"{est:.3f}"`` is
``0.276(2)``, see :func:`format_estimate`), keeps the data its error comes from (resampling
replicas or Γ-method fluctuations) per *ensemble* (a named Monte Carlo chain), and supports
arithmetic with error propagation, in the spirit of pyerrors' ``Obs``:

    >>> a = Estimate.from_samples(plaq_A, ensemble="A")          # Γ-method, Monte Carlo series
    >>> b = Estimate.from_samples(plaq_B, ensemble="B")
    >>> r = np.log(a) / b ** 2 - 1.0                             # errors propagate
    >>> E = fit.energy(0); A = fit.amplitude(0)                 # one jackknife
    >>> ratio = A / E                                           # correlated error (= derive(...))

Ensembles. Every estimate with replicas carries them in ``blocks``, one block per ensemble,
named by ``ensembles`` (default ``""``: the one unnamed ensemble). When estimates are
combined, blocks with the *same* name are the same configurations — their replicas are
paired, so correlations are kept (their replica counts must agree, else ``ValueError``);
blocks with *different* names are independent ensembles — each estimate is extended by its
central value (jackknife, bootstrap) or by zero fluctuations (Γ-method) on the ensembles it
does not depend on, so that the errors of independent ensembles add in quadrature through
the derivative of the combination. Estimates without a name therefore behave as before
(one ensemble); give independent data sets different names (``ensemble=`` of
:func:`~analysis.jackknife`, :func:`~analysis.bootstrap`, :func:`~analysis.gamma_method`,
:func:`~analysis.fit_correlator`, :meth:`Estimate.from_samples`).

Error conventions (``method``):

* ``"jackknife"``: replicas f_k are the leave-one-bin-out values, and per ensemble
  err² = (n-1)/n Σ_k (f_k - f̄)², f̄ = mean of the replicas. The central value is f evaluated
  on the full sample (not bias-corrected); :attr:`Estimate.bias` = (n-1)(f̄ - f) is the
  jackknife estimate of the O(1/n) bias and :attr:`Estimate.bias_corrected` = n f - (n-1) f̄.
  Arithmetic applies the operation to every replica (exact, not linearised).
* ``"bootstrap"``: replicas are bootstrap values, per ensemble err² = their variance (ddof=1).
  Same ensemble = same draws.
* ``"gamma"``: "replicas" are the per-configuration fluctuations δ_i in Monte Carlo order
  (pyerrors' ``deltas``): δ_i = A_i - Ā for a primary observable. Arithmetic propagates them
  linearly with exact derivatives, δ(f) = Σ_j ∂f/∂a_j δ(a_j) (:func:`derive` uses central
  differences for a general function); the error is the Γ-method of :func:`~analysis.gamma_method`
  (Wolff's automatic window with parameter ``S``, bias-corrected Γ) applied per ensemble to
  δ(f), err² = Σ_ensembles err_e². :meth:`Estimate.gamma_details` gives τ_int and the window
  per ensemble.
* ``"hessian"``, ``"delta"``: no replicas; the error comes from the curvature of χ² or linear
  error propagation, and cannot be propagated further (arithmetic raises ``ValueError``).
  Methods cannot be mixed in one operation.

Indexing and unpacking (the choice, to avoid the tuple/array trap). An estimate behaves like
a NumPy array of uncertain numbers: ``est[i]``, slices and ``len(est)`` address its
*components* (``meff[8]`` is the effective mass at t = 8, an :class:`Estimate` with its
replicas); it never indexes into the (mean, err) pair. A scalar estimate has no components:
``est[0]`` raises ``TypeError``. Scalar estimates unpack as the pair ``mean, err = est``
(kept: it is how results are read). Unpacking an *array* estimate as ``mean, err`` is
deprecated (``DeprecationWarning``; it still works in this release): use ``est.mean`` and
``est.err``, which work for every shape.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Estimate", "derive", "align_ensembles", "format_value", "format_estimate", "replica_covariance", "central_jacobian",
           "DEFAULT_S"]

_REPLICA_METHODS = ("jackknife", "bootstrap")
_PROPAGATING_METHODS = ("jackknife", "bootstrap", "gamma")
DEFAULT_S = 1.5            # Wolff's S of the automatic window (pyerrors uses 2.0)


def format_value(mean: float, err: float, digits: int = 2) -> str:
    """Format ``mean ± err`` as ``mean(err)`` with ``digits`` significant digits of the error.

    ``format_value(0.27613, 0.00214) == '0.2761(21)'``; large or small numbers get a common
    exponent: ``format_value(1.2345e-5, 5.6e-8) == '1.2345(56)e-05'``.
    """
    mean = float(mean)
    err = float(err)
    if not math.isfinite(mean):
        return str(mean)
    if not math.isfinite(err) or err <= 0.0:
        return f"{mean:.6g}" + ("" if err == 0.0 else f"({err})")
    scale = max(abs(mean), err)
    exponent = int(math.floor(math.log10(scale)))
    suffix = ""
    if exponent < -3 or exponent > 4:
        mean, err = mean / 10.0 ** exponent, err / 10.0 ** exponent
        suffix = f"e{exponent:+03d}"
    decimals = digits - 1 - int(math.floor(math.log10(err)))
    if round(err, decimals) >= 10.0 ** (digits - decimals):   # rounding 0.0996 -> 0.10
        decimals -= 1
    if decimals > 0:
        return f"{mean:.{decimals}f}({round(err * 10.0 ** decimals):d}){suffix}"
    return f"{round(mean, decimals):.0f}({round(err, decimals):.0f}){suffix}"


# [[fill]align][sign][z][#][0][width][grouping][.precision][type] (Python's format-spec mini-language)
_SPEC = re.compile(r"(?:(?P<fill>.)?(?P<align>[<>=^]))?(?P<sign>[-+ ])?(?P<z>z)?(?P<alt>#)?(?P<zero>0)?"
                   r"(?P<width>\d+)?(?P<grouping>[,_])?(?:\.(?P<precision>\d+))?(?P<type>[eEfFgG%])?", re.S)


def _err_units(err: float, scale: float) -> str:
    """The error in units of the last printed digit (``scale`` = 10^decimals)."""
    if not math.isfinite(err):
        return str(err)
    return f"{round(abs(err) * scale):d}"


def format_estimate(mean: float, err: float, spec: str = "") -> str:
    """``mean ± err`` as text in the ``value(error)`` notation, under a format ``spec``.

    * ``""``: :func:`format_value` with two significant digits of the error, ``0.2761(21)``;
    * an integer ``"k"``: k significant digits of the error, ``format_estimate(0.27613, 0.00214,
      "3") == '0.27613(214)'`` (as before; not a field width);
    * a float spec of Python's mini-language, ``[[fill]align][sign][z][#][0][width][,][.p][type]``
      with type ``f``/``F``, ``e``/``E``, ``g``/``G``, ``%`` (or none): the value is formatted by
      the spec and the error is given in units of its last digit, i.e. with the same number
      p of decimals, err_digits = round(err · 10^p):

      - ``".3f"``: ``1.234(5)`` for 1.2341 ± 0.0049 (``".1f"`` of 12.34 ± 1.5: ``12.3(15)``);
      - ``".2e"``: ``1.23(5)e-05``, the error on the value's exponent: round(err/10^e · 10^p);
      - ``".2%"``: value and error times 100, ``27.61(21)%``;
      - ``"g"``/``"G"`` (and a precision without a type, ``".4"``) choose fixed or exponent form
        by Python's ``g`` rule for the value (p significant digits; trailing zeros are kept,
        since they carry the error's position);
      - sign, ``,``/``_`` grouping, ``#`` and ``z`` apply to the value; fill, align and width to
        the whole text (right-aligned by default, like numbers; ``=`` and ``0`` pad after the sign).

    An error that is zero prints as ``(0)``, a non-finite one as ``(nan)``/``(inf)``.
    """
    mean, err = float(mean), float(err)
    spec = str(spec)
    if not spec:
        return format_value(mean, err)
    if spec.isdigit():
        return format_value(mean, err, int(spec))
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise ValueError(f"invalid format spec {spec!r} for an Estimate: give a number of significant digits of "
                         f"the error (e.g. '3') or a float spec such as '.3f', '.2e', '.4g', '.1%', '>12.3f'")
    g = m.groupdict()
    typ, prec = g["type"], g["precision"]
    value_opts = (g["sign"] or "") + (g["z"] or "") + (g["alt"] or "") + (g["grouping"] or "")
    if typ is None and prec is None:
        if value_opts:
            raise ValueError(f"format spec {spec!r}: sign, grouping, '#' and 'z' need a float type or a "
                             f"precision (e.g. '+.3f')")
        core = format_value(mean, err)
    else:
        p = 6 if prec is None else int(prec)
        if typ in (None, "g", "G"):                      # Python's g rule for the value
            upper = typ == "G"
            pg = max(p, 1)
            x = int(f"{mean:.{pg - 1}e}".split("e")[1]) if math.isfinite(mean) and mean != 0 else 0
            typ, p = (("F" if upper else "f"), pg - 1 - x) if -4 <= x < pg else (("E" if upper else "e"), pg - 1)
        if typ in ("f", "F", "%"):
            scale = 100.0 if typ == "%" else 1.0
            val = format(mean * scale, f"{value_opts}.{p}{'F' if typ == 'F' else 'f'}")
            units = _err_units(err * scale, 10.0 ** p)
            core = f"{val}({units.upper() if typ == 'F' else units})" + ("%" if typ == "%" else "")
        else:                                             # e / E: the error on the value's exponent
            val = format(mean, f"{value_opts}.{p}{typ}")
            if typ in val:
                mant, ex = val.split(typ)
                units = _err_units(err / 10.0 ** int(ex), 10.0 ** p)
                core = f"{mant}({units}){typ}{ex}"
            else:                                         # nan / inf value: no exponent
                core = f"{val}({_err_units(err, 10.0 ** p)})"
    width = int(g["width"] or 0)
    if len(core) >= width:
        return core
    align = g["align"] or ("=" if g["zero"] else ">")
    fill = g["fill"] or ("0" if g["zero"] and not g["align"] else " ")
    if align == "=":
        k = 1 if core[:1] in "+- " else 0
        return core[:k] + fill * (width - len(core)) + core[k:]
    return format(core, f"{fill}{align}{width}")


def _block_slices(n, blocks):
    start = 0
    for nb in ((n,) if blocks is None else tuple(blocks)):
        yield slice(start, start + nb)
        start += nb


def replica_covariance(replicas: np.ndarray, method: str, blocks=None, S: float = DEFAULT_S) -> np.ndarray:
    """Covariance matrix of the flattened quantity from its replicas, shape (k, k).

    Sum over the blocks (independent ensembles) of — jackknife: (n_b-1)/n_b Σ_{k∈b} δf_k δf_kᵀ
    with δf_k = f_k - f̄_b; bootstrap: the sample covariance (ddof=1) of the block's replicas;
    Γ-method (replicas = fluctuations δ_i): D R D with D the Γ-method errors and R the
    correlation matrix of Σ_b Σ_{i∈b} δ_i δ_iᵀ / n_b² (autocorrelations neglected in the
    correlation, as pyerrors' ``covariance``).
    """
    r = np.asarray(replicas, dtype=np.float64)
    r = r.reshape(r.shape[0], -1)
    if method not in _PROPAGATING_METHODS:
        raise ValueError(f"replica covariance needs method 'jackknife', 'bootstrap' or 'gamma', got {method!r}")
    cov = np.zeros((r.shape[1], r.shape[1]))
    for sl in _block_slices(r.shape[0], blocks):
        rb = r[sl]
        nb = rb.shape[0]
        if method == "gamma":
            cov += rb.T @ rb / nb ** 2
            continue
        d = rb - rb.mean(axis=0)
        cov += d.T @ d * ((nb - 1) / nb if method == "jackknife" else 1.0 / (nb - 1))
    if method == "gamma":
        sd = np.sqrt(np.diag(cov))
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(np.outer(sd, sd) > 0, cov / np.outer(sd, sd), 0.0)
        err = _replica_error(r, "gamma", blocks, S).ravel()
        cov = corr * np.outer(err, err)
    return cov


def _replica_error(replicas: np.ndarray, method: str, blocks=None, S: float = DEFAULT_S) -> np.ndarray:
    r = np.asarray(replicas, dtype=np.float64)
    var = np.zeros(r.shape[1:])
    for sl in _block_slices(r.shape[0], blocks):
        rb = r[sl]
        nb = rb.shape[0]
        if method == "gamma":
            from .resampling import gamma_columns
            var = var + gamma_columns(rb.reshape(nb, -1), S, stacklevel=5)[0].reshape(r.shape[1:]) ** 2
        elif method == "bootstrap":
            var = var + np.var(rb, axis=0, ddof=1)
        else:
            var = var + (nb - 1) / nb * np.sum((rb - rb.mean(axis=0)) ** 2, axis=0)
    return np.sqrt(var)


def central_jacobian(func, x, h) -> np.ndarray:
    """∂func/∂x (func's flattened output × x.size) by central differences of steps ``h`` (per
    component of x; zero steps are replaced by 1e-10·max(|x|, 1))."""
    x = np.asarray(x, dtype=np.float64).ravel()
    h = np.where(h > 0, h, 1e-10 * np.maximum(np.abs(x), 1.0))
    cols = []
    for alpha in range(x.size):
        e = np.zeros_like(x)
        e[alpha] = h[alpha]
        fp = np.asarray(func(x + e), dtype=np.float64).ravel()
        fm = np.asarray(func(x - e), dtype=np.float64).ravel()
        cols.append((fp - fm) / (2 * h[alpha]))
    return np.stack(cols, axis=1)


def _scalar_or_array(x):
    a = np.asarray(x, dtype=np.float64)
    return float(a) if a.ndim == 0 else a


# ----------------------------------------------------------------------------- elementwise operations
def _d_pow_base(x, y):
    return y * np.power(x, y - 1.0)


def _d_pow_exponent(x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.power(x, y) * np.log(x)


# ufunc: derivative(s) with respect to each argument, evaluated at the central values
_UNARY = {
    np.negative: lambda x: -np.ones_like(x),
    np.positive: np.ones_like,
    np.absolute: np.sign,
    np.exp: np.exp,
    np.log: lambda x: 1.0 / x,
    np.sqrt: lambda x: 0.5 / np.sqrt(x),
    np.sin: np.cos,
    np.cos: lambda x: -np.sin(x),
    np.tan: lambda x: 1.0 / np.cos(x) ** 2,
    np.arcsin: lambda x: 1.0 / np.sqrt(1.0 - x * x),
    np.arccos: lambda x: -1.0 / np.sqrt(1.0 - x * x),
    np.arctan: lambda x: 1.0 / (1.0 + x * x),
    np.sinh: np.cosh,
    np.cosh: np.sinh,
    np.tanh: lambda x: 1.0 - np.tanh(x) ** 2,
    np.arcsinh: lambda x: 1.0 / np.sqrt(x * x + 1.0),
    np.arccosh: lambda x: 1.0 / np.sqrt(x * x - 1.0),
    np.arctanh: lambda x: 1.0 / (1.0 - x * x),
}
_BINARY = {
    np.add: (lambda x, y: np.ones_like(x), lambda x, y: np.ones_like(y)),
    np.subtract: (lambda x, y: np.ones_like(x), lambda x, y: -np.ones_like(y)),
    np.multiply: (lambda x, y: y, lambda x, y: x),
    np.true_divide: (lambda x, y: 1.0 / y, lambda x, y: -x / (y * y)),
    np.power: (_d_pow_base, _d_pow_exponent),
}


def _as_operand(x):
    """An Estimate, or a real constant as float64 array; None if x cannot take part."""
    if isinstance(x, Estimate):
        return x
    try:
        a = np.asarray(x)
    except (TypeError, ValueError):
        return None
    if a.dtype.kind not in "biuf":
        return None
    return a.astype(np.float64)


def _layout(estimates, what):
    """Method, ensemble names, replicas per ensemble and S of the union of ``estimates``."""
    method = S = None
    sizes = {}
    for e in estimates:
        if e.replicas is None or e.method not in _PROPAGATING_METHODS:
            raise ValueError(f"{what} needs replicas (jackknife, bootstrap) or Γ-method fluctuations; "
                             f"this estimate has method={e.method!r} without them, so its error cannot be "
                             "propagated")
        if method is None:
            method, S = e.method, e.S
        elif e.method != method:
            raise ValueError(f"{what}: estimates come from different resamplings ({method} vs {e.method}); "
                             "combine estimates of one method only")
        if method == "gamma" and e.S != S:
            raise ValueError(f"{what}: Γ-method estimates with different S ({S} vs {e.S}); use one S")
        for name, nb in zip(e.ensembles, e.blocks):
            if name in sizes and sizes[name] != nb:
                kind = "configurations" if method == "gamma" else f"{method} replicas"
                raise ValueError(
                    f"{what}: ensemble {name!r} has {sizes[name]} {kind} in one estimate and {nb} in another. "
                    "Estimates of the same ensemble must come from the same resampling (same configurations, "
                    "bin_size and bootstrap draws); if the data sets are independent, give them different "
                    "ensemble names (ensemble=...)")
            sizes.setdefault(name, nb)
    names = tuple(sizes)
    return method, names, tuple(sizes[n] for n in names), S


def _embed(e, names, sizes):
    """Replicas of ``e`` on the ensembles ``names``: its own blocks, and the central value
    (jackknife, bootstrap) or zero fluctuations (Γ-method) on the others."""
    if e.ensembles == names:
        return e.replicas
    own = {n: e.replicas[sl] for n, sl in zip(e.ensembles, _block_slices(e.replicas.shape[0], e.blocks))}
    fill = np.zeros(e.shape) if e.method == "gamma" else np.asarray(e.mean)
    return np.concatenate([own[n] if n in own else np.broadcast_to(fill, (nb,) + e.shape)
                           for n, nb in zip(names, sizes)], axis=0)


def _lead(r, ndim):
    """(n, *s) → (n, 1, ..., 1, *s) with ndim trailing axes, to broadcast like the means."""
    return r.reshape((r.shape[0],) + (1,) * (ndim - (r.ndim - 1)) + r.shape[1:])


def _elementwise(ufunc, *args):
    """ufunc(*args) for Estimates and real constants (NumPy broadcasting), errors propagated."""
    ops = [_as_operand(a) for a in args]
    if any(o is None for o in ops):
        return NotImplemented
    ests = [o for o in ops if isinstance(o, Estimate)]
    method, names, sizes, S = _layout(ests, f"{ufunc.__name__}()")
    vals = [o.mean if isinstance(o, Estimate) else o for o in ops]
    value = np.asarray(ufunc(*vals), dtype=np.float64)
    n = sum(sizes)
    if method == "gamma":
        derivs = (_UNARY[ufunc],) if len(ops) == 1 else _BINARY[ufunc]
        reps = np.zeros((n,) + value.shape)
        for o, d in zip(ops, derivs):
            if isinstance(o, Estimate):
                reps = reps + np.asarray(d(*vals), dtype=np.float64) * _lead(_embed(o, names, sizes), value.ndim)
    else:
        rargs = [_lead(_embed(o, names, sizes), value.ndim) if isinstance(o, Estimate) else o for o in ops]
        reps = np.asarray(ufunc(*rargs), dtype=np.float64)
        if reps.shape != (n,) + value.shape:                    # e.g. an estimate times a constant array
            reps = np.broadcast_to(reps, (n,) + value.shape).copy()
    return Estimate.from_replicas(value, reps, method, sizes, ensembles=names, S=S)


def _unary_method(ufunc):
    def method(self):
        return _elementwise(ufunc, self)
    method.__name__ = ufunc.__name__
    method.__doc__ = f"Elementwise {ufunc.__name__} with error propagation (the same as np.{ufunc.__name__}(est))."
    return method


@dataclass(repr=False, eq=False)
class Estimate:
    """A statistical estimate: ``mean``, ``err`` (same shape) and optional per-ensemble ``replicas``.

    See the module docstring for the error conventions, how ensembles combine and the
    indexing rules.

    Attributes
    ----------
    mean, err : float or ndarray of the same shape.
    replicas : ndarray (n_replicas, *shape) or None, the blocks of all ensembles one after the
        other. Jackknife: leave-one-bin-out values; bootstrap: bootstrap values; gamma:
        per-configuration fluctuations δ_i in Monte Carlo order.
    method : "jackknife" | "bootstrap" | "gamma" | "hessian" | "delta".
    blocks : replicas per ensemble (default: one block).
    label : optional name used when printing.
    ensembles : names of the blocks' ensembles (default ``""``, or ``"#0", "#1", ...`` for
        several unnamed blocks); same name = same configurations.
    S : Wolff's window parameter for ``method="gamma"`` (default :data:`DEFAULT_S` = 1.5).

    Arithmetic: ``+ - * / **``, unary ``-``, ``abs`` and the NumPy ufuncs exp, log, sqrt,
    sin, cos, tan, arcsin, arccos, arctan, sinh, cosh, tanh, arcsinh, arccosh, arctanh
    (``np.log(est)`` or ``est.log()``) work elementwise with other estimates and real numbers
    or arrays (constants, NumPy broadcasting); :func:`derive` handles any other function.
    :meth:`to_pyerrors` exports to pyerrors (optional extra ``analysis``).

    Printing (scalar estimates; :func:`format_estimate`): ``str(est)`` and ``f"{est}"`` give
    ``0.2761(21)`` (two significant digits of the error); ``f"{est:3}"`` three digits of the
    error, ``0.27613(214)``; a float spec formats the value and gives the error in units of
    its last digit: ``f"{est:.3f}"`` → ``0.276(2)``, ``f"{est:.2e}"`` → ``2.76(2)e-01``,
    ``f"{est:>12.4f}"`` right-aligned in 12 characters.
    """

    mean: object
    err: object
    replicas: np.ndarray | None = None
    method: str = "jackknife"
    blocks: tuple | None = None
    label: str = ""
    info: dict = field(default_factory=dict)
    ensembles: tuple | None = None
    S: float | None = None

    def __post_init__(self):
        self.mean = _scalar_or_array(self.mean)
        self.err = _scalar_or_array(self.err)
        if np.shape(self.mean) != np.shape(self.err):
            raise ValueError(f"mean shape {np.shape(self.mean)} != err shape {np.shape(self.err)}")
        if self.method == "gamma" and self.S is None:
            self.S = DEFAULT_S
        if self.replicas is None:
            return
        self.replicas = np.asarray(self.replicas, dtype=np.float64)
        if self.replicas.shape[1:] != np.shape(self.mean):
            raise ValueError(f"replicas shape {self.replicas.shape} does not match mean shape "
                             f"{np.shape(self.mean)}")
        if self.blocks is None:
            self.blocks = (self.replicas.shape[0],)
        self.blocks = tuple(int(b) for b in self.blocks)
        if sum(self.blocks) != self.replicas.shape[0]:
            raise ValueError(f"blocks {self.blocks} do not add up to {self.replicas.shape[0]} replicas")
        if self.ensembles is None:
            self.ensembles = ("",) if len(self.blocks) == 1 else tuple(f"#{i}" for i in range(len(self.blocks)))
        self.ensembles = tuple(str(x) for x in ((self.ensembles,) if isinstance(self.ensembles, str)
                                                 else self.ensembles))
        if len(self.ensembles) != len(self.blocks) or len(set(self.ensembles)) != len(self.ensembles):
            raise ValueError(f"ensembles {self.ensembles} must be {len(self.blocks)} distinct names, one per block")

    @classmethod
    def from_replicas(cls, mean, replicas, method: str, blocks=None, label: str = "", info=None,
                      ensembles=None, S: float | None = None) -> "Estimate":
        """Build an estimate whose error is computed from ``replicas`` by ``method``'s rule."""
        replicas = np.asarray(replicas, dtype=np.float64)
        S = DEFAULT_S if (method == "gamma" and S is None) else S
        err = _replica_error(replicas, method, blocks, S)
        return cls(mean, err, replicas, method, blocks, label, dict(info or {}), ensembles, S)

    @classmethod
    def from_samples(cls, samples, ensemble: str = "", method: str = "gamma", *, log_weights=None,
                     bin_size: int = 1, S: float = DEFAULT_S, n_boot: int = 1000, seed=0,
                     label: str = "") -> "Estimate":
        """The (reweighted) mean of ``samples`` (N, ...) in Monte Carlo order, as a primary
        observable of the ensemble ``ensemble``: the pyerrors ``Obs(samples, [ensemble])``.

        ``method="gamma"`` (default) keeps the fluctuations and uses the Γ-method with
        parameter ``S``; ``"jackknife"`` (with ``bin_size``) and ``"bootstrap"`` (``n_boot``,
        ``seed``) keep resampling replicas instead.
        """
        from . import resampling
        if method == "gamma":
            if bin_size != 1:
                raise ValueError("the Γ-method does not bin (autocorrelations are summed explicitly); "
                                 "leave bin_size=1")
            est = resampling.gamma_method(samples, log_weights=log_weights, S=S, ensemble=ensemble).estimate
            est.label = label
            return est
        if method == "jackknife":
            return resampling.jackknife(samples, log_weights=log_weights, bin_size=bin_size, label=label,
                                        ensemble=ensemble)
        if method == "bootstrap":
            return resampling.bootstrap(samples, log_weights=log_weights, n_boot=n_boot, seed=seed,
                                        bin_size=bin_size, label=label, ensemble=ensemble)
        raise ValueError(f"method must be 'gamma', 'jackknife' or 'bootstrap', got {method!r}")

    # ----------------------------------------------------------------- conveniences
    def __iter__(self):
        if np.ndim(self.mean) != 0:
            warnings.warn("unpacking an array Estimate as `mean, err = est` is deprecated and will be "
                          "removed in the next release (an array Estimate is indexed by component, "
                          "est[i]); use est.mean and est.err", DeprecationWarning, stacklevel=2)
        yield self.mean
        yield self.err

    @property
    def shape(self):
        return np.shape(self.mean)

    @property
    def ndim(self) -> int:
        return np.ndim(self.mean)

    @property
    def n_replicas(self) -> int:
        return 0 if self.replicas is None else self.replicas.shape[0]

    @property
    def rel_err(self):
        return np.abs(np.asarray(self.err) / np.asarray(self.mean))

    def __getitem__(self, idx) -> "Estimate":
        """Component(s) ``idx`` (NumPy indexing), an Estimate with the matching replicas."""
        if np.ndim(self.mean) == 0:
            raise TypeError("a scalar Estimate has no components to index; its value and error are "
                            "est.mean and est.err (or `mean, err = est`)")
        mean = np.asarray(self.mean)[idx]
        err = np.asarray(self.err)[idx]
        reps = None if self.replicas is None else self.replicas[(slice(None),) + np.index_exp[idx]]
        return Estimate(mean, err, reps, self.method, self.blocks, self.label, dict(self.info),
                        self.ensembles, self.S)

    def __len__(self):
        if np.ndim(self.mean) == 0:
            raise TypeError("scalar Estimate has no len(); its value and error are est.mean and est.err")
        return np.shape(self.mean)[0]

    def by_ensemble(self) -> dict:
        """{ensemble name: replicas (or Γ-method fluctuations) of that ensemble}."""
        self._need_replicas("by_ensemble()", _PROPAGATING_METHODS)
        return {n: self.replicas[sl] for n, sl in zip(self.ensembles, _block_slices(self.n_replicas, self.blocks))}

    def cov(self) -> np.ndarray:
        """Covariance matrix of the flattened estimate (needs replicas; see :func:`replica_covariance`)."""
        self._need_replicas("cov()", _PROPAGATING_METHODS)
        return replica_covariance(self.replicas, self.method, self.blocks, self.S or DEFAULT_S)

    def gamma_details(self, S: float | None = None) -> dict:
        """{ensemble: :class:`~analysis.GammaResult`} of a Γ-method estimate: each ensemble's
        contribution (err, τ_int, window, ρ) with this estimate's ``S`` or the given one.
        err² of the estimate is the sum of the ensembles' err²."""
        if self.method != "gamma" or self.replicas is None:
            raise ValueError("gamma_details() needs a Γ-method estimate with fluctuations, "
                             f"not method={self.method!r}")
        from .resampling import gamma_result
        S = self.S if S is None else S
        return {n: gamma_result(self.mean, d.reshape(d.shape[0], -1), S, ensemble=n)
                for n, d in self.by_ensemble().items()}

    @property
    def bias(self):
        """Jackknife bias estimate (n-1)(f̄_replicas - f); None for other methods."""
        if self.method != "jackknife" or self.replicas is None or len(self.blocks) != 1:
            return None
        n = self.replicas.shape[0]
        return _scalar_or_array((n - 1) * (self.replicas.mean(axis=0) - np.asarray(self.mean)))

    @property
    def bias_corrected(self):
        """Jackknife bias-corrected value n f - (n-1) f̄_replicas (single ensemble only)."""
        b = self.bias
        return None if b is None else _scalar_or_array(np.asarray(self.mean) - b)

    def apply(self, func, vectorized: bool = False, label: str = "") -> "Estimate":
        """f(estimate) with the error propagated through the replicas (same resampling)."""
        return derive(func, self, vectorized=vectorized, label=label)

    def to_pyerrors(self, S: float | None = None, gamma_method: bool = True, unnamed: str = "ensemble"):
        """This estimate as a ``pyerrors.Obs`` (a NumPy object array of them for array estimates);
        see :func:`analysis.pyerrors_interop.to_pyerrors`. Needs the optional extra ``analysis``."""
        from .pyerrors_interop import to_pyerrors
        return to_pyerrors(self, S=S, gamma_method=gamma_method, unnamed=unnamed)

    def _need_replicas(self, what, methods=_REPLICA_METHODS):
        if self.replicas is None or self.method not in methods:
            raise ValueError(f"{what} needs {' or '.join(methods)} replicas; this estimate has "
                             f"method={self.method!r}" + (" without replicas" if self.replicas is None else ""))

    # ----------------------------------------------------------------- arithmetic
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__" or kwargs or (ufunc not in _UNARY and ufunc not in _BINARY):
            return NotImplemented
        if (ufunc in _UNARY) != (len(inputs) == 1):
            return NotImplemented
        return _elementwise(ufunc, *inputs)

    def __add__(self, other):
        return _elementwise(np.add, self, other)

    def __radd__(self, other):
        return _elementwise(np.add, other, self)

    def __sub__(self, other):
        return _elementwise(np.subtract, self, other)

    def __rsub__(self, other):
        return _elementwise(np.subtract, other, self)

    def __mul__(self, other):
        return _elementwise(np.multiply, self, other)

    def __rmul__(self, other):
        return _elementwise(np.multiply, other, self)

    def __truediv__(self, other):
        return _elementwise(np.true_divide, self, other)

    def __rtruediv__(self, other):
        return _elementwise(np.true_divide, other, self)

    def __pow__(self, other):
        return _elementwise(np.power, self, other)

    def __rpow__(self, other):
        return _elementwise(np.power, other, self)

    def __neg__(self):
        return _elementwise(np.negative, self)

    def __pos__(self):
        return _elementwise(np.positive, self)

    def __abs__(self):
        return _elementwise(np.absolute, self)

    exp = _unary_method(np.exp)
    log = _unary_method(np.log)
    sqrt = _unary_method(np.sqrt)
    sin = _unary_method(np.sin)
    cos = _unary_method(np.cos)
    tan = _unary_method(np.tan)
    arcsin = _unary_method(np.arcsin)
    arccos = _unary_method(np.arccos)
    arctan = _unary_method(np.arctan)
    sinh = _unary_method(np.sinh)
    cosh = _unary_method(np.cosh)
    tanh = _unary_method(np.tanh)
    arcsinh = _unary_method(np.arcsinh)
    arccosh = _unary_method(np.arccosh)
    arctanh = _unary_method(np.arctanh)

    # ----------------------------------------------------------------- printing
    def __format__(self, spec):
        """``format(est, spec)`` / ``f"{est:spec}"`` of a scalar estimate, in the ``value(error)``
        notation (see :func:`format_estimate`): ``""`` → ``0.2761(21)``; an integer, e.g.
        ``"3"`` → three significant digits of the error; a float spec, e.g. ``".3f"`` →
        ``0.276(2)``. An array estimate prints its ``repr`` with ``spec=""``, and with a spec its
        components in NumPy's array layout, ``[1.234(5) 1.198(6)]``."""
        if np.ndim(self.mean) == 0:
            return format_estimate(self.mean, self.err, spec)
        if not spec:
            return repr(self)
        m, e = np.ravel(self.mean), np.ravel(self.err)
        format_estimate(m[0] if m.size else 0.0, e[0] if m.size else 0.0, spec)   # a bad spec raises here
        return np.array2string(np.arange(m.size).reshape(np.shape(self.mean)), separator=" ",
                               formatter={"int": lambda k: format_estimate(m[k], e[k], spec)})

    def __str__(self):
        if np.ndim(self.mean) == 0:
            return format_value(self.mean, self.err)
        return repr(self)

    def __repr__(self):
        tag = self.method + (f", n={self.n_replicas}" if self.replicas is not None else "")
        names = self.ensembles or ()
        if len(names) > 1 or any(names):
            tag += (", ensemble=" if len(names) == 1 else ", ensembles=") + ", ".join(names)
        if self.method == "gamma" and self.S is not None:
            tag += f", S={self.S:g}"
        name = f"{self.label}: " if self.label else ""
        if np.ndim(self.mean) == 0:
            return f"Estimate({name}{format_value(self.mean, self.err)}; {tag})"
        m = np.asarray(self.mean).ravel()
        e = np.asarray(self.err).ravel()
        idx = list(np.ndindex(np.shape(self.mean)))
        lines = [f"Estimate({name}shape={np.shape(self.mean)}; {tag})"]
        show = range(len(m)) if len(m) <= 40 else list(range(20)) + [None] + list(range(len(m) - 10, len(m)))
        for k in show:
            if k is None:
                lines.append("  ...")
                continue
            key = idx[k][0] if len(idx[k]) == 1 else idx[k]
            lines.append(f"  [{key}] {format_value(m[k], e[k])}")
        return "\n".join(lines)


def derive(func, *estimates: Estimate, vectorized: bool = False, label: str = "") -> Estimate:
    """Derived quantity ``func(*values)`` of estimates, with the error propagated.

    Jackknife/bootstrap: ``func`` is applied to the central values and to every replica
    (``vectorized=True``: once, to the stacked replicas with a leading axis). Γ-method: the
    fluctuations are propagated linearly, δf = J δ, with J from central differences of step
    √(Γ_αα(0)/N) per input component (Wolff's choice, as :func:`~analysis.gamma_method`;
    ``vectorized`` plays no role). Estimates of the same ensemble (name) stay correlated; estimates of different ensembles
    are independent (see the module docstring). All estimates must use one method.
    """
    if not estimates:
        raise ValueError("derive() needs at least one Estimate")
    for e in estimates:
        if not isinstance(e, Estimate):
            raise TypeError(f"derive() takes Estimate objects, got {type(e).__name__}")
    method, names, sizes, S = _layout(estimates, "derive()")
    mean = np.asarray(func(*[e.mean for e in estimates]), dtype=np.float64)
    R = [_embed(e, names, sizes) for e in estimates]
    n = sum(sizes)
    if method == "gamma":
        shapes = [e.shape for e in estimates]
        cuts = np.cumsum([0] + [int(np.prod(s)) for s in shapes])

        def flat_func(v):
            return func(*[v[cuts[i]:cuts[i + 1]].reshape(s) for i, s in enumerate(shapes)])

        D = np.concatenate([r.reshape(n, -1) for r in R], axis=1)             # (n, inputs)
        x = np.concatenate([np.ravel(e.mean) for e in estimates])
        h = np.sqrt(sum(np.sum(D[sl] ** 2, axis=0) / (sl.stop - sl.start) ** 2
                        for sl in _block_slices(n, sizes)))
        reps = (D @ central_jacobian(flat_func, x, h).T).reshape((n,) + mean.shape)
    elif vectorized:
        reps = np.asarray(func(*R), dtype=np.float64)
    else:
        reps = np.stack([np.asarray(func(*[r[k] for r in R]), dtype=np.float64) for k in range(n)])
    if reps.shape[1:] != mean.shape:
        raise ValueError(f"func returned shape {reps.shape[1:]} on replicas but {mean.shape} on the mean")
    return Estimate.from_replicas(mean, reps, method, sizes, label, ensembles=names, S=S)


def align_ensembles(*estimates: Estimate) -> tuple:
    """Put estimates from *independent* ensembles on one joint replica set.

    Estimate i (from ensemble i, its own resampling with n_i replicas) becomes an estimate
    with Σ n_j replicas in len(estimates) blocks: its own replicas in block i and its central
    value in every other block (zero fluctuations for the Γ-method). The per-block variances
    then add, and :func:`derive` of the aligned estimates gives the correct error of any
    function of them. Arithmetic and :func:`derive` do this by themselves for estimates with
    different ensemble names; this function is for data sets that were not named: ensembles
    whose names collide are renamed ``"#i"`` (or ``"#i:name"``) after their position i.
    """
    for e in estimates:
        if not isinstance(e, Estimate):
            raise TypeError(f"align_ensembles() takes Estimate objects, got {type(e).__name__}")
    all_names = [n for e in estimates for n in (e.ensembles or ())]
    renamed = []
    for i, e in enumerate(estimates):
        e._need_replicas("align_ensembles()", _PROPAGATING_METHODS)
        if len(set(all_names)) != len(all_names):
            names = tuple(f"#{i}" + (f":{n}" if n else "") for n in e.ensembles)
            e = Estimate(e.mean, e.err, e.replicas, e.method, e.blocks, e.label, dict(e.info), names, e.S)
        renamed.append(e)
    _, names, sizes, _ = _layout(renamed, "align_ensembles()")
    return tuple(Estimate.from_replicas(e.mean, _embed(e, names, sizes), e.method, sizes, e.label, e.info,
                                        names, e.S) for e in renamed)
