"""Gauge ensembles in HDF5: :class:`EnsembleStore`, built on :class:`~lattice.io.store.RecordStore`.

File content (``kind = "gauge_ensemble"``)::

    /                 attrs: lattice_shape (L_0, ..., L_{Nd-1}; time last), Nd, N,
                             storage ("complex128" | "complex64"), action (JSON, e.g.
                             LoopAction.params()), meta (JSON: seeds, start, integrator, ...),
                             conventions_version, n_committed, provenance.*
    /configs          (n, Nd, L_0, ..., L_{Nd-1}, N, N) complex, one chunk per configuration
    /scalars          (n,) compound: per-configuration scalars (trajectory, plaquette,
                      accepted, dH, ...; fixed by the first append)
    /state            (n,) JSON text: resume state per configuration (e.g. RNG state), or null
    /checksums/...    CRC32 per record and column; /sessions/k: provenance of each appending job

Appends follow the record store's protocol (data, flush, then ``n_committed``): a killed job
leaves every earlier configuration readable and the next job continues at ``store.n``. Reads
verify the CRC32 and that the field is in SU(N).

Under MPI (a distributed :class:`lattice.Layout`) only rank 0 touches the file: ``append``
gathers the field to rank 0 (``layout.gather_field``), ``read`` sends each rank its block
(``layout.scatter_field``), metadata are broadcast, and an error on rank 0 is raised on all
ranks. The datasets are identical to those written by a single process; the provenance
records the rank count.

Example::

    with EnsembleStore.create("ens.h5", lattice_shape=(8, 8, 8, 16), N=3,
                              action=Wilson(6.0).params(), meta={"seed": 1}) as ens:
        ens.append(U, trajectory=1, plaquette=p, accepted=True, dH=0.1, state=rng.state())
    with EnsembleStore.open("ens.h5", "a", expect={"action": Wilson(6.0).params()}) as ens:
        rec = ens.last()              # Record(index, U, scalars, state) -> resume from here
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from ..backend import to_host, from_host
from ..layout import Layout
from .. import su_n
from .errors import CorruptFileError, MismatchError
from .provenance import provenance as _provenance
from .store import RecordStore, Column, JSON, damaged_as_corrupt
from ._parallel import on_root, collective, is_distributed

__all__ = ["EnsembleStore", "Record", "KIND"]

KIND = "gauge_ensemble"
_STORAGE = ("complex128", "complex64")


class Record(NamedTuple):
    """One stored configuration with its per-record scalars and resume state."""
    index: int
    U: object
    scalars: dict
    state: object


def _scalar_dtype(scalars: dict) -> np.dtype:
    fields = []
    for k, v in scalars.items():
        a = np.asarray(to_host(v))
        if a.shape != () or a.dtype.kind not in "biufc":
            raise TypeError(f"per-configuration scalar {k!r} must be a number or a boolean, got {v!r}; "
                            f"put other data into state=...")
        dt = {"b": np.dtype("?"), "i": np.dtype("<i8"), "u": np.dtype("<i8"), "f": np.dtype("<f8"),
              "c": np.dtype("<c16")}[a.dtype.kind]
        fields.append((str(k), dt))
    return np.dtype(fields)


def _action_dict(action) -> dict:
    if hasattr(action, "params"):
        action = action.params()
    if not isinstance(action, dict):
        raise TypeError(f"action must be a dict of parameters (e.g. LoopAction.params()), got {type(action).__name__}")
    return dict(action)


def _existing_state(path, kind: str, expect: dict) -> str:
    """How ``open_or_create`` treats ``path``: "create" (absent), "resume" (it holds records, or
    it is empty and matches ``expect``: opening it checks the rest), "replace" (it holds no
    committed record and was made with other settings, e.g. by a run that failed or was
    refused before its first record: it blocks nothing and is recreated)."""
    from .store import check_expected
    if not os.path.exists(path):
        return "create"
    try:
        with RecordStore.open(path, "r", check_conventions=False) as st:
            if st.n:
                return "resume"
            if st.kind != kind:
                return "replace"
            check_expected(st.attrs, expect, path)
    except MismatchError:
        return "replace"
    except CorruptFileError:
        return "resume"      # opening it again reports the damage
    return "resume"


class EnsembleStore:
    """An HDF5 file of gauge configurations (see the module docstring).

    Use :meth:`create` or :meth:`open`. Attributes available on every rank: ``n`` (number of
    committed configurations), ``attrs`` (header), ``lattice_shape``, ``N``, ``Nd``,
    ``action``, ``meta``, ``storage``, ``layout``, ``path``.
    """

    def __init__(self, store, layout: Layout, header: dict, n: int, path, mode: str):
        self._store = store            # RecordStore on rank 0, None elsewhere
        self.layout = layout
        self.attrs = header
        self.n = int(n)
        self.path = str(path)
        self.mode = mode

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(cls, path, *, lattice_shape, N: int, action, meta: dict | None = None,
               layout: Layout | None = None, storage: str = "complex128", overwrite: bool = False,
               durable: bool = True, provenance_extra: dict | None = None) -> "EnsembleStore":
        """Create a new, empty ensemble file and open it for appending.

        lattice_shape : global lattice (L_0, ..., L_{Nd-1}), time last.
        N : gauge group SU(N).
        action : dict of action parameters (``LoopAction.params()``; an action object is accepted).
        meta : further header data (seeds, start, integrator, ...), JSON-serialisable.
        layout : the job's :class:`lattice.Layout` (must have this global shape).
        storage : "complex128" (default) or "complex64" (fields are rounded on append).
        provenance_extra : further entries (str/int/float) of this job's provenance record
            (e.g. the solver tolerances it used; :func:`lattice.io.provenance` ``extra``).
        """
        shape = tuple(int(n) for n in lattice_shape)
        if not 2 <= len(shape) <= 4:
            raise ValueError(f"lattice_shape must have 2, 3 or 4 extents, got {shape}")
        if storage not in _STORAGE:
            raise ValueError(f"storage must be one of {_STORAGE}, got {storage!r}")
        if layout is None:
            layout = Layout(shape)
        elif tuple(layout.global_shape) != shape:
            raise MismatchError(f"{path}: lattice size mismatch: lattice_shape={shape} but the layout is "
                                f"{layout.global_shape}", field="lattice_shape", found=shape,
                                expected=tuple(layout.global_shape), path=path)
        header = {"lattice_shape": shape, "Nd": len(shape), "N": int(N), "storage": storage,
                  "action": _action_dict(action), "meta": dict(meta or {})}
        columns = {"configs": Column((len(shape),) + shape + (int(N), int(N)), storage),
                   "state": Column((), JSON)}

        def make():
            return RecordStore.create(path, kind=KIND, attrs=header, columns=columns, overwrite=overwrite,
                                      provenance=_provenance(layout=layout, extra=provenance_extra),
                                      durable=durable)

        store = on_root(layout, make)
        header = layout.bcast(store.attrs if store is not None else None)
        return cls(store, layout, header, 0, path, "a")

    @classmethod
    def open(cls, path, mode: str = "r", layout: Layout | None = None, expect: dict | None = None,
             durable: bool = True, provenance_extra: dict | None = None) -> "EnsembleStore":
        """Open an ensemble for reading (``"r"``) or appending (``"a"``).

        The file is validated (format, checksummed columns, conventions); with ``layout`` its
        lattice must equal ``layout.global_shape``; ``expect`` entries (e.g. ``{"N": 3,
        "action": {...}, "meta": {"seed": 1}}``) must match the header, else a
        :class:`~lattice.io.errors.MismatchError` names the differing field and both values.
        ``provenance_extra``: as in :meth:`create`, for the session record of an append.
        """
        def op():
            st = RecordStore.open(path, mode, kind=KIND, expect=expect, durable=durable,
                                  provenance=_provenance(layout=layout, extra=provenance_extra)
                                  if mode == "a" else None)
            try:
                damaged_as_corrupt(lambda: (st.attrs, st.columns), path, "its header")
                hdr = st.attrs
                shape = tuple(hdr["lattice_shape"])
                if layout is not None and tuple(layout.global_shape) != shape:
                    raise MismatchError(
                        f"{path}: lattice size mismatch: the file holds a {'x'.join(map(str, shape))} lattice, "
                        f"the layout is {'x'.join(map(str, layout.global_shape))}", field="lattice_shape",
                        found=shape, expected=tuple(layout.global_shape), path=path)
                want = (len(shape),) + shape + (hdr["N"], hdr["N"])
                cols = st.columns
                if "configs" not in cols or tuple(cols["configs"].shape) != want:
                    raise CorruptFileError(f"{path}: configs column {cols.get('configs')} does not match the "
                                           f"header (expected records of shape {want})", path)
            except BaseException:
                st.close()
                raise
            return st

        store = on_root(layout, op)
        header, n = layout.bcast((store.attrs, store.n) if store is not None else None) \
            if is_distributed(layout) else (store.attrs, store.n)
        if layout is None:
            layout = Layout(tuple(header["lattice_shape"]))
        return cls(store, layout, header, n, path, mode)

    @classmethod
    def open_or_create(cls, path, *, lattice_shape, N: int, action, meta: dict | None = None,
                       layout: Layout | None = None, storage: str = "complex128",
                       durable: bool = True, provenance_extra: dict | None = None) -> "EnsembleStore":
        """Resume an existing ensemble or start a new one, for jobs that may be restarted.

        If ``path`` exists it is opened for appending and must match ``lattice_shape``, ``N``,
        ``action``, ``storage`` and every entry of ``meta`` (else MismatchError: a restarted
        job never silently appends to a different ensemble); otherwise it is created.
        """
        expect = {"lattice_shape": tuple(int(n) for n in lattice_shape), "N": int(N), "storage": storage,
                  "action": _action_dict(action), "meta": dict(meta or {})}
        state = on_root(layout, lambda: _existing_state(path, KIND, expect), bcast_result=True)
        if state != "resume":
            return cls.create(path, lattice_shape=lattice_shape, N=N, action=action, meta=meta, layout=layout,
                              storage=storage, durable=durable, overwrite=state == "replace",
                              provenance_extra=provenance_extra)
        return cls.open(path, "a", layout=layout, expect=expect, durable=durable, provenance_extra=provenance_extra)

    # ----------------------------------------------------------------- header
    @property
    def lattice_shape(self) -> tuple:
        return tuple(self.attrs["lattice_shape"])

    @property
    def Nd(self) -> int:
        return int(self.attrs["Nd"])

    @property
    def N(self) -> int:
        return int(self.attrs["N"])

    @property
    def storage(self) -> str:
        return self.attrs["storage"]

    @property
    def action(self) -> dict:
        return self.attrs["action"]

    @property
    def meta(self) -> dict:
        return self.attrs["meta"]

    @property
    def provenance(self) -> dict:
        """Provenance of the creating job (all ranks)."""
        return on_root(self.layout, lambda: self._live().provenance, bcast_result=True)

    @property
    def sessions(self) -> list:
        """Provenance of every appending job with its first record (all ranks)."""
        return on_root(self.layout, lambda: self._live().sessions, bcast_result=True)

    def __len__(self):
        return self.n

    def _live(self) -> RecordStore:
        if self._store is None or self._store.closed:
            raise ValueError(f"{self.path}: ensemble store is closed")
        return self._store

    # ----------------------------------------------------------------- append
    def append(self, U, *, state=None, check: bool = True, **scalars) -> int:
        """Append one configuration (this rank's block under MPI); returns its index.

        ``scalars``: per-configuration numbers/booleans (trajectory=..., plaquette=...,
        accepted=..., dH=...); the first append fixes their names and types. ``state``: a
        JSON-serialisable object needed to resume (e.g. ``Rng.state()``). ``check``: verify
        that U is in SU(N) first (``lattice.su_n.check_su_n``; about as costly as the write).
        """
        if self.mode != "a":
            raise PermissionError(f"{self.path} is open read-only; open it with mode='a' to append")
        lay = self.layout
        want = (self.Nd,) + tuple(lay.local_shape) + (self.N, self.N)

        def validate():
            if tuple(U.shape) != want:
                raise ValueError(f"{self.path}: configuration of shape {tuple(U.shape)} does not fit the "
                                 f"ensemble: expected {want} (Nd, local lattice, N, N)")
            if check:
                su_n.check_su_n(U, what=f"configuration appended to {self.path}")

        collective(lay, validate)
        Ug = lay.gather_field(U, inner=2, root=0)

        def op():
            st = self._live()
            rec = {"configs": Ug, "state": state}
            if scalars:
                if "scalars" not in st.columns and st.n == 0:
                    st.declare("scalars", Column((), _scalar_dtype(scalars)))
                rec["scalars"] = scalars
            elif "scalars" in st.columns:
                raise ValueError(f"{self.path}: this ensemble records per-configuration scalars "
                                 f"{list(st.columns['scalars'].dtype.names)}; pass them to append()")
            return st.append(rec)

        i = on_root(lay, op, bcast_result=True)
        self.n = i + 1
        return i

    # ----------------------------------------------------------------- read
    def read(self, i: int, *, verify: bool = True, check: bool = True, xp=None):
        """Configuration ``i`` (negative counts from the end) as complex128, this rank's block
        ``(Nd, *layout.local_shape, N, N)``. Verifies the CRC32 and (``check``) SU(N)
        membership (tolerance 1e-10, 1e-5 for complex64 storage)."""
        def op():
            st = self._live()
            j = st._index(i)
            U = st.read("configs", j, verify=verify)
            if check:
                su_n.check_su_n(U, tol=1e-5 if U.dtype == np.complex64 else None,
                                what=f"{self.path} configuration {j}")
            return np.asarray(U, dtype=np.complex128)

        Ug = on_root(self.layout, lambda: damaged_as_corrupt(op, self.path, f"configuration {i}"))
        if is_distributed(self.layout):
            return self.layout.scatter_field(Ug, inner=2, root=0, xp=xp)
        return Ug if xp is None else from_host(Ug, xp)

    def state(self, i: int):
        """The resume state stored with configuration ``i`` (all ranks)."""
        return on_root(self.layout, lambda: damaged_as_corrupt(lambda: self._live().read("state", i), self.path,
                                                               f"the state of configuration {i}"), bcast_result=True)

    def scalars(self) -> dict:
        """Per-configuration scalars of all committed records: ``{name: array (n,)}`` (all ranks)."""
        def op():
            st = self._live()
            if "scalars" not in st.columns:
                return {}
            a = st.column("scalars")
            return {k: np.asarray(a[k]) for k in a.dtype.names}
        return on_root(self.layout, lambda: damaged_as_corrupt(op, self.path, "the scalars"), bcast_result=True)

    def record(self, i: int, **kw) -> Record:
        """Configuration ``i`` with its scalars and state."""
        def meta():
            st = self._live()
            j = st._index(i)
            sc = {}
            if "scalars" in st.columns:
                s = st.read("scalars", j)
                sc = {k: s[k].item() for k in s.dtype.names}
            return j, sc, st.read("state", j)
        j, sc, stt = on_root(self.layout, lambda: damaged_as_corrupt(meta, self.path, f"record {i}"),
                             bcast_result=True)
        return Record(j, self.read(j, **kw), sc, stt)

    def last(self, **kw) -> Record:
        """The last committed configuration (the one to resume from)."""
        if self.n == 0:
            raise IndexError(f"{self.path}: the ensemble is empty")
        return self.record(self.n - 1, **kw)

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the file (rank 0; a no-op elsewhere). No collective call: ``close`` runs while an
        exception unwinds through ``with`` blocks, possibly on one rank only, and must never wait
        for the other ranks (an error while closing is raised on rank 0 alone)."""
        if self._store is not None:
            self._store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"EnsembleStore({self.path!r}, lattice={self.lattice_shape}, N={self.N}, "
                f"action={self.action.get('name', '?')}, n={self.n}, mode={self.mode!r})")
