"""The label-efficiency study: how many labels does pretraining save?

The question SimCLR (Chen et al. 2020, arXiv 2002.05709) and BYOL (Grill et al. 2020,
arXiv 2006.07733) answer with 1% and 10% of the ImageNet labels: a pretrained encoder
against the same architecture trained from scratch on the same few labels.  For each
label budget -- a fraction of the training labels, a count per class, or a total -- each
way of choosing the labels and each seed, pick a subset of the *training* split:

- ``stratified``: the same share of every class (a reference: it needs the labels first);
- a strategy of :mod:`selfsup.eval.selection` (``random``, unstratified, as a user without
  labels gets it; ``typiclust``, ``probcover``, ``kcenter``), run on the encoder's training
  features alone: label-blind, the labels of the chosen rows are read after choosing;

and measure test accuracy of:

- ``knn``: the pretrained encoder's frozen features, weighted kNN;
- ``linear``: a linear probe on the frozen features;
- ``propagation`` (:mod:`selfsup.eval.propagation`): the labels propagated over the kNN
  graph of the frozen features of the whole training pool and the test split (Zhou et al.
  2004): the unlabelled pool as information, which matters most at 10-100 labels;
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
  (:mod:`selfsup.eval.tfidf`), the classical baseline;
- ``recommended``: the classifier a user should ship, chosen among the protocols above
  without the test split -- by ``cv_folds``-fold cross-validation on the selected labels
  alone -- and its test accuracy.  It is what guards against a fine-tuned or pretrained
  classifier worse than one trained from scratch (or than TF-IDF) at that budget.

Results are reported as mean +- std over the seeds.

Usage::

    selfsup.label_efficiency("runs/simclr", "shapes")  # or: selfsup label-efficiency runs/simclr --data shapes
    # which 10, 20, 50 or 100 samples to label:
    # selfsup label-efficiency runs/simclr --data shapes --budgets 10 20 50 100 --selection random typiclust
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
from selfsup.eval.propagation import knn_graph, propagate_labels, propagation_accuracy
from selfsup.eval.selection import SELECTIONS, select_samples
from selfsup.eval.tfidf import tfidf_accuracy
from selfsup.models import Encoder, rebuild_encoder

PROTOCOLS = ("knn", "linear", "propagation", "finetune", "scratch", "tfidf")
DEFAULT_PROTOCOLS = {"image": ("knn", "linear", "propagation", "finetune", "scratch"), "text": PROTOCOLS}
STRATIFIED = "stratified"  # the reference draw: a share of every class, which needs the labels first
# Ties in the cross-validation go to the first of these: the cheaper, simpler classifier.
SIMPLEST_FIRST = ("linear", "knn", "propagation", "tfidf", "finetune", "scratch")


@dataclass
class StudyConfig:
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)   # label budgets as fractions of the train split
    per_class: tuple[int, ...] | None = None          # ... or as labels per class (overrides fractions)
    budgets: tuple[int, ...] | None = None            # ... or as total labels (overrides both)
    selection: tuple[str, ...] = (STRATIFIED,)        # how each budget's labels are chosen: stratified or a SELECTIONS strategy
    seeds: int = 3                                     # subsets and trainings per budget
    protocols: tuple[str, ...] | None = None          # None = all that apply: DEFAULT_PROTOCOLS of the modality
    cv_folds: int = 3                                  # folds of the cross-validation that recommends a classifier; 0 = off
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


def _budgets(cfg: StudyConfig, labels: np.ndarray) -> list[tuple[str, float, int]]:
    """``(name, fraction of each class for a stratified draw, total labels for a selection)``."""
    counts = np.bincount(labels)
    if cfg.budgets:
        return [(str(b), min(1.0, b / len(labels)), int(b)) for b in cfg.budgets]
    if cfg.per_class:
        return [(f"{k}/class", min(1.0, k / counts.min()), int(min(len(labels), k * (counts > 0).sum())))
                for k in cfg.per_class]
    return [(f"{f:.0%}", f, len(stratified_subset(labels, f, 0))) for f in cfg.fractions]


def _check(cfg: StudyConfig, ds: Dataset) -> tuple[str, ...]:
    if not ds.train.has_labels or ds.test is None or not len(ds.test) or not ds.test.has_labels:
        raise SelfSupError(f"{ds.name} needs labels and a test split for a label-efficiency study")
    protocols = cfg.protocols or DEFAULT_PROTOCOLS[ds.spec.modality]
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise SelfSupError(f"unknown protocol {sorted(unknown)[0]!r}; valid: {', '.join(PROTOCOLS)}")
    if "tfidf" in protocols and not hasattr(ds.train, "texts"):
        raise SelfSupError(f"the tfidf protocol needs text; {ds.name} holds {ds.spec.modality}s")
    for name in cfg.selection:
        if name != STRATIFIED:
            SELECTIONS.get(name)  # an unknown strategy is an error naming the valid ones
    if any(int(b) < 1 for b in cfg.budgets or ()):
        raise SelfSupError(f"budgets are numbers of labels, at least 1; got {list(cfg.budgets)}")
    if cfg.cv_folds == 1 or cfg.cv_folds < 0:
        raise SelfSupError(f"cv_folds must be 0 (no recommendation) or at least 2, got {cfg.cv_folds}")
    return tuple(protocols)


class _Study:
    """The encoder's features of both splits, the propagation graphs, and one accuracy per protocol."""

    def __init__(self, encoder: Encoder, ds: Dataset, cfg: StudyConfig):
        self.encoder, self.train, self.test, self.cfg = encoder, ds.train, ds.test, cfg
        self.c = len(ds.train.classes)
        amp = cfg.classifier.amp
        self.ftr, self.fte = extract_features(encoder, ds.train, amp=amp), extract_features(encoder, ds.test, amp=amp)
        self.ytr = torch.from_numpy(np.asarray(ds.train.labels)).long()
        self.yte = torch.from_numpy(np.asarray(ds.test.labels)).long()
        self._graphs: dict[str, torch.Tensor] = {}

    def graph(self, which: str) -> torch.Tensor:
        """The kNN graph of the training pool (``pool``) or of train + test (``all``), built once."""
        if which not in self._graphs:
            feats = self.ftr if which == "pool" else torch.cat([self.ftr, self.fte])
            self._graphs[which] = knn_graph(feats)
        return self._graphs[which]

    def draw(self, selection: str, fraction: float, total: int, seed: int) -> np.ndarray:
        """Sorted training rows to label.  A strategy sees the features only: label-blind."""
        if selection == STRATIFIED:
            return stratified_subset(self.ytr.numpy(), fraction, seed)
        if total >= len(self.ftr):
            return np.arange(len(self.ftr))
        return np.sort(select_samples(selection, self.ftr, total, seed=seed).indices)

    def accuracy(self, protocol: str, labelled: np.ndarray, seed: int, held: np.ndarray | None = None,
                 row: dict | None = None) -> float:
        """Accuracy of ``protocol`` fitted on the training rows ``labelled``: on the test split,
        or with ``held`` on those training rows (a cross-validation fold).  Fine-tuning records
        in ``row`` whether it kept the probe."""
        ftr, ytr, c, cfg = self.ftr, self.ytr, self.c, self.cfg
        fe, ye = (self.fte, self.yte) if held is None else (ftr[held], ytr[held])
        if protocol == "knn":
            return knn_accuracy(ftr[labelled], ytr[labelled], fe, ye, num_classes=c)
        if protocol == "linear":
            return linear_probe_accuracy(ftr[labelled], ytr[labelled], fe, ye, num_classes=c, seed=seed)
        if protocol == "propagation":  # the unlabelled pool joins the graph (Zhou et al. 2004)
            known = torch.full_like(ytr, -1)
            known[labelled] = ytr[labelled]
            if held is None:
                return propagation_accuracy(ftr, known, fe, ye, num_classes=c, graph=self.graph("all"))
            pred = propagate_labels(ftr, known, num_classes=c, graph=self.graph("pool"))[0]
            return (pred[held] == ye).float().mean().item()
        if protocol == "tfidf":
            texts = self.test.texts if held is None else self.train.texts[held]
            return tfidf_accuracy(self.train.texts[labelled], ytr[labelled].numpy(), texts, ye.numpy(), seed=seed)
        clf = replace(cfg.classifier, seed=seed, val_fraction=0.1)
        if protocol == "finetune":
            clf = replace(clf, backbone_lr_scale=cfg.finetune_backbone_lr_scale, keep_probe=True,
                          linear_init=cfg.finetune_linear_init)
            model = train_classifier(copy.deepcopy(self.encoder), self.train.subset(labelled), c, clf)
            if row is not None:
                row["finetune_kept_probe"] = model.kept_probe
        else:
            model = train_classifier(fresh_copy(self.encoder, seed), self.train.subset(labelled), c, clf)
        return classifier_accuracy(model, self.test if held is None else self.train.subset(held), amp=cfg.classifier.amp)

    def recommend(self, protocols, labelled: np.ndarray, seed: int) -> tuple[str, dict[str, float]]:
        """The protocol with the best mean accuracy over ``cv_folds`` shuffled folds of the
        labelled rows alone (the test split unseen); ties go to the simpler one."""
        folds = np.array_split(np.random.default_rng(seed).permutation(labelled), min(self.cfg.cv_folds, len(labelled)))
        cv = {}
        for p in protocols:
            scores = [self.accuracy(p, np.sort(np.concatenate(folds[:i] + folds[i + 1:])), seed, held=np.sort(f))
                      for i, f in enumerate(folds)]
            cv[p] = float(np.mean(scores))
        ranked = sorted(protocols, key=lambda p: (-cv[p], SIMPLEST_FIRST.index(p)))
        return ranked[0], cv


