"""selfsup against lightly on the same work, in one run: SimCLR images/s and kNN after
the same wall-clock budget.

Both sides get the same backbone (built by the same code), the same batch, the same
views (SimCLR at 32 px: crops of area 0.25-1, flips, colour jitter of strength 1 with
p 0.8, grayscale p 0.2, no blur: selfsup's `cpu` preset) and the same images (`shapes`
at 32 px).  lightly runs its own recipe, as in its SimCLR example: `SimCLRTransform` on
PIL images in a torch `DataLoader`, `SimCLRProjectionHead`, `NTXentLoss`, SGD (lr 0.06,
momentum 0.9), each view through the model separately, fp32.  selfsup runs
`selfsup.pretrain` (its engine, batched views, bf16 autocast and channels-last where the
CPU has native bf16), and once more with `train.amp=false` (fp32) to show what comes
from the precision.

Throughput: per case and side, ``--repeats`` runs of ``warmup + steps`` steps, each in a
fresh process; a run's images/s is (steps x batch) / (time of its timed steps, data
loading included); the sides alternate so that drift in the machine hits both.  The kNN
runs share the main process, lightly's first.  kNN: SimCLR on the small CNN
for ``--budget`` seconds of training on each side (selfsup gets the number of epochs
that its measured speed fits into the budget, so its schedule completes; lightly trains
until the budget is spent), then the same weighted kNN (k=20, T=0.07) on the frozen
features of the shapes test split.

lightly is an optional benchmark dependency, never one of selfsup's:

    pip install lightly      # or: pip install -e .[bench]
    python benchmarks/bench_peers.py [--repeats 3] [--budget 120] [--compile]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import selfsup
from selfsup.api import versions
from selfsup.data import create_dataset
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.models import BACKBONES, Encoder

CASES = [  # (backbone, batch size, warm-up steps, timed steps)
    ("resnet18", 128, 2, 6),
    ("small_cnn", 128, 5, 30),
]
SIZE = 32
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # lightly's Normalize


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


# --- lightly's recipe -------------------------------------------------------------------


class PILImages(torch.utils.data.Dataset):
    """uint8 (N, H, W, C) images as PIL images through a transform, as torchvision sets do."""

    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), 0


def lightly_parts(backbone: str, images: np.ndarray, batch: int, workers: int, seed: int):
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    torch.manual_seed(seed)
    net = BACKBONES.get(backbone)(in_chans=3, image_size=SIZE)
    head = SimCLRProjectionHead(net.num_features, net.num_features, 128)
    model = nn.Sequential(net, head)
    transform = SimCLRTransform(input_size=SIZE, cj_strength=1.0, min_scale=0.25, gaussian_blur=0.0)
    loader = torch.utils.data.DataLoader(PILImages(images, transform), batch_size=batch, shuffle=True,
                                         drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(seed))
    return net, model, loader, NTXentLoss(), torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9)


def lightly_steps(model, loader, criterion, opt, stop):
    """lightly's training step until ``stop(step, seconds)``; yields each step's seconds."""
    model.train()
    step, start = 0, time.perf_counter()
    while True:
        t = time.perf_counter()
        for (x0, x1), _ in loader:
            loss = criterion(model(x0), model(x1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            now = time.perf_counter()
            yield now - t
            t, step = now, step + 1
            if stop(step, now - start):
                return


def lightly_rate(backbone, images, batch, warmup, steps, workers, seed) -> float:
    _, model, loader, criterion, opt = lightly_parts(backbone, images, batch, workers, seed)
    times = list(lightly_steps(model, loader, criterion, opt, lambda s, _: s >= warmup + steps))
    return batch * steps / sum(times[warmup:])


# --- selfsup ----------------------------------------------------------------------------


def selfsup_rate(backbone, images, labels, batch, warmup, steps, work, overrides) -> float:
    run = selfsup.pretrain("simclr", (images, labels), overwrite=True, backbone=backbone, batch_size=batch, epochs=1000,
                           max_steps=warmup + steps, out_dir=work, progress=False, log=lambda s: None,
                           overrides={"train.log_every": 1, **overrides})
    timed = run.history[warmup:]  # one record per step (log_every 1)
    return batch * len(timed) / sum(batch / r["samples_per_s"] for r in timed)


# --- the benchmark ----------------------------------------------------------------------


def measure(spec: dict) -> float:
    """images/s of one timed run, in a fresh process: nothing one side changes in the
    process (selfsup's malloc setting, oneDNN's caches, threads) reaches the other."""
    out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"run {spec} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def one(spec: dict) -> float:
    torch.set_num_threads(spec["threads"])
    ds = create_dataset("shapes", image_size=SIZE)
    args = (spec["backbone"], ds.train.images)
    if spec["side"] == "lightly":
        return lightly_rate(*args, spec["batch"], spec["warmup"], spec["steps"], spec["workers"], spec["repeat"])
    with tempfile.TemporaryDirectory() as work:
        return selfsup_rate(*args, ds.train.labels, spec["batch"], spec["warmup"], spec["steps"], work,
                            spec["overrides"])


def throughput(a) -> list[dict]:
    out = []
    for backbone, batch, warmup, steps in CASES:
        variants = {"selfsup": {}, "selfsup_fp32": {"train.amp": False}}
        if a.compile:
            variants["selfsup_compile"] = {"train.compile": True}
        rates: dict[str, list[float]] = {"lightly": [], **{k: [] for k in variants}}
        base = {"backbone": backbone, "batch": batch, "warmup": warmup, "steps": steps, "threads": a.threads,
                "workers": a.lightly_workers}
        for r in range(a.repeats):
            rates["lightly"].append(measure({**base, "side": "lightly", "repeat": r}))
            for name, overrides in variants.items():
                rates[name].append(measure({**base, "side": "selfsup", "repeat": r, "overrides": overrides}))
            print(f"  {backbone} run {r}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items())
                  + " images/s", flush=True)
        row = {"backbone": backbone, "batch_size": batch, "image_size": SIZE, "warmup_steps": warmup,
               "timed_steps": steps, "repeats": a.repeats, "images_per_s": rates}
        for k, v in rates.items():
            row[f"{k}_mean"], row[f"{k}_std"] = mean_std(v)
        for name in variants:
            row[name.replace("selfsup", "ratio")] = row[f"{name}_mean"] / row["lightly_mean"]
        out.append(row)
    return out


def knn_of(encoder: Encoder, ds) -> float:
    ftr, fte = extract_features(encoder, ds.train), extract_features(encoder, ds.test)
    return knn_accuracy(ftr, torch.from_numpy(ds.train.labels), fte, torch.from_numpy(ds.test.labels),
                        k=20, temperature=0.07, num_classes=len(ds.train.classes))


def same_budget_knn(a, ds, selfsup_rate_: float, work: Path) -> dict:
    images, labels = ds.train.images, ds.train.labels
    t0 = time.perf_counter()
    net, model, loader, criterion, opt = lightly_parts("small_cnn", images, 128, a.lightly_workers, 0)
    steps = sum(1 for _ in lightly_steps(model, loader, criterion, opt, lambda s, sec: sec >= a.budget))
    lightly_s = time.perf_counter() - t0
    lightly_knn = knn_of(Encoder(net, IMAGENET_MEAN, IMAGENET_STD).eval(), ds)
    epochs = max(1, int(a.budget * selfsup_rate_ / len(images) * 0.9))  # 10% for start-up and epoch ends
    t0 = time.perf_counter()
    run = selfsup.pretrain("simclr", "shapes", overwrite=True, epochs=epochs, out_dir=str(work / "knn"), progress=False,
                           log=lambda s: None)
    selfsup_s = time.perf_counter() - t0
    return {"budget_s": a.budget, "lightly": {"seconds": lightly_s, "steps": steps, "knn": lightly_knn},
            "selfsup": {"seconds": selfsup_s, "epochs": epochs, "steps": run.history[-1]["step"],
                        "knn": knn_of(run.encoder, ds)},
            "random_init_knn": knn_of(Encoder(BACKBONES.get("small_cnn")(in_chans=3, image_size=SIZE),
                                              IMAGENET_MEAN, IMAGENET_STD).eval(), ds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs per side and case")
    ap.add_argument("--budget", type=float, default=120, help="training seconds per side for the kNN comparison")
    ap.add_argument("--lightly-workers", type=int, default=0,
                    help="DataLoader workers for lightly (0 was its fastest setting on 2 cores)")
    ap.add_argument("--compile", action="store_true", help="also time selfsup with train.compile=true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "peers.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one timed run (JSON spec), prints images/s
    a = ap.parse_args()
    if a.one:
        print(one(json.loads(a.one)))
        return
    import lightly

    torch.set_num_threads(a.threads)
    env = {**versions(), "lightly": lightly.__version__}
    print(f"hardware: {env['cpu_model']} ({env['processor']}), native bf16: {env['cpu_bf16'] or 'no'}, "
          f"{a.threads} torch threads, GPU: {env['cuda'] or 'none'}")
    print(f"torch {env['torch']}, torchvision {env['torchvision']}, lightly {env['lightly']}, selfsup {env['selfsup']}")
    ds = create_dataset("shapes", image_size=SIZE)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = throughput(a)
        for r in rows:
            print(f"{r['backbone']:10s} batch {r['batch_size']}, {r['image_size']} px, n={r['repeats']} runs x "
                  f"{r['timed_steps']} steps: lightly {r['lightly_mean']:.1f} +- {r['lightly_std']:.1f}, "
                  f"selfsup {r['selfsup_mean']:.1f} +- {r['selfsup_std']:.1f} images/s -> {r['ratio']:.2f}x "
                  f"(selfsup fp32 {r['selfsup_fp32_mean']:.1f} +- {r['selfsup_fp32_std']:.1f}, "
                  f"{r['ratio_fp32']:.2f}x" + (f"; with train.compile {r['selfsup_compile_mean']:.1f} +- "
                                              f"{r['selfsup_compile_std']:.1f}, {r['ratio_compile']:.2f}x"
                                              if a.compile else "") + ")", flush=True)
        small = next(r for r in rows if r["backbone"] == "small_cnn")
        knn = same_budget_knn(a, ds, small["selfsup_mean"], work)
    print(f"kNN on shapes after {a.budget:.0f} s of SimCLR training (small CNN): "
          f"lightly {knn['lightly']['knn']:.3f} ({knn['lightly']['steps']} steps, {knn['lightly']['seconds']:.0f} s), "
          f"selfsup {knn['selfsup']['knn']:.3f} ({knn['selfsup']['epochs']} epochs, {knn['selfsup']['seconds']:.0f} s "
          f"with start-up); random init {knn['random_init_knn']:.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"env": env, "threads": a.threads, "lightly_workers": a.lightly_workers,
                                       "throughput": rows, "same_budget_knn": knn}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
