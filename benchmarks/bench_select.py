"""Seconds per selection round, per strategy (selfsup.eval.selection.select_samples).

Workload: a synthetic pool of D=512 features (50 Gaussian clusters of random widths, what
an encoder's embeddings look like to k-means; the timings do not depend on the values
much), at 10,000 and 100,000 samples, budgets of 10 and 100 labels, nothing labelled
before.  One thread (the target: under 1 s per 10,000 samples per round, after the
features exist).  Each cell is the mean +- std over ``--runs`` rounds with seeds 0, 1, ...
(``--runs-large`` above 10,000 samples; ProbCover, whose delta-ball graph costs a pass over
all pairs, runs once there).  ``--memmap`` adds TypiClust on the largest pool read from a
memory-mapped ``.npy`` file instead of memory.

Prints the hardware and versions; writes ``benchmarks/results/select.json``.

    PYTHONPATH=src python benchmarks/bench_select.py [--sizes 10000 100000] [--budgets 10 100] [--runs 5]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from selfsup.api import versions  # noqa: E402
from selfsup.eval.selection import SELECTIONS, select_samples  # noqa: E402

HERE = Path(__file__).resolve().parent
DIM = 512


def pool(n: int, seed: int = 0) -> np.ndarray:
    """(n, DIM) float32: 50 Gaussian clusters, each point's noise scaled by U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, DIM)).astype(np.float32)
    noise = rng.normal(size=(n, DIM)).astype(np.float32) * rng.uniform(0.5, 1.5, (n, 1)).astype(np.float32)
    return centres[rng.integers(0, 50, n)] + noise


def time_rounds(strategy: str, features, budget: int, runs: int) -> list[float]:
    seconds = []
    for seed in range(runs):
        start = time.perf_counter()
        select_samples(strategy, features, budget, seed=seed)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--budgets", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--strategies", nargs="+", default=SELECTIONS.names())
    ap.add_argument("--runs", type=int, default=5, help="rounds per cell up to 10,000 samples")
    ap.add_argument("--runs-large", type=int, default=2, help="rounds per cell above 10,000 samples")
    ap.add_argument("--no-memmap", dest="memmap", action="store_false",
                    help="skip TypiClust on the largest pool read from a memory-mapped file")
    ap.add_argument("--out", default=str(HERE / "results" / "select.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    env = {**versions(), "load_average_1min_at_start": os.getloadavg()[0]}  # other jobs on the machine slow it
    print(f"hardware: {env['cpu_model']}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; "
          f"torch {env['torch']}, numpy {env['numpy']}, python {env['python']}")
    print(f"pool: D={DIM}, 50 Gaussian clusters; seconds per round (after the features exist), mean +- std")
    rows = []
    head = f"{'samples':>8s} {'budget':>6s} {'strategy':>10s} {'runs':>4s} {'seconds':>16s} {'s per 10k':>9s}"
    print(head)

    def record(n, budget, strategy, seconds, storage="memory"):
        mean = statistics.fmean(seconds)
        std = statistics.stdev(seconds) if len(seconds) > 1 else 0.0
        per_10k = mean * 10_000 / n
        rows.append({"samples": n, "dim": DIM, "budget": budget, "strategy": strategy, "storage": storage,
                     "runs": len(seconds), "seconds": seconds, "mean_s": mean, "std_s": std,
                     "s_per_10k_samples": per_10k, "under_1s_per_10k": per_10k < 1.0})
        name = strategy if storage == "memory" else f"{strategy}*"
        print(f"{n:>8d} {budget:>6d} {name:>10s} {len(seconds):>4d} {mean:>8.3f} +- {std:5.3f} {per_10k:>9.3f}",
              flush=True)

    for n in a.sizes:
        x = pool(n)
        for budget in a.budgets:
            for strategy in a.strategies:
                runs = a.runs if n <= 10_000 else (1 if strategy == "probcover" else a.runs_large)
                record(n, budget, strategy, time_rounds(strategy, x, budget, runs))
        if a.memmap and n == max(a.sizes) and "typiclust" in a.strategies:
            with tempfile.TemporaryDirectory() as tmp:
                np.save(Path(tmp) / "features.npy", x)
                del x
                mapped = np.load(Path(tmp) / "features.npy", mmap_mode="r")
                for budget in a.budgets:
                    record(n, budget, "typiclust", time_rounds("typiclust", mapped, budget, a.runs_large), "memmap")
                del mapped
    print("* features read from a memory-mapped .npy file (in the page cache after the first pass)")
    env["load_average_1min_at_end"] = os.getloadavg()[0]
    result = {"env": env, "args": vars(a), "dim": DIM,
              "workload": "synthetic pool: 50 Gaussian clusters in 512-D, noise scaled by U(0.5, 1.5) per point; "
                          "nothing labelled before; one thread",
              "rows": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
