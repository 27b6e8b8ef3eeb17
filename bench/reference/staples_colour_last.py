"""Staple network for learned active loops (paper eqs. 3-8) with a hand-written adjoint.

A *staple* S_mu(x) is any complex N x N matrix field that transforms like the link,
S_mu(x) -> Omega(x) S_mu(x) Omega(x + mu^)^dag (docs/design.md §4). The network maps the
frozen links to the *active staple* S^act_mu(x) of one direction mu; the coupling layer then
builds the active loop L = P_SU(N)(U_mu S^act_mu^dag) (eq. 1).

Layers (N_l = ``n_layers`` of them, channel widths K_0 = 1, K_1 = ... = K_{N_l-1} = width,
K_{N_l} = 1; eq. 3):

* input (eq. 4): S^(0)_mu(x) = (1 - m_mu(x)) U_mu(x), m the active mask (1 = active);
* transported staples, per channel k, in the gauge-covariant form of docs/design.md §7
  (the paper's printed eq. 6 transforms like U^dag):

      S^L_mu,nu(x) = S_nu(x - nu^)^dag  S_mu(x - nu^)  S_nu(x + mu^ - nu^),
      S^R_mu,nu(x) = S_nu(x)            S_mu(x + nu^)  S_nu(x + mu^)^dag;

  with S = U, sum_nu (S^L + S^R) is the usual plaquette staple sum: U_mu S^R_mu,nu^dag is the
  plaquette P_mu,nu(x) and U_mu S^L_mu,nu^dag the plaquette in the (mu, -nu) plane;
* augmented vector of direction mu (channel-major blocks of K_i channels each):

      aug = [S_mu | S^L_mu,nu_1 | ... | S^L_mu,nu_{Nd-1} | S^R_mu,nu_1 | ... | S^R_mu,nu_{Nd-1}],

  nu_1 < nu_2 < ... the directions other than mu, so aug has K_i (2 Nd - 1) channels;
* mixing (eq. 7): S^(i+1)_mu,k = sum_l c^(i)_mu,k,l aug_l with real coefficients;
* output (eq. 8): S^act_mu = S^(N_l)_mu,0 for the network's direction ``mu``.

Coefficients (a choice; the paper is silent): every layer has its own coefficients for each
output direction mu and for each (side L/R, nu) block, i.e. ``c{i}`` has shape
(n_dirs_i, K_{i+1}, K_i (2 Nd - 1)) with n_dirs_i = Nd for the hidden layers (all directions
are needed as inputs of the next layer) and n_dirs = 1 (direction ``mu`` only) for the last
layer. Per-direction coefficients cost little and let each layer adapt to its mask, which
breaks the lattice rotations anyway; translation invariance (hence use on any volume) is kept.

Initialisation ("near the identity", paper section 2): at gain 0 every hidden layer is the
identity on channel 0 (c^(i)_mu,k,l = delta_kl on the S_mu block) and the last layer forms the
plaquette staple sum of channel 0, so the active staple starts as

      S^act_mu = sum_nu (S^L_mu,nu + S^R_mu,nu)[S^(0)],

i.e. learned loops start where fixed plaquette loops start. (A network that is exactly the
identity would give S^act = 0 on the active links, which eq. 4 zeroes.) On top, Xavier-normal
noise of gain 0.5 (std = gain sqrt(2 / (fan_in + fan_out)), fan_in = K_i (2Nd - 1),
fan_out = K_{i+1}) as in the paper. In terms of :func:`lattice.loops.plaquette_staples`
(which returns A with U A = sum of plaquettes) the gain-0 output is S^act = A^dag of the masked
field.

Dependence on the links: S^act is a polynomial in the entries of S^(0), and every term that
contains an active link vanishes, so S^act depends on frozen links only (exactly).
Receptive field: N_l lattice steps. Neighbour access only via ``layout.shift``.

Arrays: U ``(*batch, Nd, *sites, N, N)``; mask ``(Nd, *sites)`` with 0/1 entries (bool,
int or float); output ``(*batch, *sites, N, N)``. Internally channels lead:
``(K, *batch, *sites, N, N)``, so that the mixing is one matrix product per direction.
"""
from __future__ import annotations

