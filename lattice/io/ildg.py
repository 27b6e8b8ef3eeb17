"""ILDG gauge configurations in LIME/SciDAC files: :func:`write_ildg`, :func:`read_ildg`.

File layout written here (as QIO/Chroma/MILC write ILDG-compatible SciDAC files)::

    message 1   scidac-private-file-xml    <scidacFile>: version 1.1, spacetime 4, dims, volfmt 0
                scidac-file-xml            user file XML (gaugeflow provenance)
    message 2   scidac-private-record-xml  <scidacRecord>: USQCD_{D,F}3_ColorMatrix, typesize, datacount 4
                scidac-record-xml          <usqcdInfo>: plaq, linktr (both normalised to 1 for U = 1)
                ildg-format                <ildgFormat>: field su3gauge, precision 32|64, lx ly lz lt
                ildg-data-lfn              logical file name (only if given)
                ildg-binary-data           the field
                scidac-checksum            <scidacChecksum>: version 1.0, suma, sumb (hex)

Binary data (ILDG binary format 1.0): IEEE floating point, big-endian; sites in
lexicographic order with x fastest and t slowest (t, z, y, x); per site the four links
U_x, U_y, U_z, U_t (U_mu(x) is the link from x to x + mu^); each link a 3x3 complex matrix
in row-major order, each complex number as (re, im). Our arrays are ``U[mu, x, y, z, t, a, b]``
(time last, docs/design.md §3), so the file is the transpose ``U.transpose(t, z, y, x, mu,
a, b)`` of the array -- done with one vectorised copy.

The checksum is the SciDAC one (:mod:`lattice.io.checksum`): CRC32 of each site's 4x3x3
complex numbers as stored in the file, rotated by the site's lexicographic rank mod 29 and
mod 31 and XOR-accumulated. It is computed on write and verified on read.

Reading accepts files written by other codes: records in any order, missing optional
records (SciDAC XML, LFN, even ildg-format when the SciDAC private XML gives the size and
precision), malformed MB/ME flags, 32- and 64-bit precision, XML with or without a
terminating NUL. Without a ``scidac-checksum`` record (between the data and the neighbouring
configurations' data) the data cannot be verified and an :class:`UnverifiedDataWarning` is
issued -- unless the file ends inside a LIME message (its writer sets message-end flags, its
last record has none), which means it was cut before the checksum: TruncatedFileError.
Records that contradict each other raise CorruptFileError: the SciDAC dims against
``ildg-format``, and (with ``check``) ``<usqcdInfo><plaq>`` against the plaquette of the
links read, to its printed digits (USQCD normalisation, 1 for U = 1; N times it accepted).

Under MPI (a distributed :class:`lattice.Layout`) rank 0 does the file I/O: ``write_ildg``
gathers the field to rank 0; ``read_ildg`` reads and verifies on rank 0 and sends every
rank its block (:meth:`lattice.Layout.scatter_field`). Errors are raised on all ranks.
"""
from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import numpy as np

from ..backend import to_host, from_host, namespace
from ..layout import Layout, infer_gauge_layout
from .. import su_n
from . import lime
from .atomic import atomic_write
from .checksum import scidac_checksum
from .errors import CorruptFileError, ChecksumError, MismatchError, TruncatedFileError
from .provenance import provenance
from ._parallel import on_root

__all__ = ["write_ildg", "read_ildg", "read_ildg_info", "IldgInfo", "UnverifiedDataWarning",
           "file_order", "from_file_order"]

_ILDG_NS = ('xmlns="http://www.lqcd.org/ildg" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:schemaLocation="http://www.lqcd.org/ildg http://www.lqcd.org/ildg/filefmt.xsd"')
_XML_DECL = '<?xml version="1.0" encoding="UTF-8"?>'
_BINARY_TYPES = ("ildg-binary-data", "scidac-binary-data")

# SU(N) check tolerances on read (max of |U^dag U - 1| and |det U - 1|): files from other
# codes are accepted with the unitarity they were written with.
SU_TOL = {64: 1e-8, 32: 1e-5}


class UnverifiedDataWarning(UserWarning):
    """The file has no checksum record, so its binary data were not verified."""


