"""MoCo v2: momentum contrast with a queue of negative keys.

He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning" (CVPR 2020, arXiv 1911.05722), with the v2 improvements of Chen, Fan, Girshick
& He, "Improved Baselines with Momentum Contrastive Learning" (2020, arXiv 2003.04297):
an MLP head, T = 0.2 and stronger views.

A query encoder ``f_q`` + MLP head (trained) and a key encoder ``f_k`` + head (an EMA copy,
no gradient) map two views of each image to ``q`` and ``k``.  The loss is cross-entropy
over ``[q.k+, q.queue] / T`` with the positive at index 0 (:func:`losses.moco_loss`); the
queue holds the K most recent keys (unit vectors), so negatives need not come from the
current batch.  Downstream tasks use ``h = f_q(x)``, never ``q``.

Order per step (as in the authors' ``moco/builder.py``): momentum update of the key
encoder **first**, then the keys, then the loss, then the keys are enqueued **after** the
loss (a ring buffer; K must be divisible by the number of keys per step).  With
``symmetric=True`` (an option of the authors' CIFAR demo) each view is also a query for
the other view's key, the two losses are summed and both sets of keys are enqueued.

Why MoCo learns slower than SimCLR in short CPU runs: the key encoder is an average of
the query encoder over the last ~1/(1-m) steps, and the queue holds keys of the last K/N
steps, so in a few hundred steps the targets lag a network that still changes fast.  A
faster key encoder (m=0.9) does not cure it: the current batch's keys then differ from the
queued ones by the network's drift, and the query learns to find "the key from the current
network" -- the positive accuracy rose while the effective rank of the features collapsed
and kNN fell below random init.  Other learning rates, SGD, T=0.2, smaller batches, a queue
of one batch, plain BN or BN in the head did not lift kNN much above random init; the
symmetric loss (both views are queries) did, and is the cpu preset (measurements in
``docs/results.md``).

Head: Linear(d, d) - ReLU - Linear(d, 128), no BatchNorm (v2); ``head_bn=True`` adds BN
after the hidden layer (inside the split-BN groups, like the encoder).  Views: the MoCo v2
recipe, without blur at <= 32 px.

Shuffle BN on one device = split BN.  Keys are computed in training mode, so a key's
BatchNorm statistics would carry a signature of the batch its query also came from and
the model could "cheat" (find the positive through the statistics).  The authors shuffle
the key batch across GPUs; on one device a shuffle alone changes nothing, so -- as the
authors' CIFAR demo does with ``SplitBatchNorm`` in both encoders -- both passes here run
the encoder on ``bn_splits`` groups, each with its own BN statistics: the query pass on
contiguous groups (like one group per GPU), the key pass on groups of a random
permutation of the batch (drawn from the step's generator), unshuffled afterwards.  A
query and its key therefore rarely share statistics.  The groups are plain chunked
forward passes, so BN running statistics are updated once per group; encoders without
BatchNorm (ViTs) run in one pass.

Usage (the ``cpu`` preset is the default)::

    selfsup.pretrain("moco", "shapes", out_dir="runs/moco")
    # or: selfsup pretrain --method moco --data shapes --out runs/moco
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup import distributed
from selfsup.data.views import STRONG_VIEWS, augment, build_views, moco_v2_views
from selfsup.errors import SelfSupError
from selfsup.methods.base import METHODS, Method, momentum_update, normalized_std
from selfsup.methods.losses import moco_loss


def moco_head(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False) -> nn.Sequential:
    """MoCo v2 head: Linear(d, h) - ReLU - Linear(h, out), no BatchNorm; with ``batch_norm``
    BN after the hidden layer (as MoCo v3, Chen, Xie & He 2021, arXiv 2104.02057, and the
    CIFAR re-implementations do).

    Example::

        >>> import torch
        >>> from selfsup.methods.moco import moco_head
        >>> moco_head(512, 512, 128)(torch.randn(4, 512)).shape
        torch.Size([4, 128])
    """
    norm = nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity()
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), norm, nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


@dataclass
class MoCoConfig:
    temperature: float = 0.2           # T of the softmax; 0.2 for v2 (0.07 for v1, 0.1 in the CIFAR demo)
    queue_size: int = 4096             # K negatives; a multiple of the batch size (65536 at ImageNet scale)
    momentum: float = 0.99             # key encoder EMA m, constant; 0.99 for small data, 0.999 at ImageNet scale
    proj_dim: int = 128                # output dimension of q and k
    hidden_dim: int | None = None      # head width (None = encoder feature dimension)
    bn_splits: int = 4                 # BN groups per pass (split BN); 1 = plain BN ("cheating" possible)
    head_bn: bool = False              # BatchNorm after the head's hidden layer (v2 has none)
    symmetric: bool = False            # also use view 2 as query against view 1's key (CIFAR demo option; 2x compute)
    views: dict[str, Any] = field(default_factory=dict)  # ViewConfig overrides, e.g. {crop_scale: [0.2, 1]}


@METHODS.register("moco", help="MoCo v2: contrastive loss against a queue of momentum-encoder keys")
class MoCo(Method):
    Config = MoCoConfig
    min_batch_size = 2  # split BN needs at least two images per group
    presets = {
        # small data on a CPU: T=0.1 and strong colour jitter (SimCLR s=1) learned shape on
        # `shapes` where the plain v2 recipe learned only colour and texture (tests/test_moco.py).
        # The symmetric loss learned more than the one-way loss, where other learning rates,
        # SGD, T=0.2, a smaller queue, plain BN, BN in the head and m=0.9 did not help (m=0.9
        # collapsed: see the module docstring).  Batch 64 rather than 128: twice the steps in
        # the same epochs learned more on every source tried, at a longer wall-clock time
        # (per-step overhead).  Measurements in docs/results.md.
        "cpu": {"optim.name": "adamw", "optim.base_lr": 4e-3, "optim.weight_decay": 1e-4,
                "optim.warmup_epochs": 2, "train.batch_size": 64, "train.epochs": 30,
                "method_cfg.queue_size": 1024, "method_cfg.momentum": 0.99, "method_cfg.temperature": 0.1,
                "method_cfg.symmetric": True, "method_cfg.views": STRONG_VIEWS},
        # the authors' CIFAR demo: ResNet-18, SGD lr 0.06 at bs 512, wd 5e-4, K=4096, m=0.99, T=0.1
        "gpu": {"backbone": "resnet18", "optim.name": "sgd", "optim.base_lr": 0.03,
                "optim.lr_scaling": "linear", "optim.weight_decay": 5e-4, "optim.momentum": 0.9,
                "optim.warmup_epochs": 0, "train.batch_size": 512, "train.epochs": 200,
                "method_cfg.queue_size": 4096, "method_cfg.momentum": 0.99,
                "method_cfg.temperature": 0.1, "method_cfg.bn_splits": 8},
    }

    def __init__(self, encoder, cfg: MoCoConfig, *, image_size: int, channels: int):
        super().__init__(encoder, cfg, image_size=image_size, channels=channels)
        if cfg.queue_size < 1 or cfg.bn_splits < 1:
            raise SelfSupError("moco needs queue_size >= 1 and bn_splits >= 1")
        d = encoder.num_features
        self.head = moco_head(d, cfg.hidden_dim or d, cfg.proj_dim, cfg.head_bn)
        self.key_encoder = copy.deepcopy(encoder)
        self.key_head = copy.deepcopy(self.head)
        for p in [*self.key_encoder.parameters(), *self.key_head.parameters()]:
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next row to write
        self.split_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())
        self.view_cfg = build_views(moco_v2_views(), image_size, cfg.views)

    def groups(self, n: int) -> int:
        """Number of split-BN groups for a batch of ``n``: at most ``bn_splits``, >= 2 images each."""
        return max(1, min(self.cfg.bn_splits, n // 2)) if self.split_bn else 1

    def split_forward(self, encoder: nn.Module, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``head(encoder(.))`` on contiguous groups of ``x``, each with its own BN statistics."""
        return torch.cat([head(encoder(chunk)) for chunk in x.tensor_split(self.groups(len(x)))])

    @torch.no_grad()
    def keys(self, x_k: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Unit keys (N, D) of the key views: shuffle, split-BN forward, unshuffle.  Under
        several processes the shuffle runs over the global batch (shuffle-BN across
        processes): every rank draws the same permutation from its generator (all ranks
        share the seed), encodes its slice of the shuffled global batch and takes back its
        own keys."""
        n = len(x_k)
        x_all, offset = distributed.gather(x_k)  # (world * N, C, S, S); itself in one process
        perm = torch.randperm(len(x_all), generator=generator).to(x_k.device)  # (world * N,)
        mine = perm[offset:offset + n]  # the shuffled rows this rank encodes
        k = self.split_forward(self.key_encoder, self.key_head, x_all[mine])  # (N, D), shuffled order
        k_all, _ = distributed.gather(k)  # (world * N, D): row j is the key of image perm[j]
        k_all = k_all[torch.argsort(perm)]  # back in global batch order
        return F.normalize(k_all[offset:offset + n].to(self.queue.dtype), dim=1)  # (N, D)

    @torch.no_grad()
    def enqueue(self, k: torch.Tensor) -> None:
        """Write the batch's keys (N, D) -- every rank's, gathered, so that the queue is the
        same on all -- at ``queue_ptr`` and advance it (ring buffer)."""
        k, _ = distributed.gather(k)  # (world * N, D)
        n, ptr = k.shape[0], int(self.queue_ptr)
        self.queue[ptr:ptr + n] = k
        self.queue_ptr.fill_((ptr + n) % self.cfg.queue_size)

    def training_step(self, x, generator):
        n, world = x.shape[0], distributed.current().world_size
        per_step = (2 * n if self.cfg.symmetric else n) * world  # keys enqueued per step, every rank's
        if self.cfg.queue_size % per_step:
            raise SelfSupError(f"moco queue_size {self.cfg.queue_size} must be a multiple of the {per_step} "
                               f"keys enqueued per step (global batch size {n * world}"
                               f"{', x2 for the symmetric loss' if self.cfg.symmetric else ''}); set "
                               f"method_cfg.queue_size to e.g. {per_step * max(1, self.cfg.queue_size // per_step)}")
        momentum_update(self.encoder, self.key_encoder, self.cfg.momentum)  # 1. key encoder first
        momentum_update(self.head, self.key_head, self.cfg.momentum)
        x1 = augment(x, self.view_cfg, generator)  # (N, C, S, S)
        x2 = augment(x, self.view_cfg, generator)  # (N, C, S, S)
        pairs = [(x1, x2), (x2, x1)] if self.cfg.symmetric else [(x1, x2)]  # (query view, key view)
        qs = [self.split_forward(self.encoder, self.head, xq) for xq, _ in pairs]  # each (N, D)
        ks = [self.keys(xk, generator) for _, xk in pairs]  # 2. keys, each (N, D) unit vectors
        # 3. loss (summed over directions); a copy of the queue, as backward needs it after enqueue
        queue = self.queue.clone()
        loss = sum(moco_loss(q, k, queue, self.cfg.temperature) for q, k in zip(qs, ks))
        q, k = torch.cat(qs), torch.cat(ks)  # (P*N, D)
        with torch.no_grad():
            qn = F.normalize(q.detach().to(k.dtype), dim=1)
            l_pos = (qn * k).sum(1)  # (P*N,)
            l_neg = (qn @ queue.t()).max(dim=1).values  # (P*N,) hardest negative
            pos_acc = (l_pos > l_neg).float().mean().item()
        self.enqueue(k)  # 4. enqueue after the loss
        return loss, {"pos_acc": pos_acc, "z_std": normalized_std(q)}
