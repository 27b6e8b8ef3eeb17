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

i.e. the sum of the 2(Nd - 1) plaquette staples through the active link (a fixed "plaquette"
loop is one of them, of the layer's orientation). (A network that is exactly the
identity would give S^act = 0 on the active links, which eq. 4 zeroes.) On top, Xavier-normal
noise of gain 0.5 (std = gain sqrt(2 / (fan_in + fan_out)), fan_in = K_i (2Nd - 1),
fan_out = K_{i+1}) as in the paper. In terms of :func:`lattice.loops.plaquette_staples`
(which returns A with U A = sum of plaquettes) the gain-0 output is S^act = A^dag of the masked
field.

Dependence on the links: S^act is a polynomial in the entries of S^(0), and every term that
contains an active link vanishes, so S^act depends on frozen links only (exactly).
Receptive field: N_l lattice steps. Neighbour access only via ``layout.shift``.

Arrays: U ``(*batch, Nd, *sites, N, N)``; mask ``(Nd, *sites)`` with 0/1 entries (bool,
int or float); output ``(*batch, *sites, N, N)``.

Implementation (issue 14): internally every staple field is *colour-first*,
``(N, N, K, *batch, *sites)`` (:mod:`lattice.kernels`), so each 3x3 product is an unrolled
entry-wise kernel over long vectors (NumPy) or one fused CUDA kernel (CuPy), daggers are index
swaps inside the product, and the mixing (eq. 7) is one real-coefficient matrix product per
colour entry with no transposition (:func:`lattice.kernels.real_mix`: a real GEMM on the
interleaved float view, since the coefficients are real). The augmented vector is written
block by block into one preallocated array (no concatenation). With the two-link products

      Y_a,b(x) = S_a(x) S_b(x + a^)