# ---------------------------------------------------------------------------- layout maps
def file_order(U, precision: int = 64) -> np.ndarray:
    """Host array in ILDG byte order: ``(Lt, Lz, Ly, Lx, 4, 3, 3)`` big-endian complex.

    ``U`` is one gauge field ``(4, Lx, Ly, Lz, Lt, 3, 3)`` (any namespace); 32-bit precision
    rounds to complex64.
    """
    dt = {64: ">c16", 32: ">c8"}[precision]
    h = to_host(U)
    return np.ascontiguousarray(np.transpose(h, (4, 3, 2, 1, 0, 5, 6)), dtype=dt)


def from_file_order(data: np.ndarray) -> np.ndarray:
    """Inverse of :func:`file_order`: ``(4, Lx, Ly, Lz, Lt, 3, 3)`` native complex128."""
    return np.ascontiguousarray(np.transpose(data, (4, 3, 2, 1, 0, 5, 6)), dtype=np.complex128)


# ---------------------------------------------------------------------------- XML
def _xml_values(text: str, tag: str) -> list[str]:
    """Contents of every ``<tag>`` element (any namespace prefix), whitespace-stripped."""
    pat = rf"<(?:[\w.-]+:)?{tag}(?:\s[^>]*)?>(.*?)</(?:[\w.-]+:)?{tag}\s*>"
    return [m.strip() for m in re.findall(pat, text, flags=re.S)]


def _xml_value(text: str, tag: str):
    v = _xml_values(text, tag)
    return v[0] if v else None


def _decode(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()


def _ildg_format_xml(dims, precision):
    lx, ly, lz, lt = dims
    return (f"{_XML_DECL}\n<ildgFormat {_ILDG_NS}>\n  <version>1.0</version>\n  <field>su3gauge</field>\n"
            f"  <precision>{precision}</precision>\n  <lx>{lx}</lx>\n  <ly>{ly}</ly>\n  <lz>{lz}</lz>\n"
            f"  <lt>{lt}</lt>\n</ildgFormat>")


def _private_file_xml(dims):
    return (f"{_XML_DECL}<scidacFile><version>1.1</version><spacetime>{len(dims)}</spacetime>"
            f"<dims>{' '.join(str(d) for d in dims)} </dims><volfmt>0</volfmt></scidacFile>")


def _private_record_xml(precision):
    p = "D" if precision == 64 else "F"
    date = time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())
    return (f"{_XML_DECL}<scidacRecord><version>1.1</version><date>{date}</date><recordtype>0</recordtype>"
            f"<datatype>USQCD_{p}3_ColorMatrix</datatype><precision>{p}</precision><colors>3</colors>"
            f"<typesize>{72 if p == 'F' else 144}</typesize><datacount>4</datacount></scidacRecord>")


def _checksum_xml(suma, sumb):
    return (f"{_XML_DECL}<scidacChecksum><version>1.0</version><suma>{suma:x}</suma>"
            f"<sumb>{sumb:x}</sumb></scidacChecksum>")


def _default_file_xml(prov):
    keys = ("code", "version", "git_commit", "time_utc", "host", "command", "mpi_ranks", "conventions_version")
    body = "".join(f"<{k}>{escape(str(prov[k]))}</{k}>" for k in keys)
    return f"{_XML_DECL}<gaugeflowInfo>{body}</gaugeflowInfo>"


def _usqcd_info_xml(plaq, linktr, info, precision):
    digits = 16 if precision == 64 else 8
    return (f"{_XML_DECL}<usqcdInfo><version>1.0</version><plaq>{plaq:.{digits}g}</plaq>"
            f"<linktr>{linktr:.{digits}g}</linktr><info>{escape(info)}</info></usqcdInfo>")


