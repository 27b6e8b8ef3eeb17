"""SU(N) and su(N) algebra on stacked N x N matrices (any leading shape, any backend).

Conventions (docs/design.md §4)
---------------------------------
* su(N) = traceless anti-Hermitian N x N matrices, inner product <A, B> = -2 tr(A B).
* Generators T^a = i lambda^a / 2 (generalised Gell-Mann matrices lambda^a,
  tr(lambda^a lambda^b) = 2 delta^ab), orthonormal: <T^a, T^b> = delta^ab.
  Coordinates of X in su(N): X^a = <T^a, X>, X = sum_a X^a T^a.
* The gradient (force) of a real function S of a matrix U in SU(N) is the su(N) element
  grad S with d/dt S(exp(tX) U)|_0 = <grad S, X>. From the complex cotangent
  G = dS/dRe U + i dS/dIm U it is grad S = -1/4 T[U G^dag - G U^dag]
  (T = traceless part), see :func:`force_from_cotangent`; conversely a force F is the
  cotangent 2 F U (:func:`cotangent_from_force`).
"""
from __future__ import annotations

import math
from functools import lru_cache

from .backend import namespace, from_host

__all__ = [
    "dagger", "trace", "eye_like", "traceless", "project_algebra", "generators",
    "to_coords", "from_coords", "expm", "expm_reference", "det", "remove_det_phase", "project_su", "project_u", "polar_svd",
    "reunitarize", "gram_schmidt", "check_su_n", "unitarity_violation", "force_from_cotangent",
    "cotangent_from_force", "inner", "random_algebra", "InvalidGaugeField",
]


class InvalidGaugeField(ValueError):
    """Raised when links are not in SU(N) (non-unitary, wrong determinant, NaN)."""


def dagger(U):
    """Hermitian conjugate of the last two axes."""
    xp = namespace(U)
    return xp.conj(xp.matrix_transpose(U))


def trace(U):
    """Trace over the last two axes, shape ``U.shape[:-2]``."""
    N = U.shape[-1]
    t = U[..., 0, 0]
    for i in range(1, N):
        t = t + U[..., i, i]
    return t


def eye_like(U):
    """Identity matrices broadcastable against ``U`` (shape ``(N, N)``), same dtype/device."""
    xp = namespace(U)
    N = U.shape[-1]
    return xp.eye(N, dtype=U.dtype, device=getattr(U, "device", None))


def traceless(M):
    """Traceless part T[M] = M - tr(M)/N."""
    N = M.shape[-1]
    return M - (trace(M) / N)[..., None, None] * eye_like(M)


def project_algebra(M):
    """Projection onto su(N): the traceless anti-Hermitian part T[(M - M^dag)/2]."""
    return traceless(0.5 * (M - dagger(M)))


def inner(A, B):
    """<A, B> = -2 Re tr(A B), summed over the last two axes only (shape ``A.shape[:-2]``)."""
    xp = namespace(A, B)
    # tr(AB) = sum_ij A_ij B_ji
    return -2.0 * xp.real(xp.sum(A * xp.matrix_transpose(B), axis=(-2, -1)))


@lru_cache(maxsize=None)
def _generators_host(N: int):
    """T^a = i lambda^a / 2 (generalised Gell-Mann matrices) as nested Python lists."""
    def mat(entries):
        m = [[0j] * N for _ in range(N)]
        for (r, c), v in entries.items():
            m[r][c] = 0.5j * v
        return m
    lams = []
    for j in range(N):
        for k in range(j + 1, N):
            lams.append(mat({(j, k): 1, (k, j): 1}))
            lams.append(mat({(j, k): -1j, (k, j): 1j}))
    for l in range(1, N):
        f = math.sqrt(2.0 / (l * (l + 1)))
        lams.append(mat({**{(m, m): f for m in range(l)}, (l, l): -l * f}))
    return lams


def generators(N: int, xp=None, dtype=None):
    """Orthonormal su(N) generators T^a = i lambda^a / 2, shape ``(N*N - 1, N, N)``.

    Order: for each pair j < k the symmetric then antisymmetric off-diagonal generator,
    then the N - 1 diagonal ones (for N = 3 this is a permutation of the Gell-Mann order).
    """
    from .backend import default_xp
    xp = default_xp() if xp is None else xp
    return from_host(_generators_host(N), xp, dtype=dtype)


def to_coords(X):
    """Real coordinates X^a = <T^a, X> of su(N) elements, shape ``(*X.shape[:-2], N*N-1)``."""
    xp = namespace(X)
    N = X.shape[-1]
    T = generators(N, xp)
    T = xp.astype(T, X.dtype) if T.dtype != X.dtype else T
    # <T^a, X> = -2 Re sum_ij T^a_ij X_ji
    Tt = xp.reshape(xp.matrix_transpose(T), (N * N - 1, N * N))
    Xf = xp.reshape(X, X.shape[:-2] + (N * N,))
    return -2.0 * xp.real(Xf @ xp.matrix_transpose(Tt))


