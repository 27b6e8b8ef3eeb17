"""lattice.threads and job.threads: the thread count is set explicitly and recorded."""
import pytest

from lattice.threads import set_threads, thread_record


def test_set_threads_limits_every_pool_and_zero_restores():
    try:
        rec = set_threads(1)
        assert rec["threads"] == 1 and rec["pools"]
        assert all(p["threads"] == 1 for p in rec["pools"])
        assert thread_record()["threads"] == 1
    finally:
        set_threads(1)
    with pytest.raises(ValueError, match=">= 0"):
        set_threads(-2)


def test_job_threads_is_validated_and_logged(tmp_path):
    from run.config import load_config, ConfigError
    cfg = load_config("demo", overrides=[f"job.output={tmp_path / 'o'}", "job.threads=1"])
    assert cfg["job"]["threads"] == 1
    with pytest.raises(ConfigError, match="threads"):
        load_config("demo", overrides=["job.threads=-1"])
    from run.context import make_context
    ctx = make_context(cfg, "hmc", comm=None)
    try:
        ctx.record_timing("hmc", 1.0, 1)
    finally:
        ctx.release()
    assert "1 thread(s) per rank" in (tmp_path / "o" / "gaugeflow.log").read_text()
    import json
    assert json.loads((tmp_path / "o" / "timings.json").read_text())["hmc"]["threads"] == 1
