"""Run the README's Python examples and compare what they print with the README.

Usage (from the repository root; `make docs-check` runs the first form):

    python docs/readme_check.py             # run every example, compare, exit 1 on a difference
    python docs/readme_check.py --update    # rewrite the ```text output blocks from the actual output
    python docs/readme_check.py --list      # list the blocks and what would happen to them
    python docs/readme_check.py --only 3 5  # run some blocks only (numbers as in --list)

Rules:

* Every ```python block of README.md is an example, in order. The first fenced block after it,
  if it is a ```text block (prose may stand in between), holds what the example prints.
* Each example runs on its own in a fresh subprocess, in a fresh temporary directory (the
  files it writes, .h5, .lime, .png, stay there), with PYTHONPATH = the repository root,
  OMP_NUM_THREADS = 1 (and the OpenBLAS/MKL equivalents), MPLBACKEND = Agg. Its stdout is
  compared with the output block line by line; stderr (progress bars, warnings) is ignored but
  shown when the example fails. An example must not write into the checkout: a file that is
  new in `git status --ignored` after it ran is a failure.
* Line comparison: the text between numbers must be equal; numbers are compared with a
  relative tolerance of 1e-6 (rounding differences between BLAS builds and CPUs), and two
  numbers below 1e-10 in magnitude count as equal (round-off residuals such as "~1e-15").
  `...` in an expected line matches any text (for values that change by construction, such
  as a git commit); a run of whitespace matches any run of whitespace (numpy pads array
  elements by their sign). With --update a line that already matches is kept as written.
* An HTML comment on the last non-blank line before a block's opening fence controls it:
  `<!-- readme-check: skip (reason) -->` does not run it (fragments, shell, GPU or MPI-only
  code, runs of many minutes); the skips are reported with their reasons.
  `<!-- readme-check: needs out/demo (reason) -->` runs it only with --with-demo, in a
  temporary directory where `out` links to the repository's `out/` (the output of
  `make demo`), and skips it otherwise.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RTOL = 1e-6
ATOL = 1e-10
MARK = re.compile(r"<!--\s*readme-check:\s*(skip|needs\s+(\S+))\s*(?:\((.*)\))?\s*-->")
NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
TOKEN = re.compile(rf"(\.\.\.)|({NUM})")


@dataclass
class Block:
    index: int                 # 1-based number among the python blocks
    line: int                  # 1-based line of the opening fence
    close: int                 # 0-based index of the closing fence
    code: str
    mode: str = "run"          # "run", "skip" or "needs"
    reason: str = ""
    needs: str = ""
    out_start: int | None = None   # 0-based line indices of the output block's content
    out_end: int | None = None
    expected: list[str] = field(default_factory=list)


def parse(lines: list[str]) -> list[Block]:
    """The python blocks of the README with their markers and output blocks."""
    fences = []                # (lang, open index, close index)
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang = lines[i][3:].strip()
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            if j == len(lines):
                raise SystemExit(f"README.md:{i + 1}: unclosed code fence")
            fences.append((lang, i, j))
            i = j + 1
        else:
            i += 1
    blocks = []
    for k, (lang, a, b) in enumerate(fences):
        if lang != "python":
            continue
        blk = Block(index=len(blocks) + 1, line=a + 1, close=b, code="\n".join(lines[a + 1:b]) + "\n")
        p = a - 1
        while p >= 0 and not lines[p].strip():
            p -= 1
        m = MARK.search(lines[p]) if p >= 0 else None
        if m:
            blk.reason = (m.group(3) or "").strip()
            if m.group(1) == "skip":
                blk.mode = "skip"
            else:
                blk.mode, blk.needs = "needs", m.group(2)
        if k + 1 < len(fences) and fences[k + 1][0] == "text":
            _, c, d = fences[k + 1]
            blk.out_start, blk.out_end = c + 1, d
            blk.expected = lines[c + 1:d]
        blocks.append(blk)
    return blocks


def line_matches(expected: str, actual: str) -> bool:
    """Equal text between numbers, numbers to RTOL (ATOL near zero), `...` matches anything."""
    pattern, nums, pos = [], [], 0
    def text(t):               # a run of whitespace matches any whitespace (numpy pads by sign)
        return r"\s*".join(re.escape(w) for w in re.split(r"\s+", t))

    for m in TOKEN.finditer(expected):
        pattern.append(text(expected[pos:m.start()]))
        if m.group(1):
            pattern.append(".*?")
        else:
            pattern.append(f"({NUM})")
            nums.append(float(m.group(2)))
        pos = m.end()
    pattern.append(text(expected[pos:]))
    m = re.fullmatch("".join(pattern), actual.rstrip())
    if m is None:
        return False
    for e, a in zip(nums, (float(g) for g in m.groups())):
        if abs(e) <= ATOL and abs(a) <= ATOL:
            continue
        if abs(e - a) > RTOL * max(abs(e), abs(a)):
            return False
    return True


def compare(expected: list[str], actual: list[str]) -> list[str]:
    """The differing lines as messages (empty: the output matches)."""
    msgs = []
    for i in range(max(len(expected), len(actual))):
        e = expected[i] if i < len(expected) else None
        a = actual[i] if i < len(actual) else None
        if e is None or a is None or not line_matches(e, a):
            msgs.append(f"    line {i + 1}:\n      README: {e!r}\n      actual: {a!r}")
    return msgs


def merged(expected: list[str], actual: list[str]) -> list[str]:
    """The output block for --update: lines that match stay as written."""
    out = []
    for i, a in enumerate(actual):
        e = expected[i] if i < len(expected) else None
        out.append(e if e is not None and line_matches(e, a) else a)
    return out


def repo_state() -> set[str]:
    r = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
                       cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        return set()
    return {ln for ln in r.stdout.splitlines()             # new files only ("??" untracked, "!!" ignored)
            if ln[:2] in ("??", "!!") and "__pycache__" not in ln and ".pytest_cache" not in ln}


def run_block(blk: Block, python: str, timeout: float):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
    with tempfile.TemporaryDirectory(prefix=f"readme-block{blk.index}-") as tmp:
        if blk.mode == "needs":
            src = ROOT / blk.needs
            top = Path(blk.needs).parts[0]
            (Path(tmp) / top).symlink_to(ROOT / top, target_is_directory=src.is_dir())
        script = Path(tmp) / f"readme_block{blk.index}.py"
        script.write_text(blk.code)
        t0 = time.perf_counter()
        try:
            r = subprocess.run([python, script.name], cwd=tmp, env=env, capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, "", f"timed out after {timeout:.0f} s", time.perf_counter() - t0
        return r.returncode, r.stdout, r.stderr, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--update", action="store_true", help="rewrite the ```text output blocks")
    ap.add_argument("--list", action="store_true", help="list the blocks, run nothing")
    ap.add_argument("--only", type=int, nargs="+", help="run these blocks only (numbers as in --list)")
    ap.add_argument("--with-demo", action="store_true", help="also run blocks that need out/demo (make demo)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the examples")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per example (default 600)")
    args = ap.parse_args(argv)

    path = Path(args.readme)
    text = path.read_text()
    lines = text.split("\n")
    blocks = parse(lines)
    failures, skips, updates = [], [], []
    for blk in blocks:
        where = f"block {blk.index} (README.md:{blk.line})"
        if args.only and blk.index not in args.only:
            continue
        if blk.mode == "skip" or (blk.mode == "needs" and not (args.with_demo and (ROOT / blk.needs).exists())):
            why = blk.reason or ("needs " + blk.needs if blk.mode == "needs" else "no reason given")
            if blk.mode == "needs":
                why += f" (run with --with-demo after `make demo`)" if not args.with_demo else \
                    f" ({blk.needs} is missing)"
            skips.append(f"{where}: skipped: {why}")
            print(f"{where}: skip: {why}", flush=True)
            continue
        if args.list:
            out = f"output block README.md:{blk.out_start}" if blk.out_start is not None else "no output block"
            print(f"{where}: run ({out})")
            continue
        before = repo_state()
        rc, out, err, secs = run_block(blk, args.python, args.timeout)
        wrote = sorted(repo_state() - before)
        actual = out.rstrip("\n").split("\n") if out.strip() else []
        actual = [a.rstrip() for a in actual]
        status = "ok"
        if rc != 0:
            status = "FAILED"
            failures.append(f"{where}: exit status {rc}\n{err.strip()[-3000:]}")
        elif wrote:
            status = "FAILED"
            failures.append(f"{where}: wrote into the checkout: {wrote}")
        elif blk.out_start is None:
            if actual:
                status = "FAILED" if not args.update else "new output block"
                if not args.update:
                    failures.append(f"{where}: prints {len(actual)} lines but has no ```text block "
                                    f"after it (--update adds one)")
                else:
                    updates.append((blk, actual))
        else:
            diffs = compare(blk.expected, actual)
            if diffs:
                if args.update:
                    status = "updated"
                    updates.append((blk, merged(blk.expected, actual)))
                else:
                    status = "DIFFERS"
                    failures.append(f"{where}: output differs from the README:\n" + "\n".join(diffs))
        print(f"{where}: {status} ({secs:.0f} s)", flush=True)

    if args.update and updates:
        # replace from the end so the line numbers of earlier blocks stay valid
        for blk, new in sorted(updates, key=lambda u: -u[0].line):
            if blk.out_start is not None:
                lines[blk.out_start:blk.out_end] = new
            else:
                lines[blk.close + 1:blk.close + 1] = ["", "```text", *new, "```"]
        path.write_text("\n".join(lines))
        print(f"updated {len(updates)} output block(s) in {path}")
    n_run = sum(1 for b in blocks if (not args.only or b.index in args.only)) - len(skips)
    print(f"{len(blocks)} python blocks: {n_run} run, {len(skips)} skipped, {len(failures)} failed"
          + ("" if args.list else f" (numbers to {RTOL:g} relative)"))
    for f in failures:
        print("\n" + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
