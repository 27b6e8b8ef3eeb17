"""The design document: docs/design.md exists with its numbered sections, and every reference to
it from the code and the README names a section that exists, in the one form
"docs/design.md §N" (docs/design.md §10).

The README's examples print what the README says (docs/readme_check.py): the full run takes
minutes (every python block of README.md in its own process, in a temporary directory), so it
is marked slow (`make test-slow`, `make docs-check`); its parser and line comparison are
checked quickly here."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DESIGN_DOC = ROOT / "docs/design.md"
_spec = importlib.util.spec_from_file_location("readme_check", ROOT / "docs" / "readme_check.py")
rc = sys.modules.setdefault("readme_check", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(rc)

# built from pieces so that this file does not match its own patterns
_OLD_NAME = re.compile(r"\b" + "DESI" + "GN" + r"\b")                   # the old external notes
_BARE = re.compile(r"(?<!docs/)\b" + "design" + r"\.md", re.IGNORECASE)    # path without docs/
_WORDY = re.compile(r"docs/" + "design" + r"\.md,?\s+sections?\b")          # "section N" spelled out
_REFS = re.compile(r"docs/" + "design" + r"\.md\s*((?:\s*(?:,|-|–|and|or)?\s*§\d+(?:\.\d+)?)+)")
_NUM = re.compile(r"§(\d+(?:\.\d+)?)")


def design_sections(text: str) -> set:
    """Section numbers of the design document: "## N. Title" and "### N.M Title"."""
    top = re.findall(r"^## (\d+)\. \S", text, re.M)
    sub = re.findall(r"^### (\d+\.\d+) \S", text, re.M)
    return set(top) | set(sub)


def reference_problems(text: str, sections: set) -> list:
    """(line, message) for every bad reference to the design document in ``text``."""
    out = []

    def line_of(pos):
        return text.count("\n", 0, pos) + 1

    for m in _OLD_NAME.finditer(text):
        out.append((line_of(m.start()), "refers to the old design notes; cite docs/design.md §N"))
    for m in _BARE.finditer(text):
        out.append((line_of(m.start()), "cite the design document as docs/design.md"))
    for m in _WORDY.finditer(text):
        out.append((line_of(m.start()), "write the section as §N"))
    for m in _REFS.finditer(text):
        for n in _NUM.findall(m.group(1)):
            if n not in sections:
                out.append((line_of(m.start()), f"docs/design.md has no section §{n}"))
    return out


def _sources():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames
                       if not d.startswith(".") and d not in ("__pycache__", "build") and not d.endswith(".egg-info")]
        for f in filenames:
            if f.endswith(".py"):
                yield Path(dirpath) / f
    yield ROOT / "README.md"


def test_design_document_has_the_numbered_sections():
    text = DESIGN_DOC.read_text(encoding="utf-8")
    top = [int(n) for n in re.findall(r"^## (\d+)\. \S", text, re.M)]
    assert top == list(range(1, 11)), top
    for title in ("Layout", "Arrays", "Group conventions", "Actions", "Fermions", "Flows", "Distribution",
                  "Data", "Testing and benchmarks"):
        assert re.search(rf"^## \d+\. {title}\b", text, re.M), title
    assert "### Pseudofermion (conditional) flows" in text


def test_every_reference_names_an_existing_section():
    sections = design_sections(DESIGN_DOC.read_text(encoding="utf-8"))
    bad, n_refs = [], 0
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        n_refs += len(_REFS.findall(text))
        bad += [f"{path.relative_to(ROOT)}:{line}: {msg}" for line, msg in reference_problems(text, sections)]
    assert not bad, "\n".join(bad)
    assert n_refs > 40     # the code cites the document throughout


def test_the_checker_finds_bad_references():
    sections = {"3", "4", "7", "7.2"}
    ok = "see docs/design.md §4 and docs/design.md §3-§4, docs/design.md §7.2"
    assert reference_problems(ok, sections) == []
    old, doc = "DESI" + "GN", "docs/design" + ".md"
    for bad in (f"see {old} section 4", f"see {old}.md section 4", f"({old} §4)", "see design" + ".md §4",
                f"see {doc} section 4", f"{doc} §12", f"{doc} §3-§9", f"{doc} §7.5"):
        assert reference_problems(bad, sections), bad


def test_line_comparison():
    assert rc.line_matches("E0 = 0.27760(38), chi2/dof = 5.195/3", "E0 = 0.2776000001(38), chi2/dof = 5.195/3")
    assert not rc.line_matches("E0 = 0.27760(38)", "E0 = 0.27761(38)")
    assert not rc.line_matches("ESS 0.58 -> 0.63", "ESS 0.58 => 0.63")
    assert rc.line_matches("1.1e-15 4.4e-16", "2.2e-16 0.0")              # round-off residuals
    assert rc.line_matches("commit ... (dirty)", "commit 0123abc (dirty)")
    assert rc.merged(["a 1.0", "b 2"], ["a 1.0000000001", "b 3", "c"]) == ["a 1.0", "b 3", "c"]


def test_every_readme_block_runs_or_says_why_not():
    blocks = rc.parse((ROOT / "README.md").read_text().split("\n"))
    assert blocks
    for b in blocks:
        assert b.mode == "run" or b.reason, f"README.md:{b.line}: a skipped block needs a reason"
        if b.mode == "run":
            assert b.out_start is not None or "print(" not in b.code, \
                f"README.md:{b.line}: prints but has no ```text output block"


@pytest.mark.slow
def test_readme_examples_print_what_the_readme_says():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "readme_check.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
