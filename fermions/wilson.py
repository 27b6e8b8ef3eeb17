"""The Wilson hopping term H with the two-spinor projection trick, and its link derivative.

    (H psi)(x) = sum_mu [ (1 - gamma_mu) U_mu(x) psi(x + mu^) + (1 + gamma_mu) U_mu(x - mu^)^dag psi(x - mu^) ]

(docs/design.md §6; gamma basis in :mod:`fermions.gamma`). Boundary conditions are phases
e^{i theta_mu} on the links that cross the boundary, U_mu(x) -> e^{i theta_mu} U_mu(x) for
x_mu = L_mu - 1 (global coordinate); the default ``bc = (1, 1, 1, -1)`` is periodic in space
and antiperiodic in time (the last axis). The backward hop uses U^dag, so it picks up the
conjugate phase, as it must.

Kernel
------
Each of the 8 hops projects psi onto a half spinor h = psi_up + s B_mu psi_dn (2 spin rows,
:mod:`fermions.gamma`), multiplies by the link (forward: at the target site after the shift;
backward: U^dag at the source site, then the shift moves the *half* spinor, halving the
halo), and reconstructs the lower rows as s B_mu^dag h. The conventional count is 1320
flops per site. The hopping term itself (full lattice and even-odd blocks, and the adjoint
gamma_5 H gamma_5) is a kernel of the kernel layer, :mod:`lattice.kernels.hopping`: one
array-API reference and compiled fast paths chosen by the array namespace; this module
prepares the links (:class:`WilsonLinks`: boundary phases, SoA order, packing) and passes
the spin tables :data:`fermions.gamma.PROJ`.

Internally the operators work on *spin/colour-major* ("SoA") arrays with the sites last,
``(*batch, 4, N, L_0, L_1, L_2, L_3)``, so every arithmetic operation runs over long
contiguous site vectors. The public
spinor convention ``(*batch, L_0, ..., L_3, 4, N)`` is converted at the operator boundary
(:func:`to_soa`, :func:`from_soa`). Neighbours: ``layout.shift(F, mu, sign, inner=0)`` on the
full lattice, :meth:`fermions.evenodd.EvenOdd.fetch` on packed half lattices (the compiled
kernels do the index arithmetic themselves and take only the halo faces from the layout).

Link derivative
---------------
For fixed spinor fields a, b and U_mu(x) -> exp(t X_mu(x)) U_mu(x),

    d/dt Re[a^dag H b] = sum_{x,mu} Re tr[X_mu(x) Omega_mu(x)],
    Omega_mu(x) = U_mu(x) B1_mu(x) - B2_mu(x) U_mu(x)^dag,
    B1_mu(x)_{ji} = sum_q g^-_q(x + mu^)_j conj(f^-_q(x)_i),    (g^-, f^-) = P^- (b, a),
    B2_mu(x)_{ji} = sum_q g^+_q(x)_j conj(f^+_q(x + mu^)_i),    (g^+, f^+) = P^+ (b, a),

where P^s psi = psi_up + s B_mu psi_dn is the half-spinor projection (this uses
(1 + s gamma)^dag (1 + s gamma) = 2 (1 + s gamma) and the unitarity of B_mu). The su(N) force
of the docs/design.md §4 convention is then -1/2 T[(Omega - Omega^dag)/2]
(:func:`force_from_omega`): <F, X> = -2 tr(F X) = Re tr(X Omega) for all X in su(N).
"""
from __future__ import annotations

from lattice.backend import namespace
from lattice.layout import Layout
from lattice import su_n, kernels
from lattice.kernels.hopping import spin_project

from .gamma import PROJ
from .evenodd import even_odd

__all__ = ["to_soa", "from_soa", "link_to_soa", "omega_to_gauge", "normalise_bc", "WilsonLinks",
           "force_from_omega", "FLOPS_PER_SITE_HOPPING"]

#: Conventional flop count of the Wilson hopping term per lattice site.
FLOPS_PER_SITE_HOPPING = 1320

# ---------------------------------------------------------------------------- layouts
_SPIN_AX = -6   # spin axis of an SoA spinor (*batch, 4, N, L0, L1, L2, L3)
_COL_AX = -5    # colour axis


def _contiguous(x):
    """A C-contiguous copy of x when x is a strided view (portable: reshape to 1d copies)."""
    xp = namespace(x)
    return xp.reshape(xp.reshape(x, (-1,)), tuple(x.shape))


