"""Linear-response initialisation of residual flows between nearby actions (paper section 3).

For a flow f built from :class:`flows.residual.ResidualLayer` s, all with constants a_{l,k}
(layer l, term k) and no field-dependent part, the log-weight of a base configuration U
(drawn from r = p_lambda1) expands to first order in the constants as

    log w(f(U)) = log p(f(U)) - log r(U) + log J(U)
                = y(U) + sum_{l,k} a_{l,k} F_{l,k}(U) + O(a^2),      y = log p(U) - log r(U),   (LR1)

with F_{l,k} the closed form of :meth:`flows.residual.ResidualLayer.linear_response`
(div X_k - <grad S_target, X_k> over the layer's active links; all layers are evaluated at
the same U at this order). For the correlated-ensemble flow y = -(S_lambda2 - S_lambda1)
(+ the log determinant ratio with dynamical fermions).

The constants are *tied* by their class key (loop family, plane type, link type): all layers
share one coefficient per class, c_K, and F_K = sum of the F_{l,k} of that class, so (LR1)
becomes y + sum_K c_K F_K -- a handful of regressors (3 for plaquette terms). Minimising
var(log w) over the ensemble is then the least-squares problem

    min_c sum_i [ (y_i - <y>) + sum_K c_K (F_{K,i} - <F_K>) ]^2,                       (LR2)

solved in float64 on the host (:func:`analysis.control_variate_fit`); ``share_removed`` is the fraction of var(y) that (LR2)
removes at linear order. The fitted c_K are written into the layers' constants
(a = atanh(c / c_max), clipped at 0.95 c_max with a report); reverse-KL training with
path gradients refines them (and any field-dependent part) afterwards.

Cost: one target force and one staple evaluation per layer and configuration.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lattice.backend import host_concat, namespace

__all__ = ["LinearResponseFit", "linear_response_features", "linear_response_fit"]


@dataclass
class LinearResponseFit:
    """Result of :func:`linear_response_fit`: class keys, fitted coefficients c_K, the share
    of var(y) removed at linear order, var(y), the number of configurations, and the keys
    whose coefficient was clipped at its bound."""
    keys: list
    coefficients: list
    share_removed: float
    var_y: float
    n_configs: int
    clipped: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"keys": list(self.keys), "coefficients": [float(c) for c in self.coefficients],
                "share_removed": float(self.share_removed), "var_y": float(self.var_y),
                "n_configs": int(self.n_configs), "clipped": list(self.clipped)}

    def describe(self) -> str:
        rows = [f"  {k:45s} c = {c: .6e}" for k, c in zip(self.keys, self.coefficients)]
        return (f"linear-response fit on {self.n_configs} configurations: {100 * self.share_removed:.1f}% of "
                f"var(log w) = {self.var_y:.4g} removed at first order\n" + "\n".join(rows)
                + (f"\n  clipped at 0.95 of their bound: {', '.join(self.clipped)}" if self.clipped else ""))


def _residual_layers(model):
    return [(i, l) for i, l in enumerate(model.layers) if hasattr(l, "linear_response")]


def linear_response_features(model, params, configs, base, target, layout=None, batch_size: int = 8):
    """(keys, F, y): the tied regressors F (host float64 (n_configs, n_keys)) of (LR1) and
    y = log p - log r (n_configs,), over ``configs`` (n, Nd, *sites, N, N) in batches."""
    from .module import sub_params
    layers = _residual_layers(model)
    if not layers:
        raise ValueError("linear-response initialisation needs a flow with residual layers "
                         "(flows.residual.ResidualLayer); this model has none")
    keys = []
    for _, l in layers:
        for k in l.term_keys:
            if k not in keys:
                keys.append(k)
    n = int(configs.shape[0])
    Fs, ys = [], []
    for i0 in range(0, n, int(batch_size)):
        U = configs[i0:i0 + batch_size]
        xp = namespace(U)
        lay = model.layout_of(U, layout) if hasattr(model, "layout_of") else layout
        G = target.force(U, layout=lay)
        y = target.log_prob(U, layout=lay) - base.log_prob(U, layout=lay)
        cols = {k: None for k in keys}
        for i, l in layers:
            F = l.linear_response(sub_params(f"layer{i}", params), U, G, layout=lay)
            for j, k in enumerate(l.term_keys):
                cols[k] = F[..., j] if cols[k] is None else cols[k] + F[..., j]
        Fs.append(xp.stack([cols[k] for k in keys], axis=-1))
        ys.append(y)
    return keys, host_concat(Fs, "float64"), host_concat(ys, "float64")


def linear_response_fit(model, params, configs, base, target, layout=None, batch_size: int = 8):
    """Fit the tied constants by (LR2) and return ``(params, LinearResponseFit)``; ``params``
    is a new dict with every residual layer's ``coef`` set to the fitted c of its classes.
    ``configs``: base-distribution configurations (e.g. the training part of the lambda_1
    ensemble); ``base``, ``target``: objects with ``log_prob`` and ``force`` (flows.targets)."""
    from analysis import control_variate_fit
    keys, F, y = linear_response_features(model, params, configs, base, target, layout, batch_size)
    if F.shape[0] < 2 * len(keys) + 2:
        raise ValueError(f"linear-response fit of {len(keys)} coefficients needs more than {2 * len(keys) + 2} "
                         f"configurations, got {F.shape[0]}")
    c, share = control_variate_fit(y, F)
    var_y = float(y.var())
    cmap = dict(zip(keys, c))
    out = dict(params)
    clipped = []
    for i, l in _residual_layers(model):
        key = f"layer{i}.coef"
        xp = namespace(params[key])
        raw, cl = l.raw_from_coefficients([cmap[k] for k in l.term_keys], xp)
        out[key] = raw
        clipped += [l.term_keys[j] for j in cl if l.term_keys[j] not in clipped]
    return out, LinearResponseFit(keys, [float(v) for v in c], share, var_y, int(F.shape[0]), clipped)
