"""DINO (Caron et al. 2021): self-distillation with no labels.

A student (encoder + DINO head) is trained to match, on every other crop of the same
image, the output distribution of a teacher that is an exponential moving average of the
student.  The teacher sees only the two global crops; the student sees all crops
(multi-crop).  Collapse is avoided by *centering* the teacher outputs (subtracting a
running mean ``c``, which pushes towards uniform) and *sharpening* them with a low
teacher temperature (which pushes towards one-hot)::

    P_t = softmax((g_t(x_global) - c) / T_t)        (no gradient)
    P_s = softmax(g_s(x_crop) / T_s)
    L   = mean over (teacher crop, other student crop) pairs of  -sum_k P_t log P_s

Per step (``training_step``): 2 global + ``n_local`` local crops -> teacher on the
globals -> student on the globals and, as a second batch at the local resolution, the
locals -> ``losses.dino_loss`` with the centre *before* the step -> centre update
(``losses.dino_center_update``, EMA 0.9) *after* the loss.  The engine then runs
backward, calls :meth:`DINO.before_optimizer_step` (gradient clipping, each parameter
tensor separately to norm 3.0, as DINO's ``clip_gradients``), the optimizer step, and
:meth:`DINO.after_optimizer_step` (teacher EMA with momentum cosine 0.996 -> 1).

Head: MLP D -> hidden -> hidden -> bottleneck (GELU), L2-normalise, then a
weight-normalised ``Linear(bottleneck, K, bias=False)``: ``F.linear(z, g * v / ||v||)`` with
the direction ``v`` (``head.last_layer``) and the norm ``g`` (``head.last_layer_g``, (K, 1))
fixed at 1 by default (DINO's ``norm_last_layer=True``) or learned from 1 with
``norm_last_layer=False``.  ``head_bn=True`` adds BatchNorm after
each hidden layer (the authors' ``use_bn_in_head``), which the CPU preset uses for small_cnn.

Frozen last layer: for the first ``freeze_last_layer`` epochs the student head uses a
*detached* copy of ``head.last_layer`` in the forward pass, so backward produces no
gradient for it (``grad is None``) and the optimizer skips it entirely -- no update, no
weight decay, no Adam state -- exactly as DINO's ``cancel_gradients_last_layer`` which
sets ``p.grad = None``.  The current step lives in the buffer ``step`` (saved with every
checkpoint), set from the engine's step in :meth:`after_optimizer_step`.

Choices where the paper and the authors' code differ, or where this project adapts:

* the teacher temperature warm-up is linear *per step* (the authors' code steps it per
  epoch); the EMA momentum cosine reaches exactly 1.0 at the last step;
* the teacher runs in training mode like the student (BatchNorm uses batch statistics,
  as in the authors' code) but without stochastic depth (the authors build the teacher
  with ``drop_path_rate=0``);
* at 32 px blur is dropped from all crops (``views.for_small_images``), local crops are
  half the image side (96/224 in the paper), rounded down to a multiple of the ViT patch.

Collapse at CPU scale, and KoLeo on the bottleneck.  Without a regulariser, the ``cpu``
preset on 16 px shapes learned for some seeds while others collapsed to a uniform teacher
within a few epochs (teacher entropy at ln K, KL near 0).  In that failure the head's
bottleneck maps all images to nearly one direction, so every prototype gets nearly the
same logit, centering cancels what is left and no teacher temperature can sharpen it.
The paper's colour jitter, local crops, a slower teacher, a larger K, a lower teacher
temperature, learned prototype norms, a longer warm-up, other centre momenta, no weight
decay, a bias-free bottleneck, Sinkhorn-Knopp teacher probabilities (``sinkhorn``), a
lower lr, non-affine BN on the bottleneck and DINOv2's KoLeo on the backbone features
(``koleo_on="backbone"``) all left a collapsing seed uniform.  DINOv2's KoLeo regulariser
(:func:`selfsup.methods.losses.koleo_loss`) applied to the head's *bottleneck* instead
(``koleo_on="head"``) attacks the failure itself -- it penalises two images of a batch
sharing a direction -- and is the ``cpu`` preset's choice: with it every seed tried
learned, with nothing flagged (``benchmarks/bench_dino_seeds.py``; the numbers are in
docs/results.md).

:func:`attention_maps` gives the CLS-token attention of the last block over the patches
(the "emergent segmentation" pictures of the paper) for ViT encoders.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.data.views import STRONG_VIEWS, augment, build_views, dino_views
from selfsup.errors import SelfSupError
from selfsup import distributed
from selfsup.methods.base import METHODS, Method, momentum_update
from selfsup.methods.losses import dino_center_update, dino_diagnostics, dino_loss, koleo_loss, sinkhorn_knopp
from selfsup.models import Encoder
from selfsup.models import eval_mode
from selfsup.models.vit import ViT
from selfsup.schedules import cosine_schedule


class DINOHead(nn.Module):
    """MLP (GELU) -> L2-normalise -> weight-normalised linear layer to K prototypes
    (norms g fixed at 1, or learned with ``norm_last_layer=False``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, layers: int = 3,
                 batch_norm: bool = False, norm_last_layer: bool = True):
        super().__init__()
        if layers < 2:
            raise SelfSupError(f"the DINO head needs at least 2 MLP layers, got head_layers={layers}")
        mods: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            mods.append(nn.Linear(dim, hidden_dim))
            if batch_norm:
                mods.append(nn.BatchNorm1d(hidden_dim))
            mods.append(nn.GELU())
            dim = hidden_dim
        mods.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):  # the authors' init: truncated normal, std 0.02
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # The direction v of the weight-normalised last layer, (K, bottleneck), with
        # nn.Linear's default init (as in the authors' code, which inits it after the MLP).
        self.last_layer = nn.Parameter(nn.Linear(bottleneck_dim, out_dim, bias=False).weight.detach().clone())
        # The norm g of each prototype: fixed at 1 (norm_last_layer=True) or learned from 1.
        self.last_layer_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)

    def forward(self, h: torch.Tensor, *, freeze_last_layer: bool = False) -> torch.Tensor:
        return self.prototypes(self.mlp(h), freeze_last_layer=freeze_last_layer)

    def prototypes(self, b: torch.Tensor, *, freeze_last_layer: bool = False) -> torch.Tensor:
        """Logits over the K prototypes from the bottleneck ``b = mlp(h)``."""
        z = F.normalize(b, dim=-1)  # (N, bottleneck), unit rows
        v, g = self.last_layer, self.last_layer_g
        if freeze_last_layer:
            v, g = v.detach(), g.detach()
        return F.linear(z, g * F.normalize(v, dim=1))  # (N, K): weight norm g * v / ||v||