def to_soa(psi):
    """(*batch, L0, L1, L2, L3, 4, N) -> contiguous (*batch, 4, N, L0, L1, L2, L3)."""
    xp = namespace(psi)
    n = psi.ndim
    if n < 6:
        raise ValueError(f"spinor field must have shape (*batch, L0, L1, L2, L3, 4, N); got {tuple(psi.shape)}")
    perm = tuple(range(n - 6)) + (n - 2, n - 1) + tuple(range(n - 6, n - 2))
    return _contiguous(xp.permute_dims(psi, perm))


def from_soa(psi):
    """Inverse of :func:`to_soa`."""
    xp = namespace(psi)
    n = psi.ndim
    perm = tuple(range(n - 6)) + tuple(range(n - 4, n)) + (n - 6, n - 5)
    return _contiguous(xp.permute_dims(psi, perm))


def link_to_soa(Umu):
    """(*batch, L0..L3, N, N) -> contiguous (*batch, N, N, L0..L3)."""
    return to_soa(Umu)


def omega_to_gauge(Om):
    """List of 4 SoA colour matrix fields (*batch, N, N, L0..L3) -> gauge layout
    (*batch, 4, L0..L3, N, N)."""
    xp = namespace(*Om)
    return xp.stack([from_soa(o) for o in Om], axis=Om[0].ndim - 6)


def normalise_bc(bc):
    """Boundary phases as a tuple of 4 complex numbers of modulus 1.

    ``"antiperiodic"`` (default of the operators) = (1, 1, 1, -1): antiperiodic in time (the last
    axis), periodic in space; ``"periodic"`` = (1, 1, 1, 1); or any 4 phases e^{i theta_mu}.
    """
    if isinstance(bc, str):
        if bc == "antiperiodic":
            return (1.0, 1.0, 1.0, -1.0)
        if bc == "periodic":
            return (1.0, 1.0, 1.0, 1.0)
        raise ValueError(f"unknown boundary condition {bc!r}; use 'antiperiodic', 'periodic' or 4 phases")
    bc = tuple(complex(b) for b in bc)
    if len(bc) != 4 or any(abs(abs(b) - 1.0) > 1e-12 for b in bc):
        raise ValueError(f"boundary phases must be 4 complex numbers of modulus 1, got {bc}")
    return tuple(b.real if b.imag == 0 else b for b in bc)


def force_from_omega(Om):
    """su(N) gradient F with <F, X> = Re tr(X Omega) for all X in su(N): F = -1/2 T[(Om - Om^dag)/2]."""
    return -0.5 * su_n.project_algebra(Om)


# ---------------------------------------------------------------------------- derivative pieces
def _outer_sum(g, f):
    """B_{ji} = sum_q g_q,j conj(f_q,i) for SoA half spinors (*, 2, N, sites) -> (*, N, N, sites)."""
    xp = namespace(g, f)
    fc = xp.conj(f)
    B = None
    for q in range(2):
        t = xp.expand_dims(g[..., q, :, :, :, :, :], axis=-5) * xp.expand_dims(fc[..., q, :, :, :, :, :], axis=-6)
        B = t if B is None else B + t
    return B


def _matmul_soa(A, B):
    """Colour product of SoA matrix fields (*, N, N, sites)."""
    N = A.shape[-5]
    out = None
    for k in range(N):
        t = A[..., :, k:k + 1, :, :, :, :] * B[..., k:k + 1, :, :, :, :, :]
        out = t if out is None else out + t
    return out


def _dagger_soa(A):
    xp = namespace(A)
    n = A.ndim
    perm = tuple(range(n - 6)) + (n - 5, n - 6) + tuple(range(n - 4, n))
    return _contiguous(xp.conj(xp.permute_dims(A, perm)))


