"""Numba's on-disk kernel cache under concurrent processes (lattice.kernels._numba_cache).

Without locks, processes that save different entries of one cache index at the same moment
(MPI ranks compiling two closures of one factory) can leave an index that maps one kernel to
another's code; later processes then load the wrong kernel silently. The locked cache must
give every process the right kernel."""
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

numba = pytest.importorskip("numba")
fcntl = pytest.importorskip("fcntl")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KERNELS = textwrap.dedent("""
    import numba
    def make(c):
        @numba.jit(nopython=True, cache=True)
        def f(x):
            s = 0.0
            for i in range(x.shape[0]):
                s += x[i] * c
            return s
        return f
    FS = [make(float(c)) for c in range(1, 9)]
""")

WORKER = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    import lattice.kernels._numba          # installs the cache locks, as every gaugeflow process does
    import kern
    which, t0 = int(sys.argv[3]), float(sys.argv[4])
    todo = range(8) if which < 0 else [which]
    while time.time() < t0:
        pass
    wrong = [i for i in todo if kern.FS[i](np.ones(4)) != 4.0 * (i + 1)]
    print(len(wrong))
""")


def test_concurrent_compiles_leave_a_cache_that_loads_the_right_kernels(tmp_path):
    """8 processes compile 8 closures of one factory at the same instant (each a different
    one), then a fresh process loads all 8 from the cache: every one must be right. (Numba
    0.68 without the locks: a wrong kernel in 3 of 15 and 9 of 15 such trials.)"""
    (tmp_path / "kern.py").write_text(KERNELS)
    (tmp_path / "worker.py").write_text(WORKER)
    py = sys.executable
    for trial in range(3):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / f"cache{trial}"))
        t0 = time.time() + 3.0
        procs = [subprocess.Popen([py, str(tmp_path / "worker.py"), str(tmp_path), ROOT, str(w), str(t0)],
                                  env=env, stdout=subprocess.PIPE, text=True) for w in range(8)]
        for p in procs:
            assert p.wait(timeout=120) == 0
        out = subprocess.run([py, str(tmp_path / "worker.py"), str(tmp_path), ROOT, "-1", "0"], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "0", f"trial {trial}: {out.stdout.strip()} kernels loaded from the cache were wrong"


def test_a_save_excludes_loads_and_saves_of_the_same_index(tmp_path):
    """The lock of one index: while a save holds it, a load waits; loads share it."""
    from lattice.kernels import _numba_cache as nc
    assert nc.install()

    class Owner:
        _index_path = str(tmp_path / "f.nbi")
    fd = nc._acquire(Owner, exclusive=True)
    got = []
    t = threading.Thread(target=lambda: got.append(nc._acquire(Owner, exclusive=False)))
    t.start()
    time.sleep(0.3)
    assert not got                        # the load waits for the save
    os.close(fd)
    t.join(timeout=10)
    assert got
    fd2 = nc._acquire(Owner, exclusive=False)     # two loads at once
    os.close(got[0])
    os.close(fd2)
