"""Progress bars (lattice.progress): redrawn in place on a terminal; in a batch log (stderr not
a terminal) plain lines, at most one per interval, instead of hundreds of \\r frames."""
import io
import time

import pytest

from lattice.progress import progress_bar, LOG_INTERVAL


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _run(stream, n=500):
    bar = progress_bar(n, desc="HMC", unit="traj", file=stream)
    for i in range(n):
        bar.set_postfix(plaq=f"{0.5 + i * 1e-4:.5f}")      # like lattice.hmc: must not force a line each time
        bar.update(1)
        time.sleep(0.0005)
    bar.close()
    return stream.getvalue()


def test_a_log_gets_plain_lines_at_most_one_per_interval(monkeypatch):
    monkeypatch.delenv("GAUGEFLOW_PROGRESS_INTERVAL", raising=False)
    assert LOG_INTERVAL == 60
    text = _run(io.StringIO())
    lines = text.splitlines()
    assert "\r" not in text and len(lines) <= 3, text          # the start, the end (and at most one more)
    assert lines[0].startswith("HMC:   0%") and "500/500" in lines[-1] and "plaq=0.54990" in lines[-1]


def test_the_interval_can_be_set(monkeypatch):
    monkeypatch.setenv("GAUGEFLOW_PROGRESS_INTERVAL", "0")
    lines = _run(io.StringIO(), n=20).splitlines()
    assert len(lines) >= 21 and [f"{i}/20" in lines[i] for i in range(21)] == [True] * 21


def test_a_terminal_gets_the_bar_redrawn_in_place(monkeypatch):
    monkeypatch.delenv("GAUGEFLOW_PROGRESS_INTERVAL", raising=False)
    text = _run(Terminal(), n=50)
    assert text.count("\r") > 2


@pytest.mark.parametrize("value,expected", [("", 60.0), ("5", 5.0), ("-1", 0.0), ("x", 60.0)])
def test_interval_from_the_environment(monkeypatch, value, expected):
    from lattice.progress import log_interval
    monkeypatch.setenv("GAUGEFLOW_PROGRESS_INTERVAL", value)
    assert log_interval() == expected
