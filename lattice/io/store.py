"""Append-only HDF5 record store: the one mechanism behind ensembles and measurement files.

A store is an HDF5 file holding *columns*: datasets that grow along axis 0, one entry per
record (a gauge configuration, a correlator, a row of per-trajectory scalars, a JSON blob
of resume state, ...). Layout::

    /                   attrs: gaugeflow_format = "gaugeflow.records", format_version = 1,
                               kind, n_committed, header attributes (geometry, action, ...),
                               conventions_version, provenance.* (creating job)
    /<column>           (n, *shape) chunked along axis 0 (one chunk per record, split along
                        the next axes only where a record exceeds 256 MiB: HDF5 chunks must stay
                        below 4 GiB)
    /checksums/<column> (n,) uint32: CRC32 (zlib) of each record's bytes (little-endian
                        values in C order; UTF-8 text for JSON columns)
    /sessions/<k>       one group per job that appended, attrs: first_record, provenance.*

Append protocol (resume safety)
-------------------------------
``append`` (1) writes the record's data and checksums at index ``n = n_committed`` (growing
the datasets where needed), (2) flushes the file (and ``fsync``\\ s it), then (3) advances
the ``n_committed`` attribute in place and (4) flushes (and ``fsync``\\ s) again. Readers
trust only records ``< n_committed``. A job killed anywhere in between leaves every earlier
record readable; the next append (after reopening with ``mode="a"``) simply overwrites the
uncommitted tail, which is also trimmed when the store is opened for appending. Appending
never rewrites committed data or the file as a whole.

Caveat (HDF5 has no journal): the guarantee covers a killed process (any signal,
``os._exit``, node failure after the data reached the OS). A power loss *during* a flush can
in principle damage HDF5's own metadata; ``fsync`` after each step narrows this window.
Keep ILDG copies of precious configurations.

Validation
----------
Opening checks the format marker, the kind, that ``n_committed`` and every column agree,
and that the header attributes match the caller's ``expect`` (a :class:`MismatchError`
names the field and both values) and the project conventions. h5py's ``OSError`` s for
truncated, non-HDF5 or locked files become :class:`CorruptFileError` /
:class:`TruncatedFileError` with a plain explanation. Reads verify each record's CRC32
(:class:`ChecksumError`).

Attributes: strings, numbers and numeric lists are stored as native HDF5 attributes;
dicts, booleans, None and mixed lists as JSON strings (their names are listed in the
``json_attrs`` attribute) -- :attr:`RecordStore.attrs` returns the decoded values.

Only one process opens a store; under MPI the callers (e.g. :class:`EnsembleStore`) run it
on rank 0.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backend import to_host
from .atomic import atomic_write
from .checksum import crc32
from .errors import CorruptFileError, TruncatedFileError, ChecksumError, MismatchError
from .provenance import CONVENTIONS_VERSION, PREFIX, provenance as _provenance, write_provenance, read_provenance

__all__ = ["RecordStore", "Column", "JSON", "FORMAT", "FORMAT_VERSION", "check_expected", "open_h5",
           "damaged_as_corrupt"]

FORMAT = "gaugeflow.records"
FORMAT_VERSION = 1
JSON = "json"
_RESERVED_GROUPS = ("checksums", "sessions")
_RESERVED_ATTRS = ("gaugeflow_format", "format_version", "kind", "n_committed", "json_attrs",
                   "conventions_version")
MAX_CHUNK_BYTES = 256 * 2**20
_LIBVER = ("v108", "v108")  # HDF5 1.8 file format: readable everywhere, no 1.10 "file open" flags


def _h5py():
    import h5py
    return h5py


@dataclass(frozen=True)
class Column:
    """A column: per-record ``shape`` and ``dtype`` (a NumPy dtype, or :data:`JSON`)."""
    shape: tuple = ()
    dtype: object = "f8"

    def np_dtype(self):
        if self.dtype == JSON:
            return _h5py().string_dtype("utf-8")
        return _le(np.dtype(self.dtype))


def _le(dt: np.dtype) -> np.dtype:
    """Little-endian version of a dtype (compound dtypes field by field)."""
    return dt.newbyteorder("<") if dt.byteorder == ">" or dt.fields else dt


# --------------------------------------------------------------------------- opening
def open_h5(path, mode: str):
    """``h5py.File(path, mode)`` with h5py's OSErrors turned into clear ones."""
    h5py = _h5py()
    path = os.fspath(path)
    if mode == "r" and not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return h5py.File(path, mode, libver=_LIBVER)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it, or open it with "
                              f"mode='a' to append to it") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except OSError as e:
        msg = str(e)
        if "truncated file" in msg:
            raise TruncatedFileError(f"{path} is truncated (shorter than its HDF5 superblock says; an "
                                     f"interrupted copy?): h5py: {msg}", path) from None
        if "signature not found" in msg:
            raise CorruptFileError(f"{path} is not an HDF5 file (no HDF5 signature): h5py: {msg}", path) from None
        if "lock" in msg:
            if "errno = 38" in msg or "not implemented" in msg.lower():
                raise OSError(f"{path}: the file system does not support HDF5 file locks; set the "
                              f"environment variable HDF5_USE_FILE_LOCKING=FALSE: h5py: {msg}") from None
            raise OSError(f"{path} is open by another process (HDF5 file lock; e.g. a running job "
                          f"appending to it): h5py: {msg}") from None
        raise CorruptFileError(f"{path} cannot be opened as HDF5 (corrupted?): h5py: {msg}", path) from None


