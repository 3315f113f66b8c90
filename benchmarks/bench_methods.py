"""Every method on `shapes`, CPU-sized: kNN and linear-probe accuracy, seconds per epoch.

Each method runs with its `cpu` preset for the same number of epochs on the same
training images, for n seeds; the same backbone at random initialisation is the
baseline. Prints hardware, versions and mean +- std over the seeds; writes
benchmarks/results/methods.json and methods.md.

    python benchmarks/bench_methods.py [--epochs 10] [--num-train 4000] [--seeds 1]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import selfsup
from selfsup.api import versions
from selfsup.label_efficiency import fresh_copy
from selfsup.methods import METHODS


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--num-train", type=int, default=4000)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default="runs/bench_methods", help="where the runs are written")
    a = ap.parse_args()
    env = versions()
    print(f"hardware: {env['platform']} | {env['processor']} | {env['cpu_threads']} torch threads | "
          f"GPU: {env['cuda'] or 'none'}")
    print(f"torch {env['torch']}, selfsup {env['selfsup']}; shapes, {a.num_train} train images, "
          f"{a.epochs} epochs, cpu presets, n={a.seeds} seed(s)")
    rows = []
    for name in a.methods or METHODS.names():
        knn, lin, spe, rnd_knn = [], [], [], []
        for seed in range(a.seeds):
            out = Path(a.work) / f"{name}-s{seed}"
            t0 = time.perf_counter()
            run = selfsup.pretrain(name, "shapes", epochs=a.epochs, num_train=a.num_train, seed=seed,
                                   out_dir=str(out), progress=False, log=lambda s: None)
            spe.append((time.perf_counter() - t0) / a.epochs)
            res = selfsup.evaluate(run.encoder, "shapes")
            knn.append(res["knn_top1"])
            lin.append(res["linear_top1"])
            rnd_knn.append(selfsup.evaluate(fresh_copy(run.encoder.cpu(), seed), "shapes", linear=False)["knn_top1"])
        row = {"method": name, "backbone": run.config.backbone, "n_seeds": a.seeds,
               "knn": mean_std(knn), "linear": mean_std(lin), "random_init_knn": mean_std(rnd_knn),
               "seconds_per_epoch": mean_std(spe),
               "command": f"selfsup pretrain --method {name} --data shapes --epochs {a.epochs} "
                          f"--num-train {a.num_train}"}
        rows.append(row)
        print(f"  {name:22s} kNN {row['knn'][0]:.3f} +- {row['knn'][1]:.3f} | linear {row['linear'][0]:.3f} "
              f"+- {row['linear'][1]:.3f} | random-init kNN {row['random_init_knn'][0]:.3f} | "
              f"{row['seconds_per_epoch'][0]:.1f} s/epoch", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "methods.json").write_text(json.dumps({"env": env, "args": vars(a), "rows": rows}, indent=2))
    lines = ["| method | backbone | kNN | linear | random-init kNN | s/epoch | n seeds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['backbone']} | {r['knn'][0]:.3f} +- {r['knn'][1]:.3f} | "
                     f"{r['linear'][0]:.3f} +- {r['linear'][1]:.3f} | {r['random_init_knn'][0]:.3f} | "
                     f"{r['seconds_per_epoch'][0]:.1f} | {r['n_seeds']} |")
    (out / "methods.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
