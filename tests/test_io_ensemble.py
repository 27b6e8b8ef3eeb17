"""Gauge ensembles in HDF5 (lattice.io.EnsembleStore)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, strategies as st

import lattice
from lattice.actions import Wilson, LuscherWeisz
from lattice.io import EnsembleStore, MismatchError, ChecksumError, TruncatedFileError, RecordStore

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (4, 4, 4, 6)


def _cfg(k, shape=SHAPE, N=3):
    return lattice.random_gauge(shape, N=N, seed=100 + k)


def _fill(path, n, storage="complex128", action=None):
    action = Wilson(6.0) if action is None else action
    with EnsembleStore.create(path, lattice_shape=SHAPE, N=3, action=action, storage=storage,
                              meta={"seed": 7, "start": "hot"}) as ens:
        for k in range(n):
            U = _cfg(k)
            ens.append(U, trajectory=10 * k, plaquette=lattice.plaquette(U), accepted=bool(k % 2), dH=0.5 - k,
                       state={"rng": {"seed": 7, "stream": 0, "calls": k}})
    return path


def test_roundtrip_complex128(tmp_path):
    p = _fill(tmp_path / "e.h5", 3)
    with EnsembleStore.open(p) as ens:
        assert ens.n == 3 and ens.lattice_shape == SHAPE and ens.N == 3 and ens.Nd == 4
        assert ens.action == Wilson(6.0).params() and ens.meta == {"seed": 7, "start": "hot"}
        for k in range(3):
            V = ens.read(k)
            assert V.dtype == np.complex128 and np.array_equal(V, _cfg(k))
        sc = ens.scalars()
        assert list(sc["trajectory"]) == [0, 10, 20] and list(sc["accepted"]) == [False, True, False]
        assert np.array_equal(sc["plaquette"], [float(lattice.plaquette(_cfg(k))) for k in range(3)])
        assert sc["dH"].dtype == np.float64 and sc["trajectory"].dtype == np.int64
        rec = ens.last()
        assert rec.index == 2 and np.array_equal(rec.U, _cfg(2))
        assert rec.scalars == {"trajectory": 20, "plaquette": float(lattice.plaquette(_cfg(2))),
                               "accepted": False, "dH": -1.5}
        assert rec.state == {"rng": {"seed": 7, "stream": 0, "calls": 2}}
        assert ens.state(0)["rng"]["calls"] == 0
        f = ens._store.h5
        assert f["configs"].dtype == np.complex128 and f["configs"].chunks == (1, 4) + SHAPE + (3, 3)


def test_roundtrip_complex64_storage(tmp_path):
    p = _fill(tmp_path / "e.h5", 2, storage="complex64")
    with EnsembleStore.open(p) as ens:
        assert ens.storage == "complex64"
        V = ens.read(1)
        assert V.dtype == np.complex128
        assert np.array_equal(V, _cfg(1).astype(np.complex64).astype(np.complex128))
        assert ens._store.h5["configs"].dtype == np.complex64


@given(Nd=st.integers(2, 4), N=st.integers(2, 3), ext=st.lists(st.integers(2, 4), min_size=4, max_size=4),
       seed=st.integers(0, 100))
def test_roundtrip_random_geometries(tmp_path_factory, Nd, N, ext, seed):
    shape = tuple(ext[:Nd])
    U = lattice.random_gauge(shape, N=N, seed=seed, layout=lattice.Layout(shape))
    p = tmp_path_factory.mktemp("e") / "e.h5"
    with EnsembleStore.create(p, lattice_shape=shape, N=N, action={"name": "wilson", "beta": 2.0},
                              layout=lattice.Layout(shape)) as ens:
        ens.append(U)
        ens.append(U)
    with EnsembleStore.open(p, layout=lattice.Layout(shape)) as ens:
        assert ens.n == 2 and ens.scalars() == {}
        assert np.array_equal(ens.read(1), U) and ens.state(1) is None


def test_append_validates(tmp_path):
    with EnsembleStore.create(tmp_path / "e.h5", lattice_shape=SHAPE, N=3, action=Wilson(6.0)) as ens:
        with pytest.raises(ValueError, match="does not fit the ensemble"):
            ens.append(lattice.random_gauge((4, 4, 4, 4), seed=1))
        bad = _cfg(0).copy()
        bad[0, 1, 1, 1, 1] *= 2.0
        with pytest.raises(lattice.InvalidGaugeField, match="not in SU\\(3\\)"):
            ens.append(bad)
        with pytest.raises(TypeError, match="number or a boolean"):
            ens.append(_cfg(0), label="x")
        ens.append(_cfg(0), trajectory=1)
        with pytest.raises(ValueError, match="differ from the store's"):
            ens.append(_cfg(1), trajectory=2, plaquette=0.3)
        with pytest.raises(ValueError, match="pass them to append"):
            ens.append(_cfg(1))
        assert ens.n == 1
    with EnsembleStore.open(tmp_path / "e.h5") as ens:
        with pytest.raises(PermissionError):
            ens.append(_cfg(1), trajectory=2)
        with pytest.raises(IndexError, match="record 1 does not exist"):
            ens.read(1)


def test_mismatched_files(tmp_path):
    p = _fill(tmp_path / "e.h5", 1, action=LuscherWeisz(3.8, lam=0.005))
    with pytest.raises(MismatchError, match=r"lattice size mismatch: the file holds a 4x4x4x6 lattice, the layout is 4x4x4x8"):
        EnsembleStore.open(p, layout=lattice.Layout((4, 4, 4, 8)))
    with pytest.raises(MismatchError, match="'action.lam' differs: the file has 0.005, expected 0.0"):
        EnsembleStore.open(p, expect={"action": LuscherWeisz(3.8).params()})
    with pytest.raises(MismatchError, match="'action.name' differs: the file has 'luscher_weisz', expected 'wilson'"):
        EnsembleStore.open(p, "a", expect={"action": Wilson(3.8, lam=0.005).params()})
    with pytest.raises(MismatchError, match="'N' differs: the file has 3, expected 2"):
        EnsembleStore.open(p, expect={"N": 2})
    with pytest.raises(MismatchError, match="'meta.seed' differs: the file has 7, expected 8"):
        EnsembleStore.open(p, expect={"meta": {"seed": 8}})
    with EnsembleStore.open(p, expect={"action": LuscherWeisz(3.8, lam=0.005).params(), "N": 3,
                                       "lattice_shape": SHAPE, "meta": {"seed": 7}}) as ens:
        assert ens.n == 1
    with RecordStore.create(tmp_path / "m.h5", kind="measurement") as st:
        pass
    with pytest.raises(MismatchError, match="'kind' differs"):
        EnsembleStore.open(tmp_path / "m.h5")
    with pytest.raises(MismatchError, match="lattice size mismatch"):
        EnsembleStore.create(tmp_path / "x.h5", lattice_shape=SHAPE, N=3, action=Wilson(6.0),
                             layout=lattice.Layout((4, 4, 4, 8)))


def test_corrupted_and_truncated(tmp_path):
    p = _fill(tmp_path / "e.h5", 2)
    with h5py.File(p, "r") as f:
        off = f["configs"].id.get_chunk_info_by_coord((1, 0, 0, 0, 0, 0, 0, 0)).byte_offset
    raw = bytearray(p.read_bytes())
    raw[off + 1000] ^= 0x04
    p.write_bytes(bytes(raw))
    with EnsembleStore.open(p) as ens:
        assert np.array_equal(ens.read(0), _cfg(0))
        with pytest.raises(ChecksumError, match="record 1 of column 'configs' fails its CRC32 check"):
            ens.read(1)
    t = tmp_path / "t.h5"
    t.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(TruncatedFileError, match="truncated"):
        EnsembleStore.open(t)


RESUME = textwrap.dedent("""
    import os, sys, h5py
    sys.path.insert(0, {root!r})
    from lattice.io import EnsembleStore
    from tests.test_io_ensemble import _cfg
    orig = h5py.AttributeManager.modify
    def modify(self, name, value):      # killed after the data are written, before the commit
        if name == "n_committed" and int(value) == 4:
            os._exit(9)
        return orig(self, name, value)
    h5py.AttributeManager.modify = modify
    with EnsembleStore.open({path!r}, "a") as ens:
        for k in range(ens.n, 5):
            ens.append(_cfg(k), trajectory=10 * k, plaquette=0.0, accepted=True, dH=0.0, state={{"calls": k}})
