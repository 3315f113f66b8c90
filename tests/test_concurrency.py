"""Concurrency as a test, not a hope: processes started together on one run folder.

Each round forks a mix of ``pretrain`` (new runs with distinct seeds), ``pretrain
--resume``, ``evaluate``, ``embed`` and ``export`` children from this process (selfsup is
already imported, so a child costs its work, not an interpreter start), releases them at
once from a barrier, and checks that

- exactly one writer trained; every other writer got a one-line error (another process
  holds the folder, or it already holds a run) -- or, when it came after the winner had
  finished, found nothing left to train;
- every reader either gave a correct result read from whole files, or a one-line error
  because there was nothing to read yet;
- the folder afterwards loads: the checkpoint, the exported encoder (the same weights),
  the config (the winner's) and every metrics line, with no temporary file left behind.
"""
from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import selfsup
from forked import assert_one_line_error, error_lines, run_together
from selfsup.cli import main
from selfsup.train import checkpoint

ROUNDS = 50
TINY = ["--data", "digits", "--batch-size", "32", "--no-progress", "--set", "train.monitor_every=0",
        "--set", "train.threads=1", "--set", "train.log_every=1"]
WRITER_REFUSALS = ("another selfsup process is writing", "already holds a run")
NOTHING_YET = ("not found",)  # a reader that came before the first checkpoint


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A run at step 1: what the resume rounds start from."""
    run = tmp_path_factory.mktemp("template") / "run"
    torch.set_num_threads(1)
    assert main(["pretrain", *TINY, "--max-steps", "1", "--seed", "7", "--out", str(run)]) == 0
    return run


def commands_for(round_: int, run: Path, rng: random.Random, tmp: Path) -> list[tuple[str, list[str], object]]:
    """``(kind, argv, expected)`` for each child of a round: new-run rounds and resume
    rounds alternate; the writers and readers of each are drawn at random."""
    jobs = []
    resuming = round_ % 2 == 1
    if resuming:
        for _ in range(rng.choice([1, 2, 3])):
            jobs.append(("resume", ["pretrain", "--resume", *TINY, "--max-steps", "2", "--out", str(run)], None))
        if rng.random() < 0.5:  # a new run into a folder that holds one: always refused
            jobs.append(("pretrain", ["pretrain", *TINY, "--max-steps", "1", "--seed", "99", "--out", str(run)], 99))
    else:
        for seed in rng.sample(range(1, 1000), rng.choice([2, 3])):
            jobs.append(("pretrain", ["pretrain", *TINY, "--max-steps", "1", "--seed", str(seed), "--out", str(run)],
                         seed))
        if rng.random() < 0.3:  # resuming a run that may not exist yet
            jobs.append(("resume", ["pretrain", "--resume", *TINY, "--max-steps", "1", "--out", str(run)], None))
    for i, kind in enumerate(rng.sample(["evaluate", "embed", "export"], rng.choice([1, 2]))):
        out = tmp / f"{kind}-{round_}-{i}"
        argv = {"evaluate": ["evaluate", str(run), "--data", "digits", "--no-linear"],  # writes RUN/eval.json
                "embed": ["embed", str(run), "--data", "digits", "--split", "test", "--out", str(out)],
                "export": ["export", str(run), "--out", str(out) + ".safetensors"]}[kind]
        jobs.append((kind, argv, run / "eval.json" if kind == "evaluate" else out))
    rng.shuffle(jobs)
    return jobs


def check_reader(kind: str, result: dict, out: Path) -> None:
    if result["code"] == 2:
        assert_one_line_error(result)
        assert any(n in result["err"] for n in NOTHING_YET), result["err"]
        return
    assert result["code"] == 0, result
    if kind == "evaluate":
        res = json.loads(out.read_text())
        assert res["n_test"] == 360 and 0 <= res["knn_top1"] <= 1
    elif kind == "embed":
        feats = np.load(out / "embeddings.npy")
        ids = np.load(out / "ids.npy")
        assert feats.shape == (360, 128) and feats.dtype == np.float32 and np.isfinite(feats).all()
        assert len(ids) == len(np.load(out / "labels.npy")) == 360
        with (out / "embeddings.csv").open(newline="") as f:
            rows = list(csv.reader(f))
        assert len(rows) == 361 and rows[1][0] == ids[0]
        assert np.allclose(np.asarray(rows[1][2:], dtype=np.float32), feats[0], rtol=1e-5, atol=1e-6)
    else:
        enc = selfsup.load_encoder(Path(str(out) + ".safetensors"), device="cpu")
        assert enc(torch.rand(2, 1, 8, 8)).shape == (2, 128)


def check_folder(run: Path, resuming: bool, winner_seed: int | None) -> None:
    ckpt = checkpoint.load_checkpoint(run)
    assert ckpt["step"] == (2 if resuming else 1)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train"]["seed"] == ckpt["config"]["train"]["seed"]
    if winner_seed is not None:
        assert ckpt["config"]["train"]["seed"] == winner_seed
    spec, exported = checkpoint.read_encoder(run / "encoder.safetensors")
    saved = checkpoint.encoder_state(ckpt)
    assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, ckpt["step"] + 1))
    assert not [p.name for p in run.iterdir() if p.name.endswith((".tmp", ".partial"))]
    selfsup.load_encoder(run, device="cpu")


def test_processes_started_together_on_one_run_folder(template, tmp_path, one_thread):
    rng = random.Random(26)
    kinds_seen: dict[str, int] = {}
    for round_ in range(ROUNDS):
        run = tmp_path / f"run{round_}"
        resuming = round_ % 2 == 1
        if resuming:
            shutil.copytree(template, run)
        jobs = commands_for(round_, run, rng, tmp_path)
        results = run_together([argv for _, argv, _ in jobs])
        trained = []
        for (kind, argv, expected), result in zip(jobs, results):
            kinds_seen[kind] = kinds_seen.get(kind, 0) + 1
            assert "Traceback" not in result["err"] and result["code"] in (0, 2), (argv, result)
            if kind in ("pretrain", "resume"):
                if result["code"] == 2:
                    line = assert_one_line_error(result)
                    allowed = WRITER_REFUSALS + (NOTHING_YET + ("holds no checkpoint",) if kind == "resume" else ())
                    assert any(n in line for n in allowed), (argv, line)
                elif "final loss" in result["out"]:
                    trained.append(expected)
                else:
                    assert kind == "resume" and "nothing trained" in result["out"], (argv, result)
            else:
                check_reader(kind, result, expected)
        assert len(trained) == 1, (round_, [(a, r["code"], error_lines(r["err"])) for (_, a, _), r in
                                            zip(jobs, results)])
        check_folder(run, resuming, trained[0])
    assert ROUNDS >= 50 and set(kinds_seen) == {"pretrain", "resume", "evaluate", "embed", "export"}, kinds_seen
