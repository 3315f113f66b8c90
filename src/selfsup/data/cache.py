"""The on-disk image cache: decode a folder once, then read batches by index.

Why a flat file of fixed-size uint8 records, read with ``preadv``: a batch is 256 random
rows, and each row is one system call into a buffer the batch already owns, with no
decoding, no per-row Python object and no resident memory beyond the batch (the pages
stay in the kernel's page cache, not in the process).  Memory-mapping the same file
would make every page read count as resident memory of the process, growing with the
number of images; Arrow (Hugging Face ``datasets``) and tar shards (``webdataset``)
store encoded or variable-size rows and are read sequentially or decoded per row.
``benchmarks/bench_data.py`` measures these choices; its results are in
``docs/results.md``.

A cache folder holds, per split, ``SPLIT.u8`` (the records), ``SPLIT.crc.npy`` (a CRC-32
per record), ``SPLIT.labels.npy`` and ``SPLIT.ids.npy``, plus ``manifest.json`` written
last.  It is built in a temporary folder and renamed into place, so a build that dies
leaves no cache that looks whole; a build that fails or is interrupted removes its
temporary folder, and one left by a killed process is removed by the next build.  On
opening, the manifest's fingerprint of the source files (path, size, modification and
status-change times, inode) must match, every file must have its expected size and a
sample of records must match their CRCs; every record read later is checked against its
CRC too.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from selfsup.data import Store
from selfsup.errors import SelfSupError
from selfsup.files import atomic_write, atomic_write_text, open_atomic, remove_stale

FORMAT = "selfsup-image-cache"
VERSION = 1
SPOT_CHECKS = 32  # records verified against their CRC when a cache is opened


class CorruptCache(Exception):
    """The cache on disk is unusable; the message says why."""


class RecordFile(Store):
    """``(N, H, W, C)`` uint8 records in one file, read by index with bounded memory.

    ``records[idx]`` with an integer array returns ``(len(idx), H, W, C)``; an int gives
    one record, a slice a range.  With ``crc`` (one CRC-32 per record) every record read
    is verified; a mismatch raises :class:`~selfsup.errors.SelfSupError` and calls
    ``on_corrupt`` (which removes the cache's manifest, so the next run rebuilds it).
    """

    def __init__(self, path: str | Path, shape: Sequence[int], crc: np.ndarray | None = None,
                 on_corrupt: Callable[[], None] | None = None):
        self.path, self.shape = Path(path), tuple(int(s) for s in shape)
        self.record_bytes = int(np.prod(self.shape[1:]))
        self.crc, self.on_corrupt = crc, on_corrupt
        self._fd, self._pid = None, None
        self._file()  # opened now: a cache rebuilt later by another run does not change what this one reads

    def __getstate__(self):  # picklable for worker processes: the descriptor is reopened
        return {**self.__dict__, "_fd": None, "_pid": None}

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            self._inode = os.fstat(self._fd).st_ino
        return self._fd

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8)
        fd, size = self._file(), self.record_bytes
        for row, i in enumerate(idx):
            buf = memoryview(out[row]).cast("B")
            if os.preadv(fd, [buf], int(i) * size) != size:
                self._corrupt(f"record {i} is cut short")
            if self.crc is not None and zlib.crc32(buf) != int(self.crc[i]):
                self._corrupt(f"record {i} fails its checksum")
        return out

    def _corrupt(self, why: str):
        try:
            current = os.stat(self.path).st_ino == self._inode  # not since replaced by a rebuild
        except OSError:
            current = False
        if self.on_corrupt is not None and current:
            self.on_corrupt()
        raise SelfSupError(f"the image cache {self.path.parent} is corrupt ({why}); it has been "
                           "invalidated: run the command again to rebuild it")


def fingerprint(files: Iterable[Path]) -> str:
    """A hash of each file's path, size, modification time, status-change time and inode:
    changes when a file is added, removed or replaced -- also when it is rewritten in place
    with its size and modification time restored (the status-change time moves, and
    cannot be set back) or replaced by another file (a new inode).  A file that cannot be
    stat'ed (a dangling link, a link loop) counts by its error, so it is skipped at the
    build, not fatal here."""
    h = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f)
        except OSError as err:
            h.update(f"{f}\0error {err.errno}\n".encode())
            continue
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()


def _paths(folder: Path, split: str) -> dict[str, Path]:
    return {k: folder / f"{split}.{k}" for k in ("u8", "crc.npy", "labels.npy", "ids.npy")}


def open_cache(folder: Path, expected_fingerprint: str) -> dict:
    """The manifest and, per split, ``(records, labels, ids)``; raises CorruptCache or
    returns None (no cache, or the source changed)."""
    manifest_file = folder / "manifest.json"
    if not manifest_file.exists():
        return None
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as err:
        raise CorruptCache(f"unreadable manifest: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CorruptCache("not a cache of this selfsup version")
    if manifest.get("fingerprint") != expected_fingerprint:
        return None
    splits = {}
    for split, info in manifest["splits"].items():
        p = _paths(folder, split)
        shape = (info["n"], *info["record_shape"])
        want = int(np.prod(shape))
        try:
            if p["u8"].stat().st_size != want:
                raise CorruptCache(f"{p['u8'].name} has {p['u8'].stat().st_size} bytes, expected {want}")
            crc = np.load(p["crc.npy"], mmap_mode="r")
            labels = np.load(p["labels.npy"], mmap_mode="r")
            ids = np.load(p["ids.npy"], mmap_mode="r")
        except (OSError, ValueError) as err:
            raise CorruptCache(f"{type(err).__name__}: {err}") from None
        if not len(crc) == len(labels) == len(ids) == info["n"]:
            raise CorruptCache(f"the {split} arrays disagree on the number of images")
        spots = np.unique(np.linspace(0, info["n"] - 1, SPOT_CHECKS).astype(np.int64)) if info["n"] else []
        for i, record in zip(spots, RecordFile(p["u8"], shape)[spots]):  # read without the CRC check
            if zlib.crc32(record.tobytes()) != int(crc[i]):
                raise CorruptCache(f"record {i} of {split} fails its checksum")
        records = RecordFile(p["u8"], shape, crc, on_corrupt=lambda: manifest_file.unlink(missing_ok=True))
        splits[split] = (records, np.asarray(labels, dtype=np.int64), ids)
    return {"manifest": manifest, "splits": splits}


def build_cache(folder: Path, splits: dict[str, tuple[list[Path], list[int], list[str]]],
                decode: Callable[[Path], np.ndarray | str], record_shape: tuple[int, ...],
                manifest: dict, *, strict: bool, workers: int | None = None,
                progress: bool = True) -> list[tuple[str, str]]:
    """Decode every file into a new cache at ``folder``; returns the skipped files as
    ``(file, reason)``.  ``splits[name] = (files, labels, ids)``; ``decode(file)`` returns the
    record, several records stacked (a multi-frame file: ids ``ID#0``, ``ID#1``, ...) or an
    error message.  With ``strict`` the first failure raises."""
    workers = workers or min(8, os.cpu_count() or 1)
    remove_stale(folder.parent, folder.name)  # the half-built caches of builds that were killed
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    skipped: list[tuple[str, str]] = []
    total = sum(len(files) for files, _, _ in splits.values())
    bar = _progress(total, progress, f"caching {total} images")
    try:
        info = {}
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="selfsup-decode")
        try:
            for split, (files, labels, ids) in splits.items():
                p = _paths(tmp, split)
                kept_labels, kept_ids, crcs = [], [], []
                with open_atomic(p["u8"]) as out:
                    for i, record in _bounded_map(pool, decode, files, 4 * workers):
                        bar.update(1)
                        if isinstance(record, str):
                            if strict:
                                raise SelfSupError(f"cannot read image {files[i]} ({record}); fix or remove it, "
                                                   "or drop --strict")
                            skipped.append((str(files[i]), record))
                            continue
                        frames = record.ndim > len(record_shape)  # a file of several images: ID#0, ID#1, ...
                        for k, one in enumerate(record if frames else [record]):
                            data = np.ascontiguousarray(one).tobytes()
                            out.write(data)
                            crcs.append(zlib.crc32(data))
                            kept_labels.append(labels[i])
                            kept_ids.append(f"{ids[i]}#{k}" if frames else ids[i])
                for key, array in (("crc.npy", np.asarray(crcs, dtype=np.uint32)),
                                   ("labels.npy", np.asarray(kept_labels, dtype=np.int64)),
                                   ("ids.npy", np.asarray(kept_ids, dtype=str))):
                    atomic_write(p[key], lambda f, a=array: np.save(f, a))
                info[split] = {"n": len(kept_ids), "record_shape": list(record_shape)}
        finally:  # on an error or Ctrl-C: drop the queued decodes, wait only for the running ones
            pool.shutdown(wait=True, cancel_futures=True)
        manifest = {**manifest, "format": FORMAT, "version": VERSION, "splits": info,
                    "skipped": len(skipped), "first_skipped": skipped[0] if skipped else None}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return skipped


def _bounded_map(pool: ThreadPoolExecutor, fn, items: list, window: int):
    """``(i, fn(items[i]))`` in order, with at most ``window`` calls in flight (so memory
    does not grow with the number of items)."""
    pending: deque = deque()
    for i, item in enumerate(items):
        pending.append((i, pool.submit(fn, item)))
        if len(pending) >= window:
            j, fut = pending.popleft()
            yield j, fut.result()
    while pending:
        j, fut = pending.popleft()
        yield j, fut.result()


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="img", dynamic_ncols=True, leave=False)