def from_coords(c, N: int | None = None, dtype=None):
    """su(N) element sum_a c^a T^a from real coordinates, shape ``(*c.shape[:-1], N, N)``."""
    xp = namespace(c)
    A = c.shape[-1]
    if N is None:
        N = int(round(math.sqrt(A + 1)))
    if N * N - 1 != A:
        raise ValueError(f"{A} coordinates do not belong to su(N) for any N")
    cdt = dtype or (xp.complex64 if c.dtype == xp.float32 else xp.complex128)
    T = xp.astype(generators(N, xp), cdt)
    Tf = xp.reshape(T, (A, N * N))
    return xp.reshape(xp.astype(c, cdt) @ Tf, c.shape[:-1] + (N, N))


def random_algebra(rng, N: int, lead=(), layout=None, scale: float = 1.0):
    """Gaussian su(N) elements P = sum_a p^a T^a, p^a ~ N(0, scale^2).

    With ``scale = 1`` this is the HMC momentum distribution exp(-<P, P>/2).
    """
    c = rng.normal(lead, layout, inner=(N * N - 1,))
    if scale != 1.0:
        c = c * scale
    return from_coords(c, N)


def det(U):
    """Determinant over the last two axes (closed forms for N <= 3)."""
    xp = namespace(U)
    N = U.shape[-1]
    if N == 1:
        return U[..., 0, 0]
    if N == 2:
        return U[..., 0, 0] * U[..., 1, 1] - U[..., 0, 1] * U[..., 1, 0]
    if N == 3:
        a = U
        return (a[..., 0, 0] * (a[..., 1, 1] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 1])
                - a[..., 0, 1] * (a[..., 1, 0] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 0])
                + a[..., 0, 2] * (a[..., 1, 0] * a[..., 2, 1] - a[..., 1, 1] * a[..., 2, 0]))
    return xp.linalg.det(U)


def remove_det_phase(U):
    """U / det(U)^(1/N) with the principal branch of the N-th root (U(N) -> SU(N))."""
    xp = namespace(U)
    N = U.shape[-1]
    phase = xp.atan2(xp.imag(det(U)), xp.real(det(U)))  # principal arg in (-pi, pi]
    rot = xp.cos(phase / N) - 1j * xp.sin(phase / N)
    return U * xp.astype(rot, U.dtype)[..., None, None]


def gram_schmidt(Z):
    """Orthonormalise the columns of Z (modified Gram-Schmidt); QR with positive diag(R)."""
    xp = namespace(Z)
    N = Z.shape[-1]
    cols = []
    for j in range(N):
        v = Z[..., :, j]
        for q in cols:
            v = v - xp.sum(xp.conj(q) * v, axis=-1, keepdims=True) * q
        v = v / xp.astype(xp.sqrt(xp.sum(xp.abs(v) ** 2, axis=-1, keepdims=True)), v.dtype)
        cols.append(v)
    return xp.stack(cols, axis=-1)


def polar_svd(M):
    """SVD factors ``(W, s, Vh)`` of M = W diag(s) Vh (s descending), batched.

    They give the polar decomposition M = Q H with Q = W Vh = P_U(N)(M) and
    H = Vh^dag diag(s) Vh = (M^dag M)^(1/2); ``flows.project_u`` keeps them for its adjoint.
    Computed by :func:`lattice.kernels.polar` (closed form for SU(3) on the compiled path, the
    SVD otherwise and for ill-conditioned matrices).
    """
    from .kernels import polar
    return polar(M)


def project_u(M):
    """Polar projection onto U(N): P_U(N)(M) = W V^dag for the SVD M = W Sigma V^dag (eq. 9).

    Equals M (M^dag M)^(-1/2) = (M M^dag)^(-1/2) M (the paper prints the factors of eq. 9
    in the wrong order). Forward only; ``flows.project_u`` adds the adjoint.
    """
    W, _, Vh = polar_svd(M)
    return W @ Vh


def project_su(M):
    """P_SU(N)(M) = P_U(N)(M) / det(P_U(N)(M))^(1/N), principal branch (eq. 10).

    Conjugation equivariant: P(g M g^dag) = g P(M) g^dag. This is the one SU(N)
    projection of the project (reunitarisation uses it too).
    """
    return remove_det_phase(project_u(M))


def reunitarize(U):
    """Project links back onto SU(N) (removes rounding drift); see :func:`project_su`."""
    return project_su(U)


def unitarity_violation(U):
    """Per-matrix max(|U^dag U - 1|_max, |det U - 1|), shape ``U.shape[:-2]``."""
    xp = namespace(U)
    dev = dagger(U) @ U - eye_like(U)
    a = xp.max(xp.abs(xp.reshape(dev, dev.shape[:-2] + (-1,))), axis=-1)
    b = xp.abs(det(U) - 1.0)
    bad = xp.where(xp.isnan(a) | xp.isnan(b), xp.asarray(float("inf"), dtype=a.dtype), xp.maximum(a, b))
    return bad


