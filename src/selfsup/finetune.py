"""Supervised training of an encoder + linear head: fine-tuning and the from-scratch baseline.

Fine-tuning starts from a pretrained encoder and gives the backbone a smaller learning
rate than the head (``backbone_lr_scale``); training from scratch is the same loop on
a freshly initialised encoder with ``backbone_lr_scale=1``, so the two differ only in
the starting weights.  Light augmentation (random resized crop of area 0.35-1 and
flips), AdamW, linear warm-up then cosine, a fixed budget of steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.backbones import Encoder
from selfsup.features import extract_features
from selfsup.optim import cosine_schedule, param_groups
from selfsup.views import ViewConfig, augment


@dataclass
class ClassifierConfig:
    steps: int = 600                 # optimizer steps (the budget, whatever the number of labels)
    batch_size: int = 128            # labelled images per step (capped at the number of labels)
    lr: float = 2e-3                 # head learning rate (AdamW)
    backbone_lr_scale: float = 1.0   # backbone lr = lr * this (0.1 is typical for fine-tuning)
    weight_decay: float = 5e-4
    warmup_frac: float = 0.05        # fraction of steps of linear warm-up
    label_smoothing: float = 0.1
    seed: int = 0


class Classifier(nn.Module):
    def __init__(self, encoder: Encoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def train_classifier(encoder: Encoder, images: np.ndarray, labels: np.ndarray, num_classes: int,
                     cfg: ClassifierConfig = ClassifierConfig(), *, device: torch.device | str = "cpu",
                     progress: bool = False) -> Classifier:
    """Train ``encoder`` + a linear head on labelled ``images`` (N, H, W, C) uint8."""
    device = torch.device(device)
    model = Classifier(encoder, num_classes).to(device)
    torch.manual_seed(cfg.seed)
    nn.init.zeros_(model.head.bias)
    groups = param_groups(list(model.encoder.named_parameters()), cfg.weight_decay)
    for g in groups:
        g["lr_scale"] = cfg.backbone_lr_scale
    groups += [dict(g, lr_scale=1.0) for g in param_groups(list(model.head.named_parameters()),
                                                          cfg.weight_decay)]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=0.0)
    sched = cosine_schedule(cfg.lr, 0.0, cfg.steps, int(cfg.warmup_frac * cfg.steps))
    views = ViewConfig(crop_scale=(0.35, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = torch.from_numpy(np.ascontiguousarray(images))
    y_all = torch.from_numpy(labels).long()
    bs = min(cfg.batch_size, len(images))
    order, pos = torch.randperm(len(images), generator=gen), 0
    model.train()
    steps = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="classifier", unit="step", leave=False)
    for step in steps:
        if pos + bs > len(order):
            order, pos = torch.randperm(len(images), generator=gen), 0
        idx = order[pos:pos + bs]
        pos += bs
        x = data[idx].to(device).permute(0, 3, 1, 2).float().div_(255)  # (B, C, H, W)
        x = augment(x, views, gen)
        for g in opt.param_groups:
            g["lr"] = float(sched[step]) * g["lr_scale"]
        loss = F.cross_entropy(model(x), y_all[idx].to(device), label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model


@torch.no_grad()
def classifier_accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray) -> float:
    feats = extract_features(model.encoder, images)
    logits = model.head(feats.to(next(model.head.parameters()).device))
    return (logits.argmax(1).cpu() == torch.from_numpy(labels).long()).float().mean().item()