@dataclass
class DINOConfig:
    out_dim: int = 1024                # K prototypes; 65536 at ImageNet scale, a few thousand for small data
    hidden_dim: int = 512              # head MLP width; 2048 in the paper
    bottleneck_dim: int = 128          # head output before the last layer; 256 in the paper
    head_layers: int = 3               # MLP layers in the head (3 in the paper)
    head_bn: bool = False              # BatchNorm after each hidden head layer (authors' use_bn_in_head)
    norm_last_layer: bool = True       # fix the prototype norms g at 1; False learns them (sharper, less stable)
    n_local: int = 4                   # local crops per image (8 in the paper at 96 px); 0 = two crops only
    local_size: int | None = None      # local crop side in px (None = half the image side)
    student_temp: float = 0.1          # T_s
    teacher_temp: float = 0.04         # T_t after warm-up; 0.04-0.07, above 0.07 is unstable
    warmup_teacher_temp: float = 0.04  # T_t at step 0; lower it if the loss stays at ln K early on
    warmup_teacher_temp_epochs: float = 0.0  # linear T_t warm-up in epochs (30 in the paper's ViT-S run)
    momentum_teacher: float = 0.996    # EMA momentum at step 0, cosine to 1 at the last step
    center_momentum: float = 0.9       # EMA momentum of the centre
    centering: bool = True             # False removes centering: the teacher goes one-hot (collapse demo)
    freeze_last_layer: float = 1.0     # epochs during which head.last_layer is not trained
    clip_grad: float = 3.0             # max grad norm of *each* parameter tensor (0 = off)
    koleo_weight: float = 0.0          # DINOv2's KoLeo regulariser on the student's global-crop features (0.1 in DINOv2)
    koleo_on: str = "backbone"         # what KoLeo spreads: "backbone" features (DINOv2) or the "head" bottleneck
    sinkhorn: bool = False             # DINOv2: teacher probabilities by Sinkhorn-Knopp instead of centering + softmax
    views: dict[str, Any] = field(default_factory=dict)        # ViewConfig overrides for the global crops
    local_views: dict[str, Any] = field(default_factory=dict)  # ViewConfig overrides for the local crops


