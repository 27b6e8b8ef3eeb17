"""`make bench` keeps running: every quick benchmark topic (except the two slow ones, which
the full `make bench` covers) runs in a fresh process, writes its records with the fields
bench/run.py promises, and the A/B training steps compare equal losses."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLOW = {"correlated", "pf_flow"}          # 2 and 1.5 minutes even with --quick


def test_quick_benchmarks_run(tmp_path):
    topics = sorted(p.stem[len("bench_"):] for p in (ROOT / "bench").glob("bench_*.py"))
    topics = [t for t in topics if t not in SLOW]
    out = tmp_path / "results.json"
    r = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(out), *topics], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    recs = json.loads(out.read_text())["records"]
    assert {rec["topic"] for rec in recs} == set(topics)
    for rec in recs:
        assert isinstance(rec["name"], str) and rec["threads"] == 1
        assert rec["seconds"] >= 0
    steps = [rec for rec in recs if rec["topic"] == "kernels" and "train step" in rec["name"]]
    assert len(steps) == 2
    for rec in steps:                     # today's step and the previous code compute the same loss
        assert rec["loss_diff"] < 1e-10, rec


def test_the_demo_r_record_reads_a_results_json_with_and_without_a_flow_estimate(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    from bench.bench_correlated import demo_r
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "demo").mkdir(parents=True)
    res = tmp_path / "out" / "demo" / "results.json"
    res.write_text(json.dumps({"flow_estimate": {"made": False, "reason": "no flowed ensemble"},
                               "x_g_eps": [0.1], "ess_identity": 0.5}))
    assert demo_r() == []                 # analyzed without a flowed ensemble: no r to report
    res.write_text(json.dumps({"variance_reduction": [2.0, 4.0], "ess_flow": 0.9, "ess_identity": 0.5}))
    (rec,) = demo_r()
    assert rec["r"] == 3.0 and rec["ess"] == 0.9