def run_study(encoder: Encoder, ds: Dataset, cfg: StudyConfig = StudyConfig(), *,
              log: Callable[[str], None] = print) -> dict:
    """Run the study; returns ``{"rows": [...], "summary": [...]}`` (see module docs)."""
    protocols = _check(cfg, ds)
    study = _Study(encoder.cpu().eval(), ds, cfg)
    recommend = cfg.cv_folds >= 2
    rows = []
    for name, frac, total in _budgets(cfg, study.ytr.numpy()):
        for selection in cfg.selection:
            for seed in range(cfg.seeds):
                t0 = time.perf_counter()
                idx = study.draw(selection, frac, total, seed)
                row = {"budget": name, "selection": selection, "fraction": frac, "labels": int(len(idx)),
                       "classes_seen": int(len(np.unique(study.ytr[idx].numpy()))), "seed": seed}
                if selection != STRATIFIED:  # the chosen training rows, to label them again
                    row["indices"] = idx.tolist()
                for p in protocols:
                    row[p] = study.accuracy(p, idx, seed, row=row)
                if recommend and len(idx) >= 2:
                    row["recommended_protocol"], row["cv"] = study.recommend(protocols, idx, seed)
                    row["recommended"] = row[row["recommended_protocol"]]
                row["seconds"] = time.perf_counter() - t0
                rows.append(row)
                pick = f" -> {row['recommended_protocol']}" if "recommended" in row else ""
                log(f"{name:>8s} {selection} seed {seed}: " + ", ".join(f"{p} {row[p]:.3f}" for p in protocols) + pick)
    return {"rows": rows, "summary": summarise(rows, protocols), "classifier_steps": cfg.classifier.steps,
            "protocols": list(protocols), "selection": list(cfg.selection), "cv_folds": cfg.cv_folds}


