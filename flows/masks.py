"""Masking patterns for gauge-equivariant coupling layers.

A coupling layer transforms a set of *active* links ``m_mu(x) = 1`` (paper eq. 5)
conditioned on the *frozen* links ``m_mu(x) = 0``. The layer is triangular (its Jacobian is
block diagonal over the active links, one SU(N) block each) when every active link's new
value depends only on itself and frozen links. With learned active loops this holds for
any mask, because the staple network zeroes all active links before it starts (eq. 4) and
the context only uses loops made of frozen links; with a *fixed* active loop the chosen
staple must avoid other active links, which the patterns below guarantee.

Two families, following the "direction" and "location" updates of Abbott et al.,
arXiv:2305.02402 (sec. III), whose 4d SU(3) models and the reference paper's benchmark
combine them as repeated blocks of 48 direction and 16 location layers:

* **direction update** ``(mu, parity)``: all links of direction mu on the sites whose
  transverse coordinate sum is ``parity`` mod 2, i.e. sum_{nu != mu} x_nu = parity (mod 2).
  The mu-links at x +- nu^ are frozen, so every plaquette staple of an active link is frozen.
  2 Nd such layers update every link once; the paper's count 48 = 4 directions x 2 parities
  x 6 fixed-loop orientations (nu, up/down) in 4d.
  A 2x1 loop of an active mu-link always contains a second mu-link at the same transverse
  parity (at x +- mu^ for the loop long in mu, at x +- 2 nu^ for the loop long in nu), so
  fixed *rectangle* loops need the refined pattern ``(mu, parity, along)``: additionally
  x_mu = along (mod 2). Then the mu-links at x + mu^, x +- nu^ and x + mu^ +- nu^ are frozen
  and the rectangle long in mu (x -> x + 2 mu^, one step +-nu) is a valid active loop for
  every nu; 4 Nd such layers update every link once.
* **location update** ``offset``: all Nd links at the sites x = offset (mod 2)
  componentwise (2^Nd offsets cover every link once; 16 in 4d). All other links touching
  these sites are frozen except the other active links *at the same site*, so a fixed loop
  must use a staple that leaves x in the negative nu direction (the "down" staples).
* **checkerboard updates M2 and M4** ``(mu, modulus, parity)`` of the residual flows (Abbott
  et al., arXiv:2401.10874; the reference paper's marginal model uses M2, M4, M2, M4): all
  links of direction mu on the sites with

      M2:  sum_nu x_nu              = parity (mod 2)   (every nu, mu included),
      M4:  sum_{nu != mu} x_nu + 2 x_mu = parity (mod 4).

  A loop through the active mu-link at x contains another mu-link at x + y; it is frozen
  when the pattern's value differs at x + y. For M2 the value changes by sum_nu y_nu (mod 2):
  plaquettes (y = +-nu^, +-mu^ not used) and the chairs whose second mu-link sits at x +- nu^
  are frozen, the 2x1 rectangles (second mu-links at x + mu^ +- nu^, x + 2nu^) are not. For M4
  it changes by sum_{nu != mu} y_nu + 2 y_mu (mod 4): +-1 for x +- nu^, 2 for x +- mu^ and
  x +- 2 nu^, 2 +- 1 for x + mu^ +- nu^ -- never 0 -- so plaquettes, all three orientations of
  the 2x1 rectangles and those chairs are frozen. A pass of M2 is 2 Nd layers (8 in 4d), of
  M4 4 Nd layers (16 in 4d); each updates every link once. M2 needs even extents, M4 extents
  divisible by 4 (the value is periodic only then). :func:`residual_schedule` builds the
  paper's 48 layers M2, M4, M2, M4 in 4d.

Every pattern needs even lattice extents (a clear error says so otherwise).
Masks are host-independent integer arrays of shape ``(Nd, *lattice)`` built with the
array namespace ``xp``; under MPI the layout's local block of the global mask is used.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

from lattice.backend import default_xp, namespace
from lattice.layout import Layout

__all__ = ["LayerMask", "direction_mask", "location_mask", "checker_mask", "paper_schedule", "simple_schedule",
           "residual_schedule", "check_covers_every_link", "check_triangular", "paths_avoid_active"]


@dataclass(frozen=True)
class LayerMask:
    """One layer's pattern: kind ('direction' or 'location'), its parameters, and for fixed
    loops the orientation (dnu, side): the active plaquette of a mu-link lies in the plane
    (mu, nu) with nu = (mu + dnu) mod Nd, dnu in 1..Nd-1, and its staple passes through
    x + nu^ (side +1) or x - nu^ (side -1)."""

    kind: str
    mu: int | None = None          # direction updates
    parity: int | None = None      # direction updates
    offset: tuple | None = None    # location updates
    orientation: tuple | None = None
    along: int | None = None       # direction updates: also x_mu = along (mod 2) (rectangles)
    modulus: int | None = None     # checker updates: 2 (M2) or 4 (M4)

    def active(self, layout: Layout, xp=None):
        """Active mask m_mu(x) (int8, shape (Nd, *local_shape))."""
        if self.kind == "direction":
            return direction_mask(layout, self.mu, self.parity, xp=xp, along=self.along)
        if self.kind == "location":
            return location_mask(layout, self.offset, xp=xp)
        if self.kind == "checker":
            return checker_mask(layout, self.mu, self.modulus, self.parity, xp=xp)
        raise ValueError(f"unknown mask kind {self.kind!r}")

    def describe(self) -> str:
        if self.kind == "direction":
            s = f"direction mu={self.mu} parity={self.parity}"
            if self.along is not None:
                s += f" along={self.along}"
        elif self.kind == "checker":
            s = f"M{self.modulus} mu={self.mu} parity={self.parity}"
        else:
            s = f"location offset={self.offset}"
        return s + (f" loop={self.orientation}" if self.orientation else "")

    def as_dict(self) -> dict:
        d = {"kind": self.kind, "mu": self.mu, "parity": self.parity,
             "offset": list(self.offset) if self.offset is not None else None,
             "orientation": list(self.orientation) if self.orientation is not None else None,
             "along": self.along}
        if self.modulus is not None:          # checker masks only (older files have no such key)
            d["modulus"] = self.modulus
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerMask":
        return cls(kind=d["kind"], mu=d.get("mu"), parity=d.get("parity"),
                   offset=tuple(d["offset"]) if d.get("offset") is not None else None,
                   orientation=tuple(d["orientation"]) if d.get("orientation") is not None else None,
                   along=d.get("along"), modulus=d.get("modulus"))


def _check_even(layout: Layout):
    if any(L % 2 for L in layout.global_shape):
        raise ValueError(f"flow masks need even lattice extents, got {layout.global_shape}")
    if any(l % 2 for l in layout.local_shape):
        raise ValueError(f"flow masks need even local extents on every rank, got {layout.local_shape}")


def direction_mask(layout: Layout, mu: int, parity: int, xp=None, along: int | None = None):
    """Active links of direction mu where sum_{nu != mu} x_nu = parity (mod 2) (and, with
    ``along``, x_mu = along (mod 2))."""
    _check_even(layout)
    xp = default_xp() if xp is None else xp
    c = layout.coords(xp)
    s = xp.zeros(layout.local_shape, dtype=xp.int64)
    for nu in range(layout.Nd):
        if nu != mu:
            s = s + c[nu]
    ok = (s % 2) == (parity % 2)
    if along is not None:
        ok = ok & ((c[mu] % 2) == (int(along) % 2))
    site = xp.astype(ok, xp.int8)
    zero = xp.zeros(layout.local_shape, dtype=xp.int8)
    return xp.stack([site if nu == mu else zero for nu in range(layout.Nd)], axis=0)


def location_mask(layout: Layout, offset: Sequence[int], xp=None):
    """Active links of every direction at the sites x = offset (mod 2) componentwise."""
    _check_even(layout)
    xp = default_xp() if xp is None else xp
    if len(offset) != layout.Nd:
        raise ValueError(f"location offset {offset} needs {layout.Nd} entries")
    c = layout.coords(xp)
    ok = xp.ones(layout.local_shape, dtype=xp.bool)
    for nu in range(layout.Nd):
        ok = ok & ((c[nu] % 2) == (int(offset[nu]) % 2))
    site = xp.astype(ok, xp.int8)
    return xp.stack([site] * layout.Nd, axis=0)


def checker_mask(layout: Layout, mu: int, modulus: int, parity: int, xp=None):
    """Active links of the M2 / M4 patterns (module docstring): direction mu where
    sum_nu x_nu = parity (mod 2) (M2), or sum_{nu != mu} x_nu + 2 x_mu = parity (mod 4) (M4)."""
    modulus, parity, mu = int(modulus), int(parity), int(mu)
    if modulus not in (2, 4):
        raise ValueError(f"checker masks are M2 or M4 (modulus 2 or 4), got modulus {modulus}")
    if not 0 <= parity < modulus:
        raise ValueError(f"M{modulus} parity must lie in 0..{modulus - 1}, got {parity}")
    if not 0 <= mu < layout.Nd:
        raise ValueError(f"mask direction mu = {mu} out of range for Nd = {layout.Nd}")
    bad = [L for L in layout.global_shape if L % modulus]
    if bad:
        raise ValueError(f"M{modulus} masks need lattice extents divisible by {modulus}, got "
                         f"{tuple(layout.global_shape)}" + ("; use M2 layers only (residual schedule "
                                                            "'M2') or a lattice with extents divisible by 4"
                                                            if modulus == 4 else ""))
    xp = default_xp() if xp is None else xp
    c = layout.coords(xp)
    s = xp.zeros(layout.local_shape, dtype=xp.int64)
    for nu in range(layout.Nd):
        w = 2 if (nu == mu and modulus == 4) else 1
        s = s + w * c[nu]
    site = xp.astype((s % modulus) == parity, xp.int8)
    zero = xp.zeros(layout.local_shape, dtype=xp.int8)
    return xp.stack([site if nu == mu else zero for nu in range(layout.Nd)], axis=0)


def residual_schedule(Nd: int, pattern=("M2", "M4", "M2", "M4")):
    """Masks of the residual flows: one pass per entry of ``pattern`` ("M2" or "M4"), each a
    cycle over mu (fastest) and the parity classes, so every pass updates every link once.
    The default is the paper's 48-layer marginal model in 4d (8 + 16 + 8 + 16)."""
    out = []
    for p in pattern:
        if p not in ("M2", "M4"):
            raise ValueError(f"residual mask pattern entries must be 'M2' or 'M4', got {p!r}")
        m = int(p[1])
        out += [LayerMask("checker", mu=mu, parity=o, modulus=m) for o in range(m) for mu in range(Nd)]
    return out


