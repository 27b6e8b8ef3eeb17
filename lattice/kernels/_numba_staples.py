"""Numba path of :mod:`lattice.kernels.staple_pairs`.

One pair of kernels, :func:`_forward_units` and :func:`_vjp_units`, serves both paths:

* with materialised shifted fields T (:func:`forward` / :func:`vjp`, the generic path that
  works on any layout), and
* on one process (:func:`transported_local` / :func:`transported_local_vjp`), where T_ab =
  S_b(x + a^) is read from S itself through the neighbour table P[a] and S^L is written at its
  shifted site: no shifted field is materialised.

A *unit* is a pair (a, b) and, when present in the same call, its partner (b, a): they share
the two-link products Y_ab = S_a T_ab and Y_ba = S_b T_ba, so a unit of two pairs costs 6
products forward instead of 8 and 14 in the adjoint instead of 20. Each operand is read
through (array, slot, table): table 0 is the identity, table 1 + d is x -> x + d^, applied
within each row of V sites (rows = all axes between the stacking axis and the sites).

Per unit and block of ``_BLOCK`` sites the operands are loaded once into a split (re, im)
scratch that stays in cache, the 3x3 products run on contiguous real vectors (the compiler
vectorises them; interleaved complex loops it does not), and each result is written back once.
N = 3 only (else the caller composes).
"""
from __future__ import annotations

import numba
from ..backend import np  # NumPy itself: lattice.backend holds the one import

from ._numba import _FLAGS

_BLOCK = 256

# unit record: a, b, (slot, table) of T_ab, (slot, table) of T_ba,
#              (slot, table) of D and slot of R for the pair (a, b), the same for (b, a); -1 = absent
_A, _B, _TAB, _TABT, _TBA, _TBAT, _D1, _D1T, _R1, _D2, _D2T, _R2 = range(12)


@numba.jit(**_FLAGS)
def _load(A, q, base, tbl, t, x0, X, n):
    """X[0/1, i, j, m] = Re/Im A[i, j, q, base + P_t(x0 + m)] (t = 0: contiguous)."""
    for i in range(3):
        for j in range(3):
            if t == 0:
                for m in range(n):
                    v = A[i, j, q, base + x0 + m]
                    X[0, i, j, m] = v.real
                    X[1, i, j, m] = v.imag
            else:
                for m in range(n):
                    v = A[i, j, q, base + tbl[t, x0 + m]]
                    X[0, i, j, m] = v.real
                    X[1, i, j, m] = v.imag


def _make_store(acc: bool):
    @numba.jit(**_FLAGS)
    def store(X, C, q, base, tbl, t, x0, n):
        """C[i, j, q, base + P_t(x0 + m)] (+)= X[0, i, j, m] + i X[1, i, j, m]."""
        for i in range(3):
            for j in range(3):
                for m in range(n):
                    k = base + x0 + m if t == 0 else base + tbl[t, x0 + m]
                    v = complex(X[0, i, j, m], X[1, i, j, m])
                    if acc:
                        C[i, j, q, k] += v
                    else:
                        C[i, j, q, k] = v
    return store


_store = _make_store(False)
_store_acc = _make_store(True)


def _make_split_mul(da: bool, db: bool, acc: bool):
    """C (+)= op(A) op(B) on split scratch blocks (2, 3, 3, >= n), op = dagger where flagged."""
    @numba.jit(**_FLAGS)
    def split_mul(A, B, C, n):
        for i in range(3):
            for j in range(3):
                for m in range(n):
                    cr = 0.0
                    ci = 0.0
                    for k in range(3):
                        if da:
                            ar, ai = A[0, k, i, m], -A[1, k, i, m]
                        else:
                            ar, ai = A[0, i, k, m], A[1, i, k, m]
                        if db:
                            br, bi = B[0, j, k, m], -B[1, j, k, m]
                        else:
                            br, bi = B[0, k, j, m], B[1, k, j, m]
                        cr += ar * br - ai * bi
                        ci += ar * bi + ai * br
                    if acc:
                        C[0, i, j, m] += cr
                        C[1, i, j, m] += ci
                    else:
                        C[0, i, j, m] = cr
                        C[1, i, j, m] = ci
    return split_mul


