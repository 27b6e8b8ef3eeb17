"""I/O under MPI: files written on R ranks equal single-process files; reads give each rank its block.

Run with ``mpiexec -n 2 python -m pytest -m mpi tests/mpi`` (and ``-n 4``). Every test is
collective; results checked on rank 0 are broadcast so that all ranks pass or fail together.
"""
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mpi4py")
from mpi4py import MPI  # noqa: E402

import lattice  # noqa: E402
from lattice.actions import Wilson  # noqa: E402
from lattice.io import (EnsembleStore, write_ildg, read_ildg, lime, ChecksumError, MismatchError,  # noqa: E402
                        CorruptFileError)

pytestmark = pytest.mark.mpi
COMM = MPI.COMM_WORLD
SHAPE = (4, 4, 4, 8)


@pytest.fixture
def shared_dir():
    d = tempfile.mkdtemp(prefix="gaugeflow-io-mpi-") if COMM.rank == 0 else None
    d = COMM.bcast(d, root=0)
    yield Path(d)
    COMM.Barrier()
    if COMM.rank == 0:
        shutil.rmtree(d, ignore_errors=True)


def _all(ok_on_root, what=""):
    """Broadcast rank 0's verdict and assert it on every rank."""
    ok, msg = COMM.bcast(ok_on_root if COMM.rank == 0 else None, root=0)
    assert ok, f"{what}: {msg}"


def _layout():
    return lattice.Layout(SHAPE, comm=COMM)


def _global(k):
    return lattice.random_gauge(SHAPE, seed=40 + k)   # the same on every rank (single-process draw)


def test_layout_is_distributed():
    lay = _layout()
    assert COMM.size == 1 or lay.is_distributed


def test_scatter_field_gives_each_rank_its_block():
    lay = _layout()
    U = _global(0)
    got = lay.scatter_field(U if COMM.rank == 0 else None, inner=2, root=0)
    assert got.shape == (4,) + lay.local_shape + (3, 3)
    assert np.array_equal(got, lay.local_part(U, inner=2))
    q = np.arange(2 * np.prod(SHAPE), dtype=np.int64).reshape((2,) + SHAPE)   # density with a batch axis
    got = lay.scatter_field(q if COMM.rank == 0 else None, inner=0, root=0)
    assert np.array_equal(got, lay.local_part(q, inner=0))
    with pytest.raises(lattice.LayoutError, match="does not fit the lattice"):
        lay.scatter_field(np.zeros((4, 4, 4, 4, 4, 3, 3)) if COMM.rank == 0 else None, inner=2)


def _datasets(path):
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype.str, obj.shape, obj[()].tobytes() if obj.dtype.kind != "O"
                             else repr(obj[()].tolist()))
        f.visititems(visit)
        attrs = {k: repr(v) for k, v in f.attrs.items() if not k.startswith("provenance.")}
        sess = {k: {a: repr(v) for a, v in f["sessions"][k].attrs.items() if not a.startswith("provenance.")}
                for k in f["sessions"]}
        ranks = int(f.attrs["provenance.mpi_ranks"])
    return out, attrs, sess, ranks


def _fill(path, layout, n=3):
    with EnsembleStore.create(path, lattice_shape=SHAPE, N=3, action=Wilson(5.9), layout=layout,
                              meta={"seed": 3}) as ens:
        for k in range(n):
            U = _global(k)
            Uloc = U if layout is None else layout.local_part(U, inner=2)
            ens.append(Uloc, trajectory=k, plaquette=lattice.plaquette(Uloc, layout=layout), accepted=True,
                       dH=0.25 * k, state={"calls": k})


def test_ensemble_files_identical_to_single_process(shared_dir):
    lay = _layout()
    par, ser = shared_dir / "par.h5", shared_dir / "ser.h5"
    _fill(par, lay)
    if COMM.rank == 0:
        _fill(ser, None)
    COMM.Barrier()
    verdict = None
    if COMM.rank == 0:
        dp, ap, sp, rp = _datasets(par)
        ds, as_, ss, rs = _datasets(ser)
        verdict = (dp == ds and ap == as_ and sp == ss and rp == COMM.size and rs == 1,
                   f"datasets {sorted(dp)} vs {sorted(ds)}, ranks {rp}/{rs}, "
                   f"differing: {[k for k in dp if dp.get(k) != ds.get(k)]}")
    _all(verdict, "MPI ensemble file differs from the single-process one")


