"""I/O throughput: ILDG write/read and HDF5 ensemble append/read of one 12^3x24 SU(3) field.

Reference, measured in the same run on the same file system: ``numpy.tofile`` (to a new
file, no fsync) / ``numpy.fromfile`` of the same bytes (the field as one contiguous
complex128 array). ``ratio`` is our throughput divided by the reference throughput (1 = as
fast as a raw dump); write records also give ``ratio_vs_tofile_fsync`` against a tofile
followed by fsync (our writers fsync, so that is the like-for-like comparison).

What the timed operations include
* ILDG write: transpose to file order + byte swap, SciDAC checksum (vectorised CRC32 per
  site), XML records, atomic write (temporary file, fsync, rename). ``default`` also
  computes the plaquette and link trace for the USQCD record XML; ``raw`` skips that.
* ILDG read: LIME scan, read, checksum verification, transpose back; ``default`` also
  checks SU(3) membership of every link.
* HDF5 append: SU(3) check of the field (``default``; skipped with ``check=False``), CRC32
  of the record, chunked write, flush + fsync, commit, flush + fsync (the resume-safe
  protocol); HDF5 read: CRC32 verification (+ SU(3) check by default).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np


def _best(fn, repeats):
    """Fastest of ``repeats`` calls of ``fn(k)`` (k = repeat index, for fresh file names)."""
    ts = []
    for k in range(repeats):
        t0 = time.perf_counter()
        fn(k)
        ts.append(time.perf_counter() - t0)
    return min(ts)


def run(quick: bool = False) -> list[dict]:
    import lattice
    from lattice.actions import Wilson
    from lattice.io import write_ildg, read_ildg, EnsembleStore
    from lattice.io.checksum import scidac_checksum

    shape = (6, 6, 6, 12) if quick else (12, 12, 12, 24)
    repeats = 2 if quick else 5
    U = lattice.random_gauge(shape, seed=1)
    mb = U.nbytes / 1e6
    d = tempfile.mkdtemp(prefix="gaugeflow-bench-io-")
    lat = "x".join(map(str, shape))
    path = lambda name, k: os.path.join(d, f"{name}.{k}")  # noqa: E731  fresh file per repeat

    def tofile(k, sync=False):
        with open(path("ref", k), "wb") as f:
            U.tofile(f)
            if sync:
                f.flush()
                os.fsync(f.fileno())

    try:
        t_w = _best(tofile, repeats)
        t_ws = _best(lambda k: tofile(100 + k, sync=True), repeats)
        t_r = _best(lambda k: np.fromfile(path("ref", k), dtype=np.complex128), repeats)
        out = []

        def rec(name, t, write):
            r = {"name": f"{name} {lat}", "seconds": t, "MB_per_s": mb / t, "ratio": (t_w if write else t_r) / t,
                 "reference": (f"numpy.tofile of the same {mb:.1f} MB to a new file ({mb / t_w:.0f} MB/s; "
                               f"with fsync {mb / t_ws:.0f} MB/s)") if write else
                              f"numpy.fromfile of the same {mb:.1f} MB ({mb / t_r:.0f} MB/s)"}
            if write:
                r["ratio_vs_tofile_fsync"] = t_ws / t
            out.append(r)

        rec("ILDG write 64-bit (default)", _best(lambda k: write_ildg(path("a", k), U), repeats), True)
        rec("ILDG write 64-bit (raw)", _best(lambda k: write_ildg(path("b", k), U, usqcd_info=False), repeats), True)
        rec("ILDG read 64-bit (default)", _best(lambda k: read_ildg(path("b", k)), repeats), False)
        rec("ILDG read 64-bit (no SU(3) check)", _best(lambda k: read_ildg(path("b", k), check=False), repeats), False)
        rec("ILDG write 32-bit (raw)",
            _best(lambda k: write_ildg(path("c", k), U, precision=32, usqcd_info=False), repeats), True)
        rec("ILDG read 32-bit (no SU(3) check)", _best(lambda k: read_ildg(path("c", k), check=False), repeats), False)
        V = int(np.prod(shape))
        raw = np.ascontiguousarray(U.transpose(4, 3, 2, 1, 0, 5, 6), dtype=">c16").reshape(V, -1).view(np.uint8)
        rec("SciDAC checksum alone (vectorised CRC32/site)", _best(lambda k: scidac_checksum(raw), repeats), True)

        h = os.path.join(d, "e.h5")
        ens = EnsembleStore.create(h, lattice_shape=shape, N=3, action=Wilson(6.0))
        ens.append(U, trajectory=0, plaquette=0.0)                      # warm-up (chunk index, session)
        rec("HDF5 append one config (default)",
            _best(lambda k: ens.append(U, trajectory=1, plaquette=0.0), repeats), True)
        rec("HDF5 append one config (no SU(3) check)",
            _best(lambda k: ens.append(U, trajectory=1, plaquette=0.0, check=False), repeats), True)
        ens.close()
        with EnsembleStore.open(h) as ens:
            rec("HDF5 read one config (default)", _best(lambda k: ens.read(1 + k), repeats), False)
            rec("HDF5 read one config (no SU(3) check)", _best(lambda k: ens.read(1 + k, check=False), repeats), False)
        return out
    finally:
        shutil.rmtree(d, ignore_errors=True)
