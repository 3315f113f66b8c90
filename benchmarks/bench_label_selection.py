"""Which samples to label: the label-efficiency study under each selection strategy.

For each source, the encoder of the source's default run (``selfsup pretrain --method
simclr`` for images; the text default, masked language modelling, for text) picks the
samples to label with each strategy -- label-blind, from the training features alone --
at 1, 2, 5 and 10 labels per class (as total budgets: 10 classes x 1 = 10 labels), and the
chosen labels are scored on the test split by the linear probe and by label propagation
over the kNN graph of the whole pool (text: also TF-IDF + logistic regression).
``stratified`` (the same count from every class, which needs the labels first) is the
reference; ``random`` is the unstratified draw a user without labels gets.  Each row also
carries the classifier that 3-fold cross-validation on the chosen labels alone recommends.

Sources are the held-out ones: ``glyphs`` (never tuned on), ``photo_digits`` and
``debian`` -- the one-line descriptions of the Debian bookworm packages in this machine's
apt lists, labelled by their section (the 12 largest, 400 train / 100 test each), built
into WORK/debian/{train,test}.csv on first use.

    python benchmarks/bench_label_selection.py                 # about 30 minutes on 2 cores
    python benchmarks/bench_label_selection.py --encoder pretrained:efficientnet_lite0 \
        --sources glyphs photo_digits                          # the same with ImageNet features

Resumable: every finished source is kept in WORK/SOURCE.json.  Prints hardware, versions,
threads and n seeds; writes benchmarks/results/label_selection.json and .md.
"""
from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

import selfsup
from bench_methods import print_header  # benchmarks/ is on the path of a script run from it
from selfsup.api import dataset_for
from selfsup.data import create_dataset
from selfsup.eval.label_efficiency import StudyConfig, run_study

SOURCES = ["glyphs", "photo_digits", "debian"]
SELECTION = ["stratified", "random", "typiclust", "probcover", "kcenter"]
APT_LISTS = "/var/lib/apt/lists/*_debian_dists_*_main_binary-amd64_Packages.lz4"


