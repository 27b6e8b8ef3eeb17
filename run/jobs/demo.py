"""`gaugeflow demo`: the toy-scale workflow (for now: pure-gauge HMC with the plaquette)."""
from __future__ import annotations

from ..context import JobContext
from . import hmc

__all__ = ["run"]


def run(ctx: JobContext):
    path = hmc.run(ctx)
    ctx.say(f"ensemble written to {path}")
