"""ILDG/SciDAC gauge files: round trips, corrupted/truncated/mismatched files, foreign files."""
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

import lattice
from lattice.io import (write_ildg, read_ildg, read_ildg_info, ChecksumError, TruncatedFileError,
                        CorruptFileError, MismatchError, UnverifiedDataWarning, lime)
from lattice.io.ildg import file_order
from lattice.io.checksum import scidac_checksum

SHAPE = (4, 4, 4, 6)


@pytest.fixture(scope="module")
def U():
    return lattice.random_gauge(SHAPE, seed=11)


def test_roundtrip_64_exact(tmp_path, U):
    p = tmp_path / "c.lime"
    write_ildg(p, U)
    V = read_ildg(p, shape=SHAPE)
    assert V.dtype == np.complex128 and V.shape == U.shape
    assert np.array_equal(V, U)
    assert np.array_equal(read_ildg(p, layout=lattice.Layout(SHAPE)), U)


def test_roundtrip_32_equals_rounded_field(tmp_path, U):
    p = tmp_path / "c32.lime"
    write_ildg(p, U, precision=32)
    V = read_ildg(p)
    assert np.array_equal(V, U.astype(np.complex64).astype(np.complex128))
    assert not np.array_equal(V, U)
    assert p.stat().st_size < 0.6 * np.prod(SHAPE) * 4 * 9 * 16


def test_file_layout_is_ildg(tmp_path, U):
    """Check the bytes themselves: big-endian, t slowest ... x fastest, links x,y,z,t, row-major."""
    p = tmp_path / "c.lime"
    write_ildg(p, U)
    info = read_ildg_info(p)
    rec = info.data_record
    raw = np.fromfile(p, dtype=">f8", count=rec.length // 8, offset=rec.data_offset)
    Lx, Ly, Lz, Lt = SHAPE
    x, y, z, t, mu, a, b = 1, 2, 3, 4, 2, 0, 1
    site = x + Lx * (y + Ly * (z + Lz * t))
    k = ((site * 4 + mu) * 9 + a * 3 + b) * 2
    assert raw[k] == U[mu, x, y, z, t, a, b].real and raw[k + 1] == U[mu, x, y, z, t, a, b].imag
    assert raw[0] == U[0, 0, 0, 0, 0, 0, 0].real


def test_records_and_metadata(tmp_path, U):
    p = tmp_path / "c.lime"
    write_ildg(p, U, precision=32, lfn="lfn://gaugeflow/test/c.lime")
    info = read_ildg_info(p)
    types = [r.type for r in info.records]
    assert types == ["scidac-private-file-xml", "scidac-file-xml", "scidac-private-record-xml",
                     "scidac-record-xml", "ildg-format", "ildg-data-lfn", "ildg-binary-data", "scidac-checksum"]
    assert [(r.mb, r.me) for r in info.records] == [(True, False), (False, True), (True, False)] + \
        [(False, False)] * 4 + [(False, True)]
    assert info.lattice_shape == SHAPE and info.precision == 32 and info.lfn == "lfn://gaugeflow/test/c.lime"
    assert "<field>su3gauge</field>" in info.ildg_format_xml and "<lt>6</lt>" in info.ildg_format_xml
    assert "<dims>4 4 4 6 </dims>" in info.private_file_xml
    assert "USQCD_F3_ColorMatrix" in info.private_record_xml and "<typesize>72</typesize>" in info.private_record_xml
    assert "<code>gaugeflow</code>" in info.file_xml
    assert info.plaquette == pytest.approx(float(lattice.plaquette(U)), rel=1e-6)
    assert re.fullmatch(r"[0-9a-f]+", f"{info.checksum[0]:x}")


@given(shape=st.tuples(*[st.integers(2, 4)] * 4), seed=st.integers(0, 1000), prec=st.sampled_from([32, 64]))
def test_roundtrip_random_shapes(tmp_path_factory, shape, seed, prec):
    U = lattice.random_gauge(shape, seed=seed)
    p = tmp_path_factory.mktemp("h") / "c.lime"
    write_ildg(p, U, precision=prec, usqcd_info=False)
    ref = U if prec == 64 else U.astype(np.complex64).astype(np.complex128)
    assert np.array_equal(read_ildg(p, shape=shape), ref)


def test_flipped_byte_in_data_gives_checksum_error(tmp_path, U):
    p = tmp_path / "c.lime"
    write_ildg(p, U)
    rec = read_ildg_info(p).data_record
    raw = bytearray(p.read_bytes())
    raw[rec.data_offset + rec.length // 2] ^= 0x10
    p.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="scidac-checksum mismatch"):
        read_ildg(p)
    V = read_ildg(p, verify=False, check=False)  # still readable on request
    assert np.sum(V != U) == 1


def test_truncated_file(tmp_path, U):
    p = tmp_path / "c.lime"
    write_ildg(p, U)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TruncatedFileError, match="truncated file: LIME record .*'ildg-binary-data'"):
        read_ildg(p)


