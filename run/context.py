"""What every job needs: the validated config, the output directory, the layout (with the
MPI communicator when launched under mpirun), the array namespace, and a logger that writes
`<output>/gaugeflow.log` and the console on rank 0 only."""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import lattice as L
from lattice.actions import Wilson, LuscherWeisz

from .config import ConfigError, dump_toml
from .parallel import world, install_abort_on_error

__all__ = ["JobContext", "make_context", "make_action", "sub_context", "file_digest"]


@dataclass
class JobContext:
    cfg: dict
    out: Path
    layout: L.Layout
    xp: object
    log: logging.Logger
    comm: object = None

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
        data[stage] = {"seconds": float(seconds), "n_configs": int(n_configs),
                       "lattice": list(lattice or self.layout.global_shape), "ranks": self.layout.size}
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


def make_context(cfg: dict, command: str, shape=None) -> JobContext:
    comm = world()
    install_abort_on_error(comm)
    out = Path(cfg["job"]["output"])
    xp = L.get_namespace(cfg["job"]["backend"])
    shape = tuple(shape if shape is not None else cfg["lattice"]["shape"])
    try:
        layout = L.Layout(shape, comm=comm)
    except L.LayoutError as exc:
        raise ConfigError(str(exc)) from exc
    root = layout.rank == 0
    log = _logger(out, root)
    if root:
        log.info(f"gaugeflow {command}: config {cfg.get('_source', '?')}, output {out}/, lattice {shape}, "
                 f"{layout.size} rank(s), grid {layout.grid}, backend {cfg['job']['backend']}")
        (out / f"{command}.config.toml").write_text(dump_toml(cfg))
    return JobContext(cfg=cfg, out=out, layout=layout, xp=xp, log=log, comm=comm)


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
    return JobContext(cfg=cfg, out=ctx.out, layout=layout, xp=ctx.xp, log=ctx.log, comm=ctx.comm)
