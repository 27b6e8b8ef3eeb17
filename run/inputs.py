"""Input checks of the jobs, made before a job writes anything.

A job module may define ``check_inputs(cfg)`` (``check_inputs(cfg, files)`` for `import`): the
command line (:func:`run.cli.main`) calls it after the configuration is validated and before
the job's context exists -- before the output directory, its lock, ``<command>.config.toml``
or ``gaugeflow.log`` are created -- so that a job refused for a missing or mismatched input
writes nothing (README, "One job per directory"). Under MPI the check runs on rank 0 and its
error is raised on every rank (:func:`run_checks`). The jobs call the same checks again when
they start (cheap), so that a stage run from Python or inside `demo` behaves alike.

An error may carry a ``hint`` attribute, the "what to do" that the command line prints after
`` -- `` (:func:`with_hint`); errors without one get the generic hint of their type
(``run.cli._hint``).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["with_hint", "missing_input", "output_path", "ensemble_name", "require_file", "require_ensemble",
           "run_checks"]


def with_hint(exc: BaseException, hint: str) -> BaseException:
    """``exc`` with the attribute ``hint`` (what to do; printed by the command line after `` -- ``)."""
    exc.hint = hint
    return exc


def missing_input(path, what: str, hint: str, detail: str = "") -> FileNotFoundError:
    """The error for a required input file that is not there: ``no <what> <path> (<detail>)``
    with ``hint``."""
    return with_hint(FileNotFoundError(f"no {what} {path}" + (f" ({detail})" if detail else "")), hint)


def output_path(cfg: dict, name: str) -> Path:
    """``<job.output>/<name>`` (what ``JobContext.path`` gives, without a context)."""
    return Path(cfg["job"]["output"]) / name


def ensemble_name(lam: float) -> str:
    """File name of the ensemble at coupling ``lam`` (``ensemble.h5`` for lambda = 0)."""
    return "ensemble.h5" if lam == 0 else f"ensemble_lam{lam:g}.h5"


def require_file(cfg: dict, name: str, what: str, hint: str, detail: str = "") -> Path:
    """``<job.output>/<name>``; a FileNotFoundError with ``hint`` if it does not exist."""
    p = output_path(cfg, name)
    if not p.is_file():
        if p.exists():
            raise with_hint(IsADirectoryError(f"{what} {p} is a directory, not a file"),
                            "move it away, or check job.output (--output)")
        raise missing_input(p, what, hint, detail)
    return p


def require_ensemble(cfg: dict, lam: float, stage: str) -> Path:
    """The lambda ensemble a stage reads: it must exist (hint: run `hmc` or `import` first, or
    check job.output) and hold the config's lattice and action (else MismatchError)."""
    import lattice as L
    from lattice.io import EnsembleStore
    from .context import make_action
    p = require_file(cfg, ensemble_name(lam), "ensemble",
                     "run `gaugeflow hmc` (or `gaugeflow import`) with this config first, or check job.output "
                     "(--output)", detail=f"lambda = {lam:g}, the input of `{stage}`")
    with EnsembleStore.open(p, "r", layout=L.Layout(tuple(cfg["lattice"]["shape"])),
                            expect={"action": make_action(cfg, lam).params()}):
        pass
    return p


class _Comm:
    """The part of a Layout that :func:`lattice.io.on_root` needs, for a bare communicator."""

    def __init__(self, comm):
        self.comm = comm
        self.is_distributed = comm is not None and comm.Get_size() > 1


def run_checks(comm, fn, *args) -> None:
    """``fn(*args)`` on rank 0; its error is raised on every rank (marked as such)."""
    from lattice.io import on_root
    on_root(_Comm(comm), fn, *args)
