"""Provenance: what every output file records about how it was made.

:func:`provenance` returns a flat ``dict`` of strings and integers:

=====================  ==============================================================
``code``               ``"gaugeflow"``
``version``            the installed distribution's version (package metadata), else
                       the ``version`` in the source tree's ``pyproject.toml``
``git_commit``         ``HEAD`` of the source checkout (``""`` if not a git checkout),
                       with ``git_dirty`` = 1 when tracked files are modified
``command``            the command line (``sys.argv``, shell-quoted)
``time_utc``           ISO 8601 UTC time, e.g. ``2025-01-31T12:00:00+00:00``
``host``               host name
``python``/``numpy``/``h5py``  versions (``h5py`` is ``""`` when not importable)
``platform``           ``platform.platform()``
``mpi_ranks``          number of MPI ranks of the job (1 without MPI)
``conventions_version`` identifier of the conventions below (:data:`CONVENTIONS_VERSION`)
``conventions``        the project conventions (docs/design.md §3-§6) as text
=====================  ==============================================================

:func:`write_provenance` stores it as attributes ``provenance.<key>`` of any HDF5 object
(file, group or dataset); :func:`read_provenance` reads them back.

The conventions identifier is compared when files are opened (a file written under other
conventions is refused); bump :data:`CONVENTIONS_VERSION` whenever a convention changes.
"""
from __future__ import annotations

import datetime as _dt
import functools
import platform
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["CONVENTIONS_VERSION", "CONVENTIONS", "conventions_text", "provenance",
           "write_provenance", "read_provenance", "code_version", "git_commit", "PREFIX"]

PREFIX = "provenance."

CONVENTIONS_VERSION = "gaugeflow-conventions-1"

#: The project conventions, one entry per topic (docs/design.md §3-§6).
CONVENTIONS = {
    "arrays": ("gauge field U[..., mu, x_0, ..., x_{Nd-1}, a, b], shape (*batch, Nd, L_0, ..., "
               "L_{Nd-1}, N, N), complex128; U_mu(x) is the link from x to x + mu^; direction mu "
               "is lattice axis mu; time is the LAST axis (mu = Nd-1), e.g. 12^3x24 -> (12, 12, 12, 24); "
               "spinor psi[..., x_0, ..., x_{Nd-1}, spin, colour], shape (*batch, L..., 4, N); "
               "shift(F, mu, +1)[x] = F[x + mu^], periodic"),
    "group": ("su(N) = traceless anti-Hermitian matrices; <A, B> = -2 tr(AB); generators "
              "T^a = i lambda^a / 2 orthonormal; gauge transformation U_mu(x) -> Omega(x) U_mu(x) "
              "Omega(x + mu^)^dag, psi(x) -> Omega(x) psi(x)"),
    "force": ("force grad S in su(N) with d/dt S(exp(tX) U)|_0 = sum_{x,mu} <grad S_mu(x), X_mu(x)>; "
              "complex cotangents dL/dRe z + i dL/dIm z; grad S = -1/4 T[U G^dag - G U^dag] "
              "(T = traceless part), G = 2 F U conversely; HMC H = 1/2 sum <P, P> + S, dU/dt = P U, "
              "dP/dt = -grad S"),
    "plaquette": ("P_mu,nu(x) = U_mu(x) U_nu(x+mu^) U_mu(x+nu^)^dag U_nu(x)^dag; plaquette "
                  "observable = average of (1/N) Re tr P_mu,nu over sites and the Nd(Nd-1)/2 planes"),
    "actions": ("Wilson S = -(beta/N) sum_x sum_{mu<nu} Re tr P_mu,nu; Luscher-Weisz adds 2x1 "
                "rectangles (all mu != nu) with c1 = -1/12, c0 = 1 - 8 c1; no constant terms; "
                "Feynman-Hellmann O = -(beta/N) sum_x Re tr(sum_i P_it - sum_{i<j} P_ij), "
                "S_lambda = S + lambda O"),
    "fermions": ("twisted-mass Wilson, hopping normalisation (tmLQCD): M = 1 + i mu~ gamma_5 - kappa H, "
                 "mu~ = 2 kappa mu, (H psi)(x) = sum_mu [(1 - gamma_mu) U_mu(x) psi(x+mu^) + "
                 "(1 + gamma_mu) U_mu(x-mu^)^dag psi(x-mu^)], antiperiodic in time"),
    "gamma_basis": ("chiral basis of tmLQCD, gamma_5 = gamma_t gamma_x gamma_y gamma_z = diag(1, 1, -1, -1); "
                    "gamma_0, gamma_1, gamma_2 (x, y, z) are tmLQCD's gamma_1, gamma_2, gamma_3 and gamma_3 "
                    "(t, the last axis) is tmLQCD's gamma_0 (fermions.gamma)"),
}


