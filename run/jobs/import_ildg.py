"""`gaugeflow import CONFIG FILE...`: ILDG/LIME gauge files from other codes (checksums verified)
into `<output>/ensemble.h5`, with the action of the config recorded as metadata. The config
is required (it labels the configurations with their action) and so is at least one file
(:func:`run.cli.split_import_arguments`). Before anything is written every file is checked
(:func:`check_inputs`): it exists, is a LIME/ILDG file, and holds the config's
``lattice.shape``.

Resuming goes by file identity: configuration i records the name and SHA-256 of the file it
came from, and a rerun skips the files already imported only if the list starts with exactly
those files (same names, same bytes); a changed list is refused instead of skipping or
duplicating configurations silently.

Precision: a 32-bit file (or a 64-bit one whose links are off SU(3) by more than the store's
tolerance 1e-10, e.g. rounding drift of another code; at most 1e-5 / 1e-8 is accepted by the
reader) is reunitarised to double precision on import (``lattice.su_n.reunitarize``, the
nearest SU(3) matrix) and the record's state says so: ``precision``, ``reunitarized``
and the unitarity violation found, ``max_violation``. 64-bit files within 1e-10 are stored
bit for bit.

Checksums: a file whose scidac-checksum does not match, or that ends inside a LIME message
with no checksum (cut before it), stops the import (``lattice.io.read_ildg``). A file written
without any checksum (older codes) is imported, its state says ``checksum = "absent"``
(``"verified"`` otherwise) and the log line says UNVERIFIED."""
from __future__ import annotations

import os

from lattice import su_n
from lattice.io import EnsembleStore, read_ildg, read_ildg_info, on_root, MismatchError

from ..context import JobContext, make_action, file_digest
from ..inputs import with_hint
from .hmc import ensemble_path

__all__ = ["run", "STORE_TOL", "check_inputs"]

STORE_TOL = 1e-10        # the ensemble store's SU(N) tolerance on append


def _identity(f) -> dict:
    _identity_checks(f)
    return {"file": os.path.basename(os.fspath(f)), "sha256": file_digest(f)}


def check_inputs(cfg: dict, files) -> None:
    """Every file exists, is an ILDG/LIME file and holds the config's lattice (before anything
    is written); the errors name the file and say what to do."""
    from lattice.io import CorruptFileError
    shape = tuple(cfg["lattice"]["shape"])
    for f in files:
        if not os.path.exists(f):
            raise with_hint(FileNotFoundError(f"ILDG file {f} does not exist"),
                            "check the file names (gaugeflow import CONFIG FILE...)")
        _identity_checks(f)
        try:
            info = read_ildg_info(f)
        except CorruptFileError as exc:
            raise with_hint(exc, "check that the files are ILDG/LIME gauge configurations (and the config comes "
                                 "first: gaugeflow import CONFIG FILE...); restore a damaged file from a copy")
        if tuple(info.lattice_shape) != shape:
            have = list(info.lattice_shape)
            raise with_hint(MismatchError(f"{f} holds a {'x'.join(map(str, have))} lattice (lx ly lz lt), the config's "
                                          f"lattice.shape is {list(shape)}", field="lattice_shape",
                                          found=tuple(have), expected=shape, path=f),
                            f"set lattice.shape = {have} in the config (or --set lattice.shape="
                            f"[{','.join(map(str, have))}]), the files' lattice with time last")


def _identity_checks(f):
    if os.path.isdir(f):
        raise IsADirectoryError(f"{f} is a directory, not an ILDG file: list the files (e.g. {f}/conf.*)")


def _check_list(ens: EnsembleStore, ids: list, files) -> int:
    """Number of leading files already imported; MismatchError if the list changed."""
    done = len(ens)
    for i in range(done):
        st = ens.state(i) or {}
        have = {"file": os.path.basename(str(st.get("file", "?"))), "sha256": st.get("sha256")}
        if i >= len(ids):
            raise with_hint(MismatchError(f"{ens.path} already holds {done} imported configurations, the list gives "
                                          f"only {len(ids)} files", field="files", found=done, expected=len(ids),
                                          path=ens.path),
                            "import the same list (extended at the end), or use another job.output")
        want = ids[i]
        same = have["file"] == want["file"] and (have["sha256"] is None or have["sha256"] == want["sha256"])
        if not same:
            what = "another file" if have["file"] != want["file"] else "the same name with other content"
            raise with_hint(MismatchError(f"{ens.path}: configuration {i} was imported from {have['file']} "
                                          f"(sha256 {str(have['sha256'])[:12]}...), but position {i} of the list is "
                                          f"{files[i]} ({what}): the list changed", field=f"files[{i}]", found=have,
                                          expected=want, path=ens.path),
                            "import the files in the original order (new ones at the end), or use another job.output")
    return done


def _precision_and_checksum(f):
    info = read_ildg_info(f)
    return info.precision, info.checksum is not None


def run(ctx: JobContext, files):
    cfg = ctx.cfg
    shape, N = tuple(cfg["lattice"]["shape"]), cfg["lattice"]["N"]
    path = ensemble_path(ctx)
    ids = [on_root(ctx.layout, _identity, f, bcast_result=True) for f in files]
    with EnsembleStore.open_or_create(path, lattice_shape=shape, N=N, action=make_action(cfg).params(),
                                      meta={"imported": True}, layout=ctx.layout) as ens:
        done = _check_list(ens, ids, files)
        if done:
            ctx.say(f"{path.name}: the first {done} files are in the store already (same names and SHA-256)")
        for i, f in enumerate(files):
            if i < done:
                continue
            prec, has_sum = on_root(ctx.layout, lambda: _precision_and_checksum(f), bcast_result=True)
            U = read_ildg(f, shape=shape, layout=ctx.layout, xp=ctx.xp)
            worst = ctx.layout.allreduce_max(float(ctx.xp.max(su_n.unitarity_violation(U))))
            fix = prec == 32 or worst > STORE_TOL
            if fix:
                U = su_n.reunitarize(U)
            state = dict(ids[i], precision=prec, reunitarized=fix, max_violation=worst,
                         checksum="verified" if has_sum else "absent")
            ens.append(U, trajectory=i, source=0, state=state)
            ctx.say(f"imported {f} as configuration {i}" + (f" ({prec}-bit, reunitarised: max |U^dag U - 1| was "
                                                              f"{worst:.1e})" if fix else "")
                    + ("" if has_sum else " -- UNVERIFIED: the file has no scidac-checksum record"))
    return path
