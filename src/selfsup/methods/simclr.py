"""SimCLR: contrastive learning with NT-Xent over two views.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations" (ICML 2020, arXiv 2002.05709).  Each image gives two views; the shared
encoder ``f`` and projection head ``g`` map them to ``z``; NT-Xent
(:func:`selfsup.methods.losses.nt_xent`) pulls the two views of an image together and
pushes the other 2N-2 views of the batch away.  Downstream tasks use ``h = f(x)``, never
``z``: the paper finds the representation before the head transfers better, because the
head learns to discard what the views change (colour, position).

Head (v1, ``head_layers=2``): Linear(d, d, no bias) + BN + ReLU -> Linear(d, 128, no
bias) + BN; ``head_layers=3`` is the v2 head (Chen et al. 2020, "Big Self-Supervised
Models are Strong Semi-Supervised Learners", arXiv 2006.10029).  Views: the paper's
recipe at colour strength ``color_strength`` (0.5 by default, the CIFAR-10 setting), with
no blur at <= 32 px.  Under several processes the negatives come from every process
(:func:`selfsup.distributed.gather`).

Usage (the ``cpu`` preset is the default)::

    selfsup.pretrain("simclr", "shapes", out_dir="runs/simclr")
    # or: selfsup pretrain --method simclr --data shapes --out runs/simclr
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from selfsup import distributed
from selfsup.data.views import augment, build_views, simclr_views
from selfsup.methods.base import METHODS, Method, normalized_std
from selfsup.methods.losses import nt_xent


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int) -> nn.Sequential:
    """SimCLR head: (Linear (no bias) + BN + ReLU) x (layers - 1), then Linear (no bias) + BN.

    BatchNorm on the output layer too, as in the authors' code; the biases are left out
    because the BatchNorm after each Linear would cancel them.

    Example::

        >>> import torch
        >>> from selfsup.methods.simclr import projection_mlp
        >>> projection_mlp(512, 512, 128, layers=2)(torch.randn(4, 512)).shape
        torch.Size([4, 128])
    """
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    mods += [nn.Linear(dim, out_dim, bias=False), nn.BatchNorm1d(out_dim)]
    return nn.Sequential(*mods)


@dataclass
class SimCLRConfig:
    temperature: float = 0.5           # NT-Xent tau; 0.5 for CIFAR-scale data, 0.1 at ImageNet scale
    proj_dim: int = 128                # output dimension of z
    hidden_dim: int | None = None      # head width (None = encoder feature dimension)
    head_layers: int = 2               # 2 = SimCLR v1 head, 3 = v2
    color_strength: float = 0.5        # jitter strength s: (0.8s, 0.8s, 0.8s, 0.2s); 1.0 at ImageNet scale
    views: dict[str, Any] = field(default_factory=dict)  # ViewConfig overrides, e.g. {crop_scale: [0.2, 1]}


@METHODS.register("simclr", help="SimCLR: NT-Xent contrastive loss between two augmented views")
class SimCLR(Method):
    Config = SimCLRConfig
    min_batch_size = 2  # NT-Xent needs at least one negative per anchor
    presets = {
        # short CPU runs: strong colour jitter, crops of at least a quarter of the image, a
        # lower temperature and a higher lr learned much faster on `shapes` than the CIFAR
        # recipe in a few epochs (measurements in docs/results.md)
        "cpu": {"optim.name": "adamw", "optim.base_lr": 8e-3, "optim.weight_decay": 1e-4,
                "optim.warmup_epochs": 1, "train.batch_size": 128, "train.epochs": 15,
                "method_cfg.temperature": 0.1, "method_cfg.color_strength": 1.0,
                "method_cfg.views": {"crop_scale": [0.25, 1.0]}},
        # the paper's optimiser settings (LARS at 0.3 x batch / 256, weight decay 1e-6, 10
        # warm-up epochs) on ResNet-18 with the CIFAR stem; T = 0.5 and colour strength 0.5,
        # the paper's CIFAR-10 choices, are the defaults
        "gpu": {"backbone": "resnet18", "optim.name": "lars", "optim.base_lr": 0.3,
                "optim.lr_scaling": "linear", "optim.weight_decay": 1e-6, "optim.warmup_epochs": 10,
                "train.batch_size": 512, "train.epochs": 500},
    }

    def __init__(self, encoder, cfg: SimCLRConfig, *, image_size: int, channels: int):
        super().__init__(encoder, cfg, image_size=image_size, channels=channels)
        d = encoder.num_features
        self.head = projection_mlp(d, cfg.hidden_dim or d, cfg.proj_dim, cfg.head_layers)
        self.view_cfg = build_views(simclr_views(strength=cfg.color_strength), image_size, cfg.views)

    def training_step(self, x, generator):
        n = x.shape[0]
        views = torch.cat([augment(x, self.view_cfg, generator),
                           augment(x, self.view_cfg, generator)])  # (2N, C, S, S)
        z = self.head(self.encoder(views))  # (2N, proj_dim)
        gather = distributed.gather if distributed.current().distributed else None  # negatives from every rank
        loss = nt_xent(z[:n], z[n:], self.cfg.temperature, gather=gather)
        with torch.no_grad():
            pos_sim = nn.functional.cosine_similarity(z[:n], z[n:]).mean().item()
        return loss, {"pos_sim": pos_sim, "z_std": normalized_std(z)}