# ---------------------------------------------------------------------------- link sets
class WilsonLinks:
    """Gauge links prepared for the hopping kernel (boundary phases applied, SoA order).

    Parameters
    ----------
    U : gauge field (*batch, 4, L0, L1, L2, L3, N, N).
    layout : its :class:`lattice.Layout` (4d).
    bc : boundary phases (see :func:`normalise_bc`).
    """

    def __init__(self, U, layout: Layout, bc="antiperiodic"):
        xp = namespace(U)
        self.xp = xp
        self.layout = layout
        self.bc = normalise_bc(bc)
        self.N = U.shape[-1]
        self.dtype = U.dtype
        mu_ax = U.ndim - 7
        self.batch_shape = tuple(U.shape[:mu_ax])
        coords = layout.coords(xp)
        self.U = []          # SoA U_mu (*batch, N, N, sites), boundary phases included
        for mu in range(4):
            Umu = link_to_soa(U[(slice(None),) * mu_ax + (mu, ...)])
            ph = self.bc[mu]
            if ph != 1.0:
                last = coords[mu] == layout.global_shape[mu] - 1
                fac = xp.where(last, xp.asarray(ph, dtype=U.dtype), xp.asarray(1.0, dtype=U.dtype))
                Umu = Umu * fac
            self.U.append(Umu)
        self.Udag = [_dagger_soa(u) for u in self.U]
        self._eo = None
        self._kcache = {}    # prepared forms of U for the compiled hopping kernels (lattice.kernels)
        self._kcache_eo = {}

    # ---- full lattice
    def hop(self, psi, dagger: bool = False):
        """(up, dn) of H psi on the full lattice (``dagger``: of H^dag psi = gamma_5 H gamma_5 psi),
        psi SoA (*batch, 4, N, sites). The kernel layer chooses the implementation
        (:func:`lattice.kernels.wilson_hop`)."""
        return kernels.wilson_hop(psi, self.U, self.Udag, self.layout, PROJ, dagger=dagger, cache=self._kcache)

    # ---- even-odd
    @property
    def eo(self):
        return even_odd(self.layout)

    def _eo_links(self):
        """(packed U, packed U^dag): ``[p][mu]`` the links at the parity-p sites (SoA)."""
        if self._eo is None:
            eo = self.eo
            packed = [eo.pack(u, inner=0) for u in self.U]
            packed_dag = [eo.pack(u, inner=0) for u in self.Udag]
            self._eo = ([[packed[mu][p] for mu in range(4)] for p in (0, 1)],
                        [[packed_dag[mu][p] for mu in range(4)] for p in (0, 1)])
        return self._eo

    def hop_eo(self, psi, target: int, dagger: bool = False):
        """(up, dn) of H_{p,1-p} psi: target parity p = ``target``, psi packed SoA on parity 1-p
        (``dagger``: of gamma_5 H_{p,1-p} gamma_5 psi = (H_{1-p,p})^dag psi)."""
        U, Udag = self._eo_links()
        return kernels.wilson_hop_eo(psi, U, Udag, self.eo, target, PROJ, dagger=dagger, cache=self._kcache_eo)

    # ---- derivative
    def omega(self, a, b):
        """Omega_mu(x) (SoA, list over mu) with d/dt Re[a^dag H(e^{tX}U) b] = sum Re tr(X Omega).

        a, b : full-lattice SoA spinors; the result broadcasts their batch axes with U's.
        """
        lay = self.layout
        a_up, a_dn = a[..., 0:2, :, :, :, :, :], a[..., 2:4, :, :, :, :, :]
        b_up, b_dn = b[..., 0:2, :, :, :, :, :], b[..., 2:4, :, :, :, :, :]
        out = []
        for mu in range(4):
            blk = PROJ[mu][0]
            fm = spin_project(a_up, a_dn, blk, -1)
            gm = lay.shift(spin_project(b_up, b_dn, blk, -1), mu, +1, inner=0)
            B1 = _outer_sum(gm, fm)
            fp = lay.shift(spin_project(a_up, a_dn, blk, +1), mu, +1, inner=0)
            gp = spin_project(b_up, b_dn, blk, +1)
            B2 = _outer_sum(gp, fp)
            out.append(_matmul_soa(self.U[mu], B1) - _matmul_soa(B2, self.Udag[mu]))
        return out

    def omega_from_blocks(self, B1, B2):
        """Omega = U B1 - B2 U^dag from SoA colour-matrix fields B1[mu], B2[mu]."""
        return [_matmul_soa(self.U[mu], B1[mu]) - _matmul_soa(B2[mu], self.Udag[mu]) for mu in range(4)]

    def astype(self, dtype):
        """The same links in another complex dtype (e.g. complex64 for an inner solver)."""
        xp = self.xp
        new = WilsonLinks.__new__(WilsonLinks)
        new.__dict__.update(self.__dict__)
        new.U = [xp.astype(u, dtype) for u in self.U]
        new.Udag = [xp.astype(u, dtype) for u in self.Udag]
        new.dtype = dtype
        new._eo = None
        new._kcache = {}
        new._kcache_eo = {}
        return new
