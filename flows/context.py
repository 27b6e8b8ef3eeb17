"""Context network: gauge-invariant features of frozen links -> parameters per site.

The spectral map of a coupling layer is conditioned on information that the layer does not
change. This network computes it from the *frozen* links only, in three steps:

1. Features (gauge invariant). On the masked field S^(0)_mu(x) = (1 - m_mu(x)) U_mu(x)
   (m = 1 on every link the context must not see; at least the active links) it forms
   untraced loops W_l(x) (:class:`flows.paths.LineSet`: index tables into the links, with
   ghost planes along split axes) and takes

       f_{2l}(x) = Re tr W_l(x) / N,     f_{2l+1}(x) = Im tr W_l(x) / N.

   Any loop that contains a masked link is identically zero, so the features are exactly
   those of the loops all of whose links are frozen, times the "loop is frozen" indicator,
   and do not depend on the masked links at all. Loops (``loops=``): ``"plaquette"``,
   P_mu,nu(x) for mu < nu (Nd(Nd-1)/2 per site), and ``"rectangle"``, the 2x1 loops
   R_mu,nu(x) (2 steps in mu, 1 in nu) for mu != nu (Nd(Nd-1) per site), in that order.
2. Translation-equivariant circular convolutions on the Nd-torus: kernel size k (odd),
   offsets d in {-r..r}^Nd (r = (k-1)/2, lexicographic order, d_0 slowest),

       z(x) = sum_d a(x + d) w[d] + b,     w[d] of shape (C_in, C_out),

   On one process: the neighbourhoods a(x + d) of a block of sites are gathered with one
   ``take`` through a cached index table into a (sites x k^Nd C_in) matrix, and the
   convolution is one product with w reshaped to (k^Nd C_in, C_out) ("im2col"; blocks of
   sites keep the gathered matrix under ``ContextNet.GATHER_BYTES``). With MPI-split axes:
   ``layout.shift``-ed copies (halo exchange) and one (sites x C_in) @ (C_in x C_out) product
   per offset (channels last). Between layers the
   nonlinearity ``tanh`` or ``softplus`` (derivative written by hand).
3. Output head: a last convolution to ``n_out`` channels, ZERO-initialised, so that at
   initialisation the output is exactly 0 (the spectral map's identity point).

Output: ``(*batch, *sites, n_out)`` at every site; the coupling layer reads it at its active
links (the active direction is fixed per layer, so a site field suffices).

Parameters: ``w{i}`` of shape (k^Nd, C_i, C_{i+1}) and ``b{i}`` of shape (C_{i+1},),
i = 0 .. len(hidden), with C_0 = number of features and C_last = n_out. Hidden layers start
Xavier-normal (gain 1, fan_in = k^Nd C_i, fan_out = k^Nd C_{i+1}) with zero biases.

VJP: with respect to all parameters and to the links U (through the features:
d Re tr W / dU), complex cotangents as in
docs/design.md §7. Parameter cotangents are accumulated in float64.
"""
from __future__ import annotations

import math

from lattice.backend import namespace, real_dtype
from lattice.layout import infer_gauge_layout, LayoutError
from lattice.fields import links, stack_links
from lattice.loops import plaquette_path, rectangle_path
from lattice import su_n

from .module import Module
from .paths import paths_fwd, paths_vjp, line_set
from .staples import staple_mask_factor

__all__ = ["ContextNet", "context_loops", "shifted_copies"]

_ACTIVATIONS = ("tanh", "softplus")


def context_loops(Nd: int, loops=("plaquette",)):
    """The (name, path) list of loops whose traces are the context features."""
    out = []
    for kind in loops:
        if kind == "plaquette":
            out += [(f"P{mu}{nu}", plaquette_path(mu, nu)) for mu in range(Nd) for nu in range(mu + 1, Nd)]
        elif kind == "rectangle":
            out += [(f"R{mu}{nu}", rectangle_path(mu, nu)) for mu in range(Nd) for nu in range(Nd) if nu != mu]
        else:
            raise ValueError(f"unknown context loop {kind!r}; use 'plaquette' and/or 'rectangle'")
    return out


