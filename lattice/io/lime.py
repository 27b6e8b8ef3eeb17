"""LIME (Lattice QCD Interchange Message Encapsulation) records, version 1.

Format (c-lime documentation, LIME 1.2, SciDAC): a file is a sequence of records,
grouped into messages by two flags. Each record is

    header  144 bytes = 18 big-endian 64-bit words
        bytes   0-3    magic number 0x456789ab      (uint32, big-endian)
        bytes   4-5    LIME version, 1              (uint16, big-endian)
        byte    6      bit 7 (0x80): message begin (MB), bit 6 (0x40): message end (ME)
        byte    7      reserved (0)
        bytes   8-15   data length in bytes, without padding (uint64, big-endian)
        bytes  16-143  record type, ASCII, NUL-padded (at most 127 characters)
    data    `length` bytes, written verbatim (any byte order is the user's business)
    padding 0-7 NUL bytes so that the record ends on a multiple of 8 bytes

The first record of a message has MB = 1, its last ME = 1. Readers here do not require
well-formed MB/ME flags (some codes write them wrongly); writers always set them
correctly.

:func:`scan` lists the records of a file without reading their data, checking the magic
number, the version and that every record lies inside the file (a truncated file raises
:class:`~lattice.io.errors.TruncatedFileError`). :class:`LimeWriter` writes records,
streaming large data (NumPy arrays) without copies.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from .errors import CorruptFileError, TruncatedFileError

__all__ = ["LIME_MAGIC", "LIME_VERSION", "HEADER_BYTES", "LimeRecord", "scan", "read_data",
           "LimeWriter", "padding", "ends_inside_message"]

LIME_MAGIC = 0x456789AB
LIME_VERSION = 1
HEADER_BYTES = 144
_MB, _ME = 0x80, 0x40
_HEADER = struct.Struct(">IHBBQ128s")
assert _HEADER.size == HEADER_BYTES


def padding(n: int) -> int:
    """Number of NUL bytes that pad ``n`` data bytes to a multiple of 8."""
    return (-n) % 8


@dataclass(frozen=True)
class LimeRecord:
    """One LIME record of a file: its type, flags, and where its data are."""
    type: str
    length: int            # data bytes (without padding)
    data_offset: int       # byte offset of the data in the file
    header_offset: int
    mb: bool
    me: bool
    index: int             # position in the file (0-based)


def scan(path) -> list[LimeRecord]:
    """All records of the LIME file ``path`` (headers only).

    Raises CorruptFileError for a bad magic number or an unsupported version and
    TruncatedFileError when a header or a record's data extends past the end of the file.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    records: list[LimeRecord] = []
    with open(path, "rb") as f:
        off = 0
        while off < size:
            f.seek(off)
            raw = f.read(HEADER_BYTES)
            if len(raw) < HEADER_BYTES:
                if not raw.strip(b"\0") and records:
                    break  # trailing NUL bytes after the last record: tolerated
                raise TruncatedFileError(
                    f"{path}: truncated LIME file: {len(raw)} bytes at offset {off} are too few for a "
                    f"{HEADER_BYTES}-byte record header (file size {size} bytes; "
                    f"{len(records)} complete record(s) before)", path)
            magic, version, mbme, _reserved, length, rtype = _HEADER.unpack(raw)
            if magic != LIME_MAGIC:
                where = "at the start of the file" if off == 0 else f"at byte offset {off} (record {len(records)})"
                raise CorruptFileError(
                    f"{path}: bad LIME magic number 0x{magic:08x} {where}, expected 0x{LIME_MAGIC:08x}: "
                    + ("not a LIME/ILDG file" if off == 0 else "the file is corrupted"), path)
            if version != LIME_VERSION:
                raise CorruptFileError(
                    f"{path}: unsupported LIME version {version} in record {len(records)} at byte offset "
                    f"{off} (only version {LIME_VERSION} exists)", path)
            tname = rtype.split(b"\0", 1)[0].decode("ascii", errors="replace")
            data_off = off + HEADER_BYTES
            if data_off + length > size:
                raise TruncatedFileError(
                    f"{path}: truncated file: LIME record {len(records)} ('{tname}') announces {length} "
                    f"data bytes at offset {data_off}, but the file ends after {size} bytes "
                    f"({data_off + length - size} bytes missing)", path)
            records.append(LimeRecord(tname, int(length), data_off, off, bool(mbme & _MB),
                                      bool(mbme & _ME), len(records)))
            off = data_off + length + padding(length)
    if not records:
        raise CorruptFileError(f"{path}: empty file, not a LIME/ILDG file", path)
    return records


def ends_inside_message(records) -> bool:
    """Whether the writer marks message ends (some record has ME) and yet the last record has
    none: the file was cut at a record boundary."""
    return any(r.me for r in records) and not records[-1].me


def read_data(path, record: LimeRecord) -> bytes:
    """The data bytes of one record."""
    with open(os.fspath(path), "rb") as f:
        f.seek(record.data_offset)
        data = f.read(record.length)
    if len(data) != record.length:
        raise TruncatedFileError(f"{path}: truncated file: record '{record.type}' has only "
                                 f"{len(data)} of {record.length} bytes", path)
    return data


class LimeWriter:
    """Write LIME records to an open binary file object.

    ``write(type, data, mb=..., me=...)`` writes one record. ``data`` may be bytes, str
    (UTF-8) or any C-contiguous buffer (a NumPy array is written without copying).
    """

    def __init__(self, f):
        self.f = f
        self.n_records = 0

    def write(self, rtype: str, data, mb: bool, me: bool) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif isinstance(data, np.ndarray):
            if not data.flags.c_contiguous:
                raise ValueError("LIME record data must be C-contiguous")
            data = data.reshape(-1).view(np.uint8)
        mv = memoryview(data)
        if mv.ndim != 1 or mv.format != "B":
            mv = mv.cast("B")
        t = rtype.encode("ascii")
        if len(t) > 127:
            raise ValueError(f"LIME record type {rtype!r} is longer than 127 characters")
        length = mv.nbytes
        self.f.write(_HEADER.pack(LIME_MAGIC, LIME_VERSION, (_MB if mb else 0) | (_ME if me else 0),
                                  0, length, t))
        self.f.write(mv)
        pad = padding(length)
        if pad:
            self.f.write(b"\0" * pad)
        self.n_records += 1

    def write_message(self, records) -> None:
        """Write ``[(type, data), ...]`` as one message (MB on the first, ME on the last)."""
        records = list(records)
        for i, (t, d) in enumerate(records):
            self.write(t, d, mb=(i == 0), me=(i == len(records) - 1))
