"""The append-only HDF5 record store (lattice.io.store.RecordStore)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from lattice.io import (RecordStore, Column, JSON, CorruptFileError, TruncatedFileError, ChecksumError,
                        MismatchError)
from lattice.io.provenance import CONVENTIONS_VERSION

ROOT = Path(__file__).resolve().parents[1]
COLS = {"corr": Column((4, 3), "complex128"), "logw": Column((), "float64"), "meta": Column((), JSON)}
HEADER = {"lattice_shape": (4, 4, 4, 8), "beta": 6.0, "action": {"name": "wilson", "beta": 6.0}, "flag": True,
          "label": "test", "nothing": None, "mixed": [1, "a"]}


def _rec(i):
    rng = np.random.default_rng(i)
    return {"corr": rng.normal(size=(4, 3)) + 1j * rng.normal(size=(4, 3)), "logw": float(i) / 3,
            "meta": {"i": i, "rng": {"seed": 1, "calls": 3 * i}}}


def _make(path, n, **kw):
    with RecordStore.create(path, kind="measurement", attrs=HEADER, columns=COLS, **kw) as st:
        for i in range(n):
            assert st.append(_rec(i)) == i
    return path


def test_roundtrip_attrs_columns(tmp_path):
    p = _make(tmp_path / "s.h5", 3)
    with RecordStore.open(p, kind="measurement") as st:
        assert st.n == len(st) == 3 and st.kind == "measurement"
        assert st.attrs == {**HEADER, "lattice_shape": (4, 4, 4, 8), "mixed": [1, "a"]}
        assert set(st.columns) == set(COLS)
        for i in range(3):
            r = _rec(i)
            assert np.array_equal(st.read("corr", i), r["corr"])
            assert st.read("logw", i) == r["logw"]
            assert st.read("meta", i) == r["meta"]
        assert np.array_equal(st.column("logw"), [0, 1 / 3, 2 / 3])
        assert st.column("meta")[2] == _rec(2)["meta"]
        assert np.array_equal(st.read("corr", -1), _rec(2)["corr"])
        st.verify()
        f = st.h5
        assert f["corr"].chunks == (1, 4, 3) and f["checksums/corr"].shape == (3,)
        assert f.attrs["conventions_version"] == CONVENTIONS_VERSION
        with pytest.raises(IndexError, match="record 3 does not exist .* 3 committed"):
            st.read("corr", 3)
        with pytest.raises(KeyError, match="no column 'nope'"):
            st.read("nope", 0)


def test_provenance_attributes_present(tmp_path):
    p = _make(tmp_path / "s.h5", 1)
    with RecordStore.open(p) as st:
        prov = st.provenance
        for k in ("code", "version", "git_commit", "command", "time_utc", "host", "python", "numpy", "h5py",
                  "mpi_ranks", "conventions", "conventions_version"):
            assert k in prov, k
        assert prov["code"] == "gaugeflow" and prov["mpi_ranks"] == 1
        assert "time is the LAST axis" in prov["conventions"] and "-2 tr(AB)" in prov["conventions"]
        assert prov["time_utc"].endswith("+00:00")
        assert len(st.sessions) == 1 and st.sessions[0]["first_record"] == 0
        assert "provenance.time_utc" in st.h5.attrs


def test_append_checks(tmp_path):
    with RecordStore.create(tmp_path / "s.h5", kind="m", columns=COLS) as st:
        with pytest.raises(ValueError, match=r"missing \['meta'\]"):
            st.append({"corr": np.zeros((4, 3)), "logw": 1.0})
        with pytest.raises(ValueError, match=r"shape \(4, 3\), got \(3, 4\)"):
            st.append({**_rec(0), "corr": np.zeros((3, 4))})
        with pytest.raises(TypeError, match="cannot store complex128"):
            st.append({**_rec(0), "logw": 1j})
        assert st.n == 0
        st.append(_rec(0))
        with pytest.raises(ValueError, match="cannot add column"):
            st.declare("late", Column((), "f8"))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        RecordStore.create(tmp_path / "s.h5", kind="m", columns=COLS)
    with RecordStore.open(tmp_path / "s.h5") as st:
        with pytest.raises(PermissionError, match="read-only"):
            st.append(_rec(1))
    with pytest.raises(ValueError, match="reserved"):
        RecordStore.create(tmp_path / "t.h5", kind="m", attrs={"n_committed": 3})


def test_compound_column(tmp_path):
    dt = np.dtype([("trajectory", "<i8"), ("plaquette", "<f8"), ("accepted", "?")])
    with RecordStore.create(tmp_path / "c.h5", kind="m", columns={"s": Column((), dt)}) as st:
        st.append({"s": {"trajectory": 1, "plaquette": 0.5, "accepted": True}})
        st.append({"s": {"trajectory": 2, "plaquette": np.float64(0.25), "accepted": False}})
        with pytest.raises(ValueError, match=r"missing \['accepted'\]"):
            st.append({"s": {"trajectory": 3, "plaquette": 0.1}})
        with pytest.raises(TypeError, match="does not fit"):
            st.append({"s": {"trajectory": 3.5, "plaquette": 0.1, "accepted": True}})
        a = st.column("s")
        assert list(a["trajectory"]) == [1, 2] and list(a["accepted"]) == [True, False]


def _chunk_offset(path, name, i):
    with h5py.File(path, "r") as f:
        ds = f[name]
        return ds.id.get_chunk_info_by_coord((i,) + (0,) * (ds.ndim - 1)).byte_offset


def test_flipped_byte_gives_checksum_error(tmp_path):
    p = _make(tmp_path / "s.h5", 3)
    off = _chunk_offset(p, "corr", 1)
    raw = bytearray(p.read_bytes())
    raw[off + 17] ^= 0x01
    p.write_bytes(bytes(raw))
    with RecordStore.open(p) as st:
        assert np.array_equal(st.read("corr", 0), _rec(0)["corr"])   # other records unaffected
        with pytest.raises(ChecksumError, match="record 1 of column 'corr' fails its CRC32 check"):
            st.read("corr", 1)
        with pytest.raises(ChecksumError):
            st.verify()
        st.read("corr", 1, verify=False)


def test_truncated_and_foreign_files(tmp_path):
    p = _make(tmp_path / "s.h5", 3)
    raw = p.read_bytes()
    t = tmp_path / "t.h5"
    t.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TruncatedFileError, match="is truncated"):
        RecordStore.open(t)
    n = tmp_path / "n.h5"
    n.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(CorruptFileError, match="not an HDF5 file"):
        RecordStore.open(n)
    h = tmp_path / "h.h5"
    with h5py.File(h, "w") as f:
        f["x"] = 1
    with pytest.raises(CorruptFileError, match="not a gaugeflow record store"):
        RecordStore.open(h)
    with pytest.raises(FileNotFoundError):
        RecordStore.open(tmp_path / "missing.h5")


def test_inconsistent_store_is_detected(tmp_path):
    p = _make(tmp_path / "s.h5", 2)
    with h5py.File(p, "a") as f:
        f.attrs.modify("n_committed", np.int64(5))
    with pytest.raises(CorruptFileError, match="holds 2 records .* n_committed = 5"):
        RecordStore.open(p)


def test_expectations_and_conventions(tmp_path):
    p = _make(tmp_path / "s.h5", 1)
    with RecordStore.open(p, expect={"lattice_shape": [4, 4, 4, 8], "action": {"beta": 6.0}, "flag": True}):
        pass
    with pytest.raises(MismatchError, match=r"'lattice_shape' differs: the file has \(4, 4, 4, 8\), expected \(8, 8, 8, 16\)"):
        RecordStore.open(p, expect={"lattice_shape": (8, 8, 8, 16)})
    with pytest.raises(MismatchError, match="'action.beta' differs: the file has 6.0, expected 5.9") as e:
        RecordStore.open(p, expect={"action": {"name": "wilson", "beta": 5.9}})
    assert (e.value.field, e.value.found, e.value.expected) == ("action.beta", 6.0, 5.9)
    with pytest.raises(MismatchError, match="no 'seed'"):
        RecordStore.open(p, expect={"seed": 1})
    with pytest.raises(MismatchError, match="'kind' differs"):
        RecordStore.open(p, kind="gauge_ensemble")
    with h5py.File(p, "a") as f:
        f.attrs["conventions_version"] = "other-conventions-0"
    with pytest.raises(MismatchError, match="conventions_version"):
        RecordStore.open(p)
    RecordStore.open(p, check_conventions=False).close()


def test_failed_create_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        RecordStore.create(tmp_path / "x.h5", kind="m", attrs={"bad": object()})
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ crash safety
CRASH = textwrap.dedent("""
    import os, sys, numpy as np, h5py
    sys.path.insert(0, {root!r})
    from lattice.io import RecordStore
    from tests.test_io_store import _rec
    stage = {stage!r}
    st = RecordStore.open({path!r}, "a")
    if stage == "before_flush":            # data handed to HDF5, nothing flushed
        st._flush = lambda: os._exit(3)
    elif stage == "before_commit":         # data flushed to the file, n_committed not advanced
        orig = h5py.AttributeManager.modify
        def modify(self, name, value):
            if name == "n_committed":
                os._exit(3)
            return orig(self, name, value)
        h5py.AttributeManager.modify = modify
    elif stage == "before_last_flush":     # n_committed advanced in memory, last flush not done
        calls = []
        def flush():
            calls.append(1)
            if len(calls) == 2:
                os._exit(3)
            st._f.flush()
        st._flush = flush
    st.append(_rec(st.n))
    os._exit(0)
""")


@pytest.mark.parametrize("stage", ["before_flush", "before_commit", "before_last_flush"])
def test_append_after_crash(tmp_path, stage):
    p = _make(tmp_path / "s.h5", 2)
    r = subprocess.run([sys.executable, "-c", CRASH.format(root=str(ROOT), stage=stage, path=str(p))],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 3, r.stderr
    with RecordStore.open(p) as st:   # every committed record is intact
        n = st.n
        assert n in ((2,) if stage != "before_last_flush" else (2, 3))
        st.verify()
        for i in range(n):
            assert np.array_equal(st.read("corr", i), _rec(i)["corr"])
    with RecordStore.open(p, "a") as st:  # the uncommitted tail is trimmed; appending continues
        for name in COLS:
            assert st.h5[name].shape[0] == n
        assert st.append(_rec(n)) == n
        assert st.append(_rec(n + 1)) == n + 1
    with RecordStore.open(p) as st:
        assert st.n == n + 2
        st.verify()
        for i in range(n + 2):
            assert st.read("meta", i) == _rec(i)["meta"]
        assert [s["first_record"] for s in st.sessions][-1] == n