def summarise(rows: list[dict], protocols) -> list[dict]:
    """Mean and std over seeds per budget and selection; ``recommended``: the test accuracy of
    the protocol the cross-validation chose, and ``recommended_picks`` how often each was chosen."""
    out = []
    for key in dict.fromkeys((r["budget"], r.get("selection", STRATIFIED)) for r in rows):
        rs = [r for r in rows if (r["budget"], r.get("selection", STRATIFIED)) == key]
        s = {"budget": key[0], "selection": key[1], "labels": rs[0]["labels"], "n_seeds": len(rs)}
        for p in list(protocols) + (["recommended"] if all("recommended" in r for r in rs) else []):
            vals = np.array([r[p] for r in rs])
            s[p] = float(vals.mean())
            s[p + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        if "recommended" in s:
            picks = [r["recommended_protocol"] for r in rs]
            s["recommended_picks"] = {p: picks.count(p) for p in dict.fromkeys(picks)}
        out.append(s)
    return out


NAMES = {"knn": "pretrained + kNN", "linear": "pretrained + linear", "propagation": "pretrained + propagation",
         "finetune": "pretrained + fine-tune", "scratch": "scratch (same backbone)", "tfidf": "TF-IDF + logistic",
         "recommended": "recommended (CV)"}


def format_table(summary: list[dict], protocols) -> str:
    """A Markdown table: one row per budget (and selection, when there are several)."""
    cols = list(protocols) + (["recommended"] if summary and "recommended" in summary[0] else [])
    several = len({s.get("selection", STRATIFIED) for s in summary}) > 1
    head = "| labels | " + ("selection | " if several else "") + "n | " + " | ".join(NAMES[p] for p in cols) + " |"
    lines = [head, "|" + "---|" * (2 + several + len(cols))]
    for s in summary:
        cells = [f"{s[p]:.3f} +- {s[p + '_std']:.3f}" if s["n_seeds"] > 1 else f"{s[p]:.3f}" for p in cols]
        if "recommended" in cols:
            cells[-1] += " (" + ", ".join(f"{p} {n}" for p, n in s["recommended_picks"].items()) + ")"
        sel = f"{s.get('selection', STRATIFIED)} | " if several else ""
        lines.append(f"| {s['budget']} ({s['labels']}) | {sel}{s['n_seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save(result: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write ``label_efficiency.json`` and the Markdown table ``label_efficiency.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "label_efficiency.json", "table": out / "label_efficiency.md"}
    atomic_write_text(paths["json"], json.dumps(result, indent=2))
    atomic_write_text(paths["table"], format_table(result["summary"], result["protocols"]) + "\n")
    return paths