the transported staples are S^L_mu,nu = shift_-nu(S_nu^dag Y_mu,nu) and S^R_mu,nu =
Y_nu,mu S_nu(x + mu^)^dag. Per chunk of direction pairs one
:func:`lattice.kernels.transported_staples` call writes all S^L and S^R of the chunk into
their slots; its adjoint is :func:`lattice.kernels.transported_staples_vjp`. On one process with
NumPy that is a fused product chain per pair and block of sites, with S read at neighbour sites
through index tables and the Y shared by a pair (mu, nu) and its partner (nu, mu): no shifted
field and no intermediate product is written to memory (6 products per pair of partners
forward, 14 in the VJP, which recomputes the Y). On MPI-split axes with NumPy the same
kernels run on the block extended by one ghost plane per split side (one exchange of S per
layer, shared by its chunks through :func:`lattice.kernels.ghosted_input`; the adjoint adds
the chunks' cotangents on the extended block and sends the ghost planes back once). Otherwise (CuPy, reference) the shifted
fields are stacked with ``layout.shift`` and :func:`lattice.kernels.staple_pairs` runs the
fused CUDA chain or gathered product compositions on them. Fields of all directions live in one array ``(N, N, Nd, K, *batch, *sites)``.
The output layer (direction mu only, one channel out) is one :func:`lattice.kernels.transported_mix`
call: with NumPy (one process or ghost block) its transported staples are mixed as they are formed (its
augmented vector, (2Nd - 1) K staple fields, is never written; the VJP recomputes the
staples for the coefficient gradient), elsewhere it is the same augment-and-mix composition.
Small fields (the first layer, K = 1) go in one chunk; large ones in chunks of at most
``StapleNet.CHUNK_MATRICES`` matrices per field (a pair and its partner at least), which keeps
the peak memory of the generic path near that of the colour-last code. The colour-last
implementation this replaced is kept as the benchmark reference (``bench/reference/staples_colour_last.py``);
tests/test_flows_staples.py checks that both give the same numbers.
"""
from __future__ import annotations

import math

from lattice.backend import namespace, real_dtype
from lattice.layout import infer_gauge_layout, LayoutError
from lattice.fields import links, stack_links
from lattice import kernels

from .module import Module

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
        Where the output layer's mixing is fused, that layer keeps no staples either way.

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
    #: pairs are processed in chunks of at most this many matrices per field (>= 1 pair), so
    #: that small fields are batched into few kernel calls and large ones keep the peak memory
    #: near that of the network's inputs and augmented vectors
    CHUNK_MATRICES = 1 << 15

    def _chunks(self, i, S):
        """Pair chunks of layer i: Q = the (mu, nu) blocks of the augmented vectors (mu in dirs,
        nu != mu, in block order) and a list of chunks, each a list of indices into Q. A pair
        and its partner (nu, mu) always share a chunk (they share the two-link products in
        :func:`lattice.kernels.staple_pairs`); a chunk holds at most ``CHUNK_MATRICES``
        matrices per field (at least one pair and its partner)."""
        Q = [(mu, nu) for mu in self.dirs[i] for nu in self.others(mu)]
        groups = {}
        for q, (mu, nu) in enumerate(Q):
            groups.setdefault(frozenset((mu, nu)), []).append(q)
        per_pair = 1
        for n in S.shape[3:]:
            per_pair *= int(n)
        size = max(1, self.CHUNK_MATRICES // max(1, per_pair))
        chunks, qs = [], []
        for g in groups.values():
            if qs and len(qs) + len(g) > size:
                chunks.append(qs)
                qs = []
            qs = qs + g
        chunks.append(qs)
        return Q, chunks

    def _pair_indices(self, Q, qs):
        """Per pair q of a chunk: mu, nu and the flat aug slots (direction-major, block-minor)
        of S^L_mu,nu and S^R_mu,nu."""
        Nd, nb = self.Nd, self.n_blocks
        i_mu, i_nu = [Q[q][0] for q in qs], [Q[q][1] for q in qs]
        i_L = [(q // (Nd - 1)) * nb + 1 + q % (Nd - 1) for q in qs]
        i_R = [(q // (Nd - 1)) * nb + Nd + q % (Nd - 1) for q in qs]
        return i_mu, i_nu, i_L, i_R

    def _augment(self, S, i, layout):
        """aug (N, N, n_dirs, 2Nd - 1, K, *rest): [S_mu | S^L_mu,nu ... | S^R_mu,nu ...] per
        direction mu of layer i (eqs. 5-6); per pair chunk one
        :func:`lattice.kernels.transported_staples` call for all S^L and S^R."""
        xp = namespace(S)
        dirs, nb = self.dirs[i], self.n_blocks
        N, rest = S.shape[0], tuple(S.shape[3:])
        Q, chunks = self._chunks(i, S)
        aug = xp.empty((N, N, len(dirs) * nb) + rest, dtype=S.dtype)        # flat block axis
        for d, mu in enumerate(dirs):
            aug[:, :, d * nb, ...] = S[:, :, mu, ...]
        ghosted = kernels.ghosted_input(S, layout)                        # one exchange per layer
        for qs in chunks:
            i_mu, i_nu, i_L, i_R = self._pair_indices(Q, qs)
            kernels.transported_staples(S, layout, i_mu, i_nu, aug=aug, i_L=i_L, i_R=i_R, ghosted=ghosted)
        return xp.reshape(aug, (N, N, len(dirs), nb) + rest)

    @staticmethod
    def _mix(c, aug):
        """S^(i+1)_mu,k = sum_l c_mu,kl aug_mu,l (eq. 7): (n_dirs, K_out, n_aug) @ (N, N, n_dirs,
        n_aug, M), one real-coefficient product per colour entry; shape (N, N, n_dirs, K_out, *rest)."""
        xp = namespace(aug)
        N, n_dirs = aug.shape[0], aug.shape[2]
        a = xp.reshape(aug, (N, N, n_dirs, aug.shape[3] * aug.shape[4], -1))
        return xp.reshape(kernels.real_mix(c, a), (N, N, n_dirs, c.shape[1]) + tuple(aug.shape[5:]))

    def _check_params(self, params):
        for k, shape in self.param_shapes().items():
            if k not in params:
                raise KeyError(f"StapleNet: missing parameter {k!r} (expected shape {shape})")
            if tuple(params[k].shape) != shape:
                raise ValueError(f"StapleNet: parameter {k!r} has shape {tuple(params[k].shape)}, "
                                 f"expected {shape} ({self.config()})")

    def _inputs(self, U, mask, layout):
        """Masked input field S^(0) (eq. 4), colour-first (N, N, Nd, 1, *batch, *sites)."""
        xp = namespace(U)
        sites = tuple(layout.local_shape)
        keep = [xp.reshape(k, sites) for k in staple_mask_factor(mask, layout, U)]
        S = [keep[mu] * kernels.colour_first(Ul) for mu, Ul in enumerate(links(U, layout))]
        return keep, xp.expand_dims(xp.stack(S, axis=2), axis=3)

    def forward(self, params, U, mask, *, layout=None):
        layout = infer_gauge_layout(U, layout)
        if layout.Nd != self.Nd:
            raise LayoutError(f"StapleNet built for Nd = {self.Nd} got a {layout.Nd}d gauge field")
        self._check_params(params)
        xp = namespace(U)
        keep, S = self._inputs(U, mask, layout)
        saved = []
        for i in range(self.n_layers - 1):
            c = params[f"c{i}"]                                   # real coefficients
            aug = self._augment(S, i, layout)
            saved.append((S, None if self.save_memory else aug))
            S = self._mix(c, aug)
        # output layer: direction mu only, mixed as it is formed (no augmented vector where fused)
        out, aug = kernels.transported_mix(S, layout, self.mu, params[f"c{self.n_layers - 1}"][0, ...],
                                           keep=not self.save_memory)
        saved.append((S, aug))
        ctx = (layout, keep, saved)
        return (kernels.colour_last(out[:, :, 0, ...]),), ctx

    # ------------------------------------------------------------------ adjoint
    def _augment_vjp(self, S, i, aug_bar, layout):
        """Cotangent of the layer input S (N, N, Nd, K, *rest) from that of aug (the adjoint of
        :meth:`_augment`): per pair chunk one :func:`lattice.kernels.transported_staples_vjp`
        call."""
        xp = namespace(S)
        dirs, nb = self.dirs[i], self.n_blocks
        N, rest = S.shape[0], tuple(S.shape[3:])
        Q, chunks = self._chunks(i, S)
        AB = xp.reshape(aug_bar, (N, N, len(dirs) * nb) + rest)          # a view: no copy
        S_bar = xp.zeros(S.shape, dtype=S.dtype)
        for d, mu in enumerate(dirs):
            S_bar[:, :, mu, ...] += aug_bar[:, :, d, 0, ...]
        ghosted = kernels.ghosted_input(S, layout)
        for qs in chunks:
            i_mu, i_nu, i_L, i_R = self._pair_indices(Q, qs)
            kernels.transported_staples_vjp(S, layout, i_mu, i_nu, aug_bar=AB, i_L=i_L, i_R=i_R, S_bar=S_bar,
                                            ghosted=ghosted)
        return S_bar if ghosted is None else ghosted.add_back(S_bar)

    def vjp(self, params, ctx, S_bar, *, need_params: bool = True):
        """((U_bar, None), grads). With ``need_params=False`` (a path-gradient inverse VJP)
        the coefficient cotangents are not formed (zeros are returned), so neither the
        real inner products nor, with ``save_memory``, the recomputed augmented vectors."""
        layout, keep, saved = ctx
        S0 = saved[0][0]
        xp = namespace(S0)
        if S_bar is None:
            grads = {k: xp.zeros(v.shape, dtype=v.dtype) for k, v in params.items()}
            return (None, None), grads
        grads = {}
        N = S0.shape[0]
        ob = xp.reshape(kernels.colour_first(xp.astype(S_bar, S0.dtype)), (N, N, 1, 1) + tuple(S0.shape[4:]))
        last = self.n_layers - 1
        S, aug = saved[last]
        c = params[f"c{last}"]
        ob_in = xp.zeros(S.shape, dtype=S.dtype)                  # cotangent of the output layer's input
        c_bar = kernels.transported_mix_vjp(S, layout, self.mu, c[0, ...], ob[:, :, 0, ...], S_bar=ob_in, aug=aug,
                                            need_c=need_params)
        grads[f"c{last}"] = xp.zeros(c.shape, dtype=c.dtype) if c_bar is None else \
            xp.astype(xp.reshape(c_bar, c.shape), c.dtype)
        ob = ob_in
        for i in reversed(range(last)):
            S, aug = saved[i]
            c = params[f"c{i}"]
            n_dirs = len(self.dirs[i])
            aug_shape = (N, N, n_dirs, self.n_blocks) + tuple(S.shape[3:])
            ob_f = xp.reshape(ob, (N, N, n_dirs, ob.shape[3], -1))             # (N, N, d, K_out, M)
            if need_params:
                if aug is None:                                   # recomputed (save_memory=True)
                    aug = self._augment(S, i, layout)
                aug_f = xp.reshape(aug, (N, N, n_dirs, aug.shape[3] * aug.shape[4], -1))
                # c_bar = Re sum_{colour, M} conj(ob) aug, accumulated in double precision
                g = kernels.real_inner(ob_f, aug_f)                            # (N, N, d, K_out, n_aug)
                grads[f"c{i}"] = xp.astype(xp.sum(g, axis=(0, 1)), c.dtype)
            else:
                grads[f"c{i}"] = xp.zeros(c.shape, dtype=c.dtype)
            aug_bar = xp.reshape(kernels.real_mix(c, ob_f, transpose=True), aug_shape)
            ob = self._augment_vjp(S, i, aug_bar, layout)
        Ub = [kernels.colour_last(keep[mu] * ob[:, :, mu, 0, ...]) for mu in range(self.Nd)]
        return (stack_links(Ub, layout), None), grads
