"""Gauge-equivariant spectral coupling layers with fixed or learned active loops (eqs. 1-8).

One layer transforms the *active* links of a :class:`flows.masks.LayerMask` (one direction on
a sublattice for direction updates, all Nd directions at the sites x = offset (mod 2) for
location updates) and keeps every other link. For each active direction mu:

1. **Active staple** S_mu(x), computed from frozen links only:

   * ``loops="learned"``: a :class:`flows.StapleNet` (eqs. 3-8; eq. 4 zeroes all active
     links), one network per active direction;
   * ``loops="plaquette"``: the single plaquette staple of the layer's orientation
     (dnu, side), nu = (mu + dnu) mod Nd: side +1 (through x + nu^) and side -1 (through
     x - nu^),
         S^+ = U_nu(x) U_mu(x+nu) U_nu(x+mu)^dag,
         S^- = U_nu(x-nu)^dag U_mu(x-nu) U_nu(x+mu-nu),
     so that U_mu(x) S^dag is the untraced plaquette P_mu,nu(x) (or the one in the (mu, -nu)
     plane);
   * ``loops="rectangle"``: the 2x1 loop long in mu, x -> x + 2 mu^, one step side*nu:
         S^dag = U_mu(x+mu) U_nu(x+2mu) U_mu(x+mu+nu)^dag U_mu(x+nu)^dag U_nu(x)^dag (side +1),
     which needs the refined direction masks (``LayerMask.along``, see :mod:`flows.masks`).

   A fixed staple is checked once per layout to avoid every active link (a clear error
   otherwise: the layer would not be triangular and its log-det wrong).

2. **Active loop** (eq. 1) L = P_SU(N)(U S^dag) computed as L = U S_hat^dag with
   S_hat = P_SU(N)(S) (the identity P_SU(U S^dag) = U P_SU(S)^dag, docs/design.md §7). For the
   fixed loops S is already in SU(N) and S_hat = S (no projection).

3. **Spectral map** L' = h(L; c) (:class:`flows.SpectralMap`) conditioned on the context
   c = ContextNet(frozen links) read at the active link (the context's exclusion mask is the
   layer's active mask; for location updates the head has Nd x n_cond outputs per site, one
   block per direction).

4. **Push back** U'_mu(x) = h(L) L^dag U = L' S_hat, evaluated as U + (L' - L) S_hat (equal,
   since U = L S_hat), so that an identity spectral map returns U bit for bit. Frozen links
   are unchanged. S_hat jumps by a centre element where arg det of the polar factor crosses
   the principal branch cut of eq. 10, and h is not centre-equivariant, so the layer is
   discontinuous in the frozen links there (a measure-zero surface: densities stay exact;
   docs/design.md §7.2).

Log-det (docs/design.md §7): the map U -> h(U S_hat^dag) S_hat is, for fixed S_hat, a left
and right translation of the spectral map, both Haar-measure preserving, so per active link
the log-Jacobian is the spectral one (Weyl term + angle Jacobian), and the layer's log-det is
their sum over the active links (float64, reduced with ``layout.sum``). The Jacobian is block
triangular (each active link's image depends on itself and frozen links), so this is exact.

Inverse: S_hat and c depend on frozen links only, so the inverse recomputes them from the
output field V, inverts the spectral map, L = h^{-1}(V S_hat^dag; c), and sets
U = V + (L - V S_hat^dag) S_hat (= L S_hat).

Work is done on the active links only: they are gathered with ``take`` on the flattened
site index and scattered back with ``take`` + ``where`` (no per-link work on frozen links).
The staple and context networks run on the whole lattice (their outputs at active sites
depend on neighbours).

Layer contract (:class:`flows.protocol.GaugeLayer`, registered as ``layer_type = "spectral"``),
complex cotangents as in docs/design.md §7:

* ``forward(params, U, *, layout=None) -> ((U', logdet), ctx)``
* ``vjp(params, ctx, U'_bar, logdet_bar, *, need_params=True) -> ((U_bar,), grads)``
* ``inverse(params, V, *, layout=None) -> ((U, logdet_inv), ctx)``, logdet_inv = -logdet(U)
* ``inverse_vjp(params, ctx, U_bar, logdet_inv_bar, *, need_params=True) -> ((V_bar,), grads)``
* ``config()`` / ``CouplingLayer.from_config(cfg)``, ``param_shapes()``, ``init(rng, gain)``,
  ``describe()``

A context from :meth:`forward` may be passed to :meth:`inverse_vjp` and one from
:meth:`inverse` to :meth:`vjp`: both describe the same pair (U, V = f(U)) (the model's fused
path gradient uses this, see :meth:`flows.model.Flow.forward_path`).

The gather/scatter of active links is :mod:`flows.active` (``ActiveSites``, ``gather_active``,
``scatter_active``, ``scatter_density``).

Shapes: U ``(*batch, Nd, *sites, N, N)`` (a ``layout`` is needed whenever the batch shape
makes Nd ambiguous; :class:`flows.model.Flow` always passes one); logdet ``(*batch,)``
float64. Link cotangents are valid for perturbations along the group (U -> e^{tX} U), which
is how links are perturbed (:func:`flows.gradcheck.check_vjp` with ``group=``).
"""
from __future__ import annotations

