"""Pretraining throughput through the real engine: SimCLR images/s per backbone and precision.

Each case is ``selfsup.pretrain("simclr", ...)`` on random 32 px images (the engine's
loader, batched views, NT-Xent, backward, optimizer step, metrics): ``--repeats`` runs
of ``warmup + steps`` steps; a run's images/s is (steps x batch) / (time of its timed
steps, data waits included), reported as mean +- std over the runs, with the share of
step time spent waiting for data.  Modes: fp32 (``train.amp=false``), the default
(bf16 autocast where the hardware has it, channels-last) and the default plus
``train.compile=true`` (compilation happens in the warm-up steps and is reported
separately).  Prints hardware and versions; writes benchmarks/results/throughput.json.

    python benchmarks/bench_throughput.py [--repeats 3] [--device auto] [--compile]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import selfsup
from selfsup.api import versions
from selfsup.models.runtime import choose_precision, select_device

CASES = [  # (backbone, batch size, warm-up steps, timed steps)
    ("small_cnn", 256, 5, 30),
    ("resnet18", 128, 2, 8),
]
SIZE = 32


def one_run(backbone: str, batch: int, warmup: int, steps: int, device: str, overrides: dict, work: str) -> dict:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * (warmup + steps + 1), SIZE, SIZE, 3), dtype=np.uint8)  # one epoch
    t0 = time.perf_counter()
    run = selfsup.pretrain("simclr", images, overwrite=True, backbone=backbone, batch_size=batch, epochs=10_000,
                           max_steps=warmup + steps, device=device, out_dir=work, progress=False,
                           log=lambda s: None, overrides={"train.log_every": 1, **overrides})
    wall = time.perf_counter() - t0
    timed = run.history[warmup:]  # one record per step
    seconds = [batch / r["samples_per_s"] for r in timed]
    warm = sum(batch / r["samples_per_s"] for r in run.history[:warmup])
    return {"images_per_s": batch * len(timed) / sum(seconds),
            "data_wait": sum(r["data_wait"] * s for r, s in zip(timed, seconds)) / sum(seconds),
            "warmup_s": warm, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per case")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="also measure train.compile=true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = select_device(a.device)
    env = versions()
    print(f"hardware: {env['cpu_model']} ({env['processor']}), native bf16: {env['cpu_bf16'] or 'no'}, "
          f"{env['cpu_threads']} torch threads, GPU: {env['cuda'] or 'none'}, device {device}")
    print(f"torch {env['torch']}, torchvision {env['torchvision']}, selfsup {env['selfsup']}")
    modes = {"fp32": {"train.amp": False}, "default": {}}
    if a.compile:
        modes["default+compile"] = {"train.compile": True}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, batch, warmup, steps in CASES:
            for mode, overrides in modes.items():
                runs = [one_run(backbone, batch, warmup, steps, str(device), overrides, f"{tmp}/{backbone}-{mode}-{r}")
                        for r in range(a.repeats)]
                rates = [r["images_per_s"] for r in runs]
                precision = str(choose_precision(device, overrides.get("train.amp", True)))
                row = {"backbone": backbone, "image_size": SIZE, "batch_size": batch, "mode": mode,
                       "precision": precision, "repeats": a.repeats, "timed_steps": steps, "runs": runs,
                       "mean_images_per_s": statistics.mean(rates),
                       "std_images_per_s": statistics.stdev(rates) if len(rates) > 1 else 0.0,
                       "data_wait": statistics.mean(r["data_wait"] for r in runs),
                       "warmup_s": statistics.mean(r["warmup_s"] for r in runs)}
                results.append(row)
                print(f"  {backbone:10s} {SIZE}px batch {batch} {mode:16s} [{precision}]: "
                      f"{row['mean_images_per_s']:.1f} +- {row['std_images_per_s']:.1f} images/s "
                      f"(n={a.repeats} runs x {steps} steps), data wait {row['data_wait']:.1%}, "
                      f"{warmup} warm-up steps {row['warmup_s']:.1f} s", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"env": env, "device": str(device), "results": results}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
