"""Pretraining throughput: images per second through a full SimCLR step.

One step = two augmented views per image, forward, NT-Xent, backward, optimizer step.
Reports the median over n timed steps after warm-up steps, per backbone, with the
hardware and library versions, and writes benchmarks/results/throughput.json.

    python benchmarks/bench_throughput.py [--steps 10] [--warmup 3] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from selfsup.api import versions
from selfsup.config import OptimConfig
from selfsup.methods import create_method
from selfsup.models import create_backbone
from selfsup.train.engine import select_device
from selfsup.train.optim import build_optimizer

CASES = [  # (backbone, image side px, batch size)
    ("small_cnn", 32, 256),
    ("resnet18", 32, 128),
]


def bench(backbone: str, size: int, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    enc = create_backbone(backbone, in_chans=3, image_size=size)
    method = create_method("simclr", enc, {}, image_size=size, channels=3).to(device)
    opt = build_optimizer(method.trainable_parameters(), OptimConfig())
    for g in opt.param_groups:
        g["lr"] = 1e-4
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, device=device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss, _ = method.training_step(x, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    rates = [batch / t for t in times]
    return {"backbone": backbone, "image_size": size, "batch_size": batch, "steps": steps,
            "median_images_per_s": statistics.median(rates),
            "mean_images_per_s": statistics.mean(rates), "std_images_per_s": statistics.stdev(rates)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per case")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "throughput.json"))
    a = ap.parse_args()
    device = select_device(a.device)
    env = versions()
    print(f"hardware: {env['platform']} | {env['processor']} | {env['cpu_threads']} torch threads | "
          f"GPU: {env['cuda'] or 'none'} | device {device}")
    print(f"torch {env['torch']}, torchvision {env['torchvision']}, selfsup {env['selfsup']}")
    print(f"SimCLR step (2 views/image), median over n={a.steps} steps after {a.warmup} warm-up steps")
    results = []
    for backbone, size, batch in CASES:
        r = bench(backbone, size, batch, a.steps, a.warmup, device)
        results.append(r)
        print(f"  {backbone:10s} {size}px batch {batch}: median {r['median_images_per_s']:.0f} images/s "
              f"(mean {r['mean_images_per_s']:.0f} +- {r['std_images_per_s']:.0f})")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"env": env, "device": str(device), "results": results}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