from lattice.backend import namespace
from lattice.layout import Layout, infer_gauge_layout, LayoutError
from lattice.fields import links, stack_links
from lattice import su_n, kernels

from .active import ActiveSites, flat_sites, gather_active, scatter_active, scatter_density
from .masks import LayerMask
from .module import Module, add_grads, prefixed, sub_params
from .protocol import MaskedLayer, register_layer
from .paths import paths_fwd, paths_vjp, staple_lines
from .projection import project_su_fwd, project_su_vjp
from .spectral import SpectralMap
from .staples import StapleNet
from .context import ContextNet

__all__ = ["CouplingLayer", "fixed_staple_path", "LOOPS"]

LOOPS = ("learned", "plaquette", "rectangle")


def fixed_staple_path(kind: str, mu: int, orientation, Nd: int):
    """The path of S^dag for a fixed active loop, starting at x + mu^ (so that
    S^dag(x) = W(x + mu^) with W the path product and U_mu(x) S^dag(x) the closed loop)."""
    if orientation is None:
        raise ValueError(f"a fixed active loop ({kind!r}) needs a mask orientation (dnu, side)")
    dnu, side = (int(v) for v in orientation)
    if not 1 <= dnu < Nd or side not in (1, -1):
        raise ValueError(f"bad loop orientation {orientation}: need dnu in 1..{Nd - 1} and side +-1")
    nu = (mu + dnu) % Nd
    if kind == "plaquette":
        return ((nu, side), (mu, -1), (nu, -side))
    if kind == "rectangle":
        return ((mu, 1), (nu, side), (mu, -1), (mu, -1), (nu, -side))
    raise ValueError(f"unknown fixed loop {kind!r}; use 'plaquette' or 'rectangle'")


