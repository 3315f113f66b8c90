"""What keeps a run folder whole: one writer at a time, stops only between steps, and no
checkpoint with non-finite state.

- :class:`RunLock`: an exclusive ``flock`` on ``RUN/.lock`` while a process writes the
  folder; a second process gets a one-line error instead of interleaving its metrics
  and racing on the checkpoint's rename.  The kernel drops the lock when the process
  dies, so a killed run never leaves a stale lock; a process killed a moment ago can
  still hold it while it is torn down, so the lock is waited for a few seconds first.
- :class:`StopAtStepBoundary`: SIGINT (Ctrl-C) and SIGTERM set a flag that the step loop
  reads between steps, so the checkpoint written on the way out holds the state after a
  whole step -- never BatchNorm statistics of a half-finished one.  A second Ctrl-C stops
  at once without writing.
- :func:`first_nonfinite`: the name of the first parameter or buffer holding NaN or inf.
"""
from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from pathlib import Path

import torch
import torch.nn as nn

from selfsup.errors import SelfSupError

LOCK = ".lock"


class RunLock:
    WAIT = 10.0  # seconds: a killed job's processes release the lock only once torn down

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.WAIT
        while not self._try_lock():
            if time.monotonic() >= deadline:
                os.close(self.fd)
                self.fd = None
                raise SelfSupError(f"another selfsup process is writing {self.path.parent}; wait for it to finish "
                                   "or choose another --out")
            time.sleep(0.1)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def _try_lock(self) -> bool:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


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
