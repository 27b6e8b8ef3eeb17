"""What every job needs: the validated config, the output directory, the layout (with the
MPI communicator when launched under mpirun), the array namespace, and a logger that writes
`<output>/gaugeflow.log` and the console on rank 0 only."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import lattice as L
from lattice.actions import Wilson, LuscherWeisz

from lattice.io import atomic_write

from .config import ConfigError, dump_toml
from .parallel import world, install_abort_on_error

__all__ = ["JobContext", "make_context", "make_action", "sub_context", "file_digest", "check_layout", "job_layout"]


@dataclass
class JobContext:
    cfg: dict
    out: Path
    layout: L.Layout
    xp: object
    log: logging.Logger
    comm: object = None
    lock: object = None

    def release(self):
        """Release the output directory's lock (rank 0; no collective call)."""
        if self.lock is not None:
            self.lock.release()

    @property
    def root(self) -> bool:
        return self.layout.rank == 0

    @property
    def progress(self) -> bool:
        return bool(self.cfg["job"]["progress"]) and self.root

    def path(self, name: str) -> Path:
        return self.out / name

    def say(self, msg: str):
        """Print on rank 0 (and log)."""
        self.log.info(msg)

    def record_timing(self, stage: str, seconds: float, n_configs: int, lattice=None):
        """Append a stage's wall time to `<output>/timings.json` (for the cost model)."""
        if not self.root:
            return
        import json
        from lattice.io import atomic_write
        p = self.path("timings.json")
        data = json.loads(p.read_text()) if p.exists() else {}
        from lattice.threads import thread_record
        data[stage] = {"seconds": float(seconds), "n_configs": int(n_configs),
                       "lattice": list(lattice or self.layout.global_shape), "ranks": self.layout.size,
                       "threads": thread_record()["threads"]}
        atomic_write(p, json.dumps(data, indent=1).encode())


def file_digest(path) -> str:
    """SHA-256 of a file's bytes (hex), to tie derived files to the exact file they came from."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_action(cfg: dict, lam: float | None = None):
    a = cfg["action"]
    lam = cfg["hmc"]["lam"] if lam is None else lam
    if a["type"] == "wilson":
        return Wilson(a["beta"], lam=lam)
    return LuscherWeisz(a["beta"], lam=lam, c1=a["c1"])


def _logger(out: Path, root: bool) -> logging.Logger:
    log = logging.getLogger("gaugeflow")
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    log.gaugeflow_logfile = str(out / "gaugeflow.log")    # for errors on ranks without a handler
    if root:
        out.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(out / "gaugeflow.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
        ch = logging.StreamHandler(sys.stdout)
        ch.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(ch)
    else:
        log.addHandler(logging.NullHandler())
    return log


def check_layout(cfg: dict, command: str, layout: L.Layout, source: str = "config") -> None:
    """The checks of :func:`run.config.check_command` that depend on the decomposition: the
    local extents of an even-odd lattice (local L_0 even) and of a flow's masks (even)."""
    from .config import _stage_needs
    needs = _stage_needs(cfg, command)
    for key, shape in needs["evenodd"]:
        if tuple(shape) == tuple(layout.global_shape) and layout.is_distributed:
            from fermions import EvenOddError, EvenOdd
            try:
                EvenOdd(layout)
            except EvenOddError as exc:
                raise ConfigError(f"{source}: {key} = {list(shape)} on {layout.size} ranks: {exc}") from exc
    for key, shape in needs["flow"]:
        if tuple(shape) == tuple(layout.global_shape) and any(n % 2 for n in layout.local_shape):
            raise ConfigError(f"{source}: {key} = {list(shape)} on {layout.size} ranks (grid {layout.grid}) gives "
                              f"local extents {layout.local_shape}; the flow's masks need even local extents: "
                              f"use another rank count")


def job_layout(cfg: dict, command: str, shape=None, comm=None) -> L.Layout:
    """The job's layout, with the checks that depend on the decomposition (:func:`check_layout`);
    a ConfigError is raised identically on every rank (and marked so)."""
    from lattice.io._parallel import mark_all_ranks
    shape = tuple(shape if shape is not None else cfg["lattice"]["shape"])
    try:   # decided identically on every rank: each reports it and returns (no abort needed)
        try:
            layout = L.Layout(shape, comm=comm)
        except L.LayoutError as exc:
            raise ConfigError(str(exc)) from exc
        check_layout(cfg, command, layout, source=cfg.get("_source", "config"))
    except ConfigError as exc:
        raise mark_all_ranks(exc)
    return layout


def make_context(cfg: dict, command: str, shape=None, comm=False) -> JobContext:
    """The job's context. Validation first (layout, decomposition); then, on rank 0, the
    exclusive lock on the output directory (:class:`run.lock.OutputLock`), the log and
    ``<command>.config.toml``: a refused job writes nothing. Call :meth:`JobContext.release`
    at the end (the command line does)."""
    from lattice.io import on_root
    from .lock import OutputLock
    if comm is False:
        comm = world()
        install_abort_on_error(comm)
    out = Path(cfg["job"]["output"])
    xp = L.get_namespace(cfg["job"]["backend"])
    from lattice.threads import set_threads
    from lattice.layout import set_device_buffers
    threads = set_threads(cfg["job"].get("threads", 1))
    on_device = set_device_buffers(cfg["job"].get("mpi_device_buffers", "auto"))
    shape = tuple(shape if shape is not None else cfg["lattice"]["shape"])
    layout = job_layout(cfg, command, shape, comm)
    root = layout.rank == 0
    lock = OutputLock(out, command)
    on_root(layout, lock.acquire)
    try:
        log = on_root(layout, _logger, out, True)
        if not root:
            log = _logger(out, False)
        if root:
            if lock.took_over:
                log.info(f"took over the stale lock of pid {lock.took_over.get('pid')} on host "
                         f"{lock.took_over.get('host')} (that job is gone)")
            log.info(f"gaugeflow {command}: config {cfg.get('_source', '?')}, output {out}/, lattice {shape}, "
                     f"{layout.size} rank(s), grid {layout.grid}, backend {cfg['job']['backend']}, "
                     f"{threads['threads']} thread(s) per rank "
                     f"({', '.join(p['library'] or '?' for p in threads['pools']) or 'no BLAS pool'})"
                     + (f", halo exchange with {'device' if on_device else 'host'} buffers"
                        if cfg["job"]["backend"] == "cupy" and layout.size > 1 else ""))
        on_root(layout, lambda: atomic_write(out / f"{command}.config.toml", dump_toml(cfg).encode()))
    except BaseException:
        lock.release()
        raise
    return JobContext(cfg=cfg, out=out, layout=layout, xp=xp, log=log, comm=comm, lock=lock)


def sub_context(ctx: JobContext, shape) -> JobContext:
    """The same job on another lattice (e.g. the small training volume): same output, logger,
    communicator; a layout for ``shape``."""
    import copy
    cfg = copy.deepcopy(ctx.cfg)
    cfg["lattice"]["shape"] = list(shape)
    try:
        layout = L.Layout(tuple(shape), comm=ctx.comm)
    except L.LayoutError as exc:
        raise ConfigError(str(exc)) from exc
    return JobContext(cfg=cfg, out=ctx.out, layout=layout, xp=ctx.xp, log=ctx.log, comm=ctx.comm)  # lock: ctx's
