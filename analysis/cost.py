"""Cost model of the paper's eq. (19): when do flows pay for their training?

Per configuration (units: GPU·hours, or any common unit)

    c_ε = generation + measurement                                      (ε-reweighting)
    c_f = generation + flow evaluation + 2 × measurement + reweighting  (flows)

plus the one-off training cost T for flows. If flows reduce the variance by a factor r at
fixed number of configurations, ε-reweighting needs r·N configurations for the precision
flows reach with N, so flows are cheaper once

    T + N c_f < r N c_ε   ⇔   N > N* = T / (r c_ε - c_f)   (needs r c_ε > c_f; else never).

N* counts flow configurations; the ε-reweighting run it competes with has r·N*.

Worked example: the paper's own numbers (A100 GPUs). Generation and measurement 0.17 GPU·h
each, flow evaluation 0.01, reweighting 0.04, so c_ε = 0.34 and c_f = 0.56 GPU·h; training
T = 4608 GPU·h as printed. Then N* ≈ 4.0k at r = 5 (4042) and ≈ 1.6k at r = 10 (1623),
matching "a computational advantage is achieved after 4k configurations". Note: the
paper's "8 days on 16 A100s" is 8 × 24 × 16 = 3072 GPU·h, not 4608 (4608 would be 12 days,
or 8 days on 24 GPUs); with T = 3072 the break-even is 2695 (r = 5) and 1082 (r = 10).
:func:`paper_example` returns both.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["break_even", "per_config_costs", "total_costs", "paper_example", "PAPER_COSTS"]

#: The paper's cost figures (GPU·h per configuration on A100s, training in GPU·h).
PAPER_COSTS = {"generation": 0.17, "measurement": 0.17, "flow_eval": 0.01, "reweighting": 0.04,
               "training_printed": 4608.0, "training_8d_16gpu": 8 * 24 * 16.0}


def _nonneg(name, v):
    a = np.asarray(v, dtype=np.float64)
    if np.any(~np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must be finite and non-negative, got {v!r}")
    return a


def per_config_costs(generation: float, measurement: float, flow_eval: float, reweighting: float):
    """(c_ε, c_f) of eq. (19): c_ε = gen + meas, c_f = gen + flow eval + 2 meas + reweighting."""
    g, m, f, r = (_nonneg(n, v) for n, v in (("generation", generation), ("measurement", measurement),
                                              ("flow_eval", flow_eval), ("reweighting", reweighting)))
    c_eps = g + m
    c_flow = g + f + 2 * m + r
    return float(c_eps), float(c_flow)


def break_even(r, training: float, c_flow: float, c_eps: float):
    """Break-even number of (flow) configurations N* = T / (r c_ε - c_f) of eq. (19).

    r : variance-reduction factor of flows at fixed N (scalar or array).
    training : one-off training cost T; c_flow, c_eps : costs per configuration (same unit).
    Returns N* (float or array); ``inf`` where r c_ε ≤ c_f (flows never catch up).
    """
    r = np.asarray(r, dtype=np.float64)
    if np.any(~np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"variance-reduction factor r must be positive, got {r!r}")
    T = _nonneg("training", training)
    cf = _nonneg("c_flow", c_flow)
    ce = _nonneg("c_eps", c_eps)
    gain = r * ce - cf
    with np.errstate(divide="ignore"):
        n = np.where(gain > 0, T / np.where(gain > 0, gain, 1.0), np.inf)
    return float(n) if n.ndim == 0 else n


def total_costs(n, r, training: float, c_flow: float, c_eps: float):
    """(cost with flows for N configurations, cost of ε-reweighting at equal precision = r N c_ε)."""
    n = _nonneg("n", n)
    return training + n * c_flow, np.asarray(r, dtype=np.float64) * n * c_eps


@dataclass
class _Example:
    c_eps: float
    c_flow: float
    rows: list

    def __repr__(self):
        lines = [f"eq. (19) with the paper's numbers: c_eps = {self.c_eps:.2f}, c_flow = {self.c_flow:.2f} GPU*h",
                 f"  {'training [GPU*h]':>18s}  {'r':>4s}  {'break-even N':>12s}"]
        for T, r, n in self.rows:
            lines.append(f"  {T:18.0f}  {r:4g}  {n:12.0f}")
        lines.append("  (4608 GPU*h is the printed training cost; 8 days on 16 A100s is 3072 GPU*h)")
        return "\n".join(lines)


def paper_example(r=(5.0, 10.0)):
    """The paper's eq.-(19) numbers for both training costs (printed 4608 and 8 d × 16 GPUs = 3072)."""
    c_eps, c_flow = per_config_costs(PAPER_COSTS["generation"], PAPER_COSTS["measurement"],
                                     PAPER_COSTS["flow_eval"], PAPER_COSTS["reweighting"])
    rows = []
    for T in (PAPER_COSTS["training_printed"], PAPER_COSTS["training_8d_16gpu"]):
        for rr in np.atleast_1d(r):
            rows.append((T, float(rr), break_even(rr, T, c_flow, c_eps)))
    return _Example(c_eps, c_flow, rows)