@METHODS.register("dino", help="DINO: self-distillation from an EMA teacher, multi-crop, centering, sharpening")
class DINO(Method):
    Config = DINOConfig
    min_batch_size = 1
    presets = {
        # Short CPU runs on small data (what learned shape on `shapes`, tests/test_dino.py;
        # measurements in docs/results.md): BN in the head (small_cnn's pooled ReLU features
        # share one dominant direction, which leaves a BN-free head's centred teacher
        # uniform), a fast teacher (EMA 0.95 learned more in a short run than 0.99), K=256, two
        # global crops with SimCLR's strong colour jitter and no local crops (with the paper's
        # colour jitter and local crops the clusters follow colour and texture, not shape).
        # KoLeo on the head's bottleneck (see the module docstring) at 0.5 rather than
        # DINOv2's 0.1: spreading the bottleneck features keeps the prototypes from settling
        # on coarse clusters; it raised kNN on 16 px shapes at some cost in the linear probe.
        "cpu": {"backbone": "small_cnn", "optim.name": "adamw", "optim.base_lr": 4e-3,
                "optim.lr_scaling": "linear", "optim.weight_decay": 0.04, "optim.warmup_epochs": 1,
                "optim.min_lr": 1e-6, "train.batch_size": 128, "train.epochs": 40,
                "method_cfg.out_dim": 256, "method_cfg.head_bn": True, "method_cfg.n_local": 0,
                "method_cfg.momentum_teacher": 0.95, "method_cfg.koleo_weight": 0.5, "method_cfg.koleo_on": "head",
                "method_cfg.views": STRONG_VIEWS},
        # The paper's ViT-S/16 recipe (patch 4 at 32 px), with a CIFAR-sized K.
        "gpu": {"backbone": "vit_small", "backbone_cfg.drop_path": 0.1, "optim.name": "adamw",
                "optim.base_lr": 5e-4, "optim.lr_scaling": "linear", "optim.weight_decay": 0.04,
                "optim.weight_decay_end": 0.4, "optim.warmup_epochs": 10, "optim.min_lr": 1e-6,
                "train.batch_size": 256, "train.epochs": 300,
                "method_cfg.out_dim": 4096, "method_cfg.hidden_dim": 2048,
                "method_cfg.bottleneck_dim": 256, "method_cfg.n_local": 8,
                "method_cfg.teacher_temp": 0.07, "method_cfg.warmup_teacher_temp_epochs": 30},
    }

    def __init__(self, encoder: Encoder, cfg: DINOConfig, *, image_size: int, channels: int):
        super().__init__(encoder, cfg, image_size=image_size, channels=channels)
        if min(cfg.teacher_temp, cfg.warmup_teacher_temp, cfg.student_temp) <= 0:
            raise SelfSupError("DINO temperatures (teacher_temp, warmup_teacher_temp, student_temp) "
                               "must be positive")
        if cfg.koleo_on not in ("backbone", "head"):
            raise SelfSupError(f"DINO koleo_on must be 'backbone' or 'head', got {cfg.koleo_on!r}")
        if cfg.koleo_weight:
            self.min_batch_size = 2  # KoLeo needs a nearest neighbour within each crop's batch
        self.head = DINOHead(encoder.num_features, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim,
                             cfg.head_layers, cfg.head_bn, cfg.norm_last_layer)
        # The teacher: a copy of the student that only ever changes by EMA.
        self.teacher_encoder = copy.deepcopy(encoder)
        self.teacher_head = copy.deepcopy(self.head)
        for p in [*self.teacher_encoder.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        for m in self.teacher_encoder.modules():
            if hasattr(m, "drop_prob"):  # timm DropPath: no stochastic depth in the teacher
                m.drop_prob = 0.0
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))      # (1, K)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # optimizer steps done

        patch = getattr(encoder.net, "patch_size", 1)
        local = cfg.local_size or max(image_size // 2, 1)
        self.local_size = max(local // patch * patch, patch)
        global1, global2, local_cfg = dino_views(image_size, self.local_size, cfg.n_local)
        self.global1 = build_views(global1, image_size, cfg.views)
        self.global2 = build_views(global2, image_size, cfg.views)
        self.local = build_views(local_cfg, image_size, cfg.local_views)
        self.setup_schedules(1, 1)

    def setup_schedules(self, total_steps: int, steps_per_epoch: int) -> None:
        super().setup_schedules(total_steps, steps_per_epoch)
        cfg, total = self.cfg, self.total_steps
        self.momentum_schedule = cosine_schedule(cfg.momentum_teacher, 1.0, total)  # (total,)
        warm = min(round(cfg.warmup_teacher_temp_epochs * self.steps_per_epoch), total)
        self.teacher_temp_schedule = np.concatenate([                             # (total,)
            np.linspace(cfg.warmup_teacher_temp, cfg.teacher_temp, warm),
            np.full(total - warm, cfg.teacher_temp)])
        self.freeze_steps = round(cfg.freeze_last_layer * self.steps_per_epoch)

    def _at(self, schedule: np.ndarray) -> float:
        return float(schedule[min(int(self.step), len(schedule) - 1)])

    def crops(self, x: torch.Tensor, generator: torch.Generator
              ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Student outputs for all crops (2 globals first) and teacher outputs for the globals:
        lists of (N, K) tensors, of length 2 + n_local and 2; and what KoLeo spreads for the
        two global crops: the student's backbone features (2N, D) or head bottleneck
        (2N, bottleneck), as ``koleo_on`` says."""
        n_crops = 2 + self.cfg.n_local
        globals_ = torch.cat([augment(x, self.global1, generator),
                              augment(x, self.global2, generator)])  # (2N, C, S, S)
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_encoder(globals_))  # (2N, K)
        h = h_globals = self.encoder(globals_)  # (2N, D)
        if self.cfg.n_local:
            # local crops have another resolution: a second batch through the backbone
            locals_ = torch.cat([augment(x, self.local, generator)
                                 for _ in range(self.cfg.n_local)])  # (n_local*N, C, s, s)
            h = torch.cat([h, self.encoder(locals_)])  # ((2 + n_local) N, D)
        frozen = int(self.step) < self.freeze_steps
        b = self.head.mlp(h)  # ((2 + n_local) N, bottleneck)
        student = self.head.prototypes(b, freeze_last_layer=frozen)  # ((2 + n_local) N, K)
        spread = h_globals if self.cfg.koleo_on == "backbone" else b[:len(globals_)]
        return list(student.chunk(n_crops)), list(teacher.chunk(2)), spread

    def training_step(self, x, generator):
        student_out, teacher_out, spread = self.crops(x, generator)
        raw = teacher_out  # the centre follows the raw teacher outputs
        temp = self._at(self.teacher_temp_schedule)
        center = self.center if self.cfg.centering else torch.zeros_like(self.center)
        gather = distributed.gather if distributed.current().distributed else None  # the global batch
        if self.cfg.sinkhorn:  # balanced teacher probabilities P, passed as logits T_t log P (softmax gives P back)
            probs = sinkhorn_knopp(torch.cat(teacher_out), temp, gather=gather)  # (2N, K)
            teacher_out, center = list((temp * probs.clamp_min(1e-12).log()).chunk(2)), torch.zeros_like(center)
        loss = dino_loss(student_out, teacher_out, center, self.cfg.student_temp, temp)
        logs = dino_diagnostics(student_out, teacher_out, center, self.cfg.student_temp, temp)
        if self.cfg.koleo_weight:  # each global crop's batch separately, as DINOv2
            koleo = sum(koleo_loss(part) for part in spread.chunk(2)) / 2
            loss = loss + self.cfg.koleo_weight * koleo
            logs["koleo"] = koleo.item()
        # the centre is updated only after the loss used the old one
        self.center.copy_(dino_center_update(self.center, raw, self.cfg.center_momentum, gather=gather))
        return loss, {**logs, "teacher_temp": temp}

    def before_optimizer_step(self) -> None:
        """DINO's gradient clipping: each parameter tensor's gradient separately to norm
        ``clip_grad`` (``g <- g * min(1, clip / (||g|| + 1e-6))``), not the global norm."""
        if self.cfg.clip_grad <= 0:
            return
        with torch.no_grad():
            for _, p in self.trainable_parameters():
                if p.grad is not None:
                    scale = (self.cfg.clip_grad / (p.grad.norm() + 1e-6)).clamp(max=1.0)
                    p.grad.mul_(scale.to(p.grad.dtype))

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        m = self._at(self.momentum_schedule)
        momentum_update(self.encoder, self.teacher_encoder, m)
        momentum_update(self.head, self.teacher_head, m)
        self.step.fill_(step + 1)


# --------------------------------------------------------------------- attention maps


def _timm_vit(encoder: Encoder) -> nn.Module:
    """The timm VisionTransformer inside a ViT encoder (its blocks give the attention)."""
    net = getattr(encoder, "net", None)
    if not isinstance(net, ViT):
        name = getattr(encoder, "name", type(encoder).__name__)
        raise SelfSupError("attention maps need a ViT backbone (vit_tiny, vit_small, vit_mae_tiny, "
                           f"vit_mae_small), not {name!r}")
    return net.vit


@torch.no_grad()
def last_block_attention(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    """Attention probabilities of every head of the last block: (N, heads, T, T) with
    T = prefix tokens (CLS) + patches.  Recomputed from the block's own layers on its
    input, as timm's ``Attention.forward`` computes them (dropout off)."""
    vit = _timm_vit(encoder)
    block = vit.blocks[-1]
    seen: list[torch.Tensor] = []
    handle = block.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        with eval_mode(encoder):
            encoder.forward_tokens(images)
    finally:
        handle.remove()
    attn = block.attn
    x = block.norm1(seen[0])  # (N, T, D)
    n, t, _ = x.shape
    qkv = attn.qkv(x).reshape(n, t, 3, attn.num_heads, attn.head_dim)  # (N, T, 3, heads, hd)
    qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, N, heads, T, hd)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)  # (N, heads, T, T)


@torch.no_grad()
def attention_maps(encoder: Encoder, images: torch.Tensor) -> torch.Tensor:
    """CLS-token attention of the last block over the patches: (N, heads, H/p, W/p).

    ``images`` (N, C, H, W) in [0, 1].  Each map is one row of the attention matrix
    without its prefix (CLS) columns, so it sums to at most 1 (the rest is attention of
    the CLS token to itself).  Raises :class:`SelfSupError` for non-ViT encoders.
    """
    vit = _timm_vit(encoder)
    p = encoder.net.patch_size
    cls_row = last_block_attention(encoder, images)[:, :, 0, vit.num_prefix_tokens:]  # (N, heads, L)
    n, heads, _ = cls_row.shape
    return cls_row.reshape(n, heads, images.shape[-2] // p, images.shape[-1] // p)