@register_layer
class CouplingLayer(MaskedLayer, Module):
    """One spectral coupling layer (see the module docstring); layer type ``"spectral"``.

    Parameters
    ----------
    mask : the layer's :class:`flows.masks.LayerMask`.
    Nd, N : lattice dimensions and gauge group SU(N).
    loops : "learned" | "plaquette" | "rectangle".
    staple_width, staple_layers : N_h and N_l of the staple networks (learned loops).
    context_hidden, context_kernel, context_loops, context_activation : the
        :class:`flows.ContextNet` (hidden widths, odd kernel size, feature loops, nonlinearity).
    spline_bins, spline_basis, spline_kind : the spectral map (:class:`flows.SpectralMap`).
    save_memory : forwarded to the staple networks.
    """

    layer_type = "spectral"

    def __init__(self, mask: LayerMask, Nd: int, N: int, loops: str = "learned", *, staple_width: int = 8,
                 staple_layers: int = 2, context_hidden=(16, 16), context_kernel: int = 3,
                 context_loops=("plaquette",), context_activation: str = "tanh", spline_bins: int = 8,
                 spline_basis: int = 3, spline_kind: str = "spline", save_memory: bool = False):
        if loops not in LOOPS:
            raise ValueError(f"loops must be one of {LOOPS}, got {loops!r}")
        if mask.kind not in ("direction", "location"):
            raise ValueError(f"unknown mask kind {mask.kind!r}")
        self.mask = mask
        self.Nd, self.N, self.loops = int(Nd), int(N), loops
        self.dirs = [int(mask.mu)] if mask.kind == "direction" else list(range(self.Nd))
        if mask.kind == "direction" and not 0 <= mask.mu < self.Nd:
            raise ValueError(f"mask direction mu = {mask.mu} out of range for Nd = {self.Nd}")
        self.spectral = SpectralMap(self.N, K=spline_bins, n_basis=spline_basis, kind=spline_kind)
        self.n_cond = self.spectral.n_cond
        self.staples = {}
        self.paths = {}
        if loops == "learned":
            self.staples = {mu: StapleNet(self.Nd, mu, width=staple_width, n_layers=staple_layers,
                                          save_memory=save_memory) for mu in self.dirs}
        else:
            self.paths = {mu: fixed_staple_path(loops, mu, mask.orientation, self.Nd) for mu in self.dirs}
        self.context = ContextNet(self.Nd, n_out=len(self.dirs) * self.n_cond, hidden=tuple(context_hidden),
                                  kernel_size=context_kernel, loops=tuple(context_loops),
                                  activation=context_activation)
        self._cfg = dict(loops=loops, staple_width=int(staple_width), staple_layers=int(staple_layers),
                         context_hidden=[int(h) for h in context_hidden], context_kernel=int(context_kernel),
                         context_loops=list(context_loops), context_activation=context_activation,
                         spline_bins=int(spline_bins), spline_basis=int(spline_basis), spline_kind=spline_kind,
                         save_memory=bool(save_memory))
        self._sites = {}
        self._lines = {}

    # ------------------------------------------------------------------ parameters
    def config(self) -> dict:
        return {"mask": self.mask.as_dict(), "Nd": self.Nd, "N": self.N, **self._cfg}

    @classmethod
    def from_config(cls, cfg: dict) -> "CouplingLayer":
        """The layer of ``config()`` (the mask rebuilt with :meth:`LayerMask.from_dict`)."""
        cfg = dict(cfg)
        mask = cfg.pop("mask")
        mask = mask if isinstance(mask, LayerMask) else LayerMask.from_dict(mask)
        return cls(mask, cfg.pop("Nd"), cfg.pop("N"), **cfg)

    def param_shapes(self) -> dict:
        out = {}
        for mu, net in self.staples.items():
            out.update(prefixed(f"staples{mu}", net.param_shapes()))
        out.update(prefixed("context", self.context.param_shapes()))
        return out

    def init(self, rng, gain: float = 0.5) -> dict:
        """Staple nets: plaquette-staple-sum start plus Xavier noise of ``gain`` (paper: 0.5);
        context: zero head, so the layer starts as the identity."""
        params = {}
        for mu, net in self.staples.items():
            params.update(prefixed(f"staples{mu}", net.init(rng.child(mu), gain=gain)))
        params.update(prefixed("context", self.context.init(rng.child(self.Nd + 1))))
        return params

    def describe(self) -> str:
        return f"{self.mask.describe()} loops={self.loops}"

    # ------------------------------------------------------------------ geometry
    def _line_set(self, layout: Layout, s: ActiveSites, mu: int):
        """The :class:`flows.paths.LineSet` of the fixed staple at the active mu-links (None where
        it reaches beyond the neighbouring block of a split axis), cached per (layout, mu)."""
        key = (layout, mu)
        if key not in self._lines:
            self._lines[key] = staple_lines(layout, s.idx[mu], mu, [[self.paths[mu]]])
        return self._lines[key]

    def sites(self, layout: Layout, xp) -> ActiveSites:
        key = (layout, xp.__name__ if hasattr(xp, "__name__") else id(xp))
        s = self._sites.get(key)
        if s is None:
            s = ActiveSites(self.mask, layout, xp)
            if self.paths:
                self._check_fixed_loops(s, layout, xp)
            self._sites[key] = s
        return s

    def _check_fixed_loops(self, s: ActiveSites, layout: Layout, xp):
        """Raise unless every fixed staple avoids all active links (triangular layer)."""
        m = xp.astype(s.m, xp.float64)
        for mu, path in self.paths.items():
            pos = [0] * self.Nd
            pos[mu] = 1
            for (nu, sg) in path:
                if sg < 0:
                    pos[nu] -= 1
                # the link used by this step starts at x + pos (x the active site)
                f = m[nu, ...]
                for ax, d in enumerate(pos):
                    f = layout.shift(f, ax, d, inner=0)
                hit = float(layout.sum(m[mu, ...] * f))
                if hit:
                    raise ValueError(
                        f"fixed {self.loops} loop with orientation {self.mask.orientation} of mask "
                        f"[{self.mask.describe()}] contains other active links (step {(nu, sg)} of "
                        f"S^dag path {path}); the layer would not be triangular. Use a compatible "
                        f"orientation (location updates need side -1) or the refined masks for rectangles.")
                if sg > 0:
                    pos[nu] += 1

    def _layout(self, U, layout):
        return checked_layout(U, layout, self.Nd, self.N, "coupling layer")

    # ------------------------------------------------------------------ internals
    def _frozen(self, params, X, layout, s: ActiveSites):
        """Staples S_hat (gathered), conditioning vectors (gathered) and their contexts; they
        depend on the frozen links of X only (identical for U and V = f(U))."""
        xp = namespace(X)
        nb = X.ndim - self.Nd - 3
        V = s.V
        (c_full,), cctx = self.context.forward(sub_params("context", params), X, s.m, layout=layout)
        c_flat = flat_sites(c_full, nb, V, (c_full.shape[-1],))
        per = {}
        if self.paths:
            Ul = links(X, layout)
        for j, mu in enumerate(self.dirs):
            idx = s.idx[mu]
            cond = xp.take(c_flat[..., j * self.n_cond:(j + 1) * self.n_cond], idx, axis=nb)
            if self.loops == "learned":
                (S,), sctx = self.staples[mu].forward(sub_params(f"staples{mu}", params), X, s.m, layout=layout)
                Sg = gather_active(S, s, mu, nb, (self.N, self.N))
                Shat, pctx = project_su_fwd(Sg)
                per[mu] = dict(cond=cond, Shat=Shat, sctx=sctx, pctx=pctx)
            else:
                lines = self._line_set(layout, s, mu)
                if lines is not None:                       # at the active links only
                    Xe = lines.links(X)
                    per[mu] = dict(cond=cond, Shat=su_n.dagger(lines.sums(Xe)[0]), lines=lines, Xe=Xe)
                else:
                    (W,), wctx = paths_fwd(Ul, [self.paths[mu]], layout)
                    Sd = layout.shift(W, mu, +1)
                    Sdg = gather_active(Sd, s, mu, nb, (self.N, self.N))
                    per[mu] = dict(cond=cond, Shat=su_n.dagger(Sdg), wctx=wctx)
        return per, cctx, nb

    def _apply(self, params, X, layout, inverse: bool):
        layout = self._layout(X, layout)
        xp = namespace(X)
        s = self.sites(layout, xp)
        per, cctx, nb = self._frozen(params, X, layout, s)
        out_links = list(links(X, layout))
        dens = None
        for mu in self.dirs:
            d = per[mu]
            Xa = gather_active(out_links[mu], s, mu, nb, (self.N, self.N))
            Lin = kernels.matmul(Xa, d["Shat"], db=True)
            if inverse:
                (Lout, ld), hctx = self.spectral.inverse({}, Lin, d["cond"])
            else:
                (Lout, ld), hctx = self.spectral.forward({}, Lin, d["cond"])
            # U' = L' S_hat written as U + (L' - L) S_hat (U = L S_hat): the same map, but an
            # identity spectral map (L' = L bit for bit, as at initialisation) returns U exactly
            Ya = Xa + kernels.matmul(Lout - Lin, d["Shat"])
            out_links[mu] = scatter_active(Ya, s, mu, nb, out_links[mu])
            ld_sites = scatter_density(ld, s, mu, nb)
            dens = ld_sites if dens is None else dens + ld_sites
            if inverse:
                d.update(U=Ya, V=Xa, L=Lout, Lp=Lin, hctx=hctx)
            else:
                d.update(U=Xa, V=Ya, L=Lin, Lp=Lout, hctx=hctx)
        Y = stack_links(out_links, layout)
        logdet = layout.sum(dens)
        ctx = dict(layout=layout, sites=s, per=per, cctx=cctx, nb=nb, dtype=X.dtype, shape=tuple(X.shape))
        return (Y, logdet), ctx

    def _backward(self, params, ctx, Y_bar, ld_bar, inverse: bool, need_params: bool):
        """Shared adjoint. Forward map f: U -> V = f(U) with logdet; inverse g: V -> U with
        -logdet. ``Y_bar`` is the cotangent of the map's output, the result that of its input."""
        layout, s, per, nb = ctx["layout"], ctx["sites"], ctx["per"], ctx["nb"]
        shape, dtype = ctx["shape"], ctx["dtype"]
        any_leaf = next(iter(per.values()))["Shat"]
        xp = namespace(any_leaf)
        if Y_bar is None:
            Y_bar = xp.zeros(shape, dtype=dtype)
        Ybl = links(xp.astype(Y_bar, dtype), layout)
        in_links = list(Ybl)                      # frozen links: identity map
        grads = {}
        c_cols = []
        X_extra = None                            # cotangents from staples / context
        for j, mu in enumerate(self.dirs):
            d = per[mu]
            Shat = d["Shat"]
            Yb = gather_active(Ybl[mu], s, mu, nb, (self.N, self.N))
            lb = None
            if ld_bar is not None:
                lb = xp.broadcast_to(xp.reshape(xp.astype(ld_bar, xp.float64), tuple(ld_bar.shape) + (1,)),
                                     tuple(Yb.shape[:nb + 1]))
            if not inverse:
                # V = L' S_hat, L' = h(L), L = U S_hat^dag
                Lp_bar = kernels.matmul(Yb, Shat, db=True)
                Sh_bar = kernels.matmul(d["Lp"], Yb, da=True)
                (L_bar, c_bar), _ = self.spectral.vjp({}, d["hctx"], Lp_bar, lb)
                X_bar = kernels.matmul(L_bar, Shat)
                Sh_bar = Sh_bar + kernels.matmul(L_bar, d["U"], da=True)
            else:
                # U = L S_hat, L = h^{-1}(L'), L' = V S_hat^dag
                L_bar = kernels.matmul(Yb, Shat, db=True)
                Sh_bar = kernels.matmul(d["L"], Yb, da=True)
                (Lp_bar, c_bar), _ = self.spectral.inverse_vjp({}, d["hctx"], L_bar, lb)
                X_bar = kernels.matmul(Lp_bar, Shat)
                Sh_bar = Sh_bar + kernels.matmul(Lp_bar, d["V"], da=True)
            in_links[mu] = scatter_active(X_bar, s, mu, nb, in_links[mu])
            c_cols.append(scatter_active(c_bar, s, mu, nb, None))
            # staples
            if self.loops == "learned":
                S_bar = scatter_active(project_su_vjp(d["pctx"], Sh_bar), s, mu, nb, None)
                (Ub, _), g = self.staples[mu].vjp(sub_params(f"staples{mu}", params), d["sctx"], S_bar,
                                                  need_params=need_params)
                if need_params:
                    add_grads(grads, g, f"staples{mu}")
                X_extra = Ub if X_extra is None else X_extra + Ub
            elif "lines" in d:
                X_extra = d["lines"].vjp(d["Xe"], [xp.astype(su_n.dagger(Sh_bar), dtype)], out=X_extra)
            else:
                Sd_bar = scatter_active(su_n.dagger(Sh_bar), s, mu, nb, None)
                Wb = layout.shift(Sd_bar, mu, -1)
                Lb = paths_vjp(d["wctx"], [Wb])
                for nu, b in enumerate(Lb):
                    if b is None:
                        continue
                    in_links[nu] = in_links[nu] + b
        # context
        cb = xp.concat(c_cols, axis=-1) if len(c_cols) > 1 else c_cols[0]
        (Uc, _), g = self.context.vjp(sub_params("context", params), ctx["cctx"], xp.astype(cb, cb.dtype),
                                      need_params=need_params)
        if need_params:
            add_grads(grads, g, "context")
        out = stack_links(in_links, layout) + Uc
        if X_extra is not None:
            out = out + X_extra
        return (out,), grads


def checked_layout(U, layout, Nd: int, N: int, what: str) -> Layout:
    """The layout of the gauge field U (given or inferred with the known Nd), checked against
    the Nd and SU(N) that ``what`` was built for."""
    lay = infer_gauge_layout(U, layout) if layout is not None else _layout_nd(U, Nd)
    if lay.Nd != Nd:
        raise LayoutError(f"{what} built for Nd = {Nd} got a {lay.Nd}d field or layout")
    if U.shape[-1] != N:
        raise ValueError(f"{what} built for SU({N}) got {U.shape[-1]}x{U.shape[-1]} links")
    return lay


def _layout_nd(U, Nd: int) -> Layout:
    """Single-process layout of a gauge field whose Nd is known (no ambiguity with batch axes)."""
    from lattice.layout import _cached_layout
    if U.ndim < Nd + 3 or U.shape[U.ndim - Nd - 3] != Nd or U.shape[-1] != U.shape[-2]:
        raise LayoutError(f"expected a gauge field (*batch, {Nd}, *sites, N, N), got shape {tuple(U.shape)}")
    return _cached_layout(tuple(U.shape[U.ndim - Nd - 2:-2]))
