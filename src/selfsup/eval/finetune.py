"""Supervised training of an encoder + linear head: fine-tuning and the from-scratch baseline.

Fine-tuning starts from a pretrained encoder and gives the backbone a smaller learning
rate than the head (``backbone_lr_scale``), optionally with layer-wise decay for ViTs
(block ``i`` of ``L``, 0-based, gets ``decay ** (L - i)``, the patch embedding and tokens
``decay ** (L + 1)``, the final norm and the head 1: MAE's fine-tuning recipe, He et al.
2021, arXiv 2111.06377, after BEiT, Bao et al. 2021, arXiv 2106.08254);
training from scratch is the same loop on a freshly initialised encoder with
``backbone_lr_scale=1``, so the two differ only in the starting weights.  Light
augmentation (images: random resized crop of area 0.35-1 and flips; text: none, see
:func:`selfsup.data.views.classifier_augment`), AdamW, linear warm-up then cosine, a
fixed budget of steps.  With ``val_fraction > 0`` a stratified validation split
is carved from the *training labels* (never the test split); the weights with the best
validation accuracy are kept (early stopping).

``keep_probe`` makes the linear probe -- fitted to convergence on the frozen features of
the training part (:mod:`selfsup.eval.linear`) -- the first candidate of the early
stopping: fine-tuned weights replace it only when they get at least two more validation
images right (a validation split of a few dozen images is noisy: on `digits` with 144
labels, 14 of them held out, fine-tuned weights that beat the probe by one image there
did worse than it on the test split), and when none does, the result *is* the probe --
refitted on all the labels, as the linear-probe protocol fits it -- so fine-tuning can
only fall below the probe by the validation split's noise.  With too few labels for a
validation split that can tell (fewer than ``min_val_per_class`` held-out images per
class), the probe is the result: on `shapes` with 99 labels (10 held out for 8 classes)
fine-tuned weights chosen on them did worse than the probe.

``linear_init`` is LP-FT (Kumar, Raghunathan, Jones, Ma & Liang, "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR 2022, arXiv 2202.10054):
the head starts as that probe (its standardisation folded into the weights) instead of a
random head, so the first gradients do not scramble the features to fit a random head.
It is an option, not the default of the label-efficiency study: on `shapes` (SimCLR
encoder, 500 steps) it fine-tuned worse than a fresh head, with 10% of the labels and with
all of them (measurements in ``docs/results.md``).  A likely reason, not measured: LP-FT
is made to change the features less, and these features are weak.
"""
from __future__ import annotations

from dataclasses import dataclass

import copy
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.data import SampleSet, to_input
from selfsup.data.splits import stratified_split
from selfsup.data.views import classifier_augment
from selfsup.eval.features import extract_features
from selfsup.eval.linear import LinearProbe, train_linear_probe
from selfsup.models import Encoder
from selfsup.models.runtime import choose_precision, fast_layout
from selfsup.schedules import cosine_schedule
from selfsup.train.optim import fused_option, param_groups


@dataclass
class ClassifierConfig:
    steps: int = 600                 # optimizer steps (the budget, whatever the number of labels)
    batch_size: int = 128            # labelled images per step (capped at the number of labels)
    lr: float = 2e-3                 # head learning rate (AdamW)
    backbone_lr_scale: float = 1.0   # backbone lr = lr * this (0.1 is typical for fine-tuning)
    weight_decay: float = 5e-4
    warmup_frac: float = 0.05        # fraction of steps of linear warm-up
    label_smoothing: float = 0.1
    layer_decay: float | None = None # ViT layer-wise lr decay (e.g. 0.75); None = off
    val_fraction: float = 0.0        # labels held out for early stopping (0 = off)
    eval_every: int = 50             # steps between validation checks
    patience: int = 5                # stop after this many checks without improvement
    linear_init: bool = False        # LP-FT: the head starts as a linear probe fitted on the training part
    keep_probe: bool = False         # the probe is the candidate to beat: fine-tuning must get 2 more val images right
    min_val_per_class: int = 3       # keep_probe: fewer validation images per class cannot tell; the probe is kept
    seed: int = 0
    amp: bool = True                 # bf16 autocast where the hardware has it (models.runtime)


class Classifier(nn.Module):
    def __init__(self, encoder: Encoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, num_classes)
        self.kept_probe = False  # LP-FT: True when fine-tuning did not beat the linear probe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))

    @torch.no_grad()
    def set_head(self, probe: LinearProbe) -> None:
        """Make the head compute ``probe``: its standardisation folded into the weights."""
        weight = probe.weight / probe.std  # (C, D)
        self.head.weight.copy_(weight)
        self.head.bias.copy_(probe.bias - weight @ probe.mean)


def _fit_probe(model: Classifier, feats: torch.Tensor, labels: np.ndarray, num_classes: int, seed: int) -> None:
    model.set_head(train_linear_probe(feats, torch.from_numpy(np.asarray(labels)), num_classes=num_classes, seed=seed))


