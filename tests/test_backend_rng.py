"""Counter-based Philox RNG: known answers, distributions, decomposition independence."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import lattice as L
from lattice.backend import philox4x32, Rng


KAT = [  # Random123 tests/kat_vectors, philox4x32 10: counter, key, expected
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    c = [np.array([v], dtype=np.uint64) for v in ctr]
    out = philox4x32(*c, *key)
    assert tuple(int(o[0]) for o in out) == expected


def test_uniform_and_normal_moments():
    r = Rng(123)
    u = r.uniform((200_000,))
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)
    z = r.normal((200_000,))
    assert abs(z.mean()) < 5 / math.sqrt(z.size)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / z.size)
    c = r.complex_normal((200_000,))
    assert abs(np.mean(np.abs(c) ** 2) - 1) < 0.02
    assert abs(np.mean(c * c)) < 0.02  # circular: E z^2 = 0


def test_draws_are_reproducible_and_distinct():
    a, b = Rng(5), Rng(5)
    assert np.array_equal(a.normal((10,)), b.normal((10,)))
    assert not np.array_equal(a.normal((10,)), a.normal((10,)))  # call counter advances
    assert not np.array_equal(Rng(5).child(1).normal((10,)), Rng(5).child(2).normal((10,)))
    s = a.state()
    assert np.array_equal(Rng.from_state(s).normal((7,)), a.normal((7,)))


class _Block(L.Layout):
    """A layout that pretends to hold one block of a decomposed lattice (no MPI needed)."""

    def __init__(self, global_shape, local_shape, offset):
        super().__init__(global_shape)
        self.local_shape, self.offset = tuple(local_shape), tuple(offset)


@given(st.integers(0, 2**32), st.sampled_from([0, 1]), st.sampled_from([0, 2]))
def test_site_fields_do_not_depend_on_decomposition(seed, o0, o3):
    """A rank holding a block draws exactly the global field's values on that block."""
    g = L.Layout((4, 2, 2, 4))
    blk = _Block((4, 2, 2, 4), (2, 2, 2, 2), (2 * o0, 0, 0, o3))
    full = Rng(seed).complex_normal(lead=(3,), layout=g, inner=(2,))
    part = Rng(seed).complex_normal(lead=(3,), layout=blk, inner=(2,))
    sl = (slice(None), slice(2 * o0, 2 * o0 + 2), slice(None), slice(None), slice(o3, o3 + 2))
    assert np.array_equal(full[sl], part)


def test_haar_moments_su3():
    U = L.random_gauge((8, 8, 8, 8), N=3, seed=1)  # 16384 matrices
    tr = L.su_n.trace(U).ravel()
    n = tr.size
    assert abs(tr.mean()) < 4 / math.sqrt(n)               # E tr U = 0
    assert abs(np.mean(np.abs(tr) ** 2) - 1) < 0.05        # E |tr U|^2 = 1
    assert abs(np.mean(tr ** 3) - 1) < 0.15                # E (tr U)^3 = 1 for SU(3) (baryon)
    assert float(L.su_n.unitarity_violation(U).max()) < 1e-13


def test_haar_moments_su2():
    U = L.random_gauge((16, 16, 16), N=2, seed=2)
    tr = L.su_n.trace(U).ravel()
    assert np.allclose(tr.imag, 0, atol=1e-13)
    assert abs(np.mean(tr.real ** 2) - 1) < 0.03


def test_derived_seeds_name_distinct_streams():
    """derive_seed: deterministic, in [0, 2^63), one seed per (job seed, labels); the streams
    the jobs use -- HMC at +lambda and -lambda, training, and per configuration the
    determinant-ratio noise and the pion sources -- never coincide, also past configuration
    1000, where the former offsets seed + 1000 + i and seed + 2000 + i met."""
    from lattice import derive_seed
    assert derive_seed(5, "measure", 3) == derive_seed(5, "measure", 3)
    assert derive_seed(5, "hmc", -0.0) == derive_seed(5, "hmc", 0.0)
    assert derive_seed(5, "measure", 3) != derive_seed(6, "measure", 3)
    assert derive_seed(5, "measure", 3) != derive_seed(5, "measure", "3")      # typed labels
    seeds = [derive_seed(0, "hmc", lam) for lam in (0.0, 0.005, -0.005, 0.01)]
    seeds += [derive_seed(0, purpose, what) for purpose in ("train", "pf_train") for what in ("init", "batches")]
    seeds += [derive_seed(0, purpose, i) for purpose in ("evaluate", "measure") for i in range(3000)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    with pytest.raises(TypeError, match="labels are str, int or float"):
        derive_seed(0, "hmc", None)
    # the streams themselves differ (not just the numbers naming them)
    a = Rng(derive_seed(0, "evaluate", 1000)).normal((8,))
    b = Rng(derive_seed(0, "measure", 0)).normal((8,))
    assert not np.allclose(a, b)
