"""An exclusive lock on a job's output directory: one gaugeflow job per directory.

:class:`OutputLock` holds ``<output>/.gaugeflow.lock``: an OS lock (``fcntl.flock``, released
by the kernel when the holding process ends, however it ends) on a file that records the
holder's pid, host, command and start time. A second job on the same directory finds the OS
lock taken and refuses with :class:`LockedError` naming that pid and host. A lock file left by
a job that is gone (killed, node lost) no longer carries an OS lock and is taken over. Where
the file system has no ``flock`` the lock falls back to the recorded pid: a lock of a dead
process on this host is taken over, one of another host is refused (delete the file if that
job is gone).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

__all__ = ["OutputLock", "LockedError", "LOCK_NAME"]

LOCK_NAME = ".gaugeflow.lock"


class LockedError(RuntimeError):
    """The output directory is in use by another gaugeflow job."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


class OutputLock:
    """Exclusive lock on ``directory`` (created if missing). Use :meth:`acquire` / :meth:`release`
    or ``with``. ``took_over`` describes a stale lock that was taken over (else None)."""

    def __init__(self, directory, command: str = "job"):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.command = command
        self._fd = None
        self.took_over = None

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, h: dict):
        who = f"pid {h.get('pid', '?')} on host {h.get('host', '?')}"
        what = f"`gaugeflow {h['command']}`" if h.get("command") else "another gaugeflow job"
        since = f", started {h['time']}" if h.get("time") else ""
        raise LockedError(f"{self.directory} is in use by {what} ({who}{since}; lock file {self.path}): wait for it "
                          f"to finish or use another job.output (--output); if that job is gone, delete {self.path}")

    def acquire(self) -> "OutputLock":
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"job.output {self.directory} exists and is not a directory",
                                     str(self.directory))
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                have_os_lock = self._try_flock(fd)
                if have_os_lock is False:
                    self._refuse(self._holder())
                st, now = os.fstat(fd), None
                try:
                    now = os.stat(self.path)
                except FileNotFoundError:
                    pass
                if now is None or (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
                    os.close(fd)          # the holder released (unlinked) it meanwhile: retry
                    continue
                old = self._holder()
                if old.get("pid") and old.get("pid") != os.getpid():
                    if have_os_lock is None:      # no flock here: decide by the recorded pid
                        if old.get("host") != socket.gethostname() or _pid_alive(old["pid"]):
                            self._refuse(old)
                    self.took_over = old
                info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                        "argv": list(sys.argv)}
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
                self._fd = fd
                return self
            except BaseException:
                if self._fd is None:
                    os.close(fd)
                raise
        raise LockedError(f"could not lock {self.path}: another job keeps replacing it")

    @staticmethod
    def _try_flock(fd):
        """True: locked; False: held by another process; None: flock not supported."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            return None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            try:
                self.path.unlink()
            except OSError:
                pass
        finally:
            os.close(self._fd)     # drops the OS lock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