def test_wrong_lattice_size(tmp_path, U):
    p = tmp_path / "c.lime"
    write_ildg(p, U)
    with pytest.raises(MismatchError, match=r"lattice size mismatch: the file holds a 4x4x4x6 lattice .* expected 4x4x4x8"):
        read_ildg(p, shape=(4, 4, 4, 8))
    with pytest.raises(MismatchError, match="lattice size mismatch"):
        read_ildg(p, layout=lattice.Layout((4, 4, 6, 4)))


def test_bad_magic_and_not_found(tmp_path, U):
    p = tmp_path / "c.lime"
    write_ildg(p, U)
    raw = bytearray(p.read_bytes())
    raw[0] = 0x00
    p.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="bad LIME magic number"):
        read_ildg(p)
    with pytest.raises(FileNotFoundError):
        read_ildg(tmp_path / "missing.lime")


def test_write_rejects_non_su3_4d(tmp_path):
    with pytest.raises(ValueError, match="SU\\(3\\) gauge fields on 4d"):
        write_ildg(tmp_path / "a", lattice.random_gauge((4, 4, 4), seed=1))
    with pytest.raises(ValueError, match="SU\\(3\\) gauge fields on 4d"):
        write_ildg(tmp_path / "a", lattice.random_gauge((2, 2, 2, 2), N=2, seed=1))
    with pytest.raises(ValueError, match="precision must be 32 or 64"):
        write_ildg(tmp_path / "a", lattice.random_gauge((2, 2, 2, 2), seed=1), precision=16)
    with pytest.raises(ValueError, match="one configuration"):
        write_ildg(tmp_path / "a", lattice.random_gauge((2, 2, 2, 2), batch=(2,), seed=1),
                   layout=lattice.Layout((2, 2, 2, 2)))
    assert not any(tmp_path.iterdir())


def test_no_overwrite_and_atomicity(tmp_path, U):
    p = tmp_path / "c.lime"
    write_ildg(p, U)
    with pytest.raises(FileExistsError):
        write_ildg(p, U, overwrite=False)
    assert [q.name for q in tmp_path.iterdir()] == ["c.lime"]  # no temporary files left


def _foreign(path, U, records_order, precision=64, flags="messages", with_checksum=True,
             extra_nul=False, dims=None, plaq=None):
    """A file as another code might write it: chosen records, order and MB/ME flags (``flags``
    a list of (mb, me) per record for messages of several records); ``dims`` the lattice in
    ildg-format only (default: U's, as the SciDAC XML has it), ``plaq`` the text of
    usqcdInfo's <plaq>."""
    data = file_order(U, precision)
    V = int(np.prod(U.shape[1:5]))
    a, b = scidac_checksum(data.reshape(V, -1).view(np.uint8))
    Lx, Ly, Lz, Lt = U.shape[1:5]
    Fx, Fy, Fz, Ft = U.shape[1:5] if dims is None else dims
    recs = {
        "ildg-format": (f'<?xml version="1.0" encoding="UTF-8"?>\n<ildgFormat xmlns="http://www.lqcd.org/ildg">'
                        f"<version>1.0</version>\n <field> su3gauge </field><precision>{precision}</precision>"
                        f"<lx>{Fx}</lx><ly>{Fy}</ly><lz>{Fz}</lz><lt>{Ft}</lt></ildgFormat>"),
        "ildg-binary-data": data,
        "scidac-checksum": f"<scidacChecksum><version>1.0</version><suma>{a:x}</suma><sumb>{b:x}</sumb></scidacChecksum>",
        "xlf-info": "plaquette = 0.5\n",
        "scidac-record-xml": f"<usqcdInfo><version>1.0</version><plaq>{plaq}</plaq><info></info></usqcdInfo>",
        "scidac-private-file-xml": f"<scidacFile><version>1.1</version><spacetime>4</spacetime><dims>{Lx} {Ly} {Lz} {Lt}</dims><volfmt>0</volfmt></scidacFile>",
        "scidac-private-record-xml": (f"<scidacRecord><version>1.1</version><recordtype>0</recordtype><datatype>QDP_"
                                      f"{'D' if precision == 64 else 'F'}3_ColorMatrix</datatype><precision>"
                                      f"{'D' if precision == 64 else 'F'}</precision><typesize>{18 * precision // 8}"
                                      f"</typesize><datacount>4</datacount></scidacRecord>"),
    }
    with open(path, "wb") as f:
        w = lime.LimeWriter(f)
        for k, name in enumerate(records_order):
            if name == "scidac-checksum" and not with_checksum:
                continue
            d = recs[name]
            if isinstance(d, str):
                d = d.encode() + (b"\0" if extra_nul else b"")
            mb, me = flags[k] if isinstance(flags, list) else \
                {"messages": (True, True), "all_mb": (True, False), "none": (False, False)}[flags]
            w.write(name, d, mb=mb, me=me)


