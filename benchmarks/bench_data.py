"""Data larger than memory: the on-disk folder cache against the in-memory path.

Generates a folder of N JPEG images (default 50,000 at 128 px: random shapes on
gradient backgrounds, 8 class folders), and a second folder holding the first 10,000 of
them (hard links).  For each folder, in fresh processes:

1. ``build``: SimCLR pretraining at ``--image-size`` for ``--steps`` steps from an empty
   cache (the folder is decoded into the cache first);
2. ``disk``: the same run again, the cache warm (``--runs`` times);
3. ``memory``: the same run with ``data.in_memory=true`` (the decoded images held in
   memory, the path every source used before the cache), 10,000 images only;
4. ``embed``: ``selfsup embed`` of the whole folder with the trained encoder.

Each process reports its peak resident memory (VmHWM) and the peak of RssAnon (sampled
every 20 ms), the cache build rate, the seconds from process start to the first step,
and training images/s (steps 5 to the end).  Results go to
``benchmarks/results/data.json``.

    python benchmarks/bench_data.py [--num-images 50000] [--steps 40] [--runs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CLASSES = 8


def _image(i: int, side: int) -> "Image.Image":
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(i)
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, side)[:, None, None]
    bg = (top * (1 - t) + bottom * t).repeat(side, axis=1).astype(np.uint8)  # (side, side, 3) vertical gradient
    img = Image.fromarray(bg)
    draw = ImageDraw.Draw(img)
    k = i % CLASSES
    r = rng.uniform(0.2, 0.35) * side
    cx, cy = rng.uniform(r, side - r, 2)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    if k < 4:
        n = (3, 4, 5, 6)[k]
        a = rng.uniform(0, 2 * np.pi)
        pts = [(cx + r * np.cos(a + 2 * np.pi * j / n), cy + r * np.sin(a + 2 * np.pi * j / n)) for j in range(n)]
        draw.polygon(pts, fill=colour)
    elif k == 4:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif k == 5:
        draw.ellipse([cx - r, cy - r / 2, cx + r, cy + r / 2], fill=colour)
    elif k == 6:
        draw.line([cx - r, cy - r, cx + r, cy + r], fill=colour, width=max(2, side // 16))
        draw.line([cx - r, cy + r, cx + r, cy - r], fill=colour, width=max(2, side // 16))
    else:
        draw.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=colour)
    return img


def _write(args) -> None:
    i, side, root = args
    path = Path(root) / f"c{i % CLASSES}" / f"{i:06d}.jpg"
    _image(i, side).save(path, quality=90)


def make_folders(work: Path, n: int, subset: int, side: int) -> tuple[Path, Path]:
    big, small = work / f"jpeg{n}", work / f"jpeg{subset}"
    if not (big / ".complete").exists():
        shutil.rmtree(big, ignore_errors=True)
        for c in range(CLASSES):
            (big / f"c{c}").mkdir(parents=True)
        t0 = time.perf_counter()
        with Pool(os.cpu_count() or 1) as pool:
            pool.map(_write, [(i, side, str(big)) for i in range(n)], chunksize=256)
        (big / ".complete").write_text(f"{n}\n")
        print(f"generated {n} JPEGs of {side} px in {time.perf_counter() - t0:.0f} s", flush=True)
    if not (small / ".complete").exists():
        shutil.rmtree(small, ignore_errors=True)
        for c in range(CLASSES):
            (small / f"c{c}").mkdir(parents=True)
        for i in range(subset):
            name = f"c{i % CLASSES}/{i:06d}.jpg"
            os.link(big / name, small / name)
        (small / ".complete").write_text(f"{subset}\n")
    return big, small


# ---------------------------------------------------------------------------------------- child


def _status(key: str) -> int:
    """A /proc/self/status value in bytes (VmHWM, RssAnon, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(a) -> dict:
    t_start = a.t_start
    peak_anon = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak_anon[0] = max(peak_anon[0], _status("RssAnon"))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    out: dict = {"mode": a.mode, "folder": a.folder}
    import torch

    torch.set_num_threads(a.threads)
    import selfsup
    from selfsup.data import cache
    from selfsup.methods.simclr import SimCLR

    real_build = cache.build_cache

    def timed_build(*args, **kw):
        t0 = time.perf_counter()
        skipped = real_build(*args, **kw)
        out["cache_build_seconds"] = time.perf_counter() - t0
        return skipped

    cache.build_cache = timed_build

    if a.mode == "embed":
        t0 = time.perf_counter()
        selfsup.embed(a.run, f"folder:{a.folder}", a.emb_out, progress=False)
        out["seconds"] = time.perf_counter() - t0
    else:
        stamps: list[float] = []
        real = SimCLR.training_step

        def timed(self, x, gen):
            stamps.append(time.time())
            return real(self, x, gen)

        SimCLR.training_step = timed
        overrides = {"data.in_memory": a.mode == "memory", "backbone_cfg.width": 16}
        selfsup.pretrain("simclr", f"folder:{a.folder}", overwrite=True, image_size=a.image_size, batch_size=a.batch_size,
                         epochs=1000, max_steps=a.steps, out_dir=a.run, progress=False, overrides=overrides,
                         log=lambda s: None)
        skip = min(5, len(stamps) - 2)
        out["seconds_to_first_step"] = stamps[0] - t_start
        out["train_images_per_s"] = a.batch_size * (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip])
        out["steps"] = len(stamps)
    stop.set()
    out["peak_rss_mb"] = _status("VmHWM") / 2**20
    out["peak_rss_anon_mb"] = max(peak_anon[0], _status("RssAnon")) / 2**20
    return out


