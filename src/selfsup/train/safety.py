"""What keeps a run folder whole: one writer at a time, stops only between steps, and no
checkpoint with non-finite state.

- :class:`RunLock` and :func:`hold_run_folder`: an exclusive ``flock`` on ``RUN/.lock``
  while a process writes the folder, taken *before* it decides whether the folder holds
  a run; a second process gets a one-line error at once instead of waiting and then
  deleting the first one's run.  The kernel drops the lock when its process dies, so a
  killed run never leaves a stale lock, and temporary files the killed process left are
  removed when the next one takes the folder.
- :class:`StopAtStepBoundary`: SIGINT (Ctrl-C) and SIGTERM set a flag that the step loop
  reads between steps, so the checkpoint written on the way out holds the state after a
  whole step -- never BatchNorm statistics of a half-finished one.  A second Ctrl-C stops
  at once without writing.
- :func:`first_nonfinite`: the name of the first parameter or buffer holding NaN or inf.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from selfsup.errors import SelfSupError
from selfsup.files import remove_stale

LOCK = ".lock"


class RunLock:
    """The folder's lock, never waited for (``WAIT`` seconds: 0).

    After locking, the lock file must still be the one at ``RUN/.lock``: a process that
    gives up a folder it created removes the file while holding the lock, and a process
    that opened the old file meanwhile would otherwise hold a lock nobody else can see."""

    WAIT = 0.0

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def acquire(self) -> RunLock:
        """Lock at once or raise the one-line error (after ``WAIT`` seconds when set)."""
        deadline = time.monotonic() + self.WAIT
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if self._try_lock(fd):
                if self._is_current(fd):
                    break
                os.close(fd)  # the file was removed after we opened it: lock the one there now
                continue
            os.close(fd)
            if time.monotonic() >= deadline:
                raise SelfSupError(f"another selfsup process is writing {self.path.parent}{self._holder()}; wait "
                                   "for it to finish or choose another --out")
            time.sleep(0.1)
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return self

    @staticmethod
    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _holder(self) -> str:
        """`` (pid N)`` as the holder wrote it into the lock file, when it has."""
        try:
            pid = self.path.read_text().strip()
        except OSError:
            return ""
        return f" (pid {pid})" if pid.isdigit() else ""

    def _is_current(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self, *, remove: bool = False) -> None:
        """Unlock; with ``remove`` the lock file goes first, while it is still held."""
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def hold_run_folder(run_dir: str | Path, *, create: bool = True) -> Iterator[RunLock]:
    """The run folder, locked by this process for the block (created first with
    ``create``), with the temporary files of processes killed while writing it removed.
    A folder this call created and that holds nothing else when the block fails is
    removed again: a run that never started leaves no trace."""
    run_dir = Path(run_dir)
    lock = RunLock(run_dir)
    for attempt in range(3):
        created = create and not run_dir.exists()
        if create:
            run_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()
            break
        except FileNotFoundError:  # the folder was removed in between by a process that gave it up
            if not create or attempt == 2:
                raise
    try:
        remove_stale(run_dir)
        yield lock
    except BaseException:
        if created and [p.name for p in run_dir.iterdir()] == [LOCK]:
            lock.release(remove=True)
            with contextlib.suppress(OSError):  # another process may have come in since
                run_dir.rmdir()
        raise
    finally:
        lock.release()


class StopAtStepBoundary:
    """Within the block, SIGINT and SIGTERM request a stop (``.requested`` names the
    signal) instead of raising where they land; a second SIGINT raises KeyboardInterrupt.
    Outside the main thread signals cannot be caught, and nothing changes."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopAtStepBoundary:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def first_nonfinite(module: nn.Module) -> str | None:
    """The name of the first floating-point parameter or buffer of ``module`` that holds a
    NaN or an infinity, or None when all are finite."""
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None
