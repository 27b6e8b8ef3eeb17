"""Atomic replacement of small files (models, results, checkpoints, ILDG files).

:func:`atomic_write` writes to a temporary file in the *same directory* as the target,
flushes and ``fsync``\\ s it, then renames it over the target with :func:`os.replace`
(atomic on POSIX file systems) and ``fsync``\\ s the directory. A reader therefore sees
either the complete old file or the complete new one, never a partial file, even if the
writing job is killed. On any error the temporary file is removed and the target is left
untouched.

The temporary name is ``.<name>.tmp-<pid>-<random>`` so that leftovers of a job killed
while writing are recognisable (and never match the target's name or glob patterns like
``*.h5``).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write", "temporary_name", "fsync_directory"]

Writer = Union[bytes, bytearray, memoryview, str, Callable]


def temporary_name(path) -> Path:
    """A fresh temporary path next to ``path`` (same directory, hence same file system)."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_directory(directory) -> None:
    """``fsync`` a directory so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path, writer: Writer, *, pass_path: bool = False, fsync: bool = True) -> Path:
    """Atomically create or replace the file ``path``.

    Parameters
    ----------
    path : target file name.
    writer : the content, one of
        * ``bytes``/``bytearray``/``memoryview`` or ``str`` (UTF-8 encoded), written as is;
        * a callable ``writer(f)`` that writes into the open binary file object ``f``;
        * with ``pass_path=True``, a callable ``writer(tmp_path)`` that creates the file at
          ``tmp_path`` itself (for libraries that want a file name: h5py, ``numpy.save``).
    fsync : flush the data and the directory entry to stable storage (default). Without it
        the replacement is still atomic for readers, but not durable across a power loss.

    Returns the target path. The target's permissions are those of a newly created file
    (umask applies); an existing target is replaced only after the new content is complete.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"atomic_write: {target} is a directory")
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"atomic_write: directory {directory} of {target} does not exist")
    tmp = temporary_name(target)
    try:
        if pass_path:
            if not callable(writer):
                raise TypeError("atomic_write(pass_path=True) needs a callable writer(tmp_path)")
            writer(tmp)
            if not tmp.exists():
                raise FileNotFoundError(f"atomic_write: the writer did not create {tmp}")
            if fsync:
                fd = os.open(str(tmp), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        else:
            fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                if isinstance(writer, str):
                    f.write(writer.encode("utf-8"))
                elif isinstance(writer, (bytes, bytearray, memoryview)):
                    f.write(writer)
                elif callable(writer):
                    writer(f)
                else:
                    raise TypeError(f"atomic_write: writer must be bytes, str or callable, got {type(writer).__name__}")
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    if fsync:
        fsync_directory(directory)
    return target
