"""The colour-last staple network that ``flows.StapleNet`` replaced (issue 14), kept as the
benchmark reference ("previous code") and as a test oracle: same parameters, configuration and
initialisation (inherited from :class:`flows.StapleNet`), only the forward pass and its adjoint
are the old ones - a loop over directions and pairs with stacked ``@`` products on
``(K, *batch, *sites, N, N)`` arrays, explicit dagger copies and a concatenated augmented
vector. See ``flows/staples.py`` for the equations (eqs. 3-8).
"""
from __future__ import annotations

from lattice.backend import namespace
from lattice.layout import infer_gauge_layout, LayoutError
from lattice.fields import links, stack_links
from lattice import su_n

from flows.staples import StapleNet as _Current, staple_mask_factor


class StapleNet(_Current):
    """:class:`flows.StapleNet` with the colour-last forward and VJP it had before issue 14."""

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

    def vjp(self, params, ctx, S_bar, need_params: bool = True):
        """As before issue 14: ``need_params`` is accepted and ignored (the parameter
        cotangents are always computed, which is what the previous code cost)."""
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