# ---------------------------------------------------------------------------- write
def write_ildg(path, U, precision: int = 64, layout: Layout | None = None, lfn: str | None = None, *,
               file_xml: str | None = None, record_xml: str | None = None, usqcd_info: bool = True,
               overwrite: bool = True) -> None:
    """Write one SU(3) gauge field on a 4d lattice as an ILDG file (see the module docstring).

    Parameters
    ----------
    path : output file; written atomically (temporary name, fsync, rename).
    U : ``(4, Lx, Ly, Lz, Lt, 3, 3)`` complex (this rank's block under MPI).
    precision : 64 (double) or 32 (single; the field is rounded to complex64).
    layout : the field's :class:`lattice.Layout` (inferred for a single process).
    lfn : ILDG logical file name; an ``ildg-data-lfn`` record is written if given.
    file_xml, record_xml : user XML for ``scidac-file-xml`` / ``scidac-record-xml``. The
        defaults are gaugeflow provenance and the USQCD ``<usqcdInfo>`` with the average
        plaquette and link trace (``usqcd_info=False`` skips computing them and writes an
        ``<info>``-only record).
    overwrite : replace an existing file (default) or raise FileExistsError.
    """
    if precision not in (32, 64):
        raise ValueError(f"ILDG precision must be 32 or 64 (bits per real number), got {precision!r}")
    N = U.shape[-1]
    if layout is None:
        if U.ndim != 7 or U.shape[0] != 4 or tuple(U.shape[-2:]) != (3, 3):
            raise ValueError(f"ILDG files hold SU(3) gauge fields on 4d lattices (field 'su3gauge'), shape "
                             f"(4, Lx, Ly, Lz, Lt, 3, 3); got shape {tuple(U.shape)}")
        layout = Layout(tuple(U.shape[1:5]))
    layout = infer_gauge_layout(U, layout)
    if U.ndim != layout.Nd + 3:
        raise ValueError(f"write_ildg writes one configuration; got a batch of shape {tuple(U.shape[:-layout.Nd - 3])}")
    if layout.Nd != 4 or N != 3:
        raise ValueError(f"ILDG files hold SU(3) gauge fields on 4d lattices (field 'su3gauge'); got an "
                         f"SU({N}) field on a {layout.Nd}d lattice {layout.global_shape}")
    xp = namespace(U)
    if not xp.isdtype(U.dtype, "complex floating"):
        raise TypeError(f"write_ildg: gauge field must be complex, got {U.dtype}")
    dims = layout.global_shape
    info = None
    if record_xml is None:
        from ..loops import plaquette
        if usqcd_info:
            plaq = float(to_host(plaquette(U, layout=layout)))
            tr = xp.real(su_n.trace(U))                                  # (4, *local)
            linktr = float(np.sum(to_host(layout.sum(tr, inner=0)))) / (4 * layout.volume * N)
            info = (plaq, linktr)
    Ug = layout.gather_field(U, inner=2, root=0)
    on_root(layout, _write_root, os.fspath(path), Ug, dims, precision, lfn, file_xml, record_xml, info,
            overwrite, layout.size)


def _write_root(path, Ug, dims, precision, lfn, file_xml, record_xml, info, overwrite, nranks):
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    prov = provenance(mpi_ranks=nranks)
    data = file_order(Ug, precision)
    V = int(np.prod(dims))
    suma, sumb = scidac_checksum(data.reshape(V, -1).view(np.uint8))
    if file_xml is None:
        file_xml = _default_file_xml(prov)
    if record_xml is None:
        tag = f"gaugeflow {prov['version']}"
        if info is not None:
            record_xml = _usqcd_info_xml(info[0], info[1], tag, precision)
        else:
            record_xml = f"{_XML_DECL}<usqcdInfo><version>1.0</version><info>{escape(tag)}</info></usqcdInfo>"
    msg2 = [("scidac-private-record-xml", _private_record_xml(precision)),
            ("scidac-record-xml", record_xml),
            ("ildg-format", _ildg_format_xml(dims, precision))]
    if lfn is not None:
        msg2.append(("ildg-data-lfn", str(lfn)))
    msg2 += [("ildg-binary-data", data), ("scidac-checksum", _checksum_xml(suma, sumb))]

    def write(f):
        w = lime.LimeWriter(f)
        w.write_message([("scidac-private-file-xml", _private_file_xml(dims)), ("scidac-file-xml", file_xml)])
        w.write_message(msg2)

    atomic_write(path, write)