""")


def test_resume_after_killed_append(tmp_path):
    p = tmp_path / "e.h5"
    with EnsembleStore.create(p, lattice_shape=SHAPE, N=3, action=Wilson(6.0)) as ens:
        for k in range(2):
            ens.append(_cfg(k), trajectory=10 * k, plaquette=0.0, accepted=True, dH=0.0, state={"calls": k})
    r = subprocess.run([sys.executable, "-c", RESUME.format(root=str(ROOT), path=str(p))], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 9, r.stderr
    with EnsembleStore.open(p, "a") as ens:        # the killed job committed record 2, not record 3
        assert ens.n == 3
        for k in range(3):
            assert np.array_equal(ens.read(k), _cfg(k))
        assert ens.last().state == {"calls": 2}
        ens.append(_cfg(3), trajectory=30, plaquette=0.0, accepted=True, dH=0.0, state={"calls": 3})
    with EnsembleStore.open(p) as ens:
        assert ens.n == 4 and list(ens.scalars()["trajectory"]) == [0, 10, 20, 30]
        assert np.array_equal(ens.read(3), _cfg(3))
        assert [s["first_record"] for s in ens.sessions] == [0, 2, 3]
        assert ens.provenance["mpi_ranks"] == 1


def test_scatter_field_single_process():
    lay = lattice.Layout(SHAPE)
    U = _cfg(0)
    assert lay.scatter_field(U, inner=2) is U
    with pytest.raises(lattice.LayoutError, match="does not fit the lattice"):
        lay.scatter_field(lattice.random_gauge((4, 4, 4, 4), seed=1), inner=2)


def test_open_or_create_resumes_only_the_same_ensemble(tmp_path):
    p = tmp_path / "e.h5"
    kw = dict(lattice_shape=SHAPE, N=3, action=Wilson(6.0), meta={"seed": 7})
    with EnsembleStore.open_or_create(p, **kw) as ens:
        assert ens.n == 0 and ens.mode == "a"
        ens.append(_cfg(0))
    with EnsembleStore.open_or_create(p, **kw) as ens:
        assert ens.n == 1
        ens.append(_cfg(1))
    with pytest.raises(MismatchError, match="'meta.seed' differs"):
        EnsembleStore.open_or_create(p, **{**kw, "meta": {"seed": 8}})
    with pytest.raises(MismatchError, match="'action.beta' differs"):
        EnsembleStore.open_or_create(p, **{**kw, "action": Wilson(6.1)})
    with pytest.raises(MismatchError, match="'storage' differs"):
        EnsembleStore.open_or_create(p, **kw, storage="complex64")
    with EnsembleStore.open(p) as ens:
        assert ens.n == 2