def paths_avoid_active(mask: LayerMask, mu: int, paths, layout: Layout, xp=None):
    """Return the first (path, step) of ``paths`` that uses an active link of ``mask``, or None.

    Paths are S^dag paths of the active mu-link at x: they start at x + mu^ and end at x
    (:func:`flows.layers.fixed_staple_path`), so U_mu(x) S^dag(x) is a closed loop. A path that
    avoids every active link makes the layer triangular (its image at x depends on the link
    at x and on frozen links only)."""
    xp = default_xp() if xp is None else xp
    m = xp.astype(mask.active(layout, xp), xp.float64)
    for path in paths:
        pos = [0] * layout.Nd
        pos[mu] = 1
        for (nu, sg) in path:
            if sg < 0:
                pos[nu] -= 1
            f = m[nu, ...]                     # the link of this step starts at x + pos
            for ax, d in enumerate(pos):
                f = layout.shift(f, ax, d, inner=0)
            if float(layout.sum(m[mu, ...] * f)):
                return tuple(path), (nu, sg)
            if sg > 0:
                pos[nu] += 1
    return None


def _orientations(Nd: int):
    return [(dnu, side) for side in (1, -1) for dnu in range(1, Nd)]


def _direction_cycle(Nd: int, loops: str):
    """(mu, parity, along) of one cycle of direction updates that covers every link once."""
    if loops == "rectangle":
        return [(mu, parity, along) for along in (0, 1) for parity in (0, 1) for mu in range(Nd)]
    return [(mu, parity, None) for parity in (0, 1) for mu in range(Nd)]


