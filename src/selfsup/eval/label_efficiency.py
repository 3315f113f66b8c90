"""The label-efficiency study: how many labels does pretraining save?

The question SimCLR (Chen et al. 2020, arXiv 2002.05709) and BYOL (Grill et al. 2020,
arXiv 2006.07733) answer with 1% and 10% of the ImageNet labels: a pretrained encoder
against the same architecture trained from scratch on the same few labels.  For each
label budget -- a fraction of the training labels or a count per class -- and
each seed, draw a stratified subset of the *training* split and measure test accuracy
of:

- ``knn``: the pretrained encoder's frozen features, weighted kNN;
- ``linear``: a linear probe on the frozen features;
- ``finetune`` (:mod:`selfsup.eval.finetune`): the encoder and a fresh head are trained
  end to end on 90% of the subset's labels, and the fine-tuned weights are kept only if
  they beat the linear probe (fitted on the same 90%) by two images on the other 10%;
  otherwise -- or when that 10% holds too few images per class to tell -- the result is
  the probe fitted on all of the subset's labels, i.e. the ``linear`` protocol's own
  (``finetune_kept_probe`` in the row says which).  LP-FT -- the head starting as that
  probe -- is ``finetune_linear_init``; on ``shapes`` it fine-tuned worse than a fresh
  head.  The backbone gets the head's lr by default: on ``shapes`` a backbone lr of x0.3
  or x0.1 under-fit within the step budget (measurements in ``docs/results.md``);
- ``scratch``: the same architecture, randomly initialised, trained by the same loop with
  the same labels and the same number of steps (early stopping on the same 10%);
- ``tfidf`` (text): TF-IDF + logistic regression on the same labelled texts
  (:mod:`selfsup.eval.tfidf`), the classical baseline.

Results are reported as mean +- std over the seeds.

Usage::

    selfsup.label_efficiency("runs/simclr", "shapes")  # or: selfsup label-efficiency runs/simclr --data shapes
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from selfsup.data import Dataset
from selfsup.data.splits import stratified_subset
from selfsup.errors import SelfSupError
from selfsup.files import atomic_write_text
from selfsup.eval.features import extract_features
from selfsup.eval.finetune import ClassifierConfig, classifier_accuracy, train_classifier
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe_accuracy
from selfsup.eval.tfidf import tfidf_accuracy
from selfsup.models import Encoder, rebuild_encoder

PROTOCOLS = ("knn", "linear", "finetune", "scratch", "tfidf")
DEFAULT_PROTOCOLS = {"image": ("knn", "linear", "finetune", "scratch"), "text": PROTOCOLS}


@dataclass
class StudyConfig:
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)   # label budgets as fractions of the train split
    per_class: tuple[int, ...] | None = None          # ... or as labels per class (overrides fractions)
    seeds: int = 3                                     # subsets and trainings per budget
    protocols: tuple[str, ...] | None = None          # None = all that apply: DEFAULT_PROTOCOLS of the modality
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)  # fine-tune and scratch budget
    finetune_backbone_lr_scale: float = 1.0            # backbone lr / head lr when fine-tuning
    finetune_linear_init: bool = False                 # LP-FT: the fine-tuned head starts as the probe (an option)


def fresh_copy(encoder: Encoder, seed: int) -> Encoder:
    """The same architecture, normalisation (images) and tokenizer (text) as ``encoder``,
    randomly initialised from ``seed``."""
    torch.manual_seed(seed)
    fresh = rebuild_encoder({"name": encoder.name, "kwargs": encoder.kwargs})
    for name, buf in encoder.named_buffers():  # the image normalisation (older runs kept it out of kwargs)
        if name in ("mean", "std"):
            getattr(fresh, name).copy_(buf)
    return fresh.train()


def _budgets(cfg: StudyConfig, labels: np.ndarray) -> list[tuple[str, float]]:
    if cfg.per_class:
        counts = np.bincount(labels)
        return [(f"{k}/class", min(1.0, k / counts.min())) for k in cfg.per_class]
    return [(f"{f:.0%}", f) for f in cfg.fractions]


def run_study(encoder: Encoder, ds: Dataset, cfg: StudyConfig = StudyConfig(), *,
              log: Callable[[str], None] = print) -> dict:
    """Run the study; returns ``{"rows": [...], "summary": [...]}`` (see module docs)."""
    if not ds.train.has_labels or ds.test is None or not len(ds.test) or not ds.test.has_labels:
        raise SelfSupError(f"{ds.name} needs labels and a test split for a label-efficiency study")
    protocols = cfg.protocols or DEFAULT_PROTOCOLS[ds.spec.modality]
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise SelfSupError(f"unknown protocol {sorted(unknown)[0]!r}; valid: {', '.join(PROTOCOLS)}")
    train, test = ds.train, ds.test
    if "tfidf" in protocols and not hasattr(train, "texts"):
        raise SelfSupError(f"the tfidf protocol needs text; {ds.name} holds {ds.spec.modality}s")
    c = len(train.classes)
    encoder = encoder.cpu().eval()
    amp = cfg.classifier.amp
    ftr, fte = extract_features(encoder, train, amp=amp), extract_features(encoder, test, amp=amp)
    ytr, yte = torch.from_numpy(np.asarray(train.labels)), torch.from_numpy(np.asarray(test.labels))
    rows = []
    for name, frac in _budgets(cfg, np.asarray(train.labels)):
        for seed in range(cfg.seeds):
            idx = stratified_subset(np.asarray(train.labels), frac, seed)
            row = {"budget": name, "fraction": frac, "labels": int(len(idx)), "seed": seed}
            t0 = time.perf_counter()
            if "knn" in protocols:
                row["knn"] = knn_accuracy(ftr[idx], ytr[idx], fte, yte, num_classes=c)
            if "linear" in protocols:
                row["linear"] = linear_probe_accuracy(ftr[idx], ytr[idx], fte, yte, num_classes=c, seed=seed)
            clf = replace(cfg.classifier, seed=seed)
            if "finetune" in protocols:
                ft_cfg = replace(clf, backbone_lr_scale=cfg.finetune_backbone_lr_scale, val_fraction=0.1,
                                 keep_probe=True, linear_init=cfg.finetune_linear_init)
                model = train_classifier(copy.deepcopy(encoder), train.subset(idx), c, ft_cfg)
                row["finetune"] = classifier_accuracy(model, test, amp=amp)
                row["finetune_kept_probe"] = model.kept_probe
            if "scratch" in protocols:
                model = train_classifier(fresh_copy(encoder, seed), train.subset(idx), c, replace(clf, val_fraction=0.1))
                row["scratch"] = classifier_accuracy(model, test, amp=amp)
            if "tfidf" in protocols:
                row["tfidf"] = tfidf_accuracy(train.texts[idx], ytr[idx].numpy(), test.texts, yte.numpy(), seed=seed)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            log(f"{name:>8s} seed {seed}: " + ", ".join(f"{p} {row[p]:.3f}" for p in protocols))
    return {"rows": rows, "summary": summarise(rows, protocols),
            "classifier_steps": cfg.classifier.steps, "protocols": list(protocols)}


def summarise(rows: list[dict], protocols) -> list[dict]:
    out = []
    for budget in dict.fromkeys(r["budget"] for r in rows):
        rs = [r for r in rows if r["budget"] == budget]
        s = {"budget": budget, "labels": rs[0]["labels"], "n_seeds": len(rs)}
        for p in protocols:
            vals = np.array([r[p] for r in rs])
            s[p] = float(vals.mean())
            s[p + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        out.append(s)
    return out


def format_table(summary: list[dict], protocols) -> str:
    names = {"knn": "pretrained + kNN", "linear": "pretrained + linear", "finetune": "pretrained + fine-tune",
             "scratch": "scratch (same backbone)", "tfidf": "TF-IDF + logistic"}
    head = "| labels | n | " + " | ".join(names[p] for p in protocols) + " |"
    lines = [head, "|" + "---|" * (2 + len(protocols))]
    for s in summary:
        cells = [f"{s[p]:.3f} +- {s[p + '_std']:.3f}" if s["n_seeds"] > 1 else f"{s[p]:.3f}" for p in protocols]
        lines.append(f"| {s['budget']} | {s['labels']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``label_efficiency.json`` and the Markdown table ``label_efficiency.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "label_efficiency.json", "table": out / "label_efficiency.md"}
    atomic_write_text(paths["json"], json.dumps(result, indent=2))
    atomic_write_text(paths["table"], format_table(result["summary"], result["protocols"]) + "\n")
    return paths
