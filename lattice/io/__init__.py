"""Host-side file I/O: HDF5 ensembles and record stores, ILDG/LIME gauge files, provenance,
atomic small files.

* :class:`EnsembleStore` -- gauge configurations with per-configuration scalars and resume
  state in an append-only, checksummed HDF5 file (:mod:`lattice.io.ensemble`).
* :class:`RecordStore` -- the general append-only HDF5 mechanism it is built on, for
  measurement files (correlators, log-weights, flow outputs) (:mod:`lattice.io.store`).
* :func:`write_ildg` / :func:`read_ildg` -- ILDG/SciDAC LIME gauge files, 32/64 bit, with
  the SciDAC checksum (:mod:`lattice.io.ildg`, :mod:`lattice.io.lime`, :mod:`lattice.io.checksum`).
* :func:`provenance` / :func:`write_provenance` -- what every output records.
* :func:`atomic_write` -- write-temporary-fsync-rename for small files.
* :func:`on_root` / :func:`collective` -- run a host-side step on MPI rank 0 (or on all
  ranks) so that an exception on one rank is raised on every rank instead of hanging.

Errors: :class:`CorruptFileError` (with :class:`TruncatedFileError`, :class:`ChecksumError`)
and :class:`MismatchError` (:mod:`lattice.io.errors`).

This package may import NumPy and h5py (h5py is imported on first use).
"""
from .errors import CorruptFileError, TruncatedFileError, ChecksumError, MismatchError
from .atomic import atomic_write
from .provenance import provenance, write_provenance, read_provenance, CONVENTIONS, CONVENTIONS_VERSION
from .store import RecordStore, Column, JSON
from .ensemble import EnsembleStore, Record
from .ildg import write_ildg, read_ildg, read_ildg_info, IldgInfo, UnverifiedDataWarning
from ._parallel import on_root, collective
from . import lime, checksum

__all__ = [
    "CorruptFileError", "TruncatedFileError", "ChecksumError", "MismatchError", "atomic_write",
    "provenance", "write_provenance", "read_provenance", "CONVENTIONS", "CONVENTIONS_VERSION",
    "RecordStore", "Column", "JSON", "EnsembleStore", "Record", "write_ildg", "read_ildg",
    "read_ildg_info", "IldgInfo", "UnverifiedDataWarning", "lime", "checksum", "on_root", "collective",
]
