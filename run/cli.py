"""Command line `gaugeflow` (placeholder until the runner lands)."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print("gaugeflow: commands are being built; see README.md")
    return 0
