"""Every method on `shapes`, CPU-sized: kNN and linear-probe accuracy, seconds per epoch.

Each method runs with its `cpu` preset (only the epochs, image size and number of
training images are set here) on the same training images, for n seeds; the same
backbone at random initialisation is the baseline. Evaluation: kNN and linear probe on
the frozen features of the shapes train/test splits. Prints hardware, versions and
mean +- std over the seeds; writes benchmarks/results/methods.json and methods.md.

    python benchmarks/bench_methods.py --image-size 16 --num-train 2000 --epochs 80 --seeds 3 --jobs 2 [--no-amp]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import selfsup
from selfsup.api import versions
from selfsup.eval.label_efficiency import fresh_copy
from selfsup.methods import METHODS
from selfsup.models.runtime import choose_precision


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def one_run(name: str, seed: int, a: argparse.Namespace) -> dict:
    """Pretrain one method with one seed and evaluate it and its random initialisation."""
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    run = selfsup.pretrain(name, "shapes", overwrite=True, epochs=a.epochs, num_train=a.num_train, image_size=a.image_size,
                           seed=seed, out_dir=str(Path(a.work) / f"{name}-s{seed}"), progress=False,
                           log=lambda s: None, overrides={"train.amp": not a.no_amp})
    seconds = (time.perf_counter() - t0) / a.epochs
    res = selfsup.evaluate(run.encoder, "shapes", amp=not a.no_amp)
    rnd = selfsup.evaluate(fresh_copy(run.encoder.cpu(), seed), "shapes", linear=False, amp=not a.no_amp)
    collapsed = any(r.get("collapse_suspected") for r in run.history)
    print(f"  {name} seed {seed}: kNN {res['knn_top1']:.3f} (random init {rnd['knn_top1']:.3f}), linear "
          f"{res['linear_top1']:.3f}, {seconds:.2f} s/epoch{', COLLAPSE FLAGGED' if collapsed else ''}", flush=True)
    return {"method": name, "seed": seed, "backbone": run.config.backbone, "knn": res["knn_top1"],
            "linear": res["linear_top1"], "random_init_knn": rnd["knn_top1"], "seconds_per_epoch": seconds,
            "collapse_flagged": collapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--num-train", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel, each with --threads threads")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default="runs/bench_methods", help="where the runs are written")
    ap.add_argument("--no-amp", action="store_true", help="fp32 everywhere (train.amp=false); writes methods_fp32.*")
    a = ap.parse_args()
    precision = str(choose_precision("cpu", not a.no_amp))
    tag = "methods_fp32" if a.no_amp else "methods"
    env = versions()
    names = a.methods or [n for n in METHODS.names() if METHODS.get(n).modality == "image"]
    print(f"hardware: {env['platform']} | {env['processor']} | GPU: {env['cuda'] or 'none'} | "
          f"{a.jobs} job(s) x {a.threads} torch thread(s)")
    print(f"torch {env['torch']}, selfsup {env['selfsup']}; shapes at {a.image_size} px, {a.num_train} "
          f"train images, {a.epochs} epochs, cpu presets, n={a.seeds} seed(s), precision {precision}", flush=True)
    tasks = [(name, seed) for name in names for seed in range(a.seeds)]
    with ProcessPoolExecutor(a.jobs) as pool:
        results = list(pool.map(one_run, *zip(*tasks), [a] * len(tasks)))
    rows = []
    for name in names:
        rs = [r for r in results if r["method"] == name]
        rows.append({"method": name, "backbone": rs[0]["backbone"], "n_seeds": len(rs),
                     **{k: mean_std([r[k] for r in rs]) for k in ("knn", "linear", "random_init_knn",
                                                                  "seconds_per_epoch")},
                     "collapse_flagged": sum(r["collapse_flagged"] for r in rs), "runs": rs,
                     "command": f"selfsup pretrain --method {name} --data shapes --epochs {a.epochs} "
                                f"--num-train {a.num_train} --image-size {a.image_size}"})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"env": env, "precision": precision, "args": vars(a), "rows": rows},
                                                indent=2))
    lines = ["| method | backbone | kNN | linear | random-init kNN | s/epoch | n seeds | collapse flagged |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['backbone']} | {r['knn'][0]:.3f} +- {r['knn'][1]:.3f} | "
                     f"{r['linear'][0]:.3f} +- {r['linear'][1]:.3f} | {r['random_init_knn'][0]:.3f} +- "
                     f"{r['random_init_knn'][1]:.3f} | {r['seconds_per_epoch'][0]:.2f} | {r['n_seeds']} | "
                     f"{r['collapse_flagged']} |")
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
