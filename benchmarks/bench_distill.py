"""Distil or pretrain from scratch? The pretrained teacher, distilled students, the best from-scratch method and random init.

For each source and seed this measures, on frozen features of the source's train/test split:

- ``teacher``: ``pretrained:efficientnet_lite0`` as it is (ImageNet weights, no training);
- ``distill/STUDENT``: ``--method distill`` at its ``cpu`` preset (the teacher above, its
  embeddings cached once) with the student backbone ``small_cnn`` (the preset's; and
  ``small_cnn-25ep``: the preset cut to 25 of its 60 epochs, to compare at the same
  wall-clock time as the best from-scratch run) and ``resnet18`` (the preset with fewer
  epochs, so that a run stays near two minutes here);
- ``scratch-best``: the method with the best kNN on that source in the methods table
  (benchmarks/results/methods.json), at its ``cpu`` preset: the best a user gets without a
  pretrained model;
- ``random``: the small_cnn student at random initialisation (same seed).

Protocols: kNN (k=20) and the linear probe on all training labels, and the label-efficiency
study's kNN and linear probe at 1% and 10% of the training labels (a stratified draw per
seed), plus ``scratch``: a small_cnn trained from random init on those labels alone
(selfsup's classifier loop, the study's ``scratch`` protocol). Seconds: the whole
``pretrain`` call (for the distilled students: the teacher's cache pass included).
Inference: images/s of each encoder embedding 512 images of the source, batch 256, bf16
autocast, --threads threads, after a warm-up (mean +- std of 5 passes).

    python benchmarks/bench_distill.py --seeds 3      # about an hour on 2 cores; resumable

Every finished run is appended to WORK/runs.jsonl; started again with the same --work the
benchmark resumes. Writes benchmarks/results/distill.json and distill.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import selfsup
from bench_methods import mean_std, parse_source, print_header  # benchmarks/ is on the path of a script run from it
from selfsup.data import create_dataset, to_input
from selfsup.data.splits import stratified_subset
from selfsup.eval.features import extract_features
from selfsup.eval.finetune import ClassifierConfig, classifier_accuracy, train_classifier
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.label_efficiency import fresh_copy
from selfsup.eval.linear import linear_probe_accuracy
from selfsup.models.pretrained import load_pretrained

SOURCES = ["glyphs", "photo_digits@16", "shapes@32:2000"]
TEACHER = "pretrained:efficientnet_lite0"
# small_cnn-25ep: the preset cut to 25 epochs, so that the whole run (the teacher's cache
# pass included) takes no longer than the best from-scratch method's on glyphs and shapes
STUDENTS = {"small_cnn": {}, "small_cnn-25ep": {"train.epochs": 25}, "resnet18": {"backbone": "resnet18", "train.epochs": 4}}
FRACTIONS = (0.01, 0.1)
ROLE = {"glyphs": "held out", "photo_digits": "checked on", "shapes": "tuned on"}


def best_from_scratch(source: str, table: Path) -> str:
    """The method with the best mean kNN on ``source`` in the methods table."""
    rows = [r for r in json.loads(table.read_text())["rows"] if r["source"] == source]
    if not rows:
        raise SystemExit(f"{source} is not in {table}: run benchmarks/bench_methods.py --sources {source} first")
    return max(rows, key=lambda r: r["knn"][0])["method"]


_FEATURES: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # the teacher's, per source: the same every seed


def features(enc, ds, key: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test features; with ``key``, computed once and kept under it."""
    if key is None:
        return extract_features(enc, ds.train), extract_features(enc, ds.test)
    if key not in _FEATURES:
        _FEATURES[key] = features(enc, ds)
    return _FEATURES[key]