def test_ensemble_read_gives_blocks_and_metadata_everywhere(shared_dir):
    lay = _layout()
    p = shared_dir / "e.h5"
    _fill(p, lay)
    with EnsembleStore.open(p, "a", layout=lay, expect={"meta": {"seed": 3}}) as ens:
        assert ens.n == 3 and ens.lattice_shape == SHAPE
        for k in range(3):
            assert np.array_equal(ens.read(k), lay.local_part(_global(k), inner=2))
        rec = ens.last()
        assert rec.index == 2 and rec.state == {"calls": 2} and rec.scalars["trajectory"] == 2
        assert np.array_equal(rec.U, lay.local_part(_global(2), inner=2))
        assert list(ens.scalars()["dH"]) == [0.0, 0.25, 0.5]
        assert ens.provenance["mpi_ranks"] == COMM.size
        # append after reopening continues the ensemble on every rank
        assert ens.append(lay.local_part(_global(3), inner=2), trajectory=3, plaquette=0.0, accepted=False,
                          dH=0.0, state=None) == 3
        assert ens.n == 4


def test_ensemble_errors_reach_all_ranks(shared_dir):
    lay = _layout()
    p = shared_dir / "e.h5"
    _fill(p, lay, n=1)
    with pytest.raises(MismatchError, match="'action.beta' differs"):
        EnsembleStore.open(p, layout=lay, expect={"action": Wilson(6.0).params()})
    with pytest.raises(MismatchError, match="lattice size mismatch"):
        EnsembleStore.open(p, layout=lattice.Layout((4, 4, 8, 8), comm=COMM))
    with EnsembleStore.open(p, "a", layout=lay) as ens:
        U = lay.local_part(_global(5), inner=2).copy()
        if COMM.rank == COMM.size - 1:
            U[0, 0, 0, 0, 0] *= 3.0            # broken on one rank only
        with pytest.raises(lattice.InvalidGaugeField):
            ens.append(U, trajectory=1, plaquette=0.0, accepted=True, dH=0.0)
        assert ens.n == 1


def _records(path):
    return [(r.type, lime.read_data(path, r)) for r in lime.scan(path)]


@pytest.mark.parametrize("precision", [64, 32])
def test_ildg_identical_to_single_process_and_read_blocks(shared_dir, precision):
    lay = _layout()
    U = _global(7)
    par, ser = shared_dir / "par.lime", shared_dir / "ser.lime"
    write_ildg(par, lay.local_part(U, inner=2), precision=precision, layout=lay, lfn="lfn://x")
    if COMM.rank == 0:
        write_ildg(ser, U, precision=precision, lfn="lfn://x")
    COMM.Barrier()
    verdict = None
    if COMM.rank == 0:
        rp, rs = _records(par), _records(ser)
        skip = ("scidac-file-xml", "scidac-private-record-xml")   # time stamps, host, rank count
        same = [a == b for a, b in zip(rp, rs) if a[0] not in skip]
        verdict = ([t for t, _ in rp] == [t for t, _ in rs] and all(same) and len(same) == 6,
                   f"records {[t for t, _ in rp]} vs {[t for t, _ in rs]}: equal {same}")
    _all(verdict, "MPI ILDG file differs from the single-process one")
    ref = U if precision == 64 else U.astype(np.complex64).astype(np.complex128)
    got = read_ildg(par, layout=lay)
    assert np.array_equal(got, lay.local_part(ref, inner=2))


def test_ildg_errors_reach_all_ranks(shared_dir):
    lay = _layout()
    p = shared_dir / "c.lime"
    write_ildg(p, lay.local_part(_global(1), inner=2), layout=lay)
    with pytest.raises(MismatchError, match="lattice size mismatch"):
        read_ildg(p, layout=lattice.Layout((4, 4, 8, 8), comm=COMM))
    if COMM.rank == 0:
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        p.write_bytes(bytes(raw))
    COMM.Barrier()
    with pytest.raises(ChecksumError, match="scidac-checksum mismatch"):
        read_ildg(p, layout=lay)
    with pytest.raises(FileNotFoundError):
        read_ildg(shared_dir / "missing.lime", layout=lay)
    if COMM.rank == 0:
        p.write_bytes(b"\0" * 1000)
    COMM.Barrier()
    with pytest.raises(CorruptFileError, match="bad LIME magic"):
        read_ildg(p, layout=lay)