# ---------------------------------------------------------------------------- read
@dataclass
class IldgInfo:
    """What an ILDG/SciDAC gauge file says about itself (no binary data read)."""
    path: str
    lattice_shape: tuple          # (lx, ly, lz, lt) = our (L_0, L_1, L_2, L_3), time last
    precision: int                # 32 or 64
    field: str
    data_record: lime.LimeRecord
    checksum: tuple | None        # (suma, sumb) from scidac-checksum, or None if absent
    lfn: str | None = None
    file_xml: str | None = None
    record_xml: str | None = None
    private_file_xml: str | None = None
    private_record_xml: str | None = None
    ildg_format_xml: str | None = None
    plaquette: float | None = None  # <usqcdInfo><plaq>, if present
    plaquette_tol: float | None = None  # how far the links' plaquette may be from it (printed digits)
    cut: bool = False               # the file ends inside a LIME message (see lime.ends_inside_message)
    records: list = field(default_factory=list)

    @property
    def volume(self) -> int:
        return int(np.prod(self.lattice_shape))

    @property
    def bytes_per_site(self) -> int:
        return 4 * 9 * 2 * self.precision // 8


def _nearest(records, rtype, anchor, prefer="before"):
    """The record of type ``rtype`` nearest to index ``anchor`` (preceding ones first)."""
    cand = [r for r in records if r.type == rtype]
    if not cand:
        return None
    before = [r for r in cand if r.index < anchor]
    after = [r for r in cand if r.index > anchor]
    if prefer == "before":
        return before[-1] if before else after[0]
    return after[0] if after else before[-1]


def _checksum_record(records, data_rec):
    """The ``scidac-checksum`` of the configuration in ``data_rec``: one between the
    neighbouring binary data records (never another configuration's; not necessarily in the
    same LIME message, since some writers give every record its own), the first after the
    data, else the last before them; None if there is none."""
    binary = [r.index for r in records if r.type in _BINARY_TYPES]
    lo = max((i for i in binary if i < data_rec.index), default=-1)
    hi = min((i for i in binary if i > data_rec.index), default=len(records))
    cand = [r for r in records if r.type == "scidac-checksum" and lo < r.index < hi]
    after = [r for r in cand if r.index > data_rec.index]
    return after[0] if after else (cand[-1] if cand else None)


def _plaquette_tolerance(text: str, precision: int) -> float:
    """Half a unit in the last printed digit of a recorded plaquette, plus the rounding of the
    stored links (a 32-bit file holds the field rounded after its plaquette was taken)."""
    from decimal import Decimal
    exp = Decimal(text.strip()).as_tuple().exponent
    return 0.5 * 10.0 ** int(exp) + (1e-6 if precision == 32 else 1e-12)


def _parse_precision(text, path, what):
    t = (text or "").strip().lower()
    if t in ("64", "d", "double"):
        return 64
    if t in ("32", "f", "single", "float"):
        return 32
    raise CorruptFileError(f"{path}: unsupported precision {text!r} in {what} (expected 32 or 64)", path)


