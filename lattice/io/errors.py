"""Exceptions raised by :mod:`lattice.io`.

Every problem with a file gets an exception whose message names the file and says what is
wrong, so that a failed job log is self-explanatory:

* :class:`CorruptFileError` (an ``OSError``): the file cannot be trusted -- not the expected
  format, malformed metadata, bad magic number. Subclasses:

  - :class:`TruncatedFileError`: the file ends before the data it announces;
  - :class:`ChecksumError`: stored and recomputed checksums differ.

* :class:`MismatchError` (a ``ValueError``): the file is intact but does not describe what
  the caller expects (lattice size, action parameters, conventions, ...). It carries the
  differing ``field`` and the ``found``/``expected`` values.

All exceptions pickle with their attributes (also ones a caller added, e.g. a ``hint``), so
that an error on the MPI rank doing the I/O is re-raised unchanged on every rank.
"""
from __future__ import annotations

__all__ = ["CorruptFileError", "TruncatedFileError", "ChecksumError", "MismatchError"]


class CorruptFileError(OSError):
    """The file is unreadable or its content is inconsistent (not a format question of the
    caller's expectations; see :class:`MismatchError`)."""

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __str__(self):
        return self.args[0] if self.args else ""

    def __reduce__(self):
        return (type(self), (self.args[0] if self.args else "", self.path), self.__dict__ or None)


class TruncatedFileError(CorruptFileError):
    """The file is shorter than its own headers say (e.g. a copy or write cut short)."""


class ChecksumError(CorruptFileError):
    """A stored checksum does not match the data it protects."""


class MismatchError(ValueError):
    """The file is valid but differs from what the caller expects.

    Attributes: ``field`` (dotted name, e.g. ``"action.beta"``), ``found`` (value in the
    file), ``expected`` (value the caller asked for), ``path``.
    """

    def __init__(self, message: str, field=None, found=None, expected=None, path=None):
        super().__init__(message)
        self.field, self.found, self.expected = field, found, expected
        self.path = None if path is None else str(path)

    def __reduce__(self):
        return (type(self), (self.args[0] if self.args else "", self.field, self.found,
                             self.expected, self.path), self.__dict__ or None)
