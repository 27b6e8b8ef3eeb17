"""The runner keeps its compute on the job's array backend (issue 14: the whole runner on the
device, host copies only for I/O). Run with ``job.backend = "array_api_strict"``, whose arrays
refuse any mixing with NumPy arrays and any NumPy-only call, every stage of the Nf = 2 workflow
(HMC with the fermion determinant, gauge-flow and pseudofermion-flow training, evaluation with
determinant ratios, measurement) completes, so no stage builds start fields, momenta,
pseudofermions, flow parameters or base samples on the host."""
import importlib

import pytest

pytest.importorskip("array_api_strict")


def test_nf2_workflow_runs_on_a_non_numpy_backend(tmp_path):
    from run.config import load_config
    from run.context import make_context
    ov = [f'job.output="{tmp_path / "o"}"', 'job.backend="array_api_strict"', "job.progress=false",
          "lattice.shape=[4,2,2,4]", "hmc.n_traj=4", "hmc.n_therm=1", "hmc.n_steps=2", "hmc.n_steps_gauge=1",
          "train.steps=1", "train.shape=[4,2,2,4]", 'flow.masks=["M2","M2"]', "train.exact_fermions=false",
          'train.init="identity"', "train.holdout=0.5", "pf_flow.n_layers=2", "pf_flow.steps=1",
          "pf_flow.n_shots=2", "pf_flow.holdout=0.5", "evaluate.n_shots=2", "measure.n_sources=1"]
    for cmd in ("hmc", "train", "evaluate", "measure"):
        cfg = load_config("nf2-fh-small", ov, command=cmd)
        assert cfg["job"]["backend"] == "array_api_strict"
        ctx = make_context(cfg, cmd, comm=None)
        try:
            importlib.import_module(f"run.jobs.{cmd}").run(ctx)
        finally:
            ctx.release()
    for f in ("ensemble.h5", "flow.h5", "pf_flow.h5", "evaluate.h5", "measure.h5"):
        assert (tmp_path / "o" / f).exists(), f
