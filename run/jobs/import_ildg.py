"""`gaugeflow import FILES...`: ILDG/LIME gauge files from other codes (checksums verified)
into `<output>/ensemble.h5`, with the action of the config recorded as metadata."""
from __future__ import annotations

from lattice.io import EnsembleStore, read_ildg

from ..context import JobContext, make_action
from .hmc import ensemble_path

__all__ = ["run"]


def run(ctx: JobContext, files):
    cfg = ctx.cfg
    shape, N = tuple(cfg["lattice"]["shape"]), cfg["lattice"]["N"]
    path = ensemble_path(ctx)
    with EnsembleStore.open_or_create(path, lattice_shape=shape, N=N, action=make_action(cfg).params(),
                                      meta={"imported": True}, layout=ctx.layout) as ens:
        done = len(ens)
        for i, f in enumerate(files):
            if i < done:
                continue  # resume: already imported
            U = read_ildg(f, shape=shape, layout=ctx.layout)
            ens.append(U, trajectory=i, source=0, state={"file": str(f)})
            ctx.say(f"imported {f} as configuration {i}")
    return path