def conventions_text() -> str:
    """The conventions as one text block (``topic: text`` lines)."""
    return "\n".join(f"{k}: {v}" for k, v in CONVENTIONS.items())


def _source_root() -> Path | None:
    """The source tree that holds this package, if it is a gaugeflow checkout."""
    root = Path(__file__).resolve().parents[2]
    pp = root / "pyproject.toml"
    try:
        if pp.is_file() and re.search(r'^name\s*=\s*"gaugeflow"', pp.read_text(), re.M):
            return root
    except OSError:  # pragma: no cover
        pass
    return None


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """gaugeflow's version from package metadata, else from the source ``pyproject.toml``."""
    try:
        from importlib.metadata import version, PackageNotFoundError
        try:
            return version("gaugeflow")
        except PackageNotFoundError:
            pass
    except ImportError:  # pragma: no cover
        pass
    root = _source_root()
    if root is not None:
        m = re.search(r'^version\s*=\s*"([^"]+)"', (root / "pyproject.toml").read_text(), re.M)
        if m:
            return m.group(1)
    return "unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> tuple[str, int]:
    """``(commit, dirty)`` of the source checkout; ``("", 0)`` when not a git checkout."""
    root = _source_root()
    if root is None:
        return "", 0
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "", 0
        st = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10)
        return head.stdout.strip(), int(bool(st.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        return "", 0


def _h5py_version() -> str:
    try:
        import h5py
        return h5py.__version__
    except ImportError:  # pragma: no cover
        return ""


def provenance(mpi_ranks: int | None = None, layout=None, extra: dict | None = None) -> dict:
    """The provenance record of this process (see the module docstring).

    ``mpi_ranks`` defaults to the size of ``layout``'s communicator (1 without MPI).
    ``extra`` entries (str/int/float) are added under their own names.
    """
    import numpy as np
    if mpi_ranks is None:
        mpi_ranks = 1 if layout is None else int(getattr(layout, "size", 1))
    commit, dirty = git_commit()
    out = {
        "code": "gaugeflow",
        "version": code_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "command": shlex.join(sys.argv) if sys.argv else "",
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "h5py": _h5py_version(),
        "platform": platform.platform(),
        "mpi_ranks": int(mpi_ranks),
        "conventions_version": CONVENTIONS_VERSION,
        "conventions": conventions_text(),
    }
    if extra:
        for k, v in extra.items():
            if not isinstance(v, (str, int, float)):
                raise TypeError(f"provenance extra {k!r} must be str, int or float, got {type(v).__name__}")
            out[k] = v
    return out


def write_provenance(obj, prov: dict | None = None, prefix: str = PREFIX, **kw) -> dict:
    """Store ``prov`` (default: :func:`provenance` ``(**kw)``) as attributes
    ``<prefix><key>`` of the HDF5 object ``obj`` (h5py File, Group or Dataset)."""
    prov = provenance(**kw) if prov is None else prov
    for k, v in prov.items():
        obj.attrs[prefix + k] = v
    return prov


def read_provenance(obj, prefix: str = PREFIX) -> dict:
    """The provenance attributes of an HDF5 object (prefix stripped)."""
    out = {}
    for k, v in obj.attrs.items():
        if k.startswith(prefix):
            out[k[len(prefix):]] = v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)
    return out