def scores(enc, ds, seed: int, *, scratch: bool, key: str | None = None) -> dict:
    """kNN and linear on all labels and on 1% / 10% of them; ``scratch``: also a small_cnn
    trained from random init on those labels.  ``key``: see :func:`features`."""
    train, test = ds.train, ds.test
    ftr, fte = features(enc, ds, key)
    ytr, yte = torch.from_numpy(np.asarray(train.labels)), torch.from_numpy(np.asarray(test.labels))
    c = len(train.classes)
    out = {"knn": knn_accuracy(ftr, ytr, fte, yte, num_classes=c),
           "linear": linear_probe_accuracy(ftr, ytr, fte, yte, num_classes=c, seed=seed)}
    for frac in FRACTIONS:
        idx = stratified_subset(np.asarray(train.labels), frac, seed)
        tag = f"{frac:.0%}"
        out[f"knn_{tag}"] = knn_accuracy(ftr[idx], ytr[idx], fte, yte, num_classes=c)
        out[f"linear_{tag}"] = linear_probe_accuracy(ftr[idx], ytr[idx], fte, yte, num_classes=c, seed=seed)
        if scratch:
            model = train_classifier(fresh_copy(enc, seed), train.subset(idx), c,
                                     ClassifierConfig(seed=seed, val_fraction=0.1))
            out[f"scratch_{tag}"] = classifier_accuracy(model, test)
    return out


def images_per_second(enc, ds, repeats: int = 5) -> tuple[float, float]:
    x = to_input(torch.from_numpy(np.asarray(ds.train.images[np.arange(512)])))
    enc = enc.cpu().eval()
    rates = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        enc(x[:64])
        for _ in range(repeats):
            t0 = time.perf_counter()
            for b in x.split(256):
                enc(b)
            rates.append(len(x) / (time.perf_counter() - t0))
    return mean_std(rates)


def one_run(kind: str, source: str, seed: int, a: argparse.Namespace) -> dict:
    data, size, num = parse_source(source)
    ds = create_dataset(data, image_size=size, num_train=num, progress=False)
    row = {"kind": kind, "source": source, "seed": seed}
    if kind == "teacher":
        enc = load_pretrained(TEACHER)
        row.update(scores(enc, ds, seed, scratch=False, key=source), seconds=0.0, ips=images_per_second(enc, ds))
        return row
    if kind.startswith("distill/"):
        student = kind.split("/", 1)[1]
        over = dict(STUDENTS[student])
        method, backbone = "distill", over.pop("backbone", None)
    else:
        method, backbone, over = best_from_scratch(source, Path(a.methods_table)), None, {}
    t0 = time.perf_counter()
    run = selfsup.pretrain(method, ds, overwrite=True, seed=seed, backbone=backbone, progress=False,
                           out_dir=str(Path(a.work) / f"{kind.replace('/', '-')}-{source.replace(':', '-')}-s{seed}"),
                           log=lambda s: None, overrides=over)
    row.update(method=method, backbone=run.config.backbone, epochs=run.config.train.epochs,
               seconds=time.perf_counter() - t0)
    enc = run.encoder.cpu().eval()
    row.update(scores(enc, ds, seed, scratch=False), ips=images_per_second(enc, ds))
    if kind == "distill/small_cnn":  # random init and supervised-from-scratch of the same small_cnn
        rnd = scores(fresh_copy(enc, seed).eval(), ds, seed, scratch=True)
        row["random"] = {k: v for k, v in rnd.items() if not k.startswith("scratch")}
        row["scratch"] = {k.split("_", 1)[1]: v for k, v in rnd.items() if k.startswith("scratch")}
    return row


def teacher_share(a: argparse.Namespace, source: str = "shapes@32:1000", repeats: int = 3) -> dict:
    """How much of a distillation step the teacher takes: samples/s of the cpu preset's
    training steps with the teacher run in every step (``cache=false``: it embeds both
    views at 112 px) against with its embeddings cached (the cache pass itself not counted)."""
    data, size, num = parse_source(source)
    rates = {}
    for cache in (False, True):
        for r in range(repeats):
            run = selfsup.pretrain("distill", data, image_size=size, num_train=num, seed=r, epochs=2, progress=False,
                                   overwrite=True, log=lambda s: None, out_dir=str(Path(a.work) / f"share-{cache}"),
                                   overrides={"method_cfg.cache": cache, "train.monitor_every": 0})
            recs = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
            rates.setdefault(cache, []).append(float(np.mean([x["samples_per_s"] for x in recs if "samples_per_s" in x][1:])))
    share = [1 - n / c for n, c in zip(rates[False], rates[True])]
    return {"source": source, "repeats": repeats, "samples_per_s_teacher_in_step": mean_std(rates[False]),
            "samples_per_s_cached": mean_std(rates[True]), "teacher_share_of_step": mean_std(share)}