def run_child(mode: str, folder: Path, run: Path, a, cache: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--folder", str(folder), "--run", str(run),
           "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--image-size", str(a.image_size),
           "--threads", str(a.threads), "--emb-out", str(run / "emb"), "--t-start", repr(time.time())]
    env = {**os.environ, "SELFSUP_CACHE": str(cache)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{mode} on {folder} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["process_seconds"] = time.perf_counter() - t0
    return out


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-images", type=int, default=50_000)
    ap.add_argument("--subset", type=int, default=10_000)
    ap.add_argument("--source-size", type=int, default=128, help="side of the generated JPEGs (px)")
    ap.add_argument("--image-size", type=int, default=64, help="training resolution (px)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=2, help="warm-cache runs per folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/bench_data")
    ap.add_argument("--out", default=str(HERE / "results" / "data.json"))
    ap.add_argument("--child"), ap.add_argument("--folder"), ap.add_argument("--run"), ap.add_argument("--emb-out")
    ap.add_argument("--t-start", type=float)
    a = ap.parse_args()
    if a.child:
        a.mode = a.child
        print(json.dumps(child(a)))
        return

    from selfsup.api import versions

    work = Path(a.work)
    big, small = make_folders(work, a.num_images, a.subset, a.source_size)
    results: dict = {"versions": versions(), "args": {k: v for k, v in vars(a).items() if v is not None},
                     "cpu_count": os.cpu_count(), "rows": []}
    print(f"hardware: {results['versions']['processor']}, {os.cpu_count()} cores; torch "
          f"{results['versions']['torch']}; {a.threads} torch threads", flush=True)
    for folder, n in ((small, a.subset), (big, a.num_images)):
        cache = work / f"cache{n}"
        shutil.rmtree(cache, ignore_errors=True)
        run = work / f"run{n}"
        plan = [("build", run)] + [("disk", run)] * a.runs
        if n == a.subset:
            plan += [("memory", run)] * a.runs
        plan += [("embed", run)]
        for mode, r in plan:
            if mode != "embed":
                shutil.rmtree(r, ignore_errors=True)
            row = {"images": n, **run_child(mode, folder, r, a, cache)}
            if mode == "build":
                row["cache_build_images_per_s"] = n / row["cache_build_seconds"]
            results["rows"].append(row)
            print(json.dumps(row), flush=True)

    rows = results["rows"]
    summary = {}
    for n in (a.subset, a.num_images):
        sel = lambda mode: [r for r in rows if r["images"] == n and r["mode"] == mode]  # noqa: E731
        s = {"peak_rss_mb_train": max(r["peak_rss_mb"] for r in sel("disk")),
             "peak_rss_anon_mb_train": max(r["peak_rss_anon_mb"] for r in sel("disk")),
             "peak_rss_mb_build": sel("build")[0]["peak_rss_mb"],
             "peak_rss_mb_embed": sel("embed")[0]["peak_rss_mb"],
             "cache_build_images_per_s": sel("build")[0]["cache_build_images_per_s"],
             "seconds_to_first_step_warm": [r["seconds_to_first_step"] for r in sel("disk")],
             "train_images_per_s_disk": [r["train_images_per_s"] for r in sel("disk")]}
        if sel("memory"):
            s["train_images_per_s_memory"] = [r["train_images_per_s"] for r in sel("memory")]
            s["peak_rss_mb_memory"] = max(r["peak_rss_mb"] for r in sel("memory"))
        summary[n] = s
    results["summary"] = summary
    small_s, big_s = summary[a.subset], summary[a.num_images]
    print("\n| | %d images | %d images |" % (a.subset, a.num_images))
    print("|---|---|---|")
    for key, label in (("peak_rss_mb_train", "peak RSS, training from the cache (MB)"),
                       ("peak_rss_anon_mb_train", "peak RssAnon, training from the cache (MB)"),
                       ("peak_rss_mb_build", "peak RSS, first run incl. cache build (MB)"),
                       ("peak_rss_mb_embed", "peak RSS, embed of the whole folder (MB)"),
                       ("cache_build_images_per_s", "cache build (decode + write), images/s")):
        print(f"| {label} | {small_s[key]:.0f} | {big_s[key]:.0f} |")
    print(f"| seconds to first step, warm cache | {mean_std(small_s['seconds_to_first_step_warm'])} | "
          f"{mean_std(big_s['seconds_to_first_step_warm'])} |")
    print(f"| training images/s from the cache | {mean_std(small_s['train_images_per_s_disk'])} | "
          f"{mean_std(big_s['train_images_per_s_disk'])} |")
    print(f"| training images/s in memory | {mean_std(small_s['train_images_per_s_memory'])} | - |")
    print(f"peak training RSS at {a.num_images} / at {a.subset}: "
          f"{big_s['peak_rss_mb_train'] / small_s['peak_rss_mb_train']:.3f}; cache / in-memory images/s: "
          f"{statistics.mean(small_s['train_images_per_s_disk']) / statistics.mean(small_s['train_images_per_s_memory']):.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
