"""flows.save_params / load_params: round trip, validation, atomic writes."""
import os

import h5py
import numpy as np
import pytest

import flows
from lattice.backend import Rng, get_namespace


def _model_params():
    net = flows.StapleNet(4, 1, width=4, n_layers=2)
    ctx = flows.ContextNet(4, 5, hidden=(3,))
    p = {f"staples.{k}": v for k, v in net.init(Rng(0)).items()}
    p.update({f"context.{k}": v for k, v in ctx.init(Rng(1)).items()})
    return p, {"staples": net.config(), "context": ctx.config()}


def test_round_trip(tmp_path):
    p, cfg = _model_params()
    p["extra.complex"] = np.array([1 + 2j, 3.5j])
    path = tmp_path / "model.h5"
    flows.save_params(path, p, cfg)
    q, cfg2 = flows.load_params(path, template=p)
    assert list(q) == list(p)                      # key order kept
    for k in p:
        assert q[k].dtype == p[k].dtype
        np.testing.assert_array_equal(q[k], p[k])
    assert cfg2 == cfg
    assert flows.read_config(path) == cfg
    assert flows.StapleNet(**cfg2["staples"]).param_shapes()["c1"] == (1, 1, 28)
    assert [f for f in os.listdir(tmp_path)] == ["model.h5"]   # no temporary files left


def test_validation_names_the_key(tmp_path):
    p, cfg = _model_params()
    path = tmp_path / "m.h5"
    flows.save_params(path, p, cfg)
    t = dict(p)
    t["staples.c2"] = np.zeros(3)
    with pytest.raises(flows.ParamFileError, match=r"missing keys \['staples.c2'\]"):
        flows.load_params(path, template=t)
    t = dict(p)
    del t["context.w0"]
    with pytest.raises(flows.ParamFileError, match=r"unexpected keys \['context.w0'\]"):
        flows.load_params(path, template=t)
    t = dict(p)
    t["staples.c0"] = (4, 8, 7)                     # shapes are accepted as templates too
    with pytest.raises(flows.ParamFileError, match=r"'staples.c0' has shape \(4, 4, 7\).*\(4, 8, 7\)"):
        flows.load_params(path, template=t)


def test_atomic_overwrite_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "m.h5"
    flows.save_params(path, {"a": np.ones(3)}, {"v": 1})
    with pytest.raises(flows.ParamFileError, match="'/'"):
        flows.save_params(path, {"b": np.zeros(2), "bad/key": np.zeros(1)}, {"v": 2})
    q, cfg = flows.load_params(path)
    assert cfg == {"v": 1} and list(q) == ["a"]
    assert os.listdir(tmp_path) == ["m.h5"]
    with pytest.raises(flows.ParamFileError, match="JSON"):
        flows.save_params(path, {"a": np.ones(3)}, {"v": object()})
    assert os.listdir(tmp_path) == ["m.h5"]


def test_foreign_and_missing_files(tmp_path):
    with pytest.raises(flows.ParamFileError, match="does not exist"):
        flows.load_params(tmp_path / "nope.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.ones(2)
    with pytest.raises(flows.ParamFileError, match="not a gaugeflow parameter file"):
        flows.load_params(other)
    txt = tmp_path / "text.h5"
    txt.write_text("hello")
    with pytest.raises(flows.ParamFileError, match="HDF5"):
        flows.load_params(txt)
    flows.save_params(tmp_path / "m.h5", {"a": np.ones(1)})
    with pytest.raises(flows.ParamFileError, match="no group 'adam'"):
        flows.load_group(tmp_path / "m.h5", "adam")


def test_array_api_strict(tmp_path):
    xs = get_namespace("array_api_strict")
    p = {"w": xs.asarray([[1.0, 2.0]]), "b": xs.asarray([0.5])}
    flows.save_params(tmp_path / "s.h5", p, {"x": 1})
    q, _ = flows.load_params(tmp_path / "s.h5", template=p, xp=xs)
    assert type(q["w"]) is type(p["w"])
    np.testing.assert_array_equal(np.asarray(q["w"]), np.asarray(p["w"]))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_parameter_files_follow_the_umask(tmp_path, umask):
    """Like every other output (formerly 0600 whatever the umask: tempfile.mkstemp)."""
    old = os.umask(umask)
    try:
        flows.save_params(tmp_path / "m.h5", {"a": np.ones(2)}, {"v": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "m.h5").stat().st_mode & 0o777 == 0o666 & ~umask


def test_parameter_files_record_their_provenance(tmp_path):
    from lattice.io import CONVENTIONS_VERSION, provenance
    flows.save_params(tmp_path / "m.h5", {"a": np.ones(2)}, {"v": 1})
    prov = flows.read_file_provenance(tmp_path / "m.h5")
    for key in ("git_commit", "command", "time_utc", "version", "python", "numpy", "h5py", "host"):
        assert key in prov, key
    assert prov["conventions_version"] == CONVENTIONS_VERSION and prov["mpi_ranks"] == 1
    flows.save_params(tmp_path / "n.h5", {"a": np.ones(2)}, provenance=provenance(mpi_ranks=4))
    assert flows.read_file_provenance(tmp_path / "n.h5")["mpi_ranks"] == 4
    assert flows.read_config(tmp_path / "m.h5") == {"v": 1}            # not part of the config


def test_parameter_files_without_provenance_still_load(tmp_path):
    """A file as written before the provenance was recorded."""
    import json
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "gaugeflow-params"
        f.attrs["version"] = 1
        f.attrs["config"] = json.dumps({"v": 1})
        f.attrs["groups"] = json.dumps(["params"])
        g = f.create_group("params")
        g.create_dataset("a", data=np.arange(3.0))
        g.attrs["order"] = json.dumps(["a"])
    q, cfg = flows.load_params(path, template={"a": (3,)})
    np.testing.assert_array_equal(q["a"], np.arange(3.0)) and cfg == {"v": 1}
    assert flows.read_file_provenance(path) == {}
