"""The one path every file selfsup writes goes through.

A crash, a full disk or a kill never leaves a half-written file in place of a good one:
:func:`atomic_write` writes beside the target (``NAME.PID.tmp``), flushes it to the disk
and renames it over the target; :func:`append_text` (metrics.jsonl) cuts the file back to
its old length when an append fails.  Either way the bytes pass through a
:class:`WriteFile`, which remembers the operating system's error: torch and safetensors
wrap a failed write in exceptions of their own ("unexpected pos"), and the user should
hear "No space left on device", once, in one line (:class:`WriteError`).

A process killed while writing (kill -9) cannot remove its temporary file;
:func:`remove_stale` removes those whose process is gone.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator

from selfsup.errors import SelfSupError

_TEMPORARY = re.compile(r"^(?:.+\.(\d+)\.tmp|\.embed-(\d+)\.partial)$")  # NAME.PID.tmp files, embed's folders


class WriteError(SelfSupError, OSError):
    """A write that failed (a full disk, an I/O error, a file-size limit): one line naming
    the file and the cause.  An OSError too, so code that carries on without a cache file
    when it cannot write one still does."""


class WriteFile(io.RawIOBase):
    """A binary file open for writing at ``path``, on behalf of ``target``: every byte
    selfsup writes goes through :meth:`write`, and the first operating-system error is
    kept in ``error``."""

    def __init__(self, target: Path, path: Path, mode: str = "wb"):
        super().__init__()
        self.target, self.path = target, path
        self.error: OSError | None = None
        self._file = open(path, mode, buffering=0)  # noqa: SIM115 -- closed by close()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._file.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def truncate(self, size: int | None = None) -> int:
        return self._file.truncate(size)

    def fileno(self) -> int:
        return self._file.fileno()

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):  # a raw write may take only part of the bytes
                done += self._file.write(view[done:])
        except OSError as err:
            self.error = self.error or err
            raise
        return done

    def sync(self) -> None:
        """Flush to the disk: a full disk on a network or delayed-allocation file system may
        only say so here, and a rename must never publish bytes that are not stored."""
        try:
            os.fsync(self._file.fileno())
        except OSError as err:
            self.error = self.error or err
            raise

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        super().close()


def _failed(target: Path, err: BaseException, written: WriteFile | None) -> BaseException:
    """The one-line error for a failed write of ``target``, or ``err`` itself when the
    failure did not come from the operating system (a bug keeps its traceback)."""
    cause = written.error if written is not None and written.error is not None else err
    if isinstance(cause, WriteError):
        return cause
    if not isinstance(cause, OSError):
        return err
    why = cause.strerror or str(cause) or type(cause).__name__
    return WriteError(f"cannot write {target}: {why}")


@contextlib.contextmanager
def open_atomic(path: str | Path) -> Iterator[WriteFile]:
    """A :class:`WriteFile` on a temporary file beside ``path``, renamed to ``path`` when the
    block ends without an error; on any failure the temporary file is removed, ``path`` is
    left as it was, and an operating-system error becomes a :class:`WriteError`."""
    path = Path(path)
    remove_stale(path.parent, path.name)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    f = None
    try:
        f = WriteFile(path, tmp)
        yield f
        f.sync()
        f.close()
        os.replace(tmp, path)
    except BaseException as err:
        if f is not None:
            f.close()
        tmp.unlink(missing_ok=True)
        failure = _failed(path, err, f)
        if failure is err:
            raise
        raise failure from None


def atomic_write(path: str | Path, write: Callable[[WriteFile], object]) -> None:
    """``write(f)`` into a file object that becomes ``path`` only once it is whole (see
    :func:`open_atomic`)."""
    with open_atomic(path) as f:
        write(f)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def append_text(path: str | Path, text: str) -> None:
    """Append ``text`` to ``path``; when the append fails the file is cut back to the
    length it had, so no half line is left behind (a kill -9 still can: readers of an
    appended log drop a torn last line)."""
    path = Path(path)
    f = None
    try:
        f = WriteFile(path, path, "ab")
        start = f.seek(0, io.SEEK_END)
        try:
            f.write(text.encode("utf-8"))
        except BaseException:
            with contextlib.suppress(OSError):
                f.truncate(start)
            raise
        f.close()
    except BaseException as err:
        if f is not None:
            f.close()
        failure = _failed(path, err, f)
        if failure is err:
            raise
        raise failure from None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files (``NAME.PID.tmp``) and embed folders (``.embed-PID.partial``)
    in ``folder`` -- only those of ``name`` when given -- whose process no longer runs: a
    process killed while writing leaves them.  A live process's are left alone (it may be
    writing them now).  Returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMPORARY.match(p.name)
        if m is None or (name is not None and not p.name.startswith(name + ".")):
            continue
        if _alive(int(m.group(1) or m.group(2))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass  # another process removed it first
    return removed
