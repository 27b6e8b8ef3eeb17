"""Fermion terms for flow targets (kept for old imports).

:class:`ExactNf2Determinant` (the exact Nf = 2 determinant as a target term) lives in
:mod:`fermions.dense`; the runner joins it with the gauge targets of :mod:`flows` (which never
imports :mod:`fermions`).
"""
from __future__ import annotations

from fermions.dense import ExactNf2Determinant

__all__ = ["ExactNf2Determinant"]
