"""Progress bars that suit both a terminal and a batch log.

:func:`progress_bar` returns a tqdm bar. On a terminal it is the usual bar, redrawn in place.
Where the stream is not a terminal (a SLURM log, a pipe, a file) redrawing in place would write
hundreds of ``\\r`` frames into the log; there the bar prints a plain line (tqdm's text, then a
newline) at most every :data:`LOG_INTERVAL` seconds, plus its first and last state. The
interval can be set with the environment variable ``GAUGEFLOW_PROGRESS_INTERVAL`` (seconds;
0 prints every update, e.g. for a test that follows a job's progress).
"""
from __future__ import annotations

import os
import sys

__all__ = ["progress_bar", "LOG_INTERVAL", "log_interval"]

LOG_INTERVAL = 60.0     # seconds between two progress lines where the stream is not a terminal


def log_interval() -> float:
    """Seconds between progress lines in a log: ``$GAUGEFLOW_PROGRESS_INTERVAL`` or :data:`LOG_INTERVAL`."""
    v = os.environ.get("GAUGEFLOW_PROGRESS_INTERVAL", "")
    try:
        return max(float(v), 0.0) if v.strip() else LOG_INTERVAL
    except ValueError:
        return LOG_INTERVAL


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Lines:
    """A stream for tqdm that turns each redraw (``\\r`` + text + padding) into one line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str):
        for part in s.split("\r"):
            part = part.rstrip()
            if part:
                self.stream.write(part + "\n")

    def flush(self):
        try:
            self.stream.flush()
        except (AttributeError, ValueError):
            pass


def progress_bar(total: int, *, desc: str, unit: str, initial: int = 0, leave: bool = True, file=None):
    """A tqdm bar on ``file`` (default stderr): redrawn in place on a terminal; otherwise one
    plain line at most every :func:`log_interval` seconds (and at the start and the end)."""
    from tqdm import tqdm
    stream = sys.stderr if file is None else file
    if _is_terminal(stream) or (file is None and "ipykernel" in sys.modules):     # a terminal, a notebook
        from tqdm.auto import tqdm as auto
        return auto(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=stream)

    class LogBar(tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):     # shown with the next line
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

    every = log_interval()
    return LogBar(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=_Lines(stream),
                  mininterval=every, maxinterval=max(every, 1.0), miniters=1, ascii=True, ncols=100,
                  dynamic_ncols=False)
