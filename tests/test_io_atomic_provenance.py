"""atomic_write and provenance (lattice.io.atomic, lattice.io.provenance)."""
import os
import re

import h5py
import pytest

from lattice.io import atomic_write, provenance, write_provenance, read_provenance, CONVENTIONS
from lattice.io.provenance import conventions_text, CONVENTIONS_VERSION


def test_atomic_write_variants(tmp_path):
    p = tmp_path / "r.json"
    atomic_write(p, '{"a": 1}')
    assert p.read_text() == '{"a": 1}'
    atomic_write(p, b"bytes")
    assert p.read_bytes() == b"bytes"
    atomic_write(p, lambda f: f.write(b"callable"))
    assert p.read_bytes() == b"callable"
    atomic_write(tmp_path / "m.h5", lambda tmp: h5py.File(tmp, "w").close(), pass_path=True)
    assert h5py.is_hdf5(tmp_path / "m.h5")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["m.h5", "r.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    p = tmp_path / "model.npz"
    p.write_bytes(b"old")

    def broken(f):
        f.write(b"partial new content")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError, match="killed while writing"):
        atomic_write(p, broken)
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["model.npz"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write(tmp_path / "nodir" / "x", b"")
    with pytest.raises(FileNotFoundError, match="did not create"):
        atomic_write(tmp_path / "y", lambda tmp: None, pass_path=True)


def test_atomic_write_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_provenance_content_and_hdf5(tmp_path):
    prov = provenance(mpi_ranks=4, extra={"job": "hmc"})
    assert prov["mpi_ranks"] == 4 and prov["job"] == "hmc" and prov["code"] == "gaugeflow"
    assert prov["version"] not in ("", None)
    assert prov["conventions_version"] == CONVENTIONS_VERSION
    text = conventions_text()
    for topic in ("arrays", "group", "force", "plaquette", "actions", "fermions", "gamma_basis"):
        assert topic in CONVENTIONS and f"{topic}:" in text
    assert prov["git_commit"] == "" or re.fullmatch(r"[0-9a-f]{40}", prov["git_commit"])
    assert prov["git_dirty"] in (0, 1)
    with h5py.File(tmp_path / "p.h5", "w") as f:
        g = f.create_group("g")
        write_provenance(g, prov)
        back = read_provenance(g)
    assert back == prov
    with pytest.raises(TypeError, match="must be str, int or float"):
        provenance(extra={"bad": [1]})