def damaged_as_corrupt(fn, path, what: str = "the file"):
    """``fn()`` with the errors h5py raises for damaged HDF5 metadata (a flipped bit in an
    object header, a heap or a B-tree: KeyError, RuntimeError, OSError, AttributeError,
    ValueError such as undecodable JSON) turned into :class:`CorruptFileError` naming the file.
    Errors that already say what is wrong (MismatchError, CorruptFileError, missing file,
    IndexError, an invalid gauge field) pass unchanged."""
    from ..su_n import InvalidGaugeField
    try:
        return fn()
    except (MismatchError, CorruptFileError, FileNotFoundError, PermissionError, IndexError, InvalidGaugeField):
        raise
    except (KeyError, RuntimeError, AttributeError, OSError, ValueError, TypeError) as e:
        raise CorruptFileError(f"{path}: cannot read {what}: the HDF5 metadata are damaged ({type(e).__name__}: "
                               f"{' '.join(str(e).split())}); restore the file from a copy", path) from None


# --------------------------------------------------------------------------- attributes
def _encode_attr(v):
    """(value to store, is_json)."""
    if isinstance(v, str):
        return v, False
    if isinstance(v, (bool, np.bool_)) or v is None or isinstance(v, dict):
        return json.dumps(_jsonable(v), sort_keys=True), True
    if isinstance(v, (int, np.integer)):
        return np.int64(v), False
    if isinstance(v, (float, np.floating)):
        return np.float64(v), False
    if isinstance(v, (list, tuple, np.ndarray)):
        a = np.asarray(v)
        if a.ndim == 1 and a.size and a.dtype.kind in "iu":
            return a.astype(np.int64), False
        if a.ndim == 1 and a.size and a.dtype.kind == "f":
            return a.astype(np.float64), False
        return json.dumps(_jsonable(v)), True
    raise TypeError(f"cannot store attribute value of type {type(v).__name__}: {v!r}")


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _decode_attr(v, is_json):
    if isinstance(v, bytes):
        v = v.decode("utf-8")
    if is_json:
        return json.loads(v)
    if isinstance(v, np.ndarray):
        return tuple(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    return v


def _numbers_equal(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) and math.isnan(b):
            return True
        return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def check_expected(found: dict, expect: dict, path, prefix: str = "") -> None:
    """Raise MismatchError unless every entry of ``expect`` matches ``found``.

    Dicts are compared key by key (keys absent from ``expect`` are not checked),
    sequences element-wise, numbers to a relative 1e-12.
    """
    for k, want in expect.items():
        name = f"{prefix}{k}"
        if k not in found:
            raise MismatchError(f"{path}: the file has no '{name}' (expected {want!r})",
                                field=name, found=None, expected=want, path=path)
        have = found[k]
        if isinstance(want, dict):
            if not isinstance(have, dict):
                raise MismatchError(f"{path}: '{name}' differs: the file has {have!r}, expected {want!r}",
                                    field=name, found=have, expected=want, path=path)
            check_expected(have, want, path, prefix=name + ".")
            continue
        if isinstance(want, (list, tuple, np.ndarray)):
            w = _jsonable(list(want))
            h = _jsonable(list(have)) if isinstance(have, (list, tuple, np.ndarray)) else have
            ok = isinstance(h, list) and len(h) == len(w) and all(_numbers_equal(a, b) for a, b in zip(h, w))
        else:
            ok = _numbers_equal(_jsonable(have), _jsonable(want))
        if not ok:
            raise MismatchError(f"{path}: '{name}' differs: the file has {have!r}, expected {want!r}",
                                field=name, found=have, expected=want, path=path)


def _chunks(rec_shape, itemsize, max_bytes=MAX_CHUNK_BYTES):
    """Chunk shape (1, ...) covering whole records unless a record exceeds ``max_bytes``."""
    chunk = [1] + list(rec_shape)
    for k in range(len(rec_shape)):
        if math.prod(chunk[1:]) * itemsize <= max_bytes:
            break
        tail = math.prod(rec_shape[k + 1:]) * itemsize
        if tail <= max_bytes:
            chunk[1 + k] = max(1, max_bytes // tail)
            break
        chunk[1 + k] = 1
    return tuple(chunk)


# --------------------------------------------------------------------------- free space
SPACE_MARGIN = 1 << 20   # bytes kept free beyond a record's data (HDF5 metadata, chunk index)


def _check_space(path, nbytes: int, index: int) -> None:
    """Raise ``OSError(ENOSPC)`` unless the file system of ``path`` has room for a record of
    ``nbytes`` (plus :data:`SPACE_MARGIN`), *before* anything is written.

    HDF5 does not survive a write that fails for lack of space: the library is left with
    dirty cached metadata it cannot write, h5py reports errors while freeing dataset ids and
    the next flush or close crashes the interpreter (segmentation fault). Checking first keeps
    every committed record readable and the store open and consistent; another process
    filling the disk between the check and the write can still hit that crash."""
    import errno
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
    except (OSError, AttributeError):  # pragma: no cover - no statvfs here
        return
    free = st.f_bavail * st.f_frsize
    need = int(nbytes) + SPACE_MARGIN
    if free < need:
        raise OSError(errno.ENOSPC, f"No space left on device: record {index} of {path} needs about {need} bytes, "
                      f"{free} are free (nothing was written; the committed records are intact)", str(path))


# --------------------------------------------------------------------------- the store
class RecordStore:
    """An append-only HDF5 record store (see the module docstring). Use :meth:`create`
    or :meth:`open`; a context manager."""

    def __init__(self, f, path, mode, durable=True, prov=None):
        self._f = f
        self.path = str(path)
        self.mode = mode
        self.durable = durable
        self._session_prov = prov
        self._session_logged = False
        self._json_attrs = set(self._attr_list("json_attrs"))
        self.n = int(f.attrs["n_committed"])

    # ----------------------------------------------------------------- create / open
    @classmethod
    def create(cls, path, *, kind: str, attrs: dict | None = None, columns: dict | None = None,
               overwrite: bool = False, provenance: dict | None = None, durable: bool = True) -> "RecordStore":
        """Create a new store (atomically: built under a temporary name, then renamed) and
        open it for appending. ``columns`` maps names to :class:`Column` (more may be
        declared with :meth:`declare` before the first append)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it, or open it with "
                                  f"mode='a' to append to it")
        attrs = dict(attrs or {})
        bad = [k for k in attrs if k in _RESERVED_ATTRS or k.startswith(PREFIX)]
        if bad:
            raise ValueError(f"attribute names {bad} are reserved by the record store")
        prov = _provenance() if provenance is None else provenance

        def build(tmp):
            with open_h5(tmp, "x") as f:
                f.attrs["gaugeflow_format"] = FORMAT
                f.attrs["format_version"] = np.int64(FORMAT_VERSION)
                f.attrs["kind"] = str(kind)
                f.attrs["n_committed"] = np.int64(0)
                f.attrs["conventions_version"] = CONVENTIONS_VERSION
                js = []
                for k, v in attrs.items():
                    val, is_json = _encode_attr(v)
                    f.attrs[k] = val
                    if is_json:
                        js.append(k)
                f.attrs["json_attrs"] = np.array(js, dtype=_h5py().string_dtype("utf-8"))
                write_provenance(f, prov)
                f.create_group("checksums")
                f.create_group("sessions")
                for name, col in (columns or {}).items():
                    cls._create_column(f, name, col)

        atomic_write(path, build, pass_path=True, fsync=durable)
        store = cls(open_h5(path, "a"), path, "a", durable=durable, prov=prov)
        return store

    @classmethod
    def open(cls, path, mode: str = "r", *, kind: str | None = None, expect: dict | None = None,
             check_conventions: bool = True, durable: bool = True,
             provenance: dict | None = None) -> "RecordStore":
        """Open an existing store for reading (``"r"``) or appending (``"a"``) and validate it."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist")
        f = open_h5(path, mode)
        try:
            return damaged_as_corrupt(lambda: cls._open_checked(f, path, mode, kind, expect, check_conventions,
                                                                durable, provenance), path, "its header")
        except BaseException:
            f.close()
            raise

    @classmethod
    def _open_checked(cls, f, path, mode, kind, expect, check_conventions, durable, provenance):
        cls._validate_file(f, path)
        store = cls(f, path, mode, durable=durable, prov=provenance)
        if kind is not None and store.kind != kind:
            raise MismatchError(f"{path}: 'kind' differs: the file is a {store.kind!r} store, expected {kind!r}",
                                field="kind", found=store.kind, expected=kind, path=path)
        if check_conventions:
            have = _decode_attr(f.attrs.get("conventions_version", "missing"), False)
            if have != CONVENTIONS_VERSION:
                raise MismatchError(
                    f"{path}: 'conventions_version' differs: the file was written under {have!r}, this code "
                    f"uses {CONVENTIONS_VERSION!r} (see lattice.io.provenance.CONVENTIONS)",
                    field="conventions_version", found=have, expected=CONVENTIONS_VERSION, path=path)
        if expect:
            check_expected(store.attrs, expect, path)
        if mode == "a":
            store._trim_uncommitted()
        return store

    @staticmethod
    def _validate_file(f, path):
        a = f.attrs
        if a.get("gaugeflow_format") is None or _decode_attr(a["gaugeflow_format"], False) != FORMAT:
            raise CorruptFileError(f"{path} is not a gaugeflow record store (no 'gaugeflow_format' = "
                                   f"{FORMAT!r} attribute)", path)
        ver = int(a.get("format_version", -1))
        if ver > FORMAT_VERSION:
            raise CorruptFileError(f"{path} has record-store format version {ver}, newer than this code "
                                   f"supports ({FORMAT_VERSION}); update gaugeflow", path)
        if "n_committed" not in a:
            raise CorruptFileError(f"{path}: record store without 'n_committed' attribute", path)
        n = int(a["n_committed"])
        if n < 0:
            raise CorruptFileError(f"{path}: negative n_committed = {n}", path)
        for g in _RESERVED_GROUPS:
            if g not in f:
                raise CorruptFileError(f"{path}: record store without the '{g}' group", path)
        for name, ds in f.items():
            if name in _RESERVED_GROUPS:
                continue
            if name not in f["checksums"]:
                raise CorruptFileError(f"{path}: column '{name}' has no checksums dataset", path)
            if ds.shape[0] < n or f["checksums"][name].shape[0] < n:
                raise CorruptFileError(f"{path}: column '{name}' holds {ds.shape[0]} records (checksums: "
                                       f"{f['checksums'][name].shape[0]}) but n_committed = {n}", path)

    # ----------------------------------------------------------------- columns
    @staticmethod
    def _create_column(f, name, col: Column):
        if name in _RESERVED_GROUPS or "/" in name or not name:
            raise ValueError(f"invalid column name {name!r}")
        if name in f:
            raise ValueError(f"column {name!r} exists")
        shape = tuple(int(s) for s in col.shape)
        dt = col.np_dtype()
        if col.dtype == JSON and shape:
            raise ValueError("JSON columns hold one document per record (shape ())")
        itemsize = dt.itemsize if col.dtype != JSON else 64
        f.create_dataset(name, shape=(0,) + shape, maxshape=(None,) + shape, dtype=dt,
                         chunks=_chunks(shape, itemsize))
        f["checksums"].create_dataset(name, shape=(0,), maxshape=(None,), dtype="<u4", chunks=(1,))

    def declare(self, name: str, col: Column) -> None:
        """Add a column (only while the store is empty)."""
        self._require_writable()
        if self.n:
            raise ValueError(f"{self.path}: cannot add column {name!r} to a store with {self.n} records")
        self._create_column(self._f, name, col)

    @property
    def columns(self) -> dict:
        out = {}
        for name, ds in self._f.items():
            if name in _RESERVED_GROUPS:
                continue
            is_json = _h5py().check_string_dtype(ds.dtype) is not None
            out[name] = Column(tuple(ds.shape[1:]), JSON if is_json else ds.dtype)
        return out

    # ----------------------------------------------------------------- metadata
    def _attr_list(self, name):
        v = self._f.attrs.get(name)
        if v is None:
            return []
        return [x.decode() if isinstance(x, bytes) else str(x) for x in np.atleast_1d(v)]

    @property
    def kind(self) -> str:
        return _decode_attr(self._f.attrs["kind"], False)

    @property
    def attrs(self) -> dict:
        """Header attributes (decoded), without the store's own bookkeeping and provenance."""
        out = {}
        for k, v in self._f.attrs.items():
            if k in _RESERVED_ATTRS or k.startswith(PREFIX):
                continue
            out[k] = _decode_attr(v, k in self._json_attrs)
        return out

    @property
    def provenance(self) -> dict:
        """Provenance of the job that created the store."""
        return read_provenance(self._f)

    @property
    def sessions(self) -> list[dict]:
        """Provenance of every job that appended, with its ``first_record``."""
        out = []
        g = self._f["sessions"]
        for k in sorted(g, key=int):
            d = read_provenance(g[k])
            d["first_record"] = int(g[k].attrs["first_record"])
            out.append(d)
        return out

    @property
    def h5(self):
        """The underlying ``h5py.File`` (read-only use recommended)."""
        return self._f

    def __len__(self):
        return self.n

    # ----------------------------------------------------------------- append
    def _require_writable(self):
        if self._f is None:
            raise ValueError(f"{self.path}: store is closed")
        if self.mode != "a":
            raise PermissionError(f"{self.path} is open read-only; open it with mode='a' to append")

    def _flush(self):
        self._f.flush()
        if self.durable:
            try:
                os.fsync(self._f.id.get_vfd_handle())
            except (OSError, TypeError, ValueError):  # pragma: no cover - non-POSIX drivers
                pass

    def _trim_uncommitted(self):
        trimmed = False
        for name, ds in self._f.items():
            if name in _RESERVED_GROUPS:
                continue
            for d in (ds, self._f["checksums"][name]):
                if d.shape[0] > self.n:
                    d.resize(self.n, axis=0)
                    trimmed = True
        if trimmed:
            self._flush()

    def _coerce(self, name, col: Column, value):
        """(value to store, CRC32)."""
        if col.dtype == JSON:
            text = json.dumps(_jsonable(value), sort_keys=True)
            return text, crc32(text.encode("utf-8"))
        dt = np.dtype(col.dtype)
        if dt.fields:
            if not isinstance(value, dict):
                raise TypeError(f"column {name!r} takes a dict of {sorted(dt.names)}, got {type(value).__name__}")
            if set(value) != set(dt.names):
                raise ValueError(f"{self.path}: record fields for column {name!r} differ from the store's: "
                                 f"missing {sorted(set(dt.names) - set(value))}, "
                                 f"unexpected {sorted(set(value) - set(dt.names))}")
            arr = np.zeros((), dtype=_le(dt))
            for k in dt.names:
                v = np.asarray(value[k])
                if v.shape != () or not np.can_cast(v.dtype, dt.fields[k][0], "same_kind"):
                    raise TypeError(f"{self.path}: value {value[k]!r} for '{name}.{k}' does not fit the column "
                                    f"type {dt.fields[k][0]}")
                arr[k] = v
            return arr, crc32(arr)
        v = np.asarray(to_host(value))
        if v.shape != col.shape:
            raise ValueError(f"{self.path}: column {name!r} takes records of shape {col.shape}, got {v.shape}")
        if not np.can_cast(v.dtype, dt, "same_kind"):
            raise TypeError(f"{self.path}: column {name!r} stores {dt}; cannot store {v.dtype}")
        arr = np.ascontiguousarray(v, dtype=_le(dt))
        return arr, crc32(arr)

    def append(self, record: dict) -> int:
        """Append one record (a value for every column); returns its index.

        Protocol: write data and checksums at index n, flush (+fsync), set n_committed = n+1,
        flush (+fsync). See the module docstring.
        """
        self._require_writable()
        cols = self.columns
        if set(record) != set(cols):
            raise ValueError(f"{self.path}: a record needs exactly the columns {sorted(cols)}; got "
                             f"{sorted(record)} (missing {sorted(set(cols) - set(record))}, "
                             f"unexpected {sorted(set(record) - set(cols))})")
        prepared = {name: self._coerce(name, cols[name], record[name]) for name in cols}
        _check_space(self.path, sum(len(a.encode("utf-8")) if isinstance(a, str) else np.asarray(a).nbytes
                                    for a, _ in prepared.values()), self.n)
        if not self._session_logged:
            self._log_session()
        i = self.n
        for name, (arr, crc) in prepared.items():
            ds, cs = self._f[name], self._f["checksums"][name]
            for d in (ds, cs):
                if d.shape[0] < i + 1:
                    d.resize(i + 1, axis=0)
            ds[i] = arr
            cs[i] = np.uint32(crc)
        self._flush()
        self._f.attrs.modify("n_committed", np.int64(i + 1))
        self._flush()
        self.n = i + 1
        return i

    def _log_session(self):
        g = self._f["sessions"]
        k = len(g)
        s = g.create_group(str(k))
        s.attrs["first_record"] = np.int64(self.n)
        write_provenance(s, self._session_prov if self._session_prov is not None else _provenance())
        self._session_logged = True

    # ----------------------------------------------------------------- read
    def _index(self, i) -> int:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"{self.path}: record {i} does not exist (the store has {self.n} committed records)")
        return i

    def _h5read(self, what, fn):
        try:
            return fn()
        except OSError as e:
            raise CorruptFileError(f"{self.path}: cannot read {what} (the file is damaged): h5py: {e}",
                                   self.path) from None

    def _check(self, name, i, value, stored_crc):
        if _h5py().check_string_dtype(self._f[name].dtype) is not None:
            text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
            got = crc32(text.encode("utf-8"))
        else:
            got = crc32(np.ascontiguousarray(value, dtype=_le(np.asarray(value).dtype)))
        if got != int(stored_crc):
            raise ChecksumError(f"{self.path}: record {i} of column '{name}' fails its CRC32 check (stored "
                                f"{int(stored_crc):08x}, computed {got:08x}): the file is corrupted", self.path)

    def read(self, name: str, i: int, verify: bool = True):
        """Record ``i`` of column ``name`` (negative ``i`` counts from the end): a NumPy array,
        a structured scalar for compound columns, the decoded object for JSON columns."""
        if name not in self.columns:
            raise KeyError(f"{self.path}: no column {name!r} (columns: {sorted(self.columns)})")
        i = self._index(i)
        return damaged_as_corrupt(lambda: self._read(name, i, verify), self.path, f"record {i} of '{name}'")

    def _read(self, name, i, verify):
        ds = self._f[name]
        value = self._h5read(f"record {i} of '{name}'", lambda: ds[i])
        if verify:
            stored = self._h5read(f"checksum {i} of '{name}'", lambda: self._f["checksums"][name][i])
            self._check(name, i, value, stored)
        if _h5py().check_string_dtype(ds.dtype) is not None:
            return json.loads(value.decode("utf-8") if isinstance(value, bytes) else value)
        return value

    def column(self, name: str, verify: bool = True):
        """All committed records of a column: an array ``(n, *shape)`` (a list for JSON)."""
        if name not in self.columns:
            raise KeyError(f"{self.path}: no column {name!r} (columns: {sorted(self.columns)})")
        return damaged_as_corrupt(lambda: self._column(name, verify), self.path, f"column '{name}'")

    def _column(self, name, verify):
        ds = self._f[name]
        n = self.n
        values = self._h5read(f"column '{name}'", lambda: ds[:n])
        if verify:
            stored = self._h5read(f"checksums of '{name}'", lambda: self._f["checksums"][name][:n])
            for i in range(n):
                self._check(name, i, values[i], stored[i])
        if _h5py().check_string_dtype(ds.dtype) is not None:
            return [json.loads(v.decode("utf-8") if isinstance(v, bytes) else v) for v in values]
        return values

    def verify(self) -> None:
        """Check the CRC32 of every committed record of every column (ChecksumError if not)."""
        for name in self.columns:
            for i in range(self.n):
                self.read(name, i, verify=True)

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        if self._f is not None:
            try:
                if self.mode == "a":
                    self._flush()
            finally:
                self._f.close()
                self._f = None

    @property
    def closed(self) -> bool:
        return self._f is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        if self._f is None:
            return f"RecordStore({self.path!r}, closed)"
        return f"RecordStore({self.path!r}, kind={self.kind!r}, {self.n} records, mode {self.mode!r})"
