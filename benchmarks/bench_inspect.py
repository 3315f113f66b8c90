"""The representation diagnostics of every run of bench_methods.py, next to random init.

For each method and seed under --work (the runs bench_methods.py wrote on `shapes` at
--image-size, 16 px by default, so that every row compares the same images), runs
`selfsup.api.inspect_encoder` (compactness, collapse, alignment, uniformity, DCI, MIG,
transfer to digits) on the shapes test split and prints mean +- std over the seeds for
the trained encoder and the same backbone at random initialisation (seeded by 0). Writes
benchmarks/results/inspect.json and inspect.md.

    python benchmarks/bench_methods.py --work runs/bench_methods ...   # first
    python benchmarks/bench_inspect.py --work runs/bench_methods --jobs 2
"""
from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from selfsup.api import inspect_encoder, versions
from selfsup.config import read_run_config

METRICS = ["effective_rank", "dims_for_90pct_variance", "z_std", "alignment", "relative_alignment", "uniformity",
           "disentanglement", "completeness", "informativeness", "mig", "transfer"]
# the direction a better representation moves each metric in (None: no direction expected)
BETTER = {"effective_rank": "lower (more compact)", "dims_for_90pct_variance": "lower (more compact)",
          "z_std": "higher (less collapsed)", "alignment": "lower", "relative_alignment": "lower",
          "uniformity": "lower", "disentanglement": "higher", "completeness": "higher",
          "informativeness": "higher", "mig": "higher", "transfer": "higher"}


def one(run: str, transfer: str) -> dict:
    torch.set_num_threads(1)
    s = inspect_encoder(run, "shapes", transfer_to=transfer)["summary"]
    t = s.pop("transfer")
    s["transfer"] = [t["linear_top1"], t["random_init_linear_top1"]]
    print(f"  {Path(run).name}: " + ", ".join(f"{k} {v[0]:.3g}/{v[1]:.3g}" for k, v in s.items()
                                              if k in METRICS), flush=True)
    return {"run": Path(run).name, **{k: s[k] for k in METRICS}}


def fmt(xs: list[float]) -> str:
    m = statistics.mean(xs)
    return f"{m:.3g} +- {statistics.stdev(xs):.2g}" if len(xs) > 1 else f"{m:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="runs/bench_methods")
    ap.add_argument("--transfer", default="digits")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=16, help="the shapes runs at this size")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    configs = {str(p.parent): read_run_config(p.parent) for p in sorted(Path(a.work).glob("*/config.yaml"))}
    runs = [run for run, c in configs.items()
            if c.get("data", {}).get("source") == "shapes" and c["data"].get("image_size") == a.image_size]
    env = versions()
    print(f"hardware: {env['platform']} | {env['processor']} | GPU: {env['cuda'] or 'none'}; torch {env['torch']}")
    print(f"{len(runs)} {a.image_size} px runs under {a.work}; shapes test split; transfer: linear probe on {a.transfer}", flush=True)
    with ProcessPoolExecutor(a.jobs) as pool:
        results = pool.map(one, runs, [a.transfer] * len(runs))
        rows = [dict(r, method=configs[run]["method"]) for run, r in zip(runs, results)]
    methods = sorted({r["method"] for r in rows})
    table = {}
    lines = ["| metric (better) | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for k in METRICS:
        cells = []
        for m in methods:
            rs = [r[k] for r in rows if r["method"] == m]
            table.setdefault(m, {})[k] = {"trained": [x[0] for x in rs], "random_init": [x[1] for x in rs]}
            cells.append(f"{fmt([x[0] for x in rs])} vs {fmt([x[1] for x in rs])}")
        lines.append(f"| {k} ({BETTER[k]}) | " + " | ".join(cells) + " |")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "inspect.json").write_text(json.dumps({"env": env, "args": vars(a), "better": BETTER,
                                                  "methods": table, "rows": rows}, indent=2))
    (out / "inspect.md").write_text("trained vs random init, mean +- std over seeds\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
