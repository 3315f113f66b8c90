"""BYOL: bootstrap your own latent, no negatives.

Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning"
(NeurIPS 2020, arXiv 2006.07733).  The online network (encoder -> projector -> predictor) predicts the target network's
projection of the other view; the target (encoder -> projector) is an EMA of the online
one and never receives gradients.  Loss per sample ``2 - 2 cos(p, sg(z'))``, symmetrised
and summed over the two directions (range [0, 8], :func:`losses.byol_loss`).
Downstream tasks use ``h = f(x)``, never ``z`` or ``p``.

Projector and predictor: Linear(d, h) - BN - ReLU - Linear(h, p) (h=4096, p=256 at
ImageNet scale).  The predictor's BatchNorm matters: without it BYOL collapses easily
at small scale, which ``predictor_bn=False`` (and ``projector_bn=False``) exist to
demonstrate; the ``z_std`` log (normalised std of the online projections) lets the
engine's collapse monitor see it.

Target EMA after each optimizer step with ``tau_k = 1 - (1 - tau_0)(cos(pi k / K) + 1) / 2``
(k the step, K the run's total steps): tau_0 at the start, 1 at the end.  The LR warm-up
is the engine's: it reaches the base LR at the last warm-up step, one step before the
authors' JAX code does (see :func:`selfsup.schedules.cosine_schedule`).  Parameters
only: the target runs in training mode (batch statistics) and keeps its own BN buffers.

The ``cpu`` preset adds the KoLeo regulariser of DINOv2 (Oquab et al. 2023, arXiv
2304.07193; :func:`losses.koleo_loss`, weight 0.5) on each view's batch of online
projections ``z``: it pushes every image away from its nearest neighbour in the batch.
That is not in the paper (``koleo_weight=0`` is BYOL as published); without it, on small
data unlike ``shapes``, BYOL's features concentrated in a few directions and kNN fell
below random init -- without negatives nothing in the loss spreads the images apart
(measurements in ``docs/results.md``).

Views are asymmetric (view 1 always blurred, view 2 sometimes solarized; no blur at
<= 32 px).  As in the authors' JAX code, each view goes through the networks in its own
forward pass, so BatchNorm statistics are per view.

Usage (the ``cpu`` preset is the default)::

    selfsup.pretrain("byol", "shapes", out_dir="runs/byol")
    # or: selfsup pretrain --method byol --data shapes --out runs/byol
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from selfsup.data.views import STRONG_VIEWS, augment, build_views, byol_views
from selfsup.methods.base import METHODS, Method, momentum_update, normalized_std
from selfsup.methods.losses import byol_loss, koleo_loss


def byol_mlp(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = True) -> nn.Sequential:
    """BYOL projector / predictor: Linear(d, h) - BN - ReLU - Linear(h, out).

    Example::

        >>> import torch
        >>> from selfsup.methods.byol import byol_mlp
        >>> byol_mlp(512, 1024, 256)(torch.randn(4, 512)).shape
        torch.Size([4, 256])
    """
    norm = nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity()
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), norm, nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


@dataclass
class BYOLConfig:
    hidden_dim: int = 1024             # MLP hidden width of projector and predictor; 4096 at ImageNet scale
    proj_dim: int = 256                # output dimension of z and p
    tau: float = 0.99                  # base target EMA tau_0, cosine to 1; 0.996 for 1000 epochs, 0.97 for 40
    predictor_bn: bool = True          # False removes the predictor's BN: collapses at small scale (demo only)
    projector_bn: bool = True          # False removes the projector's BN (demo only)
    predictor_lr_scale: float = 1.0    # the predictor's LR / the base LR (DirectPred and SimSiam train it faster)
    koleo_weight: float = 0.0          # DINOv2's KoLeo regulariser on each view's online projections (0 = the paper's BYOL)
    views: dict[str, Any] = field(default_factory=dict)  # ViewConfig overrides, applied to both views


@METHODS.register("byol", help="BYOL: predict an EMA target's projection of the other view, no negatives")
class BYOL(Method):
    Config = BYOLConfig
    min_batch_size = 2  # BatchNorm in the heads needs at least two samples
    presets = {
        # small data on a CPU: a faster target (tau_0 0.98 for short runs), strong colour
        # jitter, the setting that learned shape on `shapes` (tests/test_byol.py), and a
        # predictor trained at 10x the LR, which learned more than one at the base LR; a
        # lower lr and tau_0 0.9 (the features lost most of their effective rank) were worse.
        # Batch 64: BYOL needs steps, and 30 epochs of a small set at batch 128 are a few
        # hundred; batch 32 was no better and slower, weight decay 0.05 worse.  With
        # STRONG_VIEWS' half-image crop floor, lr 2e-3 beat 4e-3, and tau_0 0.99 was worse
        # than 0.98.  On photo_digits (handwriting on photographs) none of that lifted kNN
        # above random init, not even in longer runs while the linear probe rose: without
        # negatives nothing spreads the images apart, and the features concentrated in two
        # directions.  DINOv2's KoLeo term on the online projections, weight 0.5, supplies
        # the spread on every source tried; weights 0.1 and 1.0, and KoLeo on the backbone
        # features, were worse.  Not in the paper: weight 0 is BYOL.  Measurements in
        # docs/results.md.
        "cpu": {"optim.name": "adamw", "optim.base_lr": 2e-3, "optim.weight_decay": 1e-4,
                "optim.warmup_epochs": 2, "train.batch_size": 64, "train.epochs": 30,
                "method_cfg.hidden_dim": 512, "method_cfg.tau": 0.98, "method_cfg.predictor_lr_scale": 10.0,
                "method_cfg.koleo_weight": 0.5, "method_cfg.views": STRONG_VIEWS},
        # CIFAR-scale recipe: ResNet-18, LARS 0.2 x bs/256 (paper's 0.2 per 256 with LARS), wd 1.5e-6
        "gpu": {"backbone": "resnet18", "optim.name": "lars", "optim.base_lr": 0.2,
                "optim.lr_scaling": "linear", "optim.weight_decay": 1.5e-6, "optim.warmup_epochs": 10,
                "train.batch_size": 512, "train.epochs": 300,
                "method_cfg.hidden_dim": 4096, "method_cfg.proj_dim": 256, "method_cfg.tau": 0.99},
    }

    def __init__(self, encoder, cfg: BYOLConfig, *, image_size: int, channels: int):
        super().__init__(encoder, cfg, image_size=image_size, channels=channels)
        d = encoder.num_features
        self.projector = byol_mlp(d, cfg.hidden_dim, cfg.proj_dim, cfg.projector_bn)
        self.predictor = byol_mlp(cfg.proj_dim, cfg.hidden_dim, cfg.proj_dim, cfg.predictor_bn)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            p.requires_grad_(False)
        view1, view2 = byol_views()
        self.view1 = build_views(view1, image_size, cfg.views)
        self.view2 = build_views(view2, image_size, cfg.views)

    def lr_scales(self) -> dict[str, float]:
        return {"predictor.": self.cfg.predictor_lr_scale}

    def target_momentum(self, step: int) -> float:
        """tau_k = 1 - (1 - tau_0)(cos(pi k / K) + 1) / 2: tau_0 at k=0, 1 at k=K."""
        k = min(step, self.total_steps)
        return 1 - (1 - self.cfg.tau) * (math.cos(math.pi * k / self.total_steps) + 1) / 2

    def training_step(self, x, generator):
        v1 = augment(x, self.view1, generator)  # (N, C, S, S)
        v2 = augment(x, self.view2, generator)  # (N, C, S, S)
        z1, z2 = self.projector(self.encoder(v1)), self.projector(self.encoder(v2))  # (N, P) each
        p1, p2 = self.predictor(z1), self.predictor(z2)  # (N, P) each
        with torch.no_grad():
            t1 = self.target_projector(self.target_encoder(v1))  # (N, P)
            t2 = self.target_projector(self.target_encoder(v2))  # (N, P)
        loss = byol_loss(p1, p2, t1, t2)
        logs = {"z_std": normalized_std(torch.cat([z1, z2])), "p_std": normalized_std(torch.cat([p1, p2]))}
        if self.cfg.koleo_weight:  # each view's batch separately, as DINOv2
            koleo = (koleo_loss(z1.float()) + koleo_loss(z2.float())) / 2
            loss = loss + self.cfg.koleo_weight * koleo
            logs["koleo"] = koleo.item()
        return loss, logs

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        tau = self.target_momentum(step)
        momentum_update(self.encoder, self.target_encoder, tau)
        momentum_update(self.projector, self.target_projector, tau)