def shifted_copies(F, layout, r: int, inner: int, sign: int = +1, axis: int = 0, offset=()):
    """Yield ``(d, F_d)`` with F_d(x) = F(x + sign d) for every d in {-r..r}^Nd, lexicographic
    (d_0 slowest). Shifts are shared along the tree of prefixes (k + k^2 + ... + k^Nd shifts)."""
    if axis == layout.Nd:
        yield offset, F
        return
    for d in range(-r, r + 1):
        Fd = layout.shift(F, axis, sign * d, inner=inner)
        yield from shifted_copies(Fd, layout, r, inner, sign, axis + 1, offset + (d,))


_INDEX: dict = {}


def _neighbourhood_index(local_shape, r: int, sign: int, xp, device):
    """Flat index table (V k^Nd,), site-major: entry x k^Nd + j is the flat index of
    x + sign d_j on the periodic local block, d_j in {-r..r}^Nd in :func:`shifted_copies`
    order. Cached per (shape, r, sign, namespace, device)."""
    key = (tuple(local_shape), int(r), int(sign), getattr(xp, "__name__", str(xp)), str(device))
    idx = _INDEX.get(key)
    if idx is None:
        import itertools
        nd = len(local_shape)
        kw = {} if device is None else {"device": device}
        base = xp.reshape(xp.arange(math.prod(local_shape), dtype=xp.int64, **kw), tuple(local_shape))
        cols = [xp.reshape(xp.roll(base, tuple(-sign * d for d in off), axis=tuple(range(nd))), (-1,))
                for off in itertools.product(range(-r, r + 1), repeat=nd)]
        idx = _INDEX[key] = xp.reshape(xp.stack(cols, axis=1), (-1,))
    return idx


def _act(name, z):
    xp = namespace(z)
    if name == "tanh":
        a = xp.tanh(z)
        return a, 1.0 - a * a
    # softplus(z) = log(1 + e^z), derivative sigmoid(z) = (1 + tanh(z/2)) / 2 (overflow-free)
    return xp.logaddexp(xp.zeros_like(z), z), 0.5 * (1.0 + xp.tanh(0.5 * z))