def read_ildg_info(path) -> IldgInfo:
    """Parse the metadata of an ILDG (or SciDAC USQCD ColorMatrix) gauge file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ILDG file {path} does not exist")
    records = lime.scan(path)
    data_rec = next((r for r in records if r.type == _BINARY_TYPES[0]), None) or \
        next((r for r in records if r.type == _BINARY_TYPES[1]), None)
    types = ", ".join(r.type for r in records)
    if data_rec is None:
        raise CorruptFileError(f"{path}: no ildg-binary-data (or scidac-binary-data) record; the file has "
                               f"records: {types}", path)
    n_bin = sum(r.type in _BINARY_TYPES for r in records)
    if n_bin > 1:
        warnings.warn(f"{path}: {n_bin} binary data records; reading the first ({data_rec.type}, record "
                      f"{data_rec.index})", stacklevel=2)

    def text(rtype, prefer="before"):
        r = _nearest(records, rtype, data_rec.index, prefer)
        return None if r is None else _decode(lime.read_data(path, r))

    fmt = text("ildg-format")
    pfile, prec_xml = text("scidac-private-file-xml"), text("scidac-private-record-xml")
    if fmt is not None:
        dims = []
        for tag in ("lx", "ly", "lz", "lt"):
            v = _xml_value(fmt, tag)
            if v is None or not v.isdigit() or int(v) < 1:
                raise CorruptFileError(f"{path}: ildg-format record has no valid <{tag}>: {fmt!r}", path)
            dims.append(int(v))
        precision = _parse_precision(_xml_value(fmt, "precision"), path, "ildg-format")
        fld = _xml_value(fmt, "field") or ""
    elif pfile is not None and prec_xml is not None:
        d = (_xml_value(pfile, "dims") or "").split()
        if len(d) != 4 or not all(x.isdigit() for x in d):
            raise CorruptFileError(f"{path}: no ildg-format record and the SciDAC private file XML has no "
                                   f"4d <dims>: {pfile!r}", path)
        dims = [int(x) for x in d]
        precision = _parse_precision(_xml_value(prec_xml, "precision"), path, "scidac-private-record-xml")
        dt = _xml_value(prec_xml, "datatype") or ""
        fld = "su3gauge" if "3_ColorMatrix" in dt else dt
    else:
        raise CorruptFileError(f"{path}: no ildg-format record (and no SciDAC private XML) to give the lattice "
                               f"size and precision; the file has records: {types}", path)
    if fld.replace("_", "").lower() != "su3gauge":
        raise CorruptFileError(f"{path}: field {fld!r} is not an SU(3) gauge field ('su3gauge')", path)
    info = IldgInfo(path=path, lattice_shape=tuple(dims), precision=precision, field="su3gauge",
                    data_record=data_rec, checksum=None, records=records, ildg_format_xml=fmt,
                    private_file_xml=pfile, private_record_xml=prec_xml)
    expected = info.volume * info.bytes_per_site
    if data_rec.length != expected:
        raise CorruptFileError(
            f"{path}: record {data_rec.type} has {data_rec.length} bytes, but a {_fmt_dims(dims)} su3gauge field "
            f"in {precision}-bit precision has {expected} bytes: the metadata and the data disagree", path)
    if prec_xml is not None:
        ts, dc = _xml_value(prec_xml, "typesize"), _xml_value(prec_xml, "datacount")
        if ts and dc and ts.isdigit() and dc.isdigit() and int(ts) * int(dc) != info.bytes_per_site:
            raise CorruptFileError(f"{path}: scidac-private-record-xml says {dc} x {ts} bytes per site, but "
                                   f"ildg-format implies {info.bytes_per_site}", path)
    if fmt is not None and pfile is not None:
        d = (_xml_value(pfile, "dims") or "").split()
        if len(d) == 4 and all(x.isdigit() for x in d) and [int(x) for x in d] != dims:
            raise CorruptFileError(f"{path}: the metadata disagree on the lattice: ildg-format gives lx ly lz lt = "
                                   f"{' '.join(map(str, dims))}, scidac-private-file-xml gives dims {' '.join(d)}",
                                   path)
    ck_rec = _checksum_record(records, data_rec)
    ck = None if ck_rec is None else _decode(lime.read_data(path, ck_rec))
    info.cut = lime.ends_inside_message(records)
    if ck is not None:
        a, b = _xml_value(ck, "suma"), _xml_value(ck, "sumb")
        try:
            info.checksum = (int(a, 16), int(b, 16))
        except (TypeError, ValueError):
            raise CorruptFileError(f"{path}: malformed scidac-checksum record: {ck!r}", path) from None
    info.lfn = text("ildg-data-lfn")
    info.file_xml = text("scidac-file-xml")
    info.record_xml = text("scidac-record-xml")
    if info.record_xml:
        p = _xml_value(info.record_xml, "plaq")
        try:
            info.plaquette = float(p) if p else None
            info.plaquette_tol = _plaquette_tolerance(p, precision) if p else None
        except (ValueError, ArithmeticError):
            info.plaquette = info.plaquette_tol = None
    return info


def _fmt_dims(d):
    return "x".join(str(int(n)) for n in d)


def read_ildg(path, layout: Layout | None = None, *, shape=None, verify: bool = True, check: bool = True,
              su_tol: float | None = None, xp=None):
    """Read an ILDG gauge file; returns ``U`` of shape ``(4, Lx, Ly, Lz, Lt, 3, 3)`` complex128.

    Parameters
    ----------
    layout : a :class:`lattice.Layout`; the file's lattice must equal ``layout.global_shape``
        and under MPI each rank receives its block ``(4, *layout.local_shape, 3, 3)``.
    shape : expected global lattice ``(Lx, Ly, Lz, Lt)`` (alternative to ``layout``).
    verify : check the ``scidac-checksum`` (a mismatch raises ChecksumError; a file without
        one gives an UnverifiedDataWarning).
    check : check that every link is in SU(3) to ``su_tol`` (default 1e-8 for 64-bit and
        1e-5 for 32-bit files), raising ``lattice.InvalidGaugeField`` otherwise.
    xp : array namespace of the result (default NumPy).

    A 32-bit file is returned exactly as stored (float32 values widened to float64, no
    reunitarisation; use ``lattice.su_n.reunitarize`` before continuing HMC from it).
    """
    expect = None
    if layout is not None:
        expect = tuple(layout.global_shape)
        if shape is not None and tuple(shape) != expect:
            raise ValueError(f"read_ildg: shape={tuple(shape)} contradicts layout {layout}")
    elif shape is not None:
        expect = tuple(int(n) for n in shape)
    Ug = on_root(layout, _read_root, os.fspath(path), expect, verify, check, su_tol)
    if layout is not None and layout.is_distributed:
        return layout.scatter_field(Ug, inner=2, root=0, xp=xp)
    return Ug if xp is None else from_host(Ug, xp)


def _read_root(path, expect, verify, check, su_tol):
    info = read_ildg_info(path)
    if expect is not None and tuple(info.lattice_shape) != tuple(expect):
        raise MismatchError(
            f"{path}: lattice size mismatch: the file holds a {_fmt_dims(info.lattice_shape)} lattice "
            f"(lx ly lz lt), expected {_fmt_dims(expect)}", field="lattice_shape",
            found=tuple(info.lattice_shape), expected=tuple(expect), path=path)
    lx, ly, lz, lt = info.lattice_shape
    dt = ">c16" if info.precision == 64 else ">c8"
    rec = info.data_record
    with open(path, "rb") as f:
        f.seek(rec.data_offset)
        data = np.fromfile(f, dtype=dt, count=info.volume * 36)
    if data.size != info.volume * 36:  # the file shrank after scanning
        raise CorruptFileError(f"{path}: truncated file: binary data end early", path)
    data = data.reshape(lt, lz, ly, lx, 4, 3, 3)
    if verify:
        if info.checksum is None and info.cut:
            raise TruncatedFileError(
                f"{path}: truncated file: it ends inside a LIME message (its last record, "
                f"'{info.records[-1].type}', has no message-end flag) and has no scidac-checksum: it was "
                f"probably cut after the binary data, before the checksum record; read with verify=False "
                f"to accept the data unverified", path)
        if info.checksum is None:
            warnings.warn(f"{path}: no scidac-checksum record; the binary data cannot be verified",
                          UnverifiedDataWarning, stacklevel=3)
        else:
            got = scidac_checksum(data.reshape(info.volume, -1).view(np.uint8))
            if got != info.checksum:
                raise ChecksumError(
                    f"{path}: scidac-checksum mismatch: the file records suma={info.checksum[0]:08x} "
                    f"sumb={info.checksum[1]:08x}, the binary data give suma={got[0]:08x} sumb={got[1]:08x}: "
                    f"the data are corrupted (or the writer's checksum is wrong; read with verify=False "
                    f"to inspect it)", path)
    U = from_file_order(data)
    if check:
        tol = SU_TOL[info.precision] if su_tol is None else su_tol
        su_n.check_su_n(U, tol=tol, what=f"ILDG file {path} (U[mu, x, y, z, t])")
        _check_plaquette(U, info)
    return U


def _check_plaquette(U, info):
    """The plaquette of the links read against the file's ``<usqcdInfo><plaq>`` (USQCD
    convention: the average of Re tr P / N over sites and planes, 1 for U = 1; N times that
    is accepted as well): a mismatch means the metadata (lattice size, axis order) do not
    describe the data, which the format cannot detect otherwise."""
    if info.plaquette is None or info.plaquette_tol is None:
        return
    from ..loops import plaquette
    P, tol = float(plaquette(U)), info.plaquette_tol
    if abs(info.plaquette - P) <= tol or abs(info.plaquette - 3 * P) <= 3 * tol:
        return
    raise CorruptFileError(
        f"{info.path}: the file records the average plaquette {info.plaquette!r} (usqcdInfo), but the links "
        f"read give {P:.12g} (normalised to 1): the metadata (lattice size, axis order) do not describe the "
        f"data, or the record belongs to another field; read with check=False to skip the checks", info.path)