def debian_corpus(folder: Path, sections: int = 12, train: int = 400, test: int = 100) -> str:
    """``text:`` source of Debian package descriptions labelled by section (CSV files)."""
    if (folder / "test.csv").exists():
        return f"text:{folder}"
    files = sorted(glob.glob(APT_LISTS))
    if not files:
        raise SystemExit(f"no apt package lists match {APT_LISTS}: run `apt-get update` or drop the debian source")
    by_section: dict[str, dict[str, str]] = {}
    for f in files:
        text = subprocess.run(["lz4cat", f], check=True, capture_output=True, text=True).stdout
        for block in text.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " ")
            if "Description" in fields and "Section" in fields:
                section = fields["Section"].split("/")[-1]
                by_section.setdefault(section, {})[fields["Description"]] = fields["Package"]
    top = [s for s, _ in Counter({s: len(d) for s, d in by_section.items()}).most_common(sections)]
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "test": []}
    for s in top:  # a fixed draw: the descriptions ordered by a hash of the package name
        descs = sorted(by_section[s], key=lambda d: hashlib.sha1(by_section[s][d].encode()).hexdigest())
        rows["train"] += [(d, s) for d in descs[:train]]
        rows["test"] += [(d, s) for d in descs[train:train + test]]
    for split, rs in rows.items():
        with (folder / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(rs)
    return f"text:{folder}"


def study(source: str, a: argparse.Namespace) -> dict:
    work = Path(a.work)
    data = debian_corpus(work / "debian") if source == "debian" else source
    method = a.encoder or ("mlm" if create_dataset(data).spec.modality == "text" else "simclr")
    run_dir = work / f"{method}-{source}"
    if a.encoder:  # a pretrained model as it is: nothing to train
        enc, seconds = selfsup.load_encoder(a.encoder, device="cpu"), 0.0
    elif (work / f"{source}.pretrain.json").exists():
        enc = selfsup.load_encoder(run_dir, device="cpu")
        seconds = json.loads((work / f"{source}.pretrain.json").read_text())["seconds"]
    else:
        t0 = time.perf_counter()
        run = selfsup.pretrain(method, data, out_dir=str(run_dir), overwrite=True, progress=False, log=lambda s: None)
        seconds = time.perf_counter() - t0
        (work / f"{source}.pretrain.json").write_text(json.dumps({"seconds": seconds}))
        enc = run.encoder
    ds = dataset_for(enc, data)
    classes = len(ds.train.classes)
    protocols = ("linear", "propagation") + (("tfidf",) if ds.spec.modality == "text" else ())
    cfg = StudyConfig(budgets=tuple(k * classes for k in a.per_class), selection=tuple(a.selection),
                      seeds=a.seeds, protocols=protocols, cv_folds=3)
    result = run_study(enc, ds, cfg, log=lambda s: print(f"  {source} {s}", flush=True))
    return {"source": source, "method": method, "pretrain_seconds": seconds, "classes": classes,
            "train": len(ds.train), "test": len(ds.test), **result}


def verdict(res: dict, per_class: list[int]) -> list[str]:
    """Best label-blind strategy against unstratified random at each budget, for each protocol."""
    lines = []
    by = {(s["budget"], s["selection"]): s for s in res["summary"]}
    for k in per_class:
        b = str(k * res["classes"])
        for p in res["protocols"]:
            rnd = by[(b, "random")]
            cands = [s for (bb, sel), s in by.items() if bb == b and sel not in ("random", "stratified")]
            best = max(cands, key=lambda s: s[p])
            gain, spread = best[p] - rnd[p], max(best[p + "_std"], rnd[p + "_std"])
            lines.append(f"{res['source']} {k}/class {p}: best {best['selection']} {best[p]:.3f} vs random "
                         f"{rnd[p]:.3f} ({gain:+.3f}; spread {spread:.3f}: "
                         f"{'beats it' if gain > spread else 'within the spread' if gain > -spread else 'worse'})")
    return lines


def markdown(results: list[dict], per_class: list[int]) -> list[str]:
    lines = []
    for res in results:
        cols = list(res["protocols"]) + ["recommended"]
        lines += [f"### {res['source']} ({res['method']} encoder, {res['train']} train / {res['test']} test, "
                  f"{res['classes']} classes, {res['summary'][0]['n_seeds']} seeds)", "",
                  "| labels per class | selection | " + " | ".join(cols) + " |", "|" + "---|" * (2 + len(cols))]
        for s in res["summary"]:
            k = int(s["budget"]) // res["classes"]
            picks = ", ".join(f"{p} {n}" for p, n in s.get("recommended_picks", {}).items())
            cells = [f"{s[c]:.3f} +- {s[c + '_std']:.3f}" for c in cols]
            cells[-1] += f" ({picks})"
            lines.append(f"| {k} ({s['labels']}) | {s['selection']} | " + " | ".join(cells) + " |")
        lines += [""] + [f"- {v}" for v in verdict(res, per_class)] + [""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sources", nargs="+", default=SOURCES)
    ap.add_argument("--per-class", type=int, nargs="+", default=[1, 2, 5, 10])
    ap.add_argument("--selection", nargs="+", default=SELECTION)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoder", help="a pretrained model to use as it is (e.g. pretrained:efficientnet_lite0) "
                    "instead of each source's default run; results go to label_selection-ENCODER.json/.md")
    ap.add_argument("--work", default="runs/bench_label_selection")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    env = print_header(a.threads, a.seeds)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    results = []
    tag = "-" + a.encoder.replace(":", "_") if a.encoder else ""
    for source in a.sources:
        done = Path(a.work) / f"{source}{tag}.json"
        if not done.exists():
            done.write_text(json.dumps(study(source, a)))
        results.append(json.loads(done.read_text()))
    lines = markdown(results, a.per_class)
    out = Path(a.out)
    (out / f"label_selection{tag}.json").write_text(json.dumps({"env": env, "args": vars(a), "results": results},
                                                               indent=2))
    (out / f"label_selection{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
