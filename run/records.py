"""Measurement files of the workflow (flow evaluation, correlators), usable from every MPI rank.

Each file is a :class:`lattice.io.RecordStore` (append-only, checksummed, provenance, resume
safe) held open on rank 0 only; :class:`RankStore` runs appends and reads there and broadcasts
what the other ranks need, so that jobs are written once for any rank count. The header
attributes record what was measured (action couplings, fermion parameters, seeds, the
ensemble it belongs to); reopening a file with different settings raises a clear
``MismatchError`` naming the field.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lattice.io import RecordStore, Column, JSON, on_root

__all__ = ["RankStore"]


class RankStore:
    """A RecordStore of ``kind`` at ``path`` with ``columns``; created or reopened for appending."""

    def __init__(self, layout, path, *, kind: str, attrs: dict, columns: dict):
        self.layout = layout
        self.path = Path(path)

        def op():
            from lattice.io.ensemble import _existing_state
            state = _existing_state(self.path, kind, attrs)
            if state == "resume":
                return RecordStore.open(self.path, "a", kind=kind, expect=attrs)
            # absent, or empty with other settings (a failed run's leftover): (re)create
            return RecordStore.create(self.path, kind=kind, attrs=attrs, columns=columns,
                                      overwrite=state == "replace")

        self._store = on_root(layout, op)
        self.n = int(on_root(layout, lambda: len(self._store), bcast_result=True))

    def append(self, record: dict) -> None:
        on_root(self.layout, lambda: self._store.append(record))
        self.n += 1

    def column(self, name: str):
        return on_root(self.layout, lambda: np.asarray(self._store.column(name)), bcast_result=True)

    def close(self):
        """Close the file on rank 0; no collective call (see ``EnsembleStore.close``)."""
        if self._store is not None:
            self._store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def read_columns(path, kind: str, names) -> dict:
        """All committed values of ``names`` (host-side, single process; for analysis)."""
        with RecordStore.open(path, "r", kind=kind) as s:
            return {n: np.asarray(s.column(n)) for n in names} | {"_attrs": s.attrs}


# re-exported for the jobs
Column = Column
JSON = JSON
