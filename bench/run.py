"""Run all benchmarks, print a table and write bench/results.json.

Each ``bench/bench_<topic>.py`` exposes ``run(quick: bool) -> list[dict]``; every record has
at least ``name`` and ``seconds`` and, where it makes sense, ``ratio`` to a reference measured
in the same run together with a ``reference`` that says what the ratio is against.
Every record also carries ``threads``, the BLAS/OpenMP/Numba thread count the run was limited
to (``--threads``, default 1, set through :func:`lattice.threads.set_threads`).
Usage: ``python -m bench.run [--quick] [--threads N] [topic ...]``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import platform
import sys
import time
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("topics", nargs="*", help="bench modules to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes, for smoke tests")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS/OpenMP/Numba threads (default 1, as make exports; 0 = the libraries' defaults)")
    a = ap.parse_args(argv)
    from lattice.threads import set_threads
    threads = set_threads(a.threads)
    print(f"threads: {threads['threads']} ({', '.join(p['library'] or '?' for p in threads['pools'])})")
    here = Path(__file__).parent
    mods = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    topics = a.topics or mods
    results = {"platform": platform.platform(), "python": platform.python_version(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "threads": threads, "records": []}
    for t in topics:
        mod = importlib.import_module(f"bench.bench_{t}")
        t0 = time.perf_counter()
        recs = mod.run(quick=a.quick)
        for r in recs:
            r.setdefault("topic", t)
            r.setdefault("threads", threads["threads"])
        results["records"].extend(recs)
        print(f"\n== {t} ({time.perf_counter() - t0:.1f} s)")
        for r in recs:
            extra = "  ".join(f"{k}={_fmt(v)}" for k, v in r.items() if k not in ("name", "topic", "seconds"))
            print(f"  {r['name']:<44s} {r.get('seconds', float('nan')):10.4g} s  {extra}")
    Path(a.out).write_text(json.dumps(results, indent=1))
    print(f"\nwrote {a.out}")
    failed = [r["name"] for r in results["records"] if "error" in r]
    if failed:
        print(f"{len(failed)} benchmark section(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _fmt(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