@pytest.mark.parametrize("order,flags,nul", [
    (["xlf-info", "ildg-format", "ildg-binary-data", "scidac-checksum"], "messages", False),
    (["scidac-checksum", "ildg-binary-data", "ildg-format"], "all_mb", True),
    (["ildg-binary-data", "ildg-format", "scidac-checksum"], "none", False),
])
def test_foreign_record_order_and_flags(tmp_path, U, order, flags, nul):
    p = tmp_path / "f.lime"
    _foreign(p, U, order, flags=flags, extra_nul=nul)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(read_ildg(p), U)


def test_foreign_scidac_only_and_single_precision(tmp_path, U):
    """No ildg-format record: size and precision from the SciDAC private XML."""
    p = tmp_path / "s.lime"
    _foreign(p, U, ["scidac-private-file-xml", "scidac-private-record-xml", "ildg-binary-data",
                    "scidac-checksum"], precision=32)
    assert np.array_equal(read_ildg(p), U.astype(np.complex64).astype(np.complex128))


def test_missing_checksum_warns(tmp_path, U):
    p = tmp_path / "n.lime"
    _foreign(p, U, ["ildg-format", "ildg-binary-data"], with_checksum=False)
    with pytest.warns(UnverifiedDataWarning, match="no scidac-checksum"):
        V = read_ildg(p)
    assert np.array_equal(V, U)


def test_inconsistent_metadata(tmp_path, U):
    p = tmp_path / "m.lime"
    _foreign(p, U, ["ildg-binary-data", "scidac-checksum"])
    with pytest.raises(CorruptFileError, match="no ildg-format record"):
        read_ildg(p)
    # ildg-format announcing a different size than the data record holds
    small = U[:, :2]
    _foreign(p, small, ["ildg-binary-data"])
    with open(p, "ab") as f:
        lime.LimeWriter(f).write("ildg-format", "<ildgFormat><field>su3gauge</field><precision>64</precision>"
                                 "<lx>4</lx><ly>4</ly><lz>4</lz><lt>6</lt></ildgFormat>", True, True)
    with pytest.raises(CorruptFileError, match="metadata and the data disagree"):
        read_ildg(p)


def test_file_cut_before_its_checksum_record(tmp_path, U):
    """A file whose writer marks message ends but whose last record has none, and no checksum:
    cut at a record boundary (here our own file without its final scidac-checksum)."""
    p = tmp_path / "c.lime"
    write_ildg(p, U)
    last = lime.scan(p)[-1]
    assert last.type == "scidac-checksum" and last.me
    p.write_bytes(p.read_bytes()[:last.header_offset])
    with pytest.raises(TruncatedFileError, match="ends inside a LIME message .*'ildg-binary-data'.* verify=False"):
        read_ildg(p)
    assert np.array_equal(read_ildg(p, verify=False), U)
    # a writer that never sets ME (CL2QCD) and leaves the checksum out: only unverified
    _foreign(p, U, ["ildg-format", "ildg-binary-data"], flags="all_mb", with_checksum=False)
    with pytest.warns(UnverifiedDataWarning):
        assert np.array_equal(read_ildg(p), U)