import math

from lattice.backend import namespace, real_dtype
from lattice.layout import infer_gauge_layout, LayoutError
from lattice.fields import links, stack_links
from lattice import su_n

from flows.module import Module

__all__ = ["StapleNet", "staple_mask_factor"]


def staple_mask_factor(mask, layout, like):
    """Per-direction factors (1 - m_mu), shape (*sites, 1, 1), dtype of ``like`` (eq. 4).

    Checks that ``mask`` has shape (Nd, *local_sites) and entries 0 or 1.
    """
    xp = namespace(like)
    expect = (layout.Nd,) + tuple(layout.local_shape)
    if tuple(mask.shape) != expect:
        raise LayoutError(f"active mask of shape {tuple(mask.shape)} does not fit the lattice: expected "
                          f"(Nd, *sites) = {expect}")
    m = xp.astype(mask, real_dtype(xp, like.dtype))
    if not xp.isdtype(mask.dtype, "bool") and not bool(xp.all((m == 0) | (m == 1))):
        raise ValueError("active mask must contain only 0 (frozen) and 1 (active)")
    keep = xp.astype(1.0 - m, like.dtype)
    return [xp.reshape(keep[mu, ...], tuple(layout.local_shape) + (1, 1)) for mu in range(layout.Nd)]


class StapleNet(Module):
    """Staple network of one coupling layer (eqs. 3-8); see the module docstring.

    Parameters
    ----------
    Nd : number of lattice dimensions.
    mu : the direction whose active staple is produced (the layer's active direction).
    width : N_h, channels of the hidden staple fields.
    n_layers : N_l, number of mixing layers (eq. 3); N_l - 1 hidden staple fields. (The paper's
        "2 hidden layers with N_h = 8" reads as N_l = 3 in this counting, or N_l = 2 if it counts
        mixing layers.)
    save_memory : keep only the layer inputs in ``ctx`` and recompute the transported staples in
        the VJP (memory per site and layer drops from ~(K_i (2Nd - 1) + Nd K_i) to Nd K_i
        staple fields per layer, about 3x less for N_h = 8; the VJP costs one more forward).

    ``forward(params, U, mask, layout=None) -> ((S_act,), ctx)`` with S_act of shape
    ``(*batch, *sites, N, N)``; ``vjp(params, ctx, S_act_bar) -> ((U_bar, None), grads)``.
    """

    def __init__(self, Nd: int, mu: int, width: int = 8, n_layers: int = 2, save_memory: bool = False):
        if not 2 <= int(Nd) <= 4:
            raise ValueError(f"Nd must be 2, 3 or 4, got {Nd}")
        if not 0 <= int(mu) < int(Nd):
            raise ValueError(f"direction mu = {mu} out of range for Nd = {Nd}")
        if int(n_layers) < 1 or int(width) < 1:
            raise ValueError(f"need n_layers >= 1 and width >= 1, got {n_layers}, {width}")
        self.Nd, self.mu, self.width, self.n_layers = int(Nd), int(mu), int(width), int(n_layers)
        L = self.n_layers
        self.widths = [1] + [self.width] * (L - 1) + [1]
        self.dirs = [tuple(range(self.Nd))] * (L - 1) + [(self.mu,)]
        self.n_blocks = 2 * self.Nd - 1
        self.save_memory = bool(save_memory)

    # ------------------------------------------------------------------ parameters
    def config(self) -> dict:
        return {"Nd": self.Nd, "mu": self.mu, "width": self.width, "n_layers": self.n_layers,
                "save_memory": self.save_memory}

    def param_shapes(self) -> dict:
        return {f"c{i}": (len(self.dirs[i]), self.widths[i + 1], self.widths[i] * self.n_blocks)
                for i in range(self.n_layers)}

    def others(self, mu: int):
        return [nu for nu in range(self.Nd) if nu != mu]

    def _block(self, mu: int, side: str, nu: int) -> int:
        """Index of the (side, nu) block of the augmented vector of direction mu (0 = S_mu)."""
        j = self.others(mu).index(nu)
        return 1 + j if side == "L" else self.Nd + j

    def identity_params(self, xp=None) -> dict:
        """The gain-0 coefficients: hidden layers identity on channel 0, last layer = plaquette
        staple sum of channel 0."""
        from lattice.backend import default_xp
        xp = default_xp() if xp is None else xp
        out = {}
        for i, shape in enumerate(self.param_shapes().values()):
            c = [[[0.0] * shape[2] for _ in range(shape[1])] for _ in range(shape[0])]
            K_in = self.widths[i]
            for j, mu in enumerate(self.dirs[i]):
                if i < self.n_layers - 1:
                    for k in range(min(K_in, shape[1])):
                        c[j][k][k] = 1.0          # S_mu block, channel k -> k
                else:
                    for nu in self.others(mu):
                        for side in ("L", "R"):
                            c[j][0][self._block(mu, side, nu) * K_in] = 1.0
            out[f"c{i}"] = xp.asarray(c, dtype=xp.float64)
        return out

    def init(self, rng, gain: float = 0.5) -> dict:
        """Gain-0 coefficients plus Xavier-normal noise of the given gain (paper: 0.5)."""
        xp = rng.xp
        params = self.identity_params(xp)
        if gain:
            for key, c in params.items():
                fan_out, fan_in = c.shape[1], c.shape[2]
                std = gain * math.sqrt(2.0 / (fan_in + fan_out))
                params[key] = c + std * rng.normal(tuple(c.shape))
        return params

    # ------------------------------------------------------------------ forward
    def _augment(self, S, mu, layout):
        xp = namespace(S[mu])
        Smu = S[mu]
        Ls, Rs = [], []
        for nu in self.others(mu):
            Snu = S[nu]
            T = layout.shift(Snu, mu, +1)                     # S_nu(x + mu)
            P = layout.shift(Smu, nu, +1)                     # S_mu(x + nu)
            D = su_n.dagger(Snu) @ Smu @ T                     # S^L at x + nu
            Ls.append(layout.shift(D, nu, -1))
            Rs.append(Snu @ P @ su_n.dagger(T))
        return xp.concat([Smu] + Ls + Rs, axis=0)

    @staticmethod
    def _mix(c, aug):
        xp = namespace(aug)
        n_aug = aug.shape[0]
        y = c @ xp.reshape(aug, (n_aug, -1))
        return xp.reshape(y, (c.shape[0],) + tuple(aug.shape[1:]))

    def _check_params(self, params):
        for k, shape in self.param_shapes().items():
            if k not in params:
                raise KeyError(f"StapleNet: missing parameter {k!r} (expected shape {shape})")
            if tuple(params[k].shape) != shape:
                raise ValueError(f"StapleNet: parameter {k!r} has shape {tuple(params[k].shape)}, "
                                 f"expected {shape} ({self.config()})")

    def forward(self, params, U, mask, *, layout=None):
        layout = infer_gauge_layout(U, layout)
        if layout.Nd != self.Nd:
            raise LayoutError(f"StapleNet built for Nd = {self.Nd} got a {layout.Nd}d gauge field")
        self._check_params(params)
        xp = namespace(U)
        keep = staple_mask_factor(mask, layout, U)
        S = [xp.expand_dims(keep[mu] * Ul, axis=0) for mu, Ul in enumerate(links(U, layout))]
        saved = []
        for i in range(self.n_layers):
            c = xp.astype(params[f"c{i}"], U.dtype)
            augs, outs = [], [None] * self.Nd
            for j, mu in enumerate(self.dirs[i]):
                aug = self._augment(S, mu, layout)
                augs.append(None if self.save_memory else aug)
                outs[mu] = self._mix(c[j, ...], aug)
            saved.append((S, augs))
            S = outs
        ctx = (layout, keep, saved)
        return (S[self.mu][0, ...],), ctx

    # ------------------------------------------------------------------ adjoint
    def _augment_vjp(self, S, mu, aug_bar, acc, layout):
        """Accumulate the cotangents of the S_nu from that of the augmented vector of mu."""
        K = S[mu].shape[0]
        Smu = S[mu]

        def add(nu, v):
            acc[nu] = v if acc[nu] is None else acc[nu] + v

        add(mu, aug_bar[0:K, ...])
        for j, nu in enumerate(self.others(mu)):
            bL, bR = 1 + j, self.Nd + j
            Lb = aug_bar[bL * K:(bL + 1) * K, ...]
            Rb = aug_bar[bR * K:(bR + 1) * K, ...]
            Snu = S[nu]
            T = layout.shift(Snu, mu, +1)
            P = layout.shift(Smu, nu, +1)
            # R = S_nu P T^dag:  S_nu_b = R_b T P^dag, P_b = S_nu^dag R_b T, T_b = R_b^dag S_nu P
            RbT = Rb @ T
            Snu_b = RbT @ su_n.dagger(P)
            P_b = su_n.dagger(Snu) @ RbT
            T_b = su_n.dagger(Rb) @ (Snu @ P)
            # L = shift(D, nu, -1), D = S_nu^dag S_mu T:
            # S_nu_b += S_mu T D_b^dag, S_mu_b = S_nu D_b T^dag, T_b += S_mu^dag S_nu D_b
            Db = layout.shift(Lb, nu, +1)
            Snu_b = Snu_b + (Smu @ T) @ su_n.dagger(Db)
            SnuDb = Snu @ Db
            Smu_b = SnuDb @ su_n.dagger(T)
            T_b = T_b + su_n.dagger(Smu) @ SnuDb
            add(nu, Snu_b + layout.shift(T_b, mu, -1))
            add(mu, Smu_b + layout.shift(P_b, nu, -1))

    def vjp(self, params, ctx, S_bar):
        layout, keep, saved = ctx
        Sin0 = saved[0][0][0]
        xp = namespace(Sin0)
        grads = {}
        if S_bar is None:
            grads = {k: xp.zeros(v.shape, dtype=v.dtype) for k, v in params.items()}
            return (None, None), grads
        acc_dt = xp.complex128
        out_bar = [None] * self.Nd
        out_bar[self.mu] = xp.expand_dims(xp.astype(S_bar, Sin0.dtype), axis=0)
        for i in reversed(range(self.n_layers)):
            S, augs = saved[i]
            c = xp.astype(params[f"c{i}"], Sin0.dtype)
            acc = [None] * self.Nd
            gc = []
            for j, mu in enumerate(self.dirs[i]):
                aug, ob = augs[j], out_bar[mu]
                if aug is None and ob is not None:
                    aug = self._augment(S, mu, layout)      # recomputed (save_memory=True)
                if ob is None:
                    gc.append(xp.zeros(tuple(c.shape[1:]), dtype=xp.float64))
                    continue
                n_aug, K_out = aug.shape[0], ob.shape[0]
                ob_f = xp.reshape(ob, (K_out, -1))
                aug_f = xp.reshape(aug, (n_aug, -1))
                # c_bar = Re sum conj(ob) aug, accumulated in double precision
                g = xp.conj(xp.astype(ob_f, acc_dt)) @ xp.matrix_transpose(xp.astype(aug_f, acc_dt))
                gc.append(xp.real(g))
                aug_bar = xp.reshape(xp.matrix_transpose(c[j, ...]) @ ob_f, tuple(aug.shape))
                self._augment_vjp(S, mu, aug_bar, acc, layout)
            p = params[f"c{i}"]
            grads[f"c{i}"] = xp.astype(xp.stack(gc, axis=0), p.dtype)
            out_bar = acc
        Ub = []
        for mu in range(self.Nd):
            b = out_bar[mu]
            Ub.append(xp.zeros_like(Sin0[0, ...]) if b is None else keep[mu] * b[0, ...])
        return (stack_links(Ub, layout), None), grads
