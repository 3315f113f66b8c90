"""Every write of a run fails once, and nothing is lost.

Every file selfsup writes goes through :class:`selfsup.files.WriteFile` (the one write
path).  A reference session -- pretrain from an image folder (which builds the data cache),
resume, export, embed, evaluate -- is run once while counting its writes, with a snapshot
of the files before each command.  Then, for every write k and each way a write fails:

- ``ENOSPC``: the disk is full at the first byte;
- ``EIO``: an I/O error halfway through the file;
- ``kill``: the process is killed (SIGKILL, no clean-up) at a random byte,

the command that makes write k runs again from its snapshot in a forked child whose k-th
write fails that way.  Afterwards: the error was one line naming the file and the cause
(or the process died); every file that existed before is whole and loads; retrying --
``--resume`` when a checkpoint is there, else the same command, which a folder without a
checkpoint accepts -- succeeds; and what the retry leaves is what the uninterrupted session
left (the same weights, embeddings and exports), with no temporary file anywhere.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from forked import assert_one_line_error, run_forked
from selfsup import files
from selfsup.cli import main
from selfsup.train import checkpoint

MODES = ("ENOSPC", "EIO", "kill")


def session(base: Path) -> list[list[str]]:
    """The reference session's commands, on files under ``base`` (the data cache too:
    ``SELFSUP_CACHE`` is ``base/cache``).  The images lie beside ``base``: a copy of them
    would be new files (new inodes), which the cache rightly does not trust."""
    data = ["--data", f"folder:{base.parent / 'imgs'}"]
    train = ["--batch-size", "16", "--image-size", "8", "--no-progress", "--set", "train.monitor_every=0",
             "--set", "train.threads=1", "--set", "train.log_every=1", "--set", "train.checkpoint_every=1",
             "--set", "backbone_cfg={width: 4}", "--out", str(base / "R")]
    return [["pretrain", *data, *train, "--max-steps", "2"],
            ["pretrain", "--resume", *data, *train, "--max-steps", "3"],
            ["export", str(base / "R"), "--out", str(base / "X.safetensors")],
            ["embed", str(base / "R"), *data, "--out", str(base / "E")],
            ["evaluate", str(base / "R"), *data, "--no-linear"]]


def images(root: Path) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(40):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")


class Faulty:
    """The operating system's file under a :class:`~selfsup.files.WriteFile`, failing once
    ``at`` bytes are written: ENOSPC or EIO, or SIGKILL for ``kill``."""

    def __init__(self, file, at: int, mode: str):
        self.file, self.at, self.mode, self.written = file, at, mode, 0

    def write(self, data) -> int:
        room = self.at - self.written
        if len(data) <= room:
            self.written += len(data)
            return self.file.write(data)
        if room > 0:  # what fitted is on the disk, as with a real short write
            self.written += self.file.write(memoryview(data)[:room])
            return room
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        code = errno.ENOSPC if self.mode == "ENOSPC" else errno.EIO
        raise OSError(code, os.strerror(code))

    def __getattr__(self, name):
        return getattr(self.file, name)


def fail_write(k: int, at: int, mode: str):
    """A child's setup: its k-th WriteFile (counted from 0) fails after ``at`` bytes."""
    def setup():
        opened = []
        init = files.WriteFile.__init__

        def counting(self, *args, **kwargs):
            init(self, *args, **kwargs)
            if len(opened) == k:
                self._file = Faulty(self._file, at, mode)
            opened.append(self.target)
        files.WriteFile.__init__ = counting
    return setup


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted session: its writes per command ``(command, target, bytes)`` and a
    snapshot of ``base`` before each command and after the last."""
    root = tmp_path_factory.mktemp("faults")
    base, snaps = root / "work", root / "snap"
    cache = os.environ.get("SELFSUP_CACHE")
    os.environ["SELFSUP_CACHE"] = str(base / "cache")
    images(root / "imgs")
    base.mkdir()
    writes: list[tuple[int, Path, int]] = []
    command = 0
    init, write = files.WriteFile.__init__, files.WriteFile.write

    def counting(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.n = 0
        writes.append([command, self.target, self])

    def counting_write(self, data):
        done = write(self, data)
        self.n += done
        return done

    files.WriteFile.__init__, files.WriteFile.write = counting, counting_write
    try:
        torch.set_num_threads(1)
        for command, argv in enumerate(session(base)):
            shutil.copytree(base, snaps / str(command))
            assert main(argv) == 0, argv
        shutil.copytree(base, snaps / str(command + 1))
    finally:
        files.WriteFile.__init__, files.WriteFile.write = init, write
    writes = [(c, target, f.n) for c, target, f in writes]
    yield base, snaps, writes
    if cache is None:
        os.environ.pop("SELFSUP_CACHE", None)
    else:
        os.environ["SELFSUP_CACHE"] = cache


def load_state(base: Path) -> dict:
    """What the session leaves that must come out the same, read from whole files only."""
    state = {}
    run = base / "R"
    if (run / "last.pt").exists():
        ckpt = checkpoint.load_checkpoint(run)
        state["step"] = ckpt["step"]
        state["weights"] = ckpt["method_state"]
    if (run / "metrics.jsonl").exists():
        lines = (run / "metrics.jsonl").read_text().splitlines()
        if lines and not lines[-1].endswith("}"):
            lines.pop()  # torn by a kill during the append; a resume drops it
        state["metrics"] = [(r["step"], r["loss"]) for r in map(json.loads, lines)]
    for name in ("encoder.safetensors",):
        if (run / name).exists():
            state[name] = checkpoint.read_encoder(run / name)[1]
    if (base / "X.safetensors").exists():
        state["export"] = checkpoint.read_encoder(base / "X.safetensors")[1]
    if (base / "E" / "embeddings.npy").exists():
        state["embed"] = {n: np.load(base / "E" / n) for n in ("embeddings.npy", "labels.npy", "ids.npy")}
        state["embed"]["csv"] = (base / "E" / "embeddings.csv").read_text()
    if (run / "eval.json").exists():
        state["eval"] = json.loads((run / "eval.json").read_text())["knn_top1"]
    return state


def same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def leftovers(base: Path) -> list[str]:
    return [str(p.relative_to(base)) for p in base.rglob("*") if p.name.endswith((".tmp", ".partial"))]


def retry(argv: list[str], base: Path) -> list[str]:
    """What a user does after a failed command: a pretrain whose folder holds a checkpoint
    is continued with --resume; anything else is run again as it was."""
    if argv[0] == "pretrain" and "--resume" not in argv and (base / "R" / "last.pt").exists():
        return argv[:1] + ["--resume"] + argv[1:]
    return argv


def test_every_write_fails_once_and_nothing_is_lost(reference, one_thread):
    base, snaps, writes = reference
    commands = session(base)
    kinds = {t.name for _, t, _ in writes}
    for expected in ("last.pt", "encoder.safetensors", "metrics.jsonl", "config.yaml", "env.json", "train.u8",
                     "manifest.json", "embeddings.npy", "embeddings.csv", "X.safetensors", "eval.json"):
        assert expected in kinds, (expected, sorted(kinds))
    rng = random.Random(26)
    expected_states = {c: load_state(snaps / str(c)) for c in range(len(commands) + 1)}
    first = {c: next(i for i, (cc, _, _) in enumerate(writes) if cc == c) for c, _, _ in writes}
    for k, (command, target, size) in enumerate(writes):
        for mode in MODES:
            # the kill lands in the first three quarters: a metrics line's length varies from run
            # to run with its timings, so a byte near the reference's end may never be written
            at = {"ENOSPC": 0, "EIO": size // 2, "kill": rng.randrange(max(1, size * 3 // 4))}[mode]
            shutil.rmtree(base)
            shutil.copytree(snaps / str(command), base)
            before = load_state(base)
            what = f"write {k} ({target.name}, {size} bytes) of {commands[command][0]}, {mode} at byte {at}"

            result = run_forked(commands[command], setup=fail_write(k - first[command], at, mode))
            if mode == "kill":
                assert result["code"] == -signal.SIGKILL, (what, result)
            else:
                cause = "No space left on device" if mode == "ENOSPC" else "Input/output error"
                line = assert_one_line_error(result, "cannot write", target.name, cause)
                if target.parent == base / "R" and commands[command][0] == "pretrain":  # says what is left
                    resumable = (base / "R" / "last.pt").exists()
                    assert ("--resume" if resumable else "start over") in line, (what, line)
                assert not leftovers(base), (what, leftovers(base))

            after = load_state(base)  # every file there reads whole
            if "step" in before:  # the checkpoint there before is there still, or a newer whole one
                assert after["step"] >= before["step"], what
            if commands[command][0] != "pretrain":  # a reader never touches the run
                assert same({k: v for k, v in after.items() if k in ("step", "weights", "metrics", "encoder.safetensors")},
                            {k: v for k, v in before.items() if k in ("step", "weights", "metrics", "encoder.safetensors")}), what

            again = retry(commands[command], base)
            assert main(again) == 0, (what, again)
            if again is not commands[command]:  # resumed to where the failed command was going
                assert checkpoint.load_checkpoint(base / "R")["step"] == 2, what
            assert same(load_state(base), expected_states[command + 1]), what
            assert not leftovers(base), (what, leftovers(base))
