"""Time to accuracy: kNN on `shapes` against wall-clock seconds for every method's `cpu` preset.

What a user gets from ``selfsup pretrain --method M --epochs E`` after 1, 2 and 5
minutes.  Per method: one epoch in bf16 (the default where the CPU has native bf16) and
one in fp32 measure seconds per epoch; then, for each budget, a run whose number of
epochs fits that budget at the measured speed (so its LR schedule completes), on the
10k training images of `shapes` at 32 px, followed by the weighted kNN (k=20, T=0.07)
on the frozen features of the test split.  The seconds reported are the run's real wall
clock (data, start-up and checkpoints included), not the budget.  Writes
benchmarks/results/time_to_accuracy.json and .md.

    python benchmarks/bench_time_to_accuracy.py [--budgets 60 120 300] [--methods simclr ...]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import selfsup
from selfsup.api import versions
from selfsup.eval.label_efficiency import fresh_copy
from selfsup.methods import METHODS


def timed_run(name: str, work: str, **kw) -> tuple[selfsup.Run, float]:
    t0 = time.perf_counter()
    run = selfsup.pretrain(name, "shapes", overwrite=True, out_dir=work, progress=False, log=lambda s: None, **kw)
    return run, time.perf_counter() - t0


def seconds_per_epoch(name: str, work: str, amp: bool) -> float:
    """Wall-clock seconds of the second epoch of a 2-epoch run (the first holds the
    start-up), from its per-step metrics (log_every 1: one record per step)."""
    run, _ = timed_run(name, work, epochs=2, overrides={"train.amp": amp, "train.log_every": 1})
    bs = run.config.train.batch_size
    return sum(bs / r["samples_per_s"] for r in run.history if r["epoch"] > 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--budgets", type=float, nargs="+", default=[60, 120, 300], help="seconds")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    env = versions()
    names = a.methods or [n for n in METHODS.names() if METHODS.get(n).modality == "image"]
    print(f"hardware: {env['cpu_model']}, native bf16: {env['cpu_bf16'] or 'no'}, {a.threads} torch threads, "
          f"GPU: {env['cuda'] or 'none'}; torch {env['torch']}, selfsup {env['selfsup']}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            spe = {p: seconds_per_epoch(name, f"{tmp}/{name}-{p}", p == "bf16") for p in ("bf16", "fp32")}
            row = {"method": name, "seconds_per_epoch": spe, "runs": []}
            for budget in a.budgets:
                epochs = max(1, int(budget / spe["bf16"] * 0.92))  # ~8% for start-up and checkpoints
                run, seconds = timed_run(name, f"{tmp}/{name}-{budget:.0f}", epochs=epochs)
                knn = selfsup.evaluate(run.encoder, "shapes", linear=False)["knn_top1"]
                row["runs"].append({"budget_s": budget, "epochs": epochs, "seconds": seconds, "knn": knn})
                print(f"  {name}: {epochs} epochs in {seconds:.0f} s -> kNN {knn:.3f}", flush=True)
            row["backbone"] = run.config.backbone
            row["random_init_knn"] = selfsup.evaluate(fresh_copy(run.encoder.cpu(), 0), "shapes",
                                                      linear=False)["knn_top1"]
            rows.append(row)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_to_accuracy.json").write_text(json.dumps({"env": env, "args": vars(a), "rows": rows}, indent=2))
    head = " | ".join(f"kNN after {b / 60:g} min" for b in a.budgets)
    lines = [f"| method | backbone | s/epoch bf16 | s/epoch fp32 | random init | {head} |",
             "|---|---|---|---|---|" + "---|" * len(a.budgets)]
    for r in rows:
        cells = " | ".join(f"{x['knn']:.3f} ({x['epochs']} ep, {x['seconds']:.0f} s)" for x in r["runs"])
        lines.append(f"| {r['method']} | {r['backbone']} | {r['seconds_per_epoch']['bf16']:.2f} | "
                     f"{r['seconds_per_epoch']['fp32']:.2f} | {r['random_init_knn']:.3f} | {cells} |")
    (out / "time_to_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