_nn = _make_split_mul(False, False, False)
_dn = _make_split_mul(True, False, False)
_nd = _make_split_mul(False, True, False)
_nn_acc = _make_split_mul(False, False, True)
_dn_acc = _make_split_mul(True, False, True)
_nd_acc = _make_split_mul(False, True, True)


@numba.jit(**_FLAGS)
def _load_unit(S, Tsrc, w, base, tbl, x0, sa, sb, tab, tba, n):
    """The four operands of a unit's block: S_a, S_b and T_ab, T_ba through their tables."""
    _load(S, w[_A], base, tbl, 0, x0, sa, n)
    _load(S, w[_B], base, tbl, 0, x0, sb, n)
    _load(Tsrc, w[_TAB], base, tbl, w[_TABT], x0, tab, n)
    _load(Tsrc, w[_TBA], base, tbl, w[_TBAT], x0, tba, n)


@numba.jit(**_FLAGS)
def _forward_units(S, Tsrc, units, tbl, V, Ddst, R):
    """(P1)-(P3) per unit: T_ab, T_ba read from Tsrc; D written to Ddst (through its table),
    R to R; Y_ab, Y_ba shared by both pairs. Arrays (3, 3, slots, rows * V); tbl (tables, V)
    (never read for table 0, so materialised T pass a dummy and V = the whole length)."""
    f = S.real.dtype
    sa, sb = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    tab, tba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    yab, yba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    o = np.empty((2, 3, 3, _BLOCK), f)
    for r in range(S.shape[3] // V):
        base = r * V
        for x0 in range(0, V, _BLOCK):
            n = min(_BLOCK, V - x0)
            for u in range(units.shape[0]):
                w = units[u]
                _load_unit(S, Tsrc, w, base, tbl, x0, sa, sb, tab, tba, n)
                _nn(sa, tab, yab, n)                            # (P1) Y_ab = S_a T_ab
                _nn(sb, tba, yba, n)                            #      Y_ba = S_b T_ba
                if w[_D1] >= 0:                                 # pair (a, b)
                    _dn(sb, yab, o, n)                          # (P2) D = S_b^dag Y_ab
                    _store(o, Ddst, w[_D1], base, tbl, w[_D1T], x0, n)
                    _nd(yba, tab, o, n)                         # (P3) R = Y_ba T_ab^dag
                    _store(o, R, w[_R1], base, tbl, 0, x0, n)
                if w[_D2] >= 0:                                 # pair (b, a)
                    _dn(sa, yba, o, n)                          #      D = S_a^dag Y_ba
                    _store(o, Ddst, w[_D2], base, tbl, w[_D2T], x0, n)
                    _nd(yab, tba, o, n)                         #      R = Y_ab T_ba^dag
                    _store(o, R, w[_R2], base, tbl, 0, x0, n)


@numba.jit(**_FLAGS)
def _vjp_units(S, Tsrc, units, tbl, V, Rb, Dsrc, Sb, Tdst):
    """(A1)-(A2) per unit, accumulating: the cotangent of R read from Rb (slot of R), that of D
    from Dsrc through D's table; cotangents of S added to Sb, those of T_ab, T_ba to Tdst
    through their tables. The cotangents of Y_ab, Y_ba are summed over both pairs first."""
    f = S.real.dtype
    sa, sb = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    tab, tba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    yab, yba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    rb, db = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    gab, gba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)    # Y cotangents
    ga, gb = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)      # S_a, S_b
    gtab, gtba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)  # T_ab, T_ba
    for r in range(S.shape[3] // V):
        base = r * V
        for x0 in range(0, V, _BLOCK):
            n = min(_BLOCK, V - x0)
            for u in range(units.shape[0]):
                w = units[u]
                _load_unit(S, Tsrc, w, base, tbl, x0, sa, sb, tab, tba, n)
                _nn(sa, tab, yab, n)
                _nn(sb, tba, yba, n)
                # pair (a, b), present in every unit: R = Y_ba T_ab^dag, D = S_b^dag Y_ab
                _load(Rb, w[_R1], base, tbl, 0, x0, rb, n)
                _load(Dsrc, w[_D1], base, tbl, w[_D1T], x0, db, n)
                _nn(rb, tab, gba, n)                            # Yba_b = Rb T_ab
                _dn(rb, yba, gtab, n)                           # T_ab_b = Rb^dag Y_ba
                _nd(yab, db, gb, n)                             # S_b_b = Y_ab Db^dag
                _nn(sb, db, gab, n)                             # Yab_b = S_b Db
                if w[_D2] >= 0:                                 # pair (b, a): R = Y_ab T_ba^dag, D = S_a^dag Y_ba
                    _load(Rb, w[_R2], base, tbl, 0, x0, rb, n)
                    _load(Dsrc, w[_D2], base, tbl, w[_D2T], x0, db, n)
                    _nn_acc(rb, tba, gab, n)                    # Yab_b += Rb T_ba
                    _dn(rb, yab, gtba, n)                       # T_ba_b = Rb^dag Y_ab
                    _nd(yba, db, ga, n)                         # S_a_b = Y_ba Db^dag
                    _nn_acc(sa, db, gba, n)                     # Yba_b += S_a Db
                    _nd_acc(gab, tab, ga, n)                    # Y_ab = S_a T_ab: S_a_b += Yab_b T_ab^dag
                    _dn_acc(sb, gba, gtba, n)                   # Y_ba = S_b T_ba: T_ba_b += S_b^dag Yba_b
                else:
                    _nd(gab, tab, ga, n)
                    _dn(sb, gba, gtba, n)
                _dn_acc(sa, gab, gtab, n)                       # Y_ab: T_ab_b += S_a^dag Yab_b
                _nd_acc(gba, tba, gb, n)                        # Y_ba: S_b_b += Yba_b T_ba^dag
                _store_acc(ga, Sb, w[_A], base, tbl, 0, x0, n)
                _store_acc(gb, Sb, w[_B], base, tbl, 0, x0, n)
                _store_acc(gtab, Tdst, w[_TAB], base, tbl, w[_TABT], x0, n)
                _store_acc(gtba, Tdst, w[_TBA], base, tbl, w[_TBAT], x0, n)


def _units(i_mu, i_nu, t_ab, t_ba, d, r):
    """Unit records from per-pair (mu, nu), (slot, table) of T_mn = S_nu(x + mu^) and of T_nm,
    (slot, table) of D and slot of R: a pair (mu, nu) joins the unit of an earlier (nu, mu)
    with the same T operands swapped."""
    units, where = [], {}
    for q, (mu, nu) in enumerate(zip(i_mu, i_nu)):
        mu, nu = int(mu), int(nu)
        key = (nu, mu, tuple(t_ba[q]), tuple(t_ab[q]))
        if key in where and units[where[key]][_D2] < 0:
            units[where.pop(key)][_D2:] = [d[q][0], d[q][1], r[q]]
        else:
            where[(mu, nu, tuple(t_ab[q]), tuple(t_ba[q]))] = len(units)
            units.append([mu, nu, *t_ab[q], *t_ba[q], d[q][0], d[q][1], r[q], -1, -1, -1])
    return np.asarray(units, dtype=np.int64).reshape(-1, 12)


def _flat4(X, dtype):
    """A C-contiguous (3, 3, P, M) view of X of the given dtype, or None."""
    if X.shape[0] != 3 or X.shape[1] != 3 or X.dtype != dtype or not X.flags.c_contiguous:
        return None
    return X.reshape(3, 3, X.shape[2], -1)


_NO_TABLE = np.zeros((1, 1), dtype=np.int64)     # materialised T: every operand read in place


def forward(S, T, i_mu, i_nu, i_mn, i_nm, D, R, oR) -> bool:
    """Run (P1)-(P3) compiled on materialised T; False where the arrays do not fit (N != 3,
    mixed dtypes, non-contiguous outputs): the caller composes instead."""
    dtype = S.dtype
    if dtype.kind != "c":
        return False
    views = [_flat4(X, dtype) for X in (S, T, D, R)]
    if any(v is None for v in views):
        return False
    n = len(i_mu)
    units = _units(i_mu, i_nu, [(int(k), 0) for k in i_mn], [(int(k), 0) for k in i_nm],
                   [(q, 0) for q in range(n)], [int(k) for k in oR])
    s, t, d, r = views
    _forward_units(s, t, units, _NO_TABLE, s.shape[3], d, r)
    return True


def vjp(S, T, i_mu, i_nu, i_mn, i_nm, Rb, iR, Db, S_bar, T_bar) -> bool:
    """Run (A1)-(A2) compiled on materialised T; False where the arrays do not fit."""
    dtype = S.dtype
    if dtype.kind != "c":
        return False
    views = [_flat4(X, dtype) for X in (S, T, Rb, Db, S_bar, T_bar)]
    if any(v is None for v in views):
        return False
    n = len(i_mu)
    units = _units(i_mu, i_nu, [(int(k), 0) for k in i_mn], [(int(k), 0) for k in i_nm],
                   [(q, 0) for q in range(n)], [int(k) for k in iR])
    s, t, rb, db, sb, tb = views
    _vjp_units(s, t, units, _NO_TABLE, s.shape[3], rb, db, sb, tb)
    return True


_TABLES: dict = {}


def _tables(local_shape):
    """[identity, P_0, ..., P_{Nd-1}] with P_d[x] = flat index of x + d^ on the periodic local
    block: int64 (1 + Nd, V), cached."""
    key = tuple(int(n) for n in local_shape)
    P = _TABLES.get(key)
    if P is None:
        idx = np.arange(int(np.prod(key)), dtype=np.int64).reshape(key)
        P = _TABLES[key] = np.stack([idx.ravel()] + [np.roll(idx, -1, axis=d).ravel() for d in range(len(key))])
    return P


def _local_views(S, local_shape, others):
    nd = len(local_shape)
    if S.ndim < 3 + nd or tuple(S.shape[S.ndim - nd:]) != tuple(local_shape) or S.shape[2] != nd:
        return None
    views = [_flat4(S, S.dtype)] + [_flat4(X, S.dtype) for X in others]
    if S.dtype.kind != "c" or any(v is None for v in views) or \
            any(tuple(X.shape[3:]) != tuple(S.shape[3:]) for X in others):
        return None
    return views


def _local_units(i_mu, i_nu, i_L, i_R):
    """T_mn = S_nu(x + mu^) read from S (slot nu, table 1 + mu); S^L = D written at x + nu^
    (slot i_L, table 1 + nu)."""
    return _units(i_mu, i_nu, [(int(n), 1 + int(m)) for m, n in zip(i_mu, i_nu)],
                  [(int(m), 1 + int(n)) for m, n in zip(i_mu, i_nu)],
                  [(int(L), 1 + int(n)) for n, L in zip(i_nu, i_L)], [int(R) for R in i_R])


def transported_local(S, local_shape, i_mu, i_nu, aug, i_L, i_R) -> bool:
    """The one-process path of :func:`lattice.kernels.transported_staples`; False where the
    arrays do not fit (the caller takes the generic path)."""
    views = _local_views(S, local_shape, (aug,))
    if views is None:
        return False
    s, a = views
    P = _tables(local_shape)
    _forward_units(s, s, _local_units(i_mu, i_nu, i_L, i_R), P, P.shape[1], a, a)
    return True


def transported_local_vjp(S, local_shape, i_mu, i_nu, AB, i_L, i_R, S_bar) -> bool:
    """The one-process path of :func:`lattice.kernels.transported_staples_vjp`."""
    views = _local_views(S, local_shape, (AB, S_bar))
    if views is None:
        return False
    s, ab, sb = views
    P = _tables(local_shape)
    _vjp_units(s, s, _local_units(i_mu, i_nu, i_L, i_R), P, P.shape[1], ab, ab, sb, sb)
    return True


# ---------------------------------------------------------------------------------------------
# the output layer of a staple network: transported staples of one direction mixed on the fly
# (lattice.kernels.staple_mix)

@numba.jit(**_FLAGS)
def _store_axpy(X, a, C, q, base, tbl, t, x0, n):
    """C[i, j, q, base + P_t(x0 + m)] += a (X[0, i, j, m] + i X[1, i, j, m])."""
    for i in range(3):
        for j in range(3):
            for m in range(n):
                k = base + x0 + m if t == 0 else base + tbl[t, x0 + m]
                C[i, j, q, k] += complex(a * X[0, i, j, m], a * X[1, i, j, m])


@numba.jit(**_FLAGS)
def _combine(c, Obs, X, n):
    """X = sum_p c[p] Obs[p] on split blocks (the cotangent of one augmented channel)."""
    for i in range(3):
        for j in range(3):
            for m in range(n):
                X[0, i, j, m] = c[0] * Obs[0, 0, i, j, m]
                X[1, i, j, m] = c[0] * Obs[0, 1, i, j, m]
            for p in range(1, c.shape[0]):
                for m in range(n):
                    X[0, i, j, m] += c[p] * Obs[p, 0, i, j, m]
                    X[1, i, j, m] += c[p] * Obs[p, 1, i, j, m]


@numba.jit(**_FLAGS)
def _dot(X, Y, n):
    """Re sum conj(X) Y = sum X_re Y_re + X_im Y_im over a split block, in float64."""
    s = 0.0
    for i in range(3):
        for j in range(3):
            for m in range(n):
                s += np.float64(X[0, i, j, m]) * np.float64(Y[0, i, j, m]) \
                    + np.float64(X[1, i, j, m]) * np.float64(Y[1, i, j, m])
    return s


@numba.jit(**_FLAGS)
def _pair(S, mu, nu, base, tbl, x0, sa, sb, tab, tba, yab, yba, n):
    """The operands of the pair (mu, nu) at a block whose S_mu is in ``sa``: S_nu(x),
    T_mn = S_nu(x + mu^), T_nm = S_mu(x + nu^) read through the tables, and (P1)
    Y_mn = S_mu T_mn, Y_nm = S_nu T_nm."""
    _load(S, nu, base, tbl, 0, x0, sb, n)
    _load(S, nu, base, tbl, 1 + mu, x0, tab, n)
    _load(S, mu, base, tbl, 1 + nu, x0, tba, n)
    _nn(sa, tab, yab, n)
    _nn(sb, tba, yba, n)


@numba.jit(**_FLAGS)
def _mix_forward(S, mu, nus, tbl, V, Bt, cS, cL, cR, Out):
    """Out (+)= cS S_mu + sum_j (cL[j] S^L_mu,nu_j + cR[j] S^R_mu,nu_j) per channel.

    S (3, 3, Nd, R V) with rows r = k Bt + b (channel k, batch row b); Out (3, 3, K_out, Bt V);
    cS (K_out, K), cL, cR (len(nus), K_out, K); tbl the neighbour tables of one row. Per row and
    block: S_mu loaded once; per nu (P1)-(P3) of the pair (mu, nu), D added at x + nu^ (S^L),
    R at x (S^R), each scaled by its coefficients. Rows of different channels add into the
    same output row (and, in the adjoint, the same coefficient cotangents): the row loop must
    stay sequential (a parallel loop would need per-thread buffers)."""
    f = S.real.dtype
    sa, sb = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    tab, tba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    yab, yba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    o = np.empty((2, 3, 3, _BLOCK), f)
    K_out = Out.shape[2]
    for r in range(S.shape[3] // V):
        k = r // Bt
        base = r * V
        obase = (r % Bt) * V
        for x0 in range(0, V, _BLOCK):
            n = min(_BLOCK, V - x0)
            _load(S, mu, base, tbl, 0, x0, sa, n)
            for p in range(K_out):
                _store_axpy(sa, cS[p, k], Out, p, obase, tbl, 0, x0, n)
            for j in range(nus.shape[0]):
                nu = nus[j]
                _pair(S, mu, nu, base, tbl, x0, sa, sb, tab, tba, yab, yba, n)    # (P1)
                _dn(sb, yab, o, n)                                      # (P2) D, S^L at x + nu^
                for p in range(K_out):
                    _store_axpy(o, cL[j, p, k], Out, p, obase, tbl, 1 + nu, x0, n)
                _nd(yba, tab, o, n)                                     # (P3) R = S^R at x
                for p in range(K_out):
                    _store_axpy(o, cR[j, p, k], Out, p, obase, tbl, 0, x0, n)


@numba.jit(**_FLAGS)
def _mix_vjp(S, mu, nus, tbl, V, Bt, cS, cL, cR, Ob, Sb, need_c, gS, gL, gR):
    """Adjoint of :func:`_mix_forward`: the cotangent Ob of Out pulled back through the mixing
    (Rb = sum_p cR[j, p, k] Ob_p(x), Db = sum_p cL[j, p, k] Ob_p(x + nu^)) and (A1)-(A2), added
    to Sb; with ``need_c`` the coefficient cotangents Re <Ob_p, aug_l> (D and R recomputed)
    added to gS, gL, gR (float64, shapes of cS, cL, cR)."""
    f = S.real.dtype
    K_out = Ob.shape[2]
    sa, sb = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    tab, tba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    yab, yba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    rb, db = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)
    gab, gba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)    # Y cotangents
    ga, gb = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)      # S_mu, S_nu
    gtab, gtba = np.empty((2, 3, 3, _BLOCK), f), np.empty((2, 3, 3, _BLOCK), f)  # T_mn, T_nm
    o = np.empty((2, 3, 3, _BLOCK), f)
    obx = np.empty((K_out, 2, 3, 3, _BLOCK), f)                                   # Ob_p(x)
    obs = np.empty((K_out, 2, 3, 3, _BLOCK), f)                                   # Ob_p(x + nu^)
    for r in range(S.shape[3] // V):
        k = r // Bt
        base = r * V
        obase = (r % Bt) * V
        for x0 in range(0, V, _BLOCK):
            n = min(_BLOCK, V - x0)
            _load(S, mu, base, tbl, 0, x0, sa, n)
            for p in range(K_out):
                _load(Ob, p, obase, tbl, 0, x0, obx[p], n)
                if need_c:
                    gS[p, k] += _dot(obx[p], sa, n)
            _combine(cS[:, k], obx, ga, n)                              # S_mu block
            for j in range(nus.shape[0]):
                nu = nus[j]
                _pair(S, mu, nu, base, tbl, x0, sa, sb, tab, tba, yab, yba, n)
                for p in range(K_out):
                    _load(Ob, p, obase, tbl, 1 + nu, x0, obs[p], n)
                if need_c:
                    _dn(sb, yab, o, n)                                  # D
                    for p in range(K_out):
                        gL[j, p, k] += _dot(obs[p], o, n)
                    _nd(yba, tab, o, n)                                 # R
                    for p in range(K_out):
                        gR[j, p, k] += _dot(obx[p], o, n)
                _combine(cR[j, :, k], obx, rb, n)
                _combine(cL[j, :, k], obs, db, n)
                _nn(rb, tab, gba, n)                                    # (A1) Ynm_b = Rb T_mn
                _dn(rb, yba, gtab, n)                                   #      T_mn_b = Rb^dag Y_nm
                _nd(yab, db, gb, n)                                     # (A2) S_nu_b = Y_mn Db^dag
                _nn(sb, db, gab, n)                                     #      Ymn_b = S_nu Db
                _nd_acc(gab, tab, ga, n)                                # S_mu_b += Ymn_b T_mn^dag
                _dn(sb, gba, gtba, n)                                   # T_nm_b = S_nu^dag Ynm_b
                _dn_acc(sa, gab, gtab, n)                               # T_mn_b += S_mu^dag Ymn_b
                _nd_acc(gba, tba, gb, n)                                # S_nu_b += Ynm_b T_nm^dag
                _store_acc(gb, Sb, nu, base, tbl, 0, x0, n)
                _store_acc(gtab, Sb, nu, base, tbl, 1 + mu, x0, n)
                _store_acc(gtba, Sb, mu, base, tbl, 1 + nu, x0, n)
            _store_acc(ga, Sb, mu, base, tbl, 0, x0, n)


def _mix_coefficients(c, K, nd, dtype):
    """cS (K_out, K), cL, cR (Nd - 1, K_out, K) in S's real dtype from the augmented-order
    coefficients c (K_out, (2 Nd - 1) K) (blocks [S_mu | S^L_nu... | S^R_nu...])."""
    K_out = c.shape[0]
    cb = np.asarray(c).astype(dtype, copy=False).reshape(K_out, 2 * nd - 1, K)
    cS = np.ascontiguousarray(cb[:, 0])
    cL = np.ascontiguousarray(np.swapaxes(cb[:, 1:nd], 0, 1))
    cR = np.ascontiguousarray(np.swapaxes(cb[:, nd:], 0, 1))
    return cS, cL, cR


def _mix_views(S, local_shape, mu, c, others):
    """Flat views for the fused mixing path, or None where it does not apply."""
    nd = len(local_shape)
    if not 0 <= int(mu) < nd:            # the kernels read table 1 + mu unchecked
        raise ValueError(f"direction mu = {mu} out of range for Nd = {nd}")
    views = _local_views(S, local_shape, ())
    if views is None or S.ndim < 4 + nd:
        return None
    K = int(S.shape[3])
    rows = 1
    for d in S.shape[4:S.ndim - nd]:
        rows *= int(d)
    V = 1
    for d in local_shape:
        V *= int(d)
    outs = []
    for X in others:
        if X.shape[:2] != S.shape[:2] or tuple(X.shape[3:]) != tuple(S.shape[4:]) or X.shape[2] != c.shape[0]:
            return None
        v = _flat4(X, S.dtype)
        if v is None:
            return None
        outs.append(v)
    nus = np.asarray([nu for nu in range(nd) if nu != int(mu)], dtype=np.int64)
    cS, cL, cR = _mix_coefficients(c, K, nd, S.real.dtype)
    return views[0], outs, nus, rows, cS, cL, cR


def transported_mix_local(S, local_shape, mu, c, out) -> bool:
    """The one-process path of :func:`lattice.kernels.transported_mix`: ``out`` (zeros on
    entry) += c . aug_mu; False where the arrays do not fit."""
    got = _mix_views(S, local_shape, mu, c, (out,))
    if got is None:
        return False
    s, (o,), nus, rows, cS, cL, cR = got
    P = _tables(local_shape)
    _mix_forward(s, int(mu), nus, P, P.shape[1], rows, cS, cL, cR, o)
    return True


def transported_mix_local_vjp(S, local_shape, mu, c, out_bar, S_bar, need_c: bool):
    """The one-process path of :func:`lattice.kernels.transported_mix_vjp`: adds to ``S_bar``
    and returns the coefficient cotangent (float64, shape of c; zeros without ``need_c``), or
    None where the arrays do not fit."""
    if S_bar.shape != S.shape or S_bar.dtype != S.dtype or not S_bar.flags.c_contiguous:
        return None
    got = _mix_views(S, local_shape, mu, c, (out_bar,))
    if got is None:
        return None
    s, (ob,), nus, rows, cS, cL, cR = got
    P = _tables(local_shape)
    gS, gL, gR = (np.zeros(x.shape, dtype=np.float64) for x in (cS, cL, cR))
    _mix_vjp(s, int(mu), nus, P, P.shape[1], rows, cS, cL, cR, ob, _flat4(S_bar, S.dtype), bool(need_c), gS, gL, gR)
    nd = len(local_shape)
    g = np.concatenate([gS[:, None], np.swapaxes(gL, 0, 1), np.swapaxes(gR, 0, 1)], axis=1)
    return g.reshape(c.shape[0], (2 * nd - 1) * int(S.shape[3]))
