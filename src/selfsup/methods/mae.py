"""MAE: masked autoencoders (He, Chen, Xie, Li, Dollar & Girshick 2021, arXiv 2111.06377).

The image is cut into ``p x p`` patches; a random 75% of them are removed; a ViT encoder
sees only the visible patches (plus a CLS token); a light decoder gets the encoded
visible patches back in place, one shared learned mask token in every removed slot, and
predicts the ``p*p*C`` pixel values of each patch.  The loss is the per-patch MSE on the
removed patches only, against targets normalised per patch (``norm_pix_loss``).

Following the authors' ``models_mae.py``:

* patch vectors are ordered (p, q, c), channel fastest
  (:func:`selfsup.methods.losses.patchify`);
* fixed 2-D sin-cos position embeddings (:func:`~selfsup.models.vit.sincos_pos_embed_2d`,
  not trained, a buffer) are added to the patch tokens BEFORE masking; the CLS token's
  slot is zeros;
* masking keeps ``floor(L * (1 - mask_ratio))`` patches: per image, ``L`` uniforms are
  drawn, sorted, and the patches with the smallest noise are kept; ``ids_restore``
  (the inverse permutation) puts the decoder tokens back in place
  (:func:`~selfsup.models.vit.random_masking`);
* the decoder adds its own sin-cos position embeddings after unshuffling.

Differences from the authors' code: the target is the patchified image in [0, 1]
pixels (theirs is the ImageNet-normalised image; with ``norm_pix_loss`` the per-patch
normalisation removes most of the difference); the decoder is scaled down for small
images (128 wide, 2 blocks, 4 heads instead of 512, 8, 16).

``target`` chooses what a removed patch is predicted as: its pixels (MAE), its histogram
of oriented gradients (``"hog"``: MaskFeat's target, Wei, Fan, Xie, Wu, Yuille &
Feichtenhofer 2022; :func:`selfsup.methods.losses.hog_targets`, normalised per patch, so
it does not depend on colour or contrast) or both (``"pixels+hog"``: the decoder predicts
both, the loss is the HOG loss plus ``pixel_weight`` times the pixel loss); ``"auto"`` is
both from 16 px up and pixels alone below.  The ``cpu`` preset takes ``"auto"`` with a
small ``pixel_weight``.  Why: on images whose object is a few percent of the pixels on a
coloured, cluttered background, a pixel loss is spent on the background and MAE's frozen
features stayed at their random-init level, while HOG describes shape; HOG alone,
though, drops what the pixels keep (intensity, colour) and lost linear-probe accuracy on
sources where those matter, so the pixels stay in with a small weight.  At 8 px (four
2 px patches a side; the image is its object, with no background) adding HOG even at that
weight left the linear probe at its random-init level, so there the preset keeps the
pixels alone.  The measurements behind these choices (per source and seed, against random
initialisation) are in docs/results.md.

The encoder contract: ``self.encoder`` is an :class:`~selfsup.models.Encoder` around a
:class:`~selfsup.models.vit.ViT` (``forward_masked``); ``vit_mae_tiny`` and
``vit_mae_small`` are its MAE configuration (fixed sin-cos positions, MAE's init), the
learned-position ``vit_tiny`` / ``vit_small`` work too.  The encoder's ``forward(x)``
sees the full image (no masking) and returns the CLS token after the final norm, or with
``pool="mean"`` (the ``cpu`` preset) the mean of the patch tokens.  MAE is weak under kNN
and linear evaluation by design and shines under fine-tuning (He et al. 2021, section 4.3,
partial fine-tuning); at CPU scale its frozen features improve late, after many steps,
which is why the ``cpu`` preset trains long with small batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from selfsup.data.views import augment, build_views, mae_views
from selfsup.errors import SelfSupError
from selfsup.methods.base import METHODS, Method, normalized_std
from selfsup.methods.losses import hog_targets, mae_loss, patchify, unpatchify
from selfsup.models import eval_mode
from selfsup.models.vit import ViT, mae_init_weights, sincos_pos_embed_2d, vit_blocks

MAE_BACKBONES = ("vit_mae_tiny", "vit_mae_small")
TARGETS = ("pixels", "hog", "pixels+hog", "auto")
HOG_MIN_SIZE = 16  # target "auto": pixels+hog from this image side up, pixels below


class MAEDecoder(nn.Module):
    """latent (N, 1 + keep, D) -> predictions (N, L, p*p*C) for every patch."""

    def __init__(self, embed_dim: int, num_patches_side: int, patch_dim: int, width: int,
                 depth: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.embed = nn.Linear(embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        pos = sincos_pos_embed_2d(width, num_patches_side, num_patches_side, cls_token=True)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # (1, 1 + L, W), fixed
        self.blocks = vit_blocks(width, depth, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.pred = nn.Linear(width, patch_dim)
        self.apply(mae_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.embed(latent)  # (N, 1 + keep, W)
        n, length = ids_restore.shape
        masks = self.mask_token.expand(n, length + 1 - x.shape[1], -1)  # (N, L - keep, W)
        x_ = torch.cat([x[:, 1:], masks], dim=1)  # (N, L, W) in shuffled order
        x_ = x_.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1], x_], dim=1) + self.pos_embed  # (N, 1 + L, W)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, 1:]  # (N, L, p*p*C), CLS dropped


@dataclass
class MAEConfig:
    mask_ratio: float = 0.75           # fraction of patches removed
    norm_pix_loss: bool = True         # normalise each target patch by its mean and std (pixel targets)
    decoder_dim: int = 128             # decoder width (512 at ImageNet scale)
    decoder_depth: int = 2             # decoder blocks (8 at ImageNet scale)
    decoder_heads: int = 4             # decoder heads (16 at ImageNet scale)
    target: str = "pixels"             # "pixels" (MAE), "hog" (MaskFeat's gradient histograms), "pixels+hog",
                                       # or "auto": pixels+hog from 16 px up, pixels below
    hog_bins: int = 9                  # orientation bins of the HOG target
    pixel_weight: float = 1.0          # weight of the pixel loss next to the HOG loss (target pixels+hog)
    views: dict[str, Any] = field(default_factory=dict)  # ViewConfig overrides of crop (0.2, 1) + flip


@METHODS.register("mae", help="MAE: reconstruct removed patches with a ViT (backbone vit_mae_tiny/small)")
class MAE(Method):
    Config = MAEConfig
    presets = {
        # Why (measurements in docs/results.md): base_lr is 20x the paper's, because in a few
        # thousand steps the paper's barely moves the loss; MAE's kNN gains appear only after
        # many steps, so small data needs small batches (more steps per epoch) and 60 epochs
        # rather than 30; a mask ratio of 0.5 was no better than 0.75.  The representation is
        # the mean of the patch tokens, which a linear probe read better than the CLS token.
        # Raw-pixel targets (no norm_pix_loss): these images' patches are few pixels, often
        # flat, and without the per-patch normalisation the linear probe on 16 px shapes
        # rose (on digits it was mixed).  4 px patches on 8 px digits (a 2x2 grid) fell below
        # random init; at 16 px the default 2 px patches learn more than 4 px ones, at four
        # times the tokens (models/vit.py).  The target, HOG + 0.3 x pixels from 16 px up
        # and pixels below: the module docstring.
        "cpu": {"backbone": "vit_mae_tiny", "backbone_cfg.depth": 4, "backbone_cfg.embed_dim": 128,
                "backbone_cfg.num_heads": 4, "backbone_cfg.pool": "mean", "method_cfg.decoder_dim": 64,
                "method_cfg.decoder_depth": 1, "method_cfg.decoder_heads": 2, "method_cfg.norm_pix_loss": False,
                "method_cfg.target": "auto", "method_cfg.pixel_weight": 0.3, "optim.name": "adamw",
                "optim.base_lr": 3e-3,
                "optim.lr_scaling": "linear", "optim.betas": [0.9, 0.95], "optim.weight_decay": 0.05,
                "optim.warmup_epochs": 2, "train.batch_size": 32, "train.epochs": 60},
        # the paper's recipe (AdamW 1.5e-4 x bs/256, betas (0.9, 0.95), wd 0.05, 40 warm-up
        # epochs, cosine, 800 epochs) with ViT-Tiny at 32 px (patch 4, 64 patches)
        "gpu": {"backbone": "vit_mae_tiny", "optim.name": "adamw", "optim.base_lr": 1.5e-4,
                "optim.lr_scaling": "linear", "optim.betas": [0.9, 0.95], "optim.weight_decay": 0.05,
                "optim.warmup_epochs": 40, "train.batch_size": 1024, "train.epochs": 800},
    }

    def __init__(self, encoder, cfg: MAEConfig, *, image_size: int, channels: int):
        super().__init__(encoder, cfg, image_size=image_size, channels=channels)
        net = encoder.net
        if not isinstance(net, ViT):
            raise SelfSupError(f"mae needs backbone {' or '.join(MAE_BACKBONES)}; got "
                               f"{encoder.name or type(net).__name__} (vit_tiny / vit_small work too)")
        if not 0.0 <= cfg.mask_ratio < 1.0:
            raise SelfSupError(f"mask_ratio must be in [0, 1), got {cfg.mask_ratio}")
        self.patch_size = net.patch_size
        self.num_patches = net.grid * net.grid
        if cfg.target not in TARGETS:
            raise SelfSupError(f"mae target must be one of {', '.join(TARGETS)}; got {cfg.target!r}")
        if cfg.hog_bins < 2:
            raise SelfSupError(f"hog_bins must be at least 2, got {cfg.hog_bins}")
        # the decoder predicts [pixels | HOG] per patch, either part absent where not a target
        self.target = cfg.target if cfg.target != "auto" else "pixels+hog" if image_size >= HOG_MIN_SIZE else "pixels"
        self.pixel_dim = self.patch_size ** 2 * channels if "pixels" in self.target else 0
        self.decoder = MAEDecoder(net.num_features, net.grid, self.pixel_dim + ("hog" in self.target) * cfg.hog_bins,
                                  cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads)
        self.view_cfg = build_views(mae_views(), image_size, cfg.views)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> (N, L, D): per patch its pixels (p*p*C, order (p, q, c))
        then its HOG (bins), whichever the target names."""
        parts = [patchify(x, self.patch_size)] if self.pixel_dim else []
        if "hog" in self.target:
            parts.append(hog_targets(x, self.patch_size, self.cfg.hog_bins))
        return torch.cat(parts, dim=-1)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """mae_loss on each part of the target, summed; HOG is normalised already (no norm_pix)."""
        k = self.pixel_dim
        if "hog" not in self.target:
            return mae_loss(pred, target, mask, self.cfg.norm_pix_loss)
        loss = mae_loss(pred[..., k:], target[..., k:], mask, False)
        if k:
            loss = loss + self.cfg.pixel_weight * mae_loss(pred[..., :k], target[..., :k], mask, self.cfg.norm_pix_loss)
        return loss

    def masked_forward(self, x: torch.Tensor, generator: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pred (N, L, p*p*C), mask (N, L), latent CLS (N, D)) for images x in [0, 1]."""
        noise = torch.rand(x.shape[0], self.num_patches, generator=generator,
                           device=generator.device).to(x.device)  # (N, L)
        latent, mask, ids_restore = self.encoder.net.forward_masked(
            self.encoder.normalize(x), self.cfg.mask_ratio, noise)
        return self.decoder(latent, ids_restore), mask, latent[:, 0]

    def training_step(self, x, generator):
        x = augment(x, self.view_cfg, generator)  # (N, C, S, S)
        pred, mask, cls = self.masked_forward(x, generator)
        loss = self.loss(pred, self.targets(x), mask)
        return loss, {"z_std": normalized_std(cls)}


@torch.no_grad()
def reconstruct(method: MAE, images: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(original, masked_input, reconstruction), each (N, C, H, W) in [0, 1], for display.

    ``masked_input`` shows removed patches in gray (0.5).  With ``norm_pix_loss`` the
    prediction of each patch is de-normalised with that patch's own target mean and
    std (known only because we have the original; this is how the authors' demo shows
    it).  Visible patches are pasted from the original, so only removed patches are
    the model's work.
    """
    k = method.pixel_dim
    if not k:
        raise SelfSupError("this MAE predicts HOG features, not pixels, so it has no reconstructions to show; "
                           "pretrain with method_cfg.target=pixels (or pixels+hog) for them")
    generator = generator or torch.Generator().manual_seed(0)
    x = images.to(next(method.parameters()).device).float()
    with eval_mode(method):
        pred, mask, _ = method.masked_forward(x, generator)  # (N, L, D), (N, L)
    pred, target = pred[..., :k], patchify(x, method.patch_size)  # (N, L, P): the pixel part
    if method.cfg.norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, unbiased=True, keepdim=True)
        pred = pred * (var + 1.0e-6).sqrt() + mean
    removed = mask.unsqueeze(-1).bool()  # (N, L, 1)
    p, c = method.patch_size, x.shape[1]
    grid = (x.shape[2] // p, x.shape[3] // p)
    masked_input = unpatchify(target.masked_fill(removed, 0.5), p, c, grid=grid)
    recon = unpatchify(torch.where(removed, pred, target), p, c, grid=grid)
    return x, masked_input, recon.clamp(0.0, 1.0)