def _layer_scale(name: str, num_blocks: int, decay: float | None) -> float:
    """lr multiplier of an encoder parameter under layer-wise decay (1 without decay)."""
    if decay is None or num_blocks == 0:
        return 1.0
    m = re.search(r"blocks\.(\d+)\.", name)
    layer = int(m.group(1)) + 1 if m else (num_blocks + 1 if re.search(r"(^|\.)(norm|fc_norm)\.", name) else 0)
    return decay ** (num_blocks + 1 - layer)


def _encoder_groups(encoder: nn.Module, cfg: ClassifierConfig) -> list[dict]:
    blocks = {int(m.group(1)) for n, _ in encoder.named_parameters() if (m := re.search(r"blocks\.(\d+)\.", n))}
    by_scale: dict[float, list] = {}
    for n, p in encoder.named_parameters():
        by_scale.setdefault(_layer_scale(n, len(blocks), cfg.layer_decay), []).append((n, p))
    groups = []
    for scale, params in by_scale.items():
        for g in param_groups(params, cfg.weight_decay):
            g["lr_scale"] = cfg.backbone_lr_scale * scale
            groups.append(g)
    return groups


def train_classifier(encoder: Encoder, samples: SampleSet, num_classes: int,
                     cfg: ClassifierConfig = ClassifierConfig(), *, device: torch.device | str = "cpu",
                     progress: bool = False) -> Classifier:
    """Train ``encoder`` + a linear head on the labelled ``samples`` (images or text)."""
    device = torch.device(device)
    all_samples, val_samples, train_idx = samples, None, np.arange(len(samples))
    if cfg.val_fraction > 0:
        split, val_idx = stratified_split(np.asarray(samples.labels), cfg.val_fraction, cfg.seed)
        if len(val_idx) >= num_classes:  # enough labels to hold some out
            train_idx, samples, val_samples = split, samples.subset(split), samples.subset(val_idx)
    torch.manual_seed(cfg.seed)
    model = fast_layout(Classifier(encoder, num_classes).to(device), device)
    precision = choose_precision(device, cfg.amp)
    nn.init.zeros_(model.head.bias)
    best, best_state, checks_without_gain = -1.0, None, 0
    compete = cfg.keep_probe and cfg.val_fraction > 0
    if cfg.linear_init or compete:  # the starting encoder's frozen features of every label, extracted once
        start_feats, all_labels = extract_features(model.encoder, all_samples, amp=cfg.amp), all_samples.labels
    if compete and (val_samples is None or len(val_samples) < cfg.min_val_per_class * num_classes):
        _fit_probe(model, start_feats, all_labels, num_classes, cfg.seed)  # too few labels to check: the probe
        model.kept_probe = True
        return model.eval()
    if cfg.linear_init or compete:
        random_head = None if cfg.linear_init else copy.deepcopy(model.head.state_dict())
        _fit_probe(model, start_feats[train_idx], np.asarray(all_labels)[train_idx], num_classes, cfg.seed)
        if compete:  # the one to beat: fine-tuning must get two more validation images right
            best = classifier_accuracy(model, val_samples, amp=cfg.amp) + 1.0 / len(val_samples)
            best_state = "probe"
        if random_head is not None:
            model.head.load_state_dict(random_head)
    groups = _encoder_groups(model.encoder, cfg)
    groups += [dict(g, lr_scale=1.0) for g in param_groups(list(model.head.named_parameters()),
                                                          cfg.weight_decay)]
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, lr=0.0, **fused_option(groups))
    sched = cosine_schedule(cfg.lr, 0.0, cfg.steps, int(cfg.warmup_frac * cfg.steps))
    gen = torch.Generator().manual_seed(cfg.seed)
    y_all = torch.from_numpy(np.asarray(samples.labels)).long()
    n = len(samples)
    bs = min(cfg.batch_size, n)
    order, pos = torch.randperm(n, generator=gen), 0
    start = copy.deepcopy(model.encoder.state_dict()) if best_state == "probe" else None
    model.train()
    steps = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="classifier", unit="step", leave=False)
    for step in steps:
        if pos + bs > len(order):
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + bs]
        pos += bs
        x = classifier_augment(to_input(torch.from_numpy(samples.read(idx.numpy())), device), gen)
        for g in opt.param_groups:
            g["lr"] = float(sched[step]) * g["lr_scale"]
        with precision.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y_all[idx].to(device), label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if val_samples is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            acc = classifier_accuracy(model, val_samples, amp=cfg.amp)
            model.train()
            if acc > best:
                best, best_state, checks_without_gain = acc, copy.deepcopy(model.state_dict()), 0
            else:
                checks_without_gain += 1
                if checks_without_gain >= cfg.patience:
                    break
    if best_state == "probe":  # fine-tuning never beat the probe: the probe, fitted on every label
        model.encoder.load_state_dict(start)
        model.kept_probe = True
        _fit_probe(model, start_feats, all_labels, num_classes, cfg.seed)
    elif best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model


@torch.no_grad()
def classifier_accuracy(model: Classifier, samples: SampleSet, amp: bool = True) -> float:
    """Top-1 accuracy of ``model`` on the labelled ``samples``."""
    feats = extract_features(model.encoder, samples, amp=amp)
    logits = model.head(feats.to(next(model.head.parameters()).device))
    return (logits.argmax(1).cpu() == torch.from_numpy(np.asarray(samples.labels)).long()).float().mean().item()