def check_su_n(U, tol: float | None = None, what: str = "gauge field"):
    """Raise :class:`InvalidGaugeField` unless every matrix of U is in SU(N).

    The message names the worst matrix (its multi-index) and how far it is off.
    Default tolerance: 1e-10 in double, 1e-4 in single precision.
    """
    xp = namespace(U)
    if U.ndim < 2 or U.shape[-1] != U.shape[-2]:
        raise InvalidGaugeField(f"{what}: expected trailing N x N matrices, got shape {tuple(U.shape)}")
    if not xp.isdtype(U.dtype, "complex floating"):
        raise InvalidGaugeField(f"{what}: expected a complex dtype (complex128 or complex64), got {U.dtype}")
    if tol is None:
        tol = 1e-4 if U.dtype == xp.complex64 else 1e-10
    v = unitarity_violation(U)
    worst = float(xp.max(v))
    if not worst <= tol:
        from .backend import host_argmax
        idx = host_argmax(v)
        raise InvalidGaugeField(
            f"{what}: link at index {idx} (of shape {tuple(v.shape)}) is not in "
            f"SU({U.shape[-1]}): max(|U^dag U - 1|, |det U - 1|) = {worst:.3e} > tolerance {tol:.1e}"
            + (" (NaN in the field)" if math.isinf(worst) else "")
            + ". Reunitarise with lattice.su_n.reunitarize(U) if this is rounding drift.")
    return U


def expm(X, terms: int = 18):
    """exp(X) for stacked N x N matrices of moderate norm (exact to rounding for su(N)).

    Computed by :func:`lattice.kernels.expm` (compiled per matrix for N = 3 on NumPy); its
    reference is :func:`expm_reference`, documented here.
    """
    from .kernels import expm as _kernel_expm
    return _kernel_expm(X, terms)


def expm_reference(X, terms: int = 18):
    """exp(X) for stacked N x N matrices of moderate norm (array-API reference of
    :func:`expm`).

    Cayley-Hamilton power series with scaling and squaring, one mechanism for every N:
    Y = X / 2^s with ||Y||_F <= 1; the characteristic polynomial of Y (Newton's identities
    from tr Y^k) reduces every power Y^n to sum_{k<N} a_{n,k} Y^k, so
    exp(Y) = sum_{k<N} (sum_n a_{n,k}/n!) Y^k is a series in scalars only (truncated at
    ``terms``, error < 1/(terms+1)! ~ 1e-17); then exp(X) = exp(Y)^(2^s).
    Cost for SU(3): 2 matrix products + s squarings. Accurate to ~1e-15 for ||X|| <~ 1.
    """
    xp = namespace(X)
    N = X.shape[-1]
    nrm = xp.sqrt(xp.sum(xp.abs(xp.reshape(X, X.shape[:-2] + (N * N,))) ** 2, axis=-1))
    maxn = float(xp.max(nrm))
    if not math.isfinite(maxn):
        raise ValueError("expm: input contains NaN or inf")
    s = max(0, math.ceil(math.log2(maxn))) if maxn > 1.0 else 0
    Y = X * (0.5 ** s) if s else X
    # powers Y^0 .. Y^(N-1) and traces t_k = tr(Y^k), k = 1..N
    pows = [None, Y]
    for k in range(2, N):
        pows.append(pows[-1] @ Y)
    t = [None, trace(Y)]
    for k in range(2, N + 1):
        # tr(Y^k) = sum_ij (Y^(k-1))_ij Y_ji
        t.append(xp.sum(pows[k - 1] * xp.matrix_transpose(Y), axis=(-2, -1)))
    # elementary symmetric polynomials e_k (Newton): Y^N = sum_{k=1}^N (-1)^(k-1) e_k Y^(N-k)
    e = [xp.ones_like(t[1])]
    for k in range(1, N + 1):
        acc = xp.zeros_like(t[1])
        for i in range(1, k + 1):
            term = e[k - i] * t[i]
            acc = acc + term if (i % 2 == 1) else acc - term
        e.append(acc / k)
    red = [((-1) ** (N - j - 1)) * e[N - j] for j in range(N)]  # Y^N = sum_j red[j] Y^j
    # power-series coefficients: a_n (vector over k < N), start a_0 = (1, 0, ..., 0)
    zero = xp.zeros_like(t[1])
    a = [xp.ones_like(t[1])] + [zero] * (N - 1)
    coef = list(a)
    fact = 1.0
    for n in range(1, terms + 1):
        top = a[N - 1]
        a = [top * red[0]] + [a[j - 1] + top * red[j] for j in range(1, N)]
        fact /= n
        coef = [coef[j] + fact * a[j] for j in range(N)]
    E = coef[0][..., None, None] * eye_like(X)
    for j in range(1, N):
        E = E + coef[j][..., None, None] * pows[j]
    for _ in range(s):
        E = E @ E
    return E


def force_from_cotangent(U, G):
    """su(N) gradient from the complex cotangent G = dS/dRe U + i dS/dIm U (docs/design.md §4):
    grad S = -1/4 T[U G^dag - G U^dag]."""
    return -0.25 * traceless(U @ dagger(G) - G @ dagger(U))


def cotangent_from_force(U, F):
    """Complex cotangent 2 F U of a force F (inverse of :func:`force_from_cotangent` on the
    tangent space)."""
    return 2.0 * (F @ U)
