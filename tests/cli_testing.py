"""Helpers for tests of the command line run in this process (tests/test_run_*.py)."""
from __future__ import annotations

from run.cli import main


def cli(capsys, *args):
    """(exit status, stdout, stderr) of `gaugeflow *args` run in this process."""
    rc = main([str(a) for a in args])
    o, e = capsys.readouterr()
    return rc, o, e


def one_error_line(err: str) -> str:
    """The one line a user error prints (``gaugeflow: error: ...``); fails on anything else."""
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("gaugeflow: "), err
    assert "Traceback" not in err
    return lines[0]
