"""LIME record reader/writer (lattice.io.lime)."""
import io
import struct

import numpy as np
import pytest

from lattice.io import lime, CorruptFileError, TruncatedFileError


def _write(path, messages):
    with open(path, "wb") as f:
        w = lime.LimeWriter(f)
        for m in messages:
            w.write_message(m)


def test_roundtrip_headers_padding_flags(tmp_path):
    p = tmp_path / "a.lime"
    arr = np.arange(5, dtype=">f8")
    _write(p, [[("first", b"abc"), ("second", "xml\u00e9")], [("data", arr)]])
    raw = p.read_bytes()
    # header of the first record: magic, version, MB set, ME clear, length 3, type, then padding
    magic, version, mbme, res, length = struct.unpack(">IHBBQ", raw[:16])
    assert (magic, version, mbme, res, length) == (0x456789AB, 1, 0x80, 0, 3)
    assert raw[16:21] == b"first" and raw[21:144] == b"\0" * 123
    assert raw[144:147] == b"abc" and raw[147:152] == b"\0" * 5
    recs = lime.scan(p)
    assert [r.type for r in recs] == ["first", "second", "data"]
    assert [(r.mb, r.me) for r in recs] == [(True, False), (False, True), (True, True)]
    assert [r.length for r in recs] == [3, 5, 40]
    assert all(r.header_offset % 8 == 0 for r in recs)
    assert lime.read_data(p, recs[1]).decode() == "xml\u00e9"
    assert np.array_equal(np.frombuffer(lime.read_data(p, recs[2]), ">f8"), arr)
    assert len(raw) == recs[2].data_offset + 40


def test_bad_magic(tmp_path):
    p = tmp_path / "x.lime"
    p.write_bytes(b"\x00" * 300)
    with pytest.raises(CorruptFileError, match="bad LIME magic number 0x00000000 at the start"):
        lime.scan(p)
    _write(p, [[("a", b"12345678")]])
    p.write_bytes(p.read_bytes() + b"garbage!" * 20)
    with pytest.raises(CorruptFileError, match="bad LIME magic number .* at byte offset 152"):
        lime.scan(p)


def test_wrong_version(tmp_path):
    p = tmp_path / "v.lime"
    _write(p, [[("a", b"x")]])
    raw = bytearray(p.read_bytes())
    raw[5] = 2
    p.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="unsupported LIME version 2"):
        lime.scan(p)


@pytest.mark.parametrize("cut", [100, 144 + 10, 152 + 144 + 500])
def test_truncated(tmp_path, cut):
    p = tmp_path / "t.lime"
    _write(p, [[("a", b"x" * 8), ("big", b"y" * 1000)]])
    raw = p.read_bytes()
    p.write_bytes(raw[:cut])
    with pytest.raises(TruncatedFileError, match="truncated"):
        lime.scan(p)


def test_type_too_long_and_empty_file(tmp_path):
    with pytest.raises(ValueError, match="longer than 127"):
        lime.LimeWriter(io.BytesIO()).write("t" * 128, b"", True, True)
    p = tmp_path / "e.lime"
    p.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty"):
        lime.scan(p)
