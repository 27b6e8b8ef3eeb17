"""Vectorised CRC32 and the SciDAC checksum (lattice.io.checksum)."""
import zlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

from lattice.io.checksum import crc32_rows, scidac_checksum, rotl32, combine, crc32


@given(n_rows=st.integers(0, 40), n_bytes=st.integers(0, 200), seed=st.integers(0, 2**32 - 1))
def test_crc32_rows_equals_zlib(n_rows, n_bytes, seed):
    data = np.random.default_rng(seed).integers(0, 256, (n_rows, n_bytes), dtype=np.uint8)
    ref = np.array([zlib.crc32(r.tobytes()) for r in data], dtype=np.uint32)
    np.testing.assert_array_equal(crc32_rows(data), ref)


def test_crc32_rows_many_rows_chunks():
    """More rows than one processing chunk, ILDG double-precision site size (576 bytes)."""
    data = np.random.default_rng(1).integers(0, 256, (20000, 576), dtype=np.uint8)
    got = crc32_rows(data)
    for i in (0, 1, 8191, 8192, 8193, 19999):
        assert got[i] == zlib.crc32(data[i].tobytes())


def test_crc32_rows_rejects_wrong_dtype():
    with pytest.raises(TypeError, match="uint8"):
        crc32_rows(np.zeros((2, 3)))


def test_crc32_of_arrays_is_crc_of_bytes():
    a = np.arange(12.0).reshape(3, 4) + 1j
    assert crc32(a) == zlib.crc32(a.tobytes())
    assert crc32(a.T) == zlib.crc32(np.ascontiguousarray(a.T).tobytes())


def test_rotl32():
    x = np.array([0x80000001, 0x12345678, 0xFFFFFFFF], dtype=np.uint32)
    np.testing.assert_array_equal(rotl32(x, 0), x)
    np.testing.assert_array_equal(rotl32(x, 1), [0x00000003, 0x2468ACF0, 0xFFFFFFFF])
    np.testing.assert_array_equal(rotl32(x, 28), [0x18000000, 0x81234567, 0xFFFFFFFF])


def _scidac_reference(site_bytes, ranks):
    """Straight transcription of the QIO definition, one site at a time."""
    a = b = 0
    for row, r in zip(site_bytes, ranks):
        c = zlib.crc32(row.tobytes())
        for k, m in ((29, "a"), (31, "b")):
            s = int(r) % k
            v = ((c << s) | (c >> (32 - s))) & 0xFFFFFFFF if s else c
            if m == "a":
                a ^= v
            else:
                b ^= v
    return a, b


def test_scidac_checksum_matches_definition_and_combines():
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (257, 72), dtype=np.uint8)
    ranks = np.arange(257)
    full = scidac_checksum(data, ranks)
    assert full == _scidac_reference(data, ranks)
    assert full == scidac_checksum(data)
    # partial sums over any split of the sites (e.g. MPI blocks) XOR-combine to the total
    perm = rng.permutation(257)
    parts = [scidac_checksum(data[perm[s:s + 50]], ranks[perm[s:s + 50]]) for s in range(0, 257, 50)]
    assert combine(parts) == full
    # the checksum depends on the site ranks (not just the multiset of site data)
    assert scidac_checksum(data[::-1], ranks) != full
