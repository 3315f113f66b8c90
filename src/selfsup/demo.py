"""``selfsup demo``: the article's promise, end to end, on built-in data.

1. Pretrain SimCLR on ``shapes`` without labels.
2. Measure kNN accuracy of the pretrained encoder against the same backbone at random
   initialisation.
3. With 1%, 10% and 100% of the training labels (stratified subsets), compare a linear
   probe on the pretrained encoder with the same backbone trained from scratch on the
   same labels for the same number of steps.
4. Print the table and write ``report.md``, ``results.json``, ``label_efficiency.*`` and
   ``embedding_map.png``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from selfsup.api import pretrain, versions
from selfsup.eval.features import extract_features
from selfsup.eval.finetune import ClassifierConfig
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.label_efficiency import StudyConfig, format_table, fresh_copy, run_study, save
from selfsup.output.plots import embedding_map, label_efficiency_curves, project_2d


def run_demo(out_dir: str | Path = "runs/demo", *, epochs: int | None = None, quick: bool = False,
             log=print) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    epochs = epochs or (1 if quick else 20)
    num_train = 2000 if quick else None
    run = pretrain("simclr", "shapes", out_dir=str(out / "pretrain"), epochs=epochs, num_train=num_train,
                   log=log)
    t_pretrain = time.perf_counter() - t0
    ds, cfg = run.dataset, run.config
    test = ds.test
    enc = run.encoder.cpu().eval()
    study = StudyConfig(seeds=1, protocols=("knn", "linear", "scratch"),
                        classifier=ClassifierConfig(steps=60 if quick else 500))
    result_le = run_study(enc, ds, study, log=log)
    save(result_le, out)
    label_efficiency_curves(result_le["summary"], study.protocols, out / "label_efficiency.png")

    rnd = fresh_copy(enc, cfg.train.seed).eval()
    ytr, yte = torch.from_numpy(np.asarray(ds.train.labels)), torch.from_numpy(np.asarray(test.labels))
    fte, rte = extract_features(enc, test), extract_features(rnd, test)
    knn = {"pretrained": result_le["summary"][-1]["knn"],  # the 100% row: all training labels
           "random init": knn_accuracy(extract_features(rnd, ds.train), ytr, rte, yte)}
    log(f"kNN top-1 (k=20): pretrained {knn['pretrained']:.3f}, random init {knn['random init']:.3f}")

    log("drawing the embedding map ...")
    sub = np.random.default_rng(0).choice(len(test), size=min(2000, len(test)), replace=False)
    maps = {"SimCLR (t-SNE)": project_2d(fte[sub].numpy(), "tsne"),
            "random init (t-SNE)": project_2d(rte[sub].numpy(), "tsne")}
    embedding_map(maps, test.labels[sub], ds.train.classes, out / "embedding_map.png",
                  title="shapes test set, coloured by class")

    result = {"config": cfg.to_dict(), "versions": versions(), "knn": knn,
              "label_efficiency": result_le["summary"], "pretrain_seconds": t_pretrain,
              "total_seconds": time.perf_counter() - t0, "scratch_budget_steps": study.classifier.steps}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    table = format_table(result_le["summary"], study.protocols)
    (out / "report.md").write_text(render_report(result, table))
    log("\n" + table)
    log(f"\nwrote {out / 'report.md'}, {out / 'results.json'}, {out / 'embedding_map.png'} "
        f"in {result['total_seconds']:.0f} s")
    return result


def render_report(result: dict, table: str) -> str:
    c, v = result["config"], result["versions"]
    return f"""# selfsup demo: SimCLR on shapes

Pretrained {c['method']} ({c['backbone']}) for {c['train']['epochs']} epochs on
{c['data']['source']} without labels in {result['pretrain_seconds']:.0f} s
(torch {v['torch']}, {v['cpu_threads']} CPU threads, {v['cuda'] or 'no GPU'}).

kNN top-1 on the test split (k=20, T=0.07): pretrained **{result['knn']['pretrained']:.3f}**,
same backbone at random initialisation {result['knn']['random init']:.3f}.

## Label efficiency (test accuracy, one seed)

{table}

Linear probe: standardised frozen features, logistic regression (L2 chosen on a split of
the training labels). Scratch: the same backbone, randomly initialised, trained on the
same labels for {result['scratch_budget_steps']} steps with crop/flip augmentation.

![label efficiency](label_efficiency.png)

![embedding map](embedding_map.png)
"""
