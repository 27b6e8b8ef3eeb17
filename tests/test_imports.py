"""Dependencies point one way (docs/design.md §2): run -> flows -> fermions -> lattice, and
analysis imports nothing of ours; no package loads an autodiff framework (every derivative is
hand-written; pyerrors, an optional extra, brings autograd along, which must stay unused).
Each package is imported in a fresh interpreter and the modules it pulled in are checked."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("lattice", "fermions", "flows", "analysis", "run")

#: package -> top-level modules that ``import <package>`` must not load
FORBIDDEN = {
    "lattice": {"fermions", "flows", "analysis", "run"},
    "fermions": {"flows", "analysis", "run"},
    # flows uses fermions for the conditional pseudofermion model; analysis (and SciPy) only when used
    "flows": {"analysis", "run", "scipy"},
    "analysis": {"lattice", "fermions", "flows", "run"},
    "run": set(),
}
AUTODIFF = {"autograd", "torch", "jax", "tensorflow"}


def _loaded_after_import(package: str) -> set:
    code = (f"import sys, json; import {package}; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("package", OURS)
def test_package_imports_point_one_way(package):
    loaded = _loaded_after_import(package)
    assert package in loaded
    bad = sorted(loaded & (FORBIDDEN[package] | AUTODIFF))
    assert not bad, f"`import {package}` imports {bad}, which it must not (docs/design.md §2)"


def test_flows_ess_is_the_analysis_ess_imported_on_use():
    import analysis
    import flows
    assert flows.ess is analysis.ess
    from flows import ess
    assert ess is analysis.ess
    with pytest.raises(AttributeError):
        flows.no_such_name


def test_exact_determinant_is_a_fermions_object_with_the_old_import_working():
    import fermions
    from fermions.dense import ExactNf2Determinant
    from run.fermion_terms import ExactNf2Determinant as Old
    assert fermions.ExactNf2Determinant is ExactNf2Determinant is Old
