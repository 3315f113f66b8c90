"""Every image method at its defaults on several sources: kNN and linear probe against random init.

Each method runs with its `cpu` preset and nothing else set (only the source, its image
size and the number of training images) for n seeds on each source; the baseline is the
same backbone at random initialisation with the same seed. Evaluation: kNN (k=20) and
the linear probe on frozen features of the source's train/test splits. Prints hardware,
versions and mean +- std over the seeds; writes benchmarks/results/methods.json and .md
(bold there: above random init on every seed, and on average by more than the seed spread).

Sources are written NAME[@SIZE][:NUM_TRAIN]. The defaults were tuned on `shapes` and
`digits`. `photo_digits` (handwriting on real photographs) was kept out of tuning at first,
then some candidates were checked on it (seed 0) before they were adopted; `glyphs`
(printed letters in typefaces unseen in training) was added after that and nothing was
tuned or checked on it; it runs at its default 32 px, as a user would run it.

    python benchmarks/bench_methods.py --seeds 3 --jobs 2

Every finished run is appended to WORK/runs.jsonl; a stopped benchmark started again with
the same --work resumes where it stopped.
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
from selfsup.eval.monitor import failing, warning_due
from selfsup.methods import METHODS
from selfsup.models.runtime import choose_precision

SOURCES = ["digits", "shapes@16:2000", "shapes@32:2000", "photo_digits@16", "glyphs"]
ROLE = {"shapes": "tuned on", "digits": "tuned on", "photo_digits": "checked on", "glyphs": "held out"}


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def print_header(threads: int, seeds: int) -> dict:
    """Print the hardware, versions, thread count, precision and n seeds a benchmark ran
    with; returns ``selfsup.api.versions()`` for its result file."""
    env = versions()
    print(f"hardware: {env['platform']} | {env['processor']} | GPU: {env['cuda'] or 'none'} | "
          f"{threads} torch thread(s); torch {env['torch']}, selfsup {env['selfsup']}; "
          f"precision {choose_precision('cpu', True)}; n={seeds} seed(s)", flush=True)
    return env


def parse_source(spec: str) -> tuple[str, int | None, int | None]:
    name, _, num = spec.partition(":")
    name, _, size = name.partition("@")
    return name, int(size) if size else None, int(num) if num else None


def one_run(name: str, source: str, seed: int, a: argparse.Namespace) -> dict:
    """Pretrain one method on one source with one seed; evaluate it and its random init."""
    torch.set_num_threads(a.threads)
    data, size, num = parse_source(source)
    t0 = time.perf_counter()
    run = selfsup.pretrain(name, data, overwrite=True, image_size=size, num_train=num, seed=seed,
                           out_dir=str(Path(a.work) / f"{name}-{source.replace(':', '-')}-s{seed}"),
                           progress=False, log=lambda s: None, overrides={"train.amp": not a.no_amp})
    seconds = time.perf_counter() - t0
    res = selfsup.evaluate(run.encoder, data, amp=not a.no_amp)
    rnd = selfsup.evaluate(fresh_copy(run.encoder.cpu(), seed), data, amp=not a.no_amp)
    warned = [r for r in run.history if r.get("collapse_suspected")]
    checks = [r for r in run.history if "eff_rank" in r]
    print(f"  {name} on {source} seed {seed}: kNN {res['knn_top1']:.3f} (random init {rnd['knn_top1']:.3f}), "
          f"linear {res['linear_top1']:.3f} ({rnd['linear_top1']:.3f}), {seconds:.0f} s", flush=True)
    return {"method": name, "source": source, "seed": seed, "backbone": run.config.backbone,
            "epochs": run.config.train.epochs, "knn": res["knn_top1"], "linear": res["linear_top1"],
            "random_knn": rnd["knn_top1"], "random_linear": rnd["linear_top1"], "seconds": seconds,
            "collapse_flagged": bool(warned), "monitor_seconds": sum(r["monitor_s"] for r in checks),
            "checks": [{k: r.get(k) for k in ("epoch", "knn_monitor", "knn_random_init", "eff_rank",
                                              "eff_rank_random_init", "cka_random_init", "monitor_samples")}
                       for r in checks]}


def beats_random(runs: list[dict], key: str) -> bool:
    """Above random init on every seed, and on average by more than either seed spread."""
    (m, s), (rm, rs) = mean_std([r[key] for r in runs]), mean_std([r[f"random_{key}"] for r in runs])
    return all(r[key] > r[f"random_{key}"] for r in runs) and m - rm > max(s, rs)


def monitor_warned_at(run: dict) -> float | None:
    """The epoch at which the online monitor's rule (selfsup.eval.monitor) warns on this run's checks."""
    in_row = 0
    for check in run["checks"]:
        in_row = in_row + 1 if failing(check) else 0
        if warning_due(in_row, check["epoch"], run["epochs"]):
            return check["epoch"]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered image method")
    ap.add_argument("--sources", nargs="+", default=SOURCES, help="NAME[@SIZE][:NUM_TRAIN]")
    ap.add_argument("--seeds", type=int, default=3)
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
    print(f"torch {env['torch']}, selfsup {env['selfsup']}; sources {', '.join(a.sources)}; cpu presets; "
          f"n={a.seeds} seed(s); precision {precision}", flush=True)
    done_file = Path(a.work) / "runs.jsonl"  # every finished run, so that a stopped benchmark resumes
    done = [json.loads(line) for line in done_file.read_text().splitlines()] if done_file.exists() else []
    key = lambda r: (r["method"], r["source"], r["seed"])  # noqa: E731
    have = {key(r) for r in done}
    tasks = [(name, src, seed) for src in a.sources for name in names for seed in range(a.seeds)
             if (name, src, seed) not in have]
    if have:
        print(f"resuming: {len(have)} runs already in {done_file}, {len(tasks)} to go", flush=True)
    done_file.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(a.jobs) as pool:
        for row in pool.map(one_run, *zip(*tasks), [a] * len(tasks)) if tasks else []:
            with done_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done.append(row)
    # every method with runs on these sources, not only those just run: --methods reruns a few
    results = [r for r in done if r["source"] in a.sources]
    rows = []
    for src in a.sources:
        for name in METHODS.names():
            rs = [r for r in results if r["method"] == name and r["source"] == src]
            if not rs:
                continue
            rows.append({"method": name, "source": src, "role": ROLE.get(parse_source(src)[0], "held out"),
                         "backbone": rs[0]["backbone"], "epochs": rs[0]["epochs"], "n_seeds": len(rs),
                         **{k: mean_std([r[k] for r in rs])
                            for k in ("knn", "linear", "random_knn", "random_linear", "seconds")},
                         "beats_random": {k: beats_random(rs, k) for k in ("knn", "linear")},
                         "collapse_flagged": sum(r["collapse_flagged"] for r in rs),
                         "monitor_warned": sum(monitor_warned_at(r) is not None for r in rs), "runs": rs})
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"env": env, "precision": precision, "args": vars(a), "rows": rows},
                                                indent=2))
    lines = ["| source | method | backbone | epochs | kNN | random-init kNN | linear | random-init linear | "
             "seconds | monitor warned | n seeds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def cell(k: str, bold: bool = False) -> str:
            text = f"{r[k][0]:.3f} +- {r[k][1]:.3f}"
            return f"**{text}**" if bold else text

        src = r["source"] + ("" if r["role"] == "tuned on" else f" ({r['role']})")
        lines.append(f"| {src} | {r['method']} | {r['backbone']} | {r['epochs']} | "
                     f"{cell('knn', r['beats_random']['knn'])} | {cell('random_knn')} | "
                     f"{cell('linear', r['beats_random']['linear'])} | {cell('random_linear')} | "
                     f"{r['seconds'][0]:.0f} +- {r['seconds'][1]:.0f} | {r['monitor_warned']} | {r['n_seeds']} |")
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