class ContextNet(Module):
    """Gauge-invariant context from frozen links (see the module docstring).

    Parameters
    ----------
    Nd : lattice dimensions.
    n_out : outputs per site (e.g. the number of spline parameters of the spectral map).
    hidden : widths of the hidden convolution layers (``()`` = one linear convolution).
    kernel_size : odd kernel size k of every convolution (head included).
    loops : feature loops, subset of ("plaquette", "rectangle").
    activation : "tanh" or "softplus".

    ``forward(params, U, mask, layout=None) -> ((out,), ctx)``, out ``(*batch, *sites, n_out)``;
    ``vjp(params, ctx, out_bar) -> ((U_bar, None), grads)``.
    """

    def __init__(self, Nd: int, n_out: int, hidden=(16, 16), kernel_size: int = 3,
                 loops=("plaquette",), activation: str = "tanh"):
        if not 2 <= int(Nd) <= 4:
            raise ValueError(f"Nd must be 2, 3 or 4, got {Nd}")
        k = int(kernel_size)
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
        if int(n_out) < 1:
            raise ValueError(f"n_out must be positive, got {n_out}")
        self.Nd, self.n_out, self.kernel_size = int(Nd), int(n_out), k
        self.hidden = tuple(int(h) for h in hidden)
        self.loops = tuple(loops)
        self.activation = activation
        self.paths = context_loops(self.Nd, self.loops)
        self._tables = {}
        self.n_features = 2 * len(self.paths)
        self.channels = (self.n_features,) + self.hidden + (self.n_out,)
        self.n_offsets = k ** self.Nd

    def config(self) -> dict:
        return {"Nd": self.Nd, "n_out": self.n_out, "hidden": list(self.hidden),
                "kernel_size": self.kernel_size, "loops": list(self.loops), "activation": self.activation}

    def param_shapes(self) -> dict:
        out = {}
        for i in range(len(self.channels) - 1):
            out[f"w{i}"] = (self.n_offsets, self.channels[i], self.channels[i + 1])
            out[f"b{i}"] = (self.channels[i + 1],)
        return out

    def init(self, rng, gain: float = 1.0) -> dict:
        xp = rng.xp
        params = {}
        n_conv = len(self.channels) - 1
        for i in range(n_conv):
            K, ci, co = self.n_offsets, self.channels[i], self.channels[i + 1]
            if i < n_conv - 1:
                std = gain * math.sqrt(2.0 / (K * ci + K * co))
                params[f"w{i}"] = std * rng.normal((K, ci, co))
            else:
                params[f"w{i}"] = xp.zeros((K, ci, co), dtype=xp.float64)   # zero head
            params[f"b{i}"] = xp.zeros((co,), dtype=xp.float64)
        return params

    def _check_params(self, params):
        for k, shape in self.param_shapes().items():
            if k not in params:
                raise KeyError(f"ContextNet: missing parameter {k!r} (expected shape {shape})")
            if tuple(params[k].shape) != shape:
                raise ValueError(f"ContextNet: parameter {k!r} has shape {tuple(params[k].shape)}, "
                                 f"expected {shape} ({self.config()})")

    # ------------------------------------------------------------------ features
    def features(self, U, mask, layout=None):
        """Gauge-invariant features ``(*batch, *sites, n_features)`` and their context."""
        layout = infer_gauge_layout(U, layout)
        if layout.Nd != self.Nd:
            raise LayoutError(f"ContextNet built for Nd = {self.Nd} got a {layout.Nd}d gauge field")
        xp = namespace(U)
        keep = staple_mask_factor(mask, layout, U)
        S0 = [keep[mu] * Ul for mu, Ul in enumerate(links(U, layout))]
        N = U.shape[-1]
        lines = self._line_set(layout)
        if lines is not None:               # lines through index tables, no shifted copies
            S0 = lines.links(stack_links(S0, layout))
            sites = tuple(S0.shape[:S0.ndim - layout.Nd - 3]) + tuple(layout.local_shape) + (N, N)
            Ws = [xp.reshape(W, sites) for W in lines.sums(S0)]
            pctx = ("lines", S0, lines)
        else:
            Ws, pctx = paths_fwd(S0, [p for _, p in self.paths], layout)
        cols = []
        for W in Ws:
            t = su_n.trace(W) / N
            cols += [xp.real(t), xp.imag(t)]
        return xp.stack(cols, axis=-1), (layout, keep, pctx, U.dtype, N)

    def features_vjp(self, fctx, F_bar):
        """Link cotangent ``(*batch, Nd, *sites, N, N)`` for the feature cotangent ``F_bar``."""
        layout, keep, pctx, cdt, N = fctx
        xp = namespace(F_bar)
        eye = xp.eye(N, dtype=cdt)
        W_bars = []
        for l in range(len(self.paths)):
            g = (xp.astype(F_bar[..., 2 * l], cdt) + 1j * xp.astype(F_bar[..., 2 * l + 1], cdt)) / N
            W_bars.append(g[..., None, None] * eye)
        if pctx[0] == "lines":
            _, S0, lines = pctx
            nl = S0.ndim - layout.Nd - 3
            W_bars = [xp.reshape(Wb, tuple(Wb.shape[:nl]) + (-1, N, N)) for Wb in W_bars]
            Sb = links(lines.vjp(S0, W_bars), layout)
        else:
            Sb = paths_vjp(pctx, W_bars)
        lead = tuple(F_bar.shape[:-1]) + (N, N)
        Ub = [xp.zeros(lead, dtype=cdt) if b is None else keep[mu] * b for mu, b in enumerate(Sb)]
        return stack_links(Ub, layout)

    def _line_set(self, layout):
        """The :class:`flows.paths.LineSet` of the feature loops started at every site (None
        where a loop reaches beyond the neighbouring block of a split axis), cached per layout."""
        if layout not in self._tables:
            self._tables[layout] = line_set(layout, [[p] for _, p in self.paths])
        return self._tables[layout]

    # ------------------------------------------------------------------ convolutions
    #: bytes of one gathered neighbourhood block (one-process convolutions): sites are processed
    #: in blocks so that (batch x block sites) x (k^Nd C) stays below this
    GATHER_BYTES = 4 * 2**20

    @staticmethod
    def _gathers(layout):
        """Whether the convolutions gather neighbourhoods through index tables (no split axis)."""
        return not any(g > 1 for g in layout.grid)

    def _site_blocks(self, F3, n_off):
        per_site = F3.shape[0] * n_off * F3.shape[2] * 8
        step = max(1, self.GATHER_BYTES // max(1, per_site))
        V = F3.shape[1]
        return [(x0, min(V, x0 + step)) for x0 in range(0, V, step)]

    def _gathered(self, F3, idx, x0, x1, n_off):
        """(B (x1 - x0)) x (n_off C) matrix of the neighbourhoods F(x + sign d) of sites x0..x1
        (rows (b, x), columns (d, c)); F3 of shape (B, V, C)."""
        xp = namespace(F3)
        g = xp.take(F3, idx[x0 * n_off:x1 * n_off], axis=1)
        return xp.reshape(g, (F3.shape[0] * (x1 - x0), n_off * F3.shape[2]))

    def _conv(self, a, w, b, layout):
        xp = namespace(a)
        r = (self.kernel_size - 1) // 2
        lead = tuple(a.shape[:-1])
        ci, co = a.shape[-1], w.shape[-1]
        if self._gathers(layout):
            n_off = w.shape[0]
            idx = _neighbourhood_index(layout.local_shape, r, +1, xp, getattr(a, "device", None))
            a3 = xp.reshape(a, (-1, math.prod(layout.local_shape), ci))
            W2 = xp.reshape(w, (n_off * ci, co))
            out = xp.empty((a3.shape[0], a3.shape[1], co), dtype=a.dtype)
            for x0, x1 in self._site_blocks(a3, n_off):
                y = self._gathered(a3, idx, x0, x1, n_off) @ W2
                out[:, x0:x1, :] = xp.reshape(y, (a3.shape[0], x1 - x0, co))
            return xp.reshape(out, lead + (co,)) + b
        out = None
        for j, (_, ad) in enumerate(shifted_copies(a, layout, r, inner=1)):
            y = xp.reshape(ad, (-1, ci)) @ w[j, ...]
            out = y if out is None else out + y
        return xp.reshape(out + b, lead + (co,))

    def _conv_vjp(self, a, w, z_bar, layout, need_input=True, need_params=True):
        """(a_bar, gw, gb) of one convolution; gw and gb are None unless ``need_params``."""
        xp = namespace(a)
        r = (self.kernel_size - 1) // 2
        ci, co = w.shape[-2], w.shape[-1]
        zb = xp.reshape(z_bar, (-1, co))
        zb64 = xp.astype(zb, xp.float64) if need_params else None
        gb = xp.sum(zb64, axis=0) if need_params else None
        if self._gathers(layout):
            n_off = w.shape[0]
            dev = getattr(a, "device", None)
            V = math.prod(layout.local_shape)
            a3 = xp.reshape(a, (-1, V, ci))
            z3 = xp.reshape(z_bar, (-1, V, co))
            gw = None
            if need_params:                                       # gw[d] = sum_x a(x + d)^T z_bar(x)
                z64 = xp.reshape(zb64, (-1, V, co))
                idx = _neighbourhood_index(layout.local_shape, r, +1, xp, dev)
                for x0, x1 in self._site_blocks(a3, n_off):
                    G = xp.astype(self._gathered(a3, idx, x0, x1, n_off), xp.float64, copy=False)
                    g = xp.matrix_transpose(G) @ xp.reshape(z64[:, x0:x1, :], (-1, co))
                    gw = g if gw is None else gw + g
                gw = xp.reshape(gw, (n_off, ci, co))
            a_bar = None
            if need_input:                                        # a_bar(y) = sum_d z_bar(y - d) w[d]^T
                idx_m = _neighbourhood_index(layout.local_shape, r, -1, xp, dev)
                Wt = xp.reshape(xp.matrix_transpose(w), (n_off * co, ci))
                a_bar = xp.empty(tuple(a3.shape), dtype=a.dtype)
                for x0, x1 in self._site_blocks(z3, n_off):
                    y = self._gathered(z3, idx_m, x0, x1, n_off) @ Wt
                    a_bar[:, x0:x1, :] = xp.reshape(y, (a3.shape[0], x1 - x0, ci))
                a_bar = xp.reshape(a_bar, tuple(a.shape))
            return a_bar, gw, gb
        gw = None
        if need_params:
            gw = xp.stack([xp.matrix_transpose(xp.astype(xp.reshape(ad, (-1, ci)), xp.float64)) @ zb64
                           for _, ad in shifted_copies(a, layout, r, inner=1)], axis=0)
        a_bar = None
        if need_input:
            for j, (_, zd) in enumerate(shifted_copies(z_bar, layout, r, inner=1, sign=-1)):
                y = xp.reshape(zd, (-1, co)) @ xp.matrix_transpose(w[j, ...])
                a_bar = y if a_bar is None else a_bar + y
            a_bar = xp.reshape(a_bar, tuple(a.shape))
        return a_bar, gw, gb

    # ------------------------------------------------------------------ module
    def forward(self, params, U, mask, *, layout=None):
        self._check_params(params)
        F, fctx = self.features(U, mask, layout)
        layout = fctx[0]
        xp = namespace(F)
        rdt = real_dtype(xp, U.dtype)
        n_conv = len(self.channels) - 1
        acts, derivs = [F], []
        a = F
        for i in range(n_conv):
            w = xp.astype(params[f"w{i}"], rdt)
            b = xp.astype(params[f"b{i}"], rdt)
            z = self._conv(a, w, b, layout)
            if i < n_conv - 1:
                a, da = _act(self.activation, z)
                acts.append(a)
                derivs.append(da)
            else:
                a = z
        return (a,), (fctx, acts, derivs)

    def vjp(self, params, ctx, out_bar, *, need_params: bool = True):
        """((U_bar, None), grads); with ``need_params=False`` the parameter cotangents are not
        formed (zeros are returned): the convolutions only pull back to their inputs."""
        fctx, acts, derivs = ctx
        layout = fctx[0]
        xp = namespace(acts[0])
        grads = {}
        if out_bar is None:
            return (None, None), {k: xp.zeros(v.shape, dtype=v.dtype) for k, v in params.items()}
        rdt = acts[0].dtype
        zb = xp.astype(out_bar, rdt)
        n_conv = len(self.channels) - 1
        for i in reversed(range(n_conv)):
            w = xp.astype(params[f"w{i}"], rdt)
            a_bar, gw, gb = self._conv_vjp(acts[i], w, zb, layout, need_params=need_params)
            if need_params:
                grads[f"w{i}"] = xp.astype(gw, params[f"w{i}"].dtype)
                grads[f"b{i}"] = xp.astype(gb, params[f"b{i}"].dtype)
            else:
                grads[f"w{i}"] = xp.zeros(params[f"w{i}"].shape, dtype=params[f"w{i}"].dtype)
                grads[f"b{i}"] = xp.zeros(params[f"b{i}"].shape, dtype=params[f"b{i}"].dtype)
            zb = a_bar * derivs[i - 1] if i > 0 else a_bar
        U_bar = self.features_vjp(fctx, zb)
        return (U_bar, None), grads
