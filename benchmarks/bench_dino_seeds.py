"""DINO's collapse check: the cpu preset in the 40-epoch test setting, one run per seed.

Each seed pretrains DINO (cpu preset) for 40 epochs on 2000 training images of `shapes` at
16 px -- the setting in which seeds 2 and 4 collapsed to a uniform teacher before the preset
put KoLeo on the head's bottleneck -- then measures kNN on the shapes test split against
the same backbone at random initialisation, the last teacher entropy and KL, and whether
the collapse monitor fired. Prints hardware, versions, every seed and mean +- std; writes
benchmarks/results/dino_seeds.json.

    python benchmarks/bench_dino_seeds.py --seeds 5 --jobs 2 [--set method_cfg.koleo_weight=0]
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
from selfsup.config import parse_overrides
from selfsup.eval.label_efficiency import fresh_copy


def one_seed(seed: int, a: argparse.Namespace) -> dict:
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    run = selfsup.pretrain("dino", "shapes", overwrite=True, epochs=40, num_train=2000, image_size=16, seed=seed,
                           out_dir=str(Path(a.work) / f"dino-s{seed}"), progress=False, log=lambda s: None,
                           overrides={"train.monitor_every": 0, **parse_overrides(a.set)})
    seconds = time.perf_counter() - t0
    knn = selfsup.evaluate(run.encoder, "shapes", linear=False)["knn_top1"]
    rnd = selfsup.evaluate(fresh_copy(run.encoder.cpu(), seed), "shapes", linear=False)["knn_top1"]
    last = run.history[-1]
    row = {"seed": seed, "knn": knn, "random_knn": rnd, "teacher_entropy": last["teacher_entropy"],
           "ln_k": last["ln_k"], "kl": last["kl"], "seconds": seconds,
           "collapse_flagged": any(r.get("collapse_suspected") for r in run.history)}
    print(f"  seed {seed}: kNN {knn:.3f} (random init {rnd:.3f}), teacher entropy {row['teacher_entropy']:.2f} "
          f"of ln K {row['ln_k']:.2f}, KL {row['kl']:.3f}{', COLLAPSE FLAGGED' if row['collapse_flagged'] else ''}",
          flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel, each with --threads threads")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="run-config overrides, e.g. method_cfg.koleo_weight=0")
    ap.add_argument("--work", default="runs/bench_dino_seeds")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dino_seeds.json"))
    a = ap.parse_args()
    env = versions()
    print(f"hardware: {env['platform']} | {env['processor']} | GPU: {env['cuda'] or 'none'} | "
          f"{a.jobs} job(s) x {a.threads} torch thread(s); torch {env['torch']}; overrides {a.set or 'none'}")
    with ProcessPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(one_seed, range(a.seeds), [a] * a.seeds))
    margin = [r["knn"] - r["random_knn"] for r in rows]
    uniform = sum(r["teacher_entropy"] > 0.98 * r["ln_k"] for r in rows)
    summary = {"n_seeds": len(rows), "knn_minus_random": [statistics.mean(margin), statistics.stdev(margin)],
               "uniform_teachers": uniform, "flagged": sum(r["collapse_flagged"] for r in rows)}
    print(f"kNN - random init: {summary['knn_minus_random'][0]:+.3f} +- {summary['knn_minus_random'][1]:.3f} over "
          f"{len(rows)} seeds; uniform teachers: {uniform}; collapse flagged: {summary['flagged']}")
    Path(a.out).write_text(json.dumps({"env": env, "args": vars(a), "rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