def test_checksum_of_another_configuration_is_not_used(tmp_path, U):
    """Two configurations in two messages, only the second with a checksum: the first is read
    unverified, not checked against the second's checksum."""
    p, q = tmp_path / "a.lime", tmp_path / "b.lime"
    W = lattice.random_gauge(U.shape[1:5], N=3, seed=9)
    _foreign(p, U, ["ildg-format", "ildg-binary-data"], flags=[(True, False), (False, True)])
    _foreign(q, W, ["ildg-format", "ildg-binary-data", "scidac-checksum"],
             flags=[(True, False), (False, False), (False, True)])
    p.write_bytes(p.read_bytes() + q.read_bytes())
    with pytest.warns(UserWarning) as got:
        assert np.array_equal(read_ildg(p), U)
    assert any(issubclass(w.category, UnverifiedDataWarning) for w in got)
    assert any("2 binary data records" in str(w.message) for w in got)


def test_metadata_cross_checks(tmp_path, U):
    """Records of one file that contradict each other: the SciDAC dims against ildg-format,
    and usqcdInfo's plaquette against the links read (an axis swap of equal volume, which the
    sizes alone cannot show); the plaquette is accepted to its printed digits, normalised to
    1 or to N."""
    p = tmp_path / "x.lime"
    assert U.shape[1:5] == (4, 4, 4, 6)
    _foreign(p, U, ["scidac-private-file-xml", "ildg-format", "ildg-binary-data", "scidac-checksum"],
             dims=(6, 4, 4, 4))                                        # x <-> t in ildg-format only
    with pytest.raises(CorruptFileError, match="metadata disagree on the lattice: ildg-format gives lx ly lz "
                                               "lt = 6 4 4 4, scidac-private-file-xml gives dims 4 4 4 6"):
        read_ildg(p)
    P = float(lattice.plaquette(U))
    order = ["scidac-record-xml", "ildg-format", "ildg-binary-data", "scidac-checksum"]
    _foreign(p, U, order, dims=tuple(reversed(U.shape[1:5])), plaq=repr(P))   # same volume, axes reversed
    with pytest.raises(CorruptFileError, match=r"average plaquette .* the links read give"):
        read_ildg(p)
    assert read_ildg(p, check=False).shape == (4,) + tuple(reversed(U.shape[1:5])) + (3, 3)
    for text in (repr(P), f"{P:.5f}", f"{3 * P:.7e}"):
        _foreign(p, U, order, plaq=text)
        assert np.array_equal(read_ildg(p), U)
    _foreign(p, U, order, plaq=f"{P + 2e-5:.5f}")                     # off by more than its last digit
    with pytest.raises(CorruptFileError, match="average plaquette"):
        read_ildg(p)


def test_non_su3_content_is_rejected(tmp_path, U):
    p = tmp_path / "g.lime"
    W = U.copy()
    W[1, 0, 1, 2, 3] *= 1.5
    write_ildg(p, W, usqcd_info=False)
    with pytest.raises(lattice.InvalidGaugeField, match=r"ILDG file .* index \(1, 0, 1, 2, 3"):
        read_ildg(p)


# ----------------------------------------------------------------------------------------------
# Independent check against files written by other codes (tmLQCD; CL2QCD). The files are public
# (github.com/AG-Philipsen/cl2qcd, git blob ad1c44c8 'ildg_io/conf.tmlqcd' of commit 51bbda83,
# blob 1e06709d 'executables/tests/conf.00200') but are not vendored here; put them into
# tests/data/ildg/ or point GAUGEFLOW_ILDG_REFERENCE_DIR at them to run this test.
REFERENCE = {
    # file: (suma, sumb, plaquette from the writer's own xlf-info record)
    "conf.tmlqcd": (0x17B93081, 0x600235AA, 0.628065051764),  # tmLQCD 5.2.0, 4^4, 64 bit
    "conf.00200": (0x0A3B09C8, 0xD7A6D9A1, 0.571077),         # CL2QCD 0.1b, 4^4, 64 bit
}


def _reference_dir():
    d = os.environ.get("GAUGEFLOW_ILDG_REFERENCE_DIR")
    return Path(d) if d else Path(__file__).parent / "data" / "ildg"


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_files_from_other_codes(name):
    p = _reference_dir() / name
    if not p.exists():
        pytest.skip(f"reference ILDG file {p} not available")
    suma, sumb, plaq = REFERENCE[name]
    info = read_ildg_info(p)
    assert info.checksum == (suma, sumb)
    U = read_ildg(p, shape=(4, 4, 4, 4))  # verifies our checksum against the other code's
    digits = len(str(plaq).split(".")[1])
    assert float(lattice.plaquette(U)) == pytest.approx(plaq, abs=0.6 * 10.0 ** -digits)