def summary(done: list[dict], sources: list[str]) -> tuple[list[dict], list[str]]:
    rows, lines = [], []
    cols = ["knn", "linear"] + [f"{p}_{f:.0%}" for f in FRACTIONS for p in ("knn", "linear")]
    head = ("| source | encoder | kNN | linear | kNN 1% | linear 1% | kNN 10% | linear 10% | "
            "pretrain s | images/s |")
    lines += [head, "|" + "---|" * 10]
    for src in sources:
        rs = [r for r in done if r["source"] == src]
        groups = {}
        for r in rs:
            groups.setdefault(r["kind"], []).append(r)
            if r["kind"] == "distill/small_cnn":
                groups.setdefault("random", []).append({"kind": "random", **r["random"], "seconds": 0.0})
                groups.setdefault("scratch (supervised, small_cnn)", []).append(
                    {f"linear_{k}": v for k, v in r["scratch"].items()})
        for kind in ("teacher", "distill/small_cnn", "distill/small_cnn-25ep", "distill/resnet18", "scratch-best", "random",
                     "scratch (supervised, small_cnn)"):
            g = groups.get(kind)
            if not g:
                continue
            name = kind if kind != "scratch-best" else f"{g[0]['method']} (best from scratch)"
            row = {"source": src, "encoder": name, "n_seeds": len(g),
                   **{c: mean_std([r[c] for r in g]) for c in cols if c in g[0]}}
            if "seconds" in g[0]:
                row["seconds"] = mean_std([r["seconds"] for r in g])
            if "ips" in g[0]:
                row["ips"] = mean_std([r["ips"][0] for r in g])
            rows.append(row)
            cell = lambda c: f"{row[c][0]:.3f} +- {row[c][1]:.3f}" if c in row else "-"  # noqa: E731
            secs = f"{row['seconds'][0]:.0f} +- {row['seconds'][1]:.0f}" if row.get("seconds", (0,))[0] else "-"
            ips = f"{row['ips'][0]:.0f}" if "ips" in row else "-"
            lines.append(f"| {src} ({ROLE.get(parse_source(src)[0], 'held out')}) | {name} | "
                         + " | ".join(cell(c) for c in cols) + f" | {secs} | {ips} |")
    return rows, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sources", nargs="+", default=SOURCES, help="NAME[@SIZE][:NUM_TRAIN]")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--kinds", nargs="+", default=["teacher", "distill/small_cnn", "distill/resnet18", "scratch-best",
                                                   "distill/small_cnn-25ep"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods-table", default=str(Path(__file__).parent / "results" / "methods.json"))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default="runs/bench_distill", help="where the runs are written")
    ap.add_argument("--teacher-share", action="store_true",
                    help="only measure the teacher's share of a step's time (writes distill_share.json)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    env = print_header(a.threads, a.seeds)
    if a.teacher_share:
        res = {"env": env, "threads": a.threads, **teacher_share(a)}
        (Path(a.out) / "distill_share.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        return
    done_file = Path(a.work) / "runs.jsonl"
    done = [json.loads(line) for line in done_file.read_text().splitlines()] if done_file.exists() else []
    have = {(r["kind"], r["source"], r["seed"]) for r in done}
    done_file.parent.mkdir(parents=True, exist_ok=True)
    for src in a.sources:
        for seed in range(a.seeds):
            for kind in a.kinds:
                if (kind, src, seed) in have:
                    continue
                row = one_run(kind, src, seed, a)
                print(f"  {src} seed {seed} {kind}: kNN {row['knn']:.3f} linear {row['linear']:.3f} "
                      f"1%: {row['linear_1%']:.3f} 10%: {row['linear_10%']:.3f} {row['seconds']:.0f} s "
                      f"{row['ips'][0]:.0f} img/s", flush=True)
                with done_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                done.append(row)
    rows, lines = summary(done, a.sources)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill.json").write_text(json.dumps({"env": env, "args": vars(a), "rows": rows, "runs": done}, indent=2))
    (out / "distill.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
