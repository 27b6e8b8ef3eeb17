"""Save and load flat parameter dicts together with a configuration dict (one HDF5 file).

File layout (format ``gaugeflow-params``, version 1)::

    /                 attrs: format, version, config (JSON text), groups (JSON list),
                      provenance.* (how the file was made, lattice.io.provenance)
    /params/<key>     one dataset per parameter (key order kept in the attr ``order``)
    /<group>/<key>    optional further flat dicts, e.g. the Adam state for checkpoints

Writes are atomic (:func:`lattice.io.atomic_write`): the file is written under a temporary
name in the same directory, flushed and fsync-ed, then renamed over the target, so a job
killed while saving leaves the previous file intact (docs/design.md §9). The file's
permissions are those of any new file (the umask applies), like every other output.

Every file records its provenance (code version, git commit, command, time, host, versions,
MPI ranks, ``conventions_version``) as root attributes ``provenance.<key>``, like the record
stores; :func:`read_file_provenance` reads them (``{}`` for files written before they were
recorded, which load as before).

Loading validates: with a ``template`` (a dict of arrays or of shapes, e.g. ``model.init(...)``
or ``module.param_shapes()``) a missing key, an unexpected key or a shape mismatch raises
:class:`ParamFileError` naming the key(s).

Parameter keys may contain any characters except "/" (HDF5 group separator).
This module is host-side file I/O: arrays go through :func:`lattice.backend.to_host` and come
back with :func:`lattice.backend.from_host` in the requested namespace.
"""
from __future__ import annotations

import json
import os

from lattice.backend import to_host, from_host

__all__ = ["ParamFileError", "save_params", "load_params", "load_group", "read_config", "check_params",
           "read_file_provenance"]

FORMAT = "gaugeflow-params"
VERSION = 1


class ParamFileError(ValueError):
    """A parameter file is missing, not ours, or does not match what the model expects."""


def _write_group(f, name, arrays):
    g = f.create_group(name)
    order = []
    for k, v in arrays.items():
        if not isinstance(k, str) or not k or "/" in k:
            raise ParamFileError(f"cannot store key {k!r} in group {name!r}: keys must be non-empty strings without '/'")
        g.create_dataset(k, data=to_host(v))
        order.append(k)
    g.attrs["order"] = json.dumps(order)


def save_params(path, params, config=None, *, groups=None, provenance: dict | None = None):
    """Write ``params`` (flat dict of arrays) and ``config`` (JSON-serialisable dict) to ``path``.

    ``groups``: optional ``{name: flat dict of arrays}`` stored alongside (e.g.
    ``{"adam": Adam.state_to_arrays(state)}``). ``provenance``: the record stored as
    ``provenance.*`` attributes (default :func:`lattice.io.provenance` of this process; pass
    ``provenance(layout=layout)`` to record the job's rank count). Atomic (temporary file +
    rename); the permissions follow the umask.
    """
    from lattice.io import atomic_write, provenance as _provenance, write_provenance
    groups = dict(groups or {})
    if "params" in groups:
        raise ParamFileError("group name 'params' is reserved for the parameters")
    try:
        cfg = json.dumps(config if config is not None else {}, sort_keys=True)
    except TypeError as exc:
        raise ParamFileError(f"config is not JSON-serialisable: {exc}") from exc
    prov = _provenance() if provenance is None else provenance

    def build(tmp):
        import h5py
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["config"] = cfg
            f.attrs["groups"] = json.dumps(["params"] + list(groups))
            write_provenance(f, prov)
            _write_group(f, "params", params)
            for name, arrays in groups.items():
                _write_group(f, name, arrays)
            f.flush()

    path = os.fspath(path)
    atomic_write(path, build, pass_path=True)
    return path


def read_file_provenance(path) -> dict:
    """The provenance record of a parameter file (``{}`` if it was written without one)."""
    from lattice.io import read_provenance
    with _open(path) as f:
        return read_provenance(f)


def _open(path):
    import h5py
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ParamFileError(f"parameter file {path!r} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ParamFileError(f"cannot read {path!r} as HDF5: {exc}") from exc
    fmt = f.attrs.get("format")
    if fmt != FORMAT:
        f.close()
        raise ParamFileError(f"{path!r} is not a gaugeflow parameter file (format attribute {fmt!r}, "
                             f"expected {FORMAT!r})")
    v = int(f.attrs.get("version", -1))
    if v > VERSION:
        f.close()
        raise ParamFileError(f"{path!r} has format version {v}, newer than this code ({VERSION})")
    return f


def _read_group(f, name, xp, path):
    if name not in f:
        raise ParamFileError(f"{path!r} has no group {name!r} (groups: {json.loads(f.attrs['groups'])})")
    g = f[name]
    order = json.loads(g.attrs["order"]) if "order" in g.attrs else sorted(g.keys())
    return {k: from_host(g[k][()], xp) for k in order}


def read_config(path) -> dict:
    """The configuration dict stored in ``path``."""
    with _open(path) as f:
        return json.loads(f.attrs["config"])


def check_params(params, template, what: str = "parameters"):
    """Raise :class:`ParamFileError` unless ``params`` has exactly the keys of ``template``
    with the same shapes. ``template`` maps keys to arrays or to shape tuples."""
    def shape_of(v):
        return tuple(int(n) for n in (v.shape if hasattr(v, "shape") else v))
    missing = [k for k in template if k not in params]
    extra = [k for k in params if k not in template]
    if missing or extra:
        msg = []
        if missing:
            msg.append(f"missing keys {missing}")
        if extra:
            msg.append(f"unexpected keys {extra}")
        raise ParamFileError(f"{what} do not match the model: " + "; ".join(msg))
    for k, t in template.items():
        if shape_of(params[k]) != shape_of(t):
            raise ParamFileError(f"{what}: key {k!r} has shape {shape_of(params[k])}, the model expects "
                                 f"{shape_of(t)}")
    return params


def load_params(path, template=None, *, xp=None):
    """Read ``(params, config)`` from ``path``; validate against ``template`` if given.

    Arrays come back in namespace ``xp`` (default NumPy) with their stored dtypes.
    """
    with _open(path) as f:
        params = _read_group(f, "params", xp, os.fspath(path))
        config = json.loads(f.attrs["config"])
    if template is not None:
        check_params(params, template, what=f"parameters in {os.fspath(path)!r}")
    return params, config


def load_group(path, name, *, xp=None):
    """Read a further flat dict of arrays (e.g. an optimiser state) stored with ``groups=``."""
    with _open(path) as f:
        return _read_group(f, name, xp, os.fspath(path))
