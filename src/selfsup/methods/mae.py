"""MAE: masked autoencoders (He, Chen, Xie, Li, Dollar & Girshick 2021).

The image is cut into ``p x p`` patches; a random 75% of them are removed; a ViT encoder
sees only the visible patches (plus a CLS token); a light decoder gets the encoded
visible patches back in place, one shared learned mask token in every removed slot, and
predicts the ``p*p*C`` pixel values of each patch.  The loss is the per-patch MSE on the
removed patches only, against targets normalised per patch (``norm_pix_loss``).

Following the authors' ``models_mae.py``:

* patch vectors are ordered (p, q, c), channel fastest (:func:`selfsup.losses.patchify`);
* fixed 2-D sin-cos position embeddings (:func:`sincos_pos_embed_2d`, not trained, a
  buffer) are added to the patch tokens BEFORE masking; the CLS token's slot is zeros;
* masking keeps ``floor(L * (1 - mask_ratio))`` patches: per image, ``L`` uniforms are
  drawn, sorted, and the patches with the smallest noise are kept; ``ids_restore``
  (the inverse permutation) puts the decoder tokens back in place;
* the decoder adds its own sin-cos position embeddings after unshuffling.

Differences from the authors' code: the target is the patchified image in [0, 1]
pixels (theirs is the ImageNet-normalised image; with ``norm_pix_loss`` the per-patch
normalisation removes most of the difference); the decoder is scaled down for small
images (128 wide, 2 blocks, 4 heads instead of 512, 8, 16).

The encoder contract: ``self.encoder`` is an :class:`~selfsup.backbones.Encoder` around
:class:`MAEViT`, registered here as the backbones ``vit_mae_tiny`` and ``vit_mae_small``;
its ``forward(x)`` sees the full image (no masking) and returns the CLS token after the
final norm, the representation MAE's linear probe uses.  MAE is weak under kNN and linear
evaluation by design; it shines under fine-tuning (REFERENCE section 5).  Measured on
shapes with the CPU preset's depth-4 128-d encoder and 2000 images: at 16 px kNN of the
CLS token goes 0.150 -> 0.158 after 40 epochs and -> 0.220 after 80 (1250 steps); at
32 px it stays at its random-init level after 20 epochs: frozen MAE features improve late.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from selfsup.backbones import BACKBONES, default_patch_size
from selfsup.errors import SelfSupError
from selfsup.features import eval_mode
from selfsup.losses import mae_loss, patchify, unpatchify
from selfsup.methods.base import METHODS, Method
from selfsup.monitor import normalized_std
from selfsup.views import augment, build_views, mae_views

MAE_BACKBONES = ("vit_mae_tiny", "vit_mae_small")


def sincos_pos_embed_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim): [sin(pos * w_k), cos(pos * w_k)], w_k = 10000^(-k/(dim/2))."""
    if dim % 2:
        raise ValueError(f"1-D sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = positions.double()[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings, (grid_h * grid_w, dim), row-major patches.

    As in the MAE code: the first ``dim/2`` columns encode the patch's column (x)
    coordinate, the last ``dim/2`` its row (y) coordinate, each with the 1-D sin-cos
    code.  With ``cls_token`` a row of zeros is prepended (the CLS slot): (1 + L, dim).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # (L,) row of patch l
    cols = torch.arange(grid_w).repeat(grid_h)  # (L,) column of patch l
    emb = torch.cat([sincos_pos_embed_1d(dim // 2, cols), sincos_pos_embed_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def _init_weights(module: nn.Module) -> None:
    """MAE's init: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    from timm.models.vision_transformer import Block

    return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True,
                               norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth))


class MAEViT(nn.Module):
    """The MAE encoder: patch embedding + fixed sin-cos positions + CLS + timm Blocks + norm.

    ``forward(x)`` -> (N, D) CLS token after the final norm (full image, no masking);
    ``forward_tokens(x)`` -> (N, 1 + L, D); ``forward_masked(x, ratio, noise)`` ->
    (latent (N, 1 + keep, D), mask (N, L) with 1 = removed, ids_restore (N, L)).
    Inputs are already normalised images (the :class:`Encoder` wrapper does that).
    """

    def __init__(self, in_chans: int, image_size: int, embed_dim: int, depth: int, num_heads: int,
                 patch_size: int | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_size = patch_size or default_patch_size(image_size)
        if image_size % self.patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch {self.patch_size}")
        self.grid = image_size // self.patch_size
        self.num_features = embed_dim
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = sincos_pos_embed_2d(embed_dim, self.grid, self.grid, cls_token=True)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # (1, 1 + L, D), fixed
        self.blocks = _blocks(embed_dim, depth, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.apply(_init_weights)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear on flattened patches
        nn.init.normal_(self.cls_token, std=0.02)

    def _pos(self, grid_h: int, grid_w: int) -> torch.Tensor:
        if grid_h == grid_w == self.grid:
            return self.pos_embed
        pos = sincos_pos_embed_2d(self.num_features, grid_h, grid_w, cls_token=True)
        return pos.unsqueeze(0).to(self.pos_embed)  # other image sizes: computed on the fly

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens with positions (N, L, D) and the CLS token with its (zero) position (1, 1, D)."""
        x = self.patch_embed(x)  # (N, D, h, w)
        pos = self._pos(x.shape[2], x.shape[3])  # (1, 1 + L, D)
        x = x.flatten(2).transpose(1, 2) + pos[:, 1:]  # (N, L, D), patches row-major
        return x, self.cls_token + pos[:, :1]

    def _encode(self, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)  # (N, 1 + M, D)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        tokens, cls = self.embed(x)
        return self._encode(tokens, cls)  # (N, 1 + L, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]  # (N, D): CLS after the final norm

    def forward_masked(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches only; ``noise`` (N, L) uniforms decide which (small = keep)."""
        tokens, cls = self.embed(x)  # (N, L, D)
        visible, mask, ids_restore = random_masking(tokens, mask_ratio, noise)
        return self._encode(visible, cls), mask, ids_restore


def random_masking(tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep ``floor(L * (1 - mask_ratio))`` tokens per row: those with the smallest noise.

    tokens (N, L, D), noise (N, L) -> (visible (N, keep, D) in noise order,
    mask (N, L) float with 1 = removed in the original order, ids_restore (N, L) with
    ``ids_restore[ids_shuffle] = arange(L)``).
    """
    n, length, d = tokens.shape
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = noise.argsort(dim=1)  # (N, L): ascending noise, small = keep
    ids_restore = ids_shuffle.argsort(dim=1)  # (N, L): inverse permutation
    ids_keep = ids_shuffle[:, :keep]  # (N, keep)
    visible = tokens.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, d))  # (N, keep, D)
    mask = torch.ones(n, length, device=tokens.device)
    mask[:, :keep] = 0
    mask = mask.gather(1, ids_restore)  # (N, L) back in patch order
    return visible, mask, ids_restore


class MAEDecoder(nn.Module):
    """latent (N, 1 + keep, D) -> predictions (N, L, p*p*C) for every patch."""

    def __init__(self, embed_dim: int, num_patches_side: int, patch_dim: int, width: int,
                 depth: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.embed = nn.Linear(embed_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        pos = sincos_pos_embed_2d(width, num_patches_side, num_patches_side, cls_token=True)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # (1, 1 + L, W), fixed
        self.blocks = _blocks(width, depth, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.pred = nn.Linear(width, patch_dim)
        self.apply(_init_weights)
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


@BACKBONES.register("vit_mae_tiny", help="MAE ViT encoder, 192-d, 12 blocks, 3 heads, sin-cos positions")
def vit_mae_tiny(*, in_chans: int, image_size: int, patch_size: int | None = None, depth: int = 12,
                 embed_dim: int = 192, num_heads: int = 3) -> nn.Module:
    return MAEViT(in_chans, image_size, embed_dim, depth, num_heads, patch_size)


@BACKBONES.register("vit_mae_small", help="MAE ViT encoder, 384-d, 12 blocks, 6 heads, sin-cos positions")
def vit_mae_small(*, in_chans: int, image_size: int, patch_size: int | None = None, depth: int = 12,
                  embed_dim: int = 384, num_heads: int = 6) -> nn.Module:
    return MAEViT(in_chans, image_size, embed_dim, depth, num_heads, patch_size)


@dataclass
class MAEConfig:
    mask_ratio: float = 0.75           # fraction of patches removed
    norm_pix_loss: bool = True         # normalise each target patch by its mean and std
    decoder_dim: int = 128             # decoder width (512 at ImageNet scale)
    decoder_depth: int = 2             # decoder blocks (8 at ImageNet scale)
    decoder_heads: int = 4             # decoder heads (16 at ImageNet scale)
    views: dict[str, Any] = field(default_factory=dict)  # ViewConfig overrides of crop (0.2, 1) + flip


@METHODS.register("mae", help="MAE: reconstruct removed patches with a ViT (backbone vit_mae_tiny/small)")
class MAE(Method):
    Config = MAEConfig
    presets = {
        # 0.87 s per epoch of 2000 16 px shapes on one thread (benchmarks/results/methods.json).
        # base_lr is 20x the paper's: in a few thousand steps the paper's 1.5e-4 barely
        # moves the loss; kNN gains appear only after ~1000 steps.
        "cpu": {"backbone": "vit_mae_tiny", "backbone_cfg.depth": 4, "backbone_cfg.embed_dim": 128,
                "backbone_cfg.num_heads": 4, "method_cfg.decoder_dim": 64, "method_cfg.decoder_depth": 1,
                "method_cfg.decoder_heads": 2, "optim.name": "adamw", "optim.base_lr": 3e-3,
                "optim.lr_scaling": "linear", "optim.betas": [0.9, 0.95], "optim.weight_decay": 0.05,
                "optim.warmup_epochs": 2, "train.batch_size": 128, "train.epochs": 30},
        # the paper's recipe (AdamW 1.5e-4 x bs/256, betas (0.9, 0.95), wd 0.05, 40 warm-up
        # epochs, cosine, 800 epochs) with ViT-Tiny at 32 px (patch 4, 64 patches)
        "gpu": {"backbone": "vit_mae_tiny", "optim.name": "adamw", "optim.base_lr": 1.5e-4,
                "optim.lr_scaling": "linear", "optim.betas": [0.9, 0.95], "optim.weight_decay": 0.05,
                "optim.warmup_epochs": 40, "train.batch_size": 1024, "train.epochs": 800},
    }

    def __init__(self, encoder, cfg: MAEConfig, *, image_size: int, channels: int):
        super().__init__(encoder, cfg, image_size=image_size, channels=channels)
        net = encoder.net
        if not isinstance(net, MAEViT):
            raise SelfSupError(f"mae needs backbone {' or '.join(MAE_BACKBONES)}; got {encoder.name or type(net).__name__}")
        if not 0.0 <= cfg.mask_ratio < 1.0:
            raise SelfSupError(f"mask_ratio must be in [0, 1), got {cfg.mask_ratio}")
        self.patch_size = net.patch_size
        self.num_patches = net.grid * net.grid
        self.decoder = MAEDecoder(net.num_features, net.grid, self.patch_size ** 2 * channels,
                                  cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads)
        self.view_cfg = build_views(mae_views(), image_size, cfg.views)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> (N, L, p*p*C) patch vectors, order (p, q, c)."""
        return patchify(x, self.patch_size)

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
        loss = mae_loss(pred, self.targets(x), mask, self.cfg.norm_pix_loss)
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
    generator = generator or torch.Generator().manual_seed(0)
    x = images.to(next(method.parameters()).device).float()
    with eval_mode(method):
        pred, mask, _ = method.masked_forward(x, generator)  # (N, L, P), (N, L)
    target = method.targets(x)  # (N, L, P)
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
