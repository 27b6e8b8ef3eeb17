"""Exact reference results used by the physics tests (host-side, NumPy/SciPy)."""
from __future__ import annotations

import numpy as np
from scipy.special import ive


def wilson_2d_plaquette(beta: float, N: int, qmax: int = 40) -> float:
    """Exact infinite-volume 2d Wilson-action plaquette <(1/N) Re tr P> for SU(N).

    Each plaquette is independent with weight exp((beta/N) Re tr U), so
    <(1/N) Re tr P> = d ln z / d beta with z(beta) = sum_q det[I_{q+i-j}(beta/N)]_{i,j=1..N}
    (Gross-Witten/Bars; the sum over q projects U(N) onto SU(N)). Exponentially scaled
    Bessel functions keep it finite; the derivative uses I_n' = (I_{n-1} + I_{n+1}) / 2 and
    Jacobi's formula d det A = det A tr(A^-1 dA).
    """
    x = beta / N
    idx = np.arange(N)[:, None] - np.arange(N)[None, :]
    z, dz = 0.0, 0.0
    for q in range(-qmax, qmax + 1):
        A = ive(q + idx, x)
        dA = 0.5 * (ive(q + idx - 1, x) + ive(q + idx + 1, x)) - A  # d/dx of I e^{-x}, times e^{x}
        d = np.linalg.det(A)
        if d == 0.0:
            continue
        z += d
        dz += d * np.trace(np.linalg.solve(A, dA))
    # z carries a factor e^{-N x}; d ln z/dx = dz/z + N
    return float((dz / z + N) / N)