def simple_schedule(Nd: int, n_layers: int | None = None, loops: str = "plaquette"):
    """Direction updates cycling mu and parity (2 Nd layers update every link once; 4 Nd with
    the refined masks that fixed rectangles need, ``loops="rectangle"``); ``n_layers`` repeats
    the cycle (default one cycle). The fixed-loop orientation advances with every layer and
    once more per completed cycle (layer i uses orientation (i + i // cycle) mod 2(Nd - 1)), so
    successive updates of the same links alternate their loops (up/down and plane)."""
    base = _direction_cycle(Nd, loops)
    orients = _orientations(Nd)
    n = len(base) if n_layers is None else int(n_layers)
    return [LayerMask("direction", mu=base[i % len(base)][0], parity=base[i % len(base)][1],
                      along=base[i % len(base)][2],
                      orientation=orients[(i + i // len(base)) % len(orients)])
            for i in range(n)]


def paper_schedule(Nd: int, repeats: int = 1, direction_layers: int | None = None, loops: str = "plaquette"):
    """Blocks of direction updates followed by location updates, repeated ``repeats`` times.

    Per block: every (mu, parity) once for each fixed-loop orientation (nu != mu, up/down):
    Nd * 2 * 2(Nd-1) layers (48 in 4d, 8 in 2d), then the 2^Nd location updates (16 in 4d).
    ``direction_layers`` truncates the direction part (e.g. for small CPU models).
    With ``loops="rectangle"`` the direction part uses the refined (mu, parity, along) masks
    (twice as many layers per block).
    """
    block = [LayerMask("direction", mu=mu, parity=parity, along=along, orientation=o)
             for o in _orientations(Nd) for (mu, parity, along) in _direction_cycle(Nd, loops)]
    if direction_layers is not None:
        block = block[: int(direction_layers)]
    for off in itertools.product((0, 1), repeat=Nd):
        block.append(LayerMask("location", offset=tuple(off), orientation=(1, -1)))
    return block * int(repeats)


def check_covers_every_link(layout: Layout, masks: Sequence[LayerMask], xp=None):
    """Raise unless every link is active in at least one layer; returns the activity counts."""
    xp = default_xp() if xp is None else xp
    count = None
    for m in masks:
        a = xp.astype(m.active(layout, xp), xp.int64)
        count = a if count is None else count + a
    if count is None or int(xp.min(count)) < 1:
        raise ValueError("the mask schedule leaves some links untouched")
    return count


def check_triangular(layer_forward, U, active, layout: Layout, n_probe: int = 3, eps: float = 1e-3,
                     seed: int = 0, tol: float = 1e-12):
    """Verify by perturbation that a layer is triangular.

    ``layer_forward(U) -> U'`` for an unbatched field; ``active`` the layer's mask.
    Perturbs ``n_probe`` randomly chosen active links one at a time and checks that (i) no
    other link's output changes, and (ii) frozen links are passed through unchanged.
    Returns the largest change seen in another link (should be ~0).
    """
    from lattice.backend import Rng
    from lattice import su_n
    xp = namespace(U)
    act = xp.astype(active, xp.bool)[..., None, None]            # (Nd, *sites, 1, 1)
    base = layer_forward(U)
    frozen = float(xp.max(xp.where(act, 0.0, xp.abs(base - U))))
    if frozen > tol:
        raise AssertionError(f"the layer changed frozen links (by up to {frozen:.2e})")
    flat = xp.reshape(xp.astype(active, xp.bool), (-1,))
    where_active = xp.nonzero(flat)[0]
    n_act = int(where_active.shape[0])
    link_index = xp.reshape(xp.arange(flat.shape[0]), tuple(active.shape))[..., None, None]
    picks = Rng(seed).integers(n_act, lead=(min(n_probe, n_act),))
    worst = 0.0
    for j in range(int(picks.shape[0])):
        one = link_index == where_active[int(picks[j])]           # the one perturbed link
        X = su_n.random_algebra(Rng(seed + 1 + j), U.shape[-1], lead=(U.shape[0],), layout=layout)
        P = su_n.expm(xp.where(one, eps * X, 0.0 * X)) @ U
        diff = xp.max(xp.abs(layer_forward(P) - base), axis=(-2, -1))
        worst = max(worst, float(xp.max(xp.where(one[..., 0, 0], 0.0, diff))))
    if worst > tol:
        raise AssertionError(f"layer is not triangular: perturbing one active link changed another by {worst:.2e}")
    return worst
