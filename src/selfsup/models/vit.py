"""Vision transformers: timm's ``VisionTransformer`` and the MAE encoder.

``vit_tiny`` / ``vit_small`` wrap timm's VisionTransformer (learned positions, CLS
token); ``vit_mae_tiny`` / ``vit_mae_small`` are the MAE encoder built from timm
``Block`` s with fixed 2-D sin-cos positions and a ``forward_masked`` that encodes the
visible patches only (He et al. 2021, ``models_mae.py``).  Both map images to the CLS
token after the final norm and offer ``forward_tokens`` and ``patch_size``.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from selfsup.models.backbones import BACKBONES, LibraryNet


def default_patch_size(image_size: int) -> int:
    """16 px patches at 224, 4 px at 32, 2 px at 16 and 8: 8-14 patches per side from 16 px up.

    At 16 px, 2 px patches (an 8x8 grid, as at 32 px) rather than 4 px ones (4x4, of which
    MAE's encoder sees 4): MAE's cpu preset, 3 seeds, kNN / linear on `photo_digits` 0.121 /
    0.175 -> 0.140 / 0.286 (random init 0.130 / 0.169 -> 0.129 / 0.235), on 16 px `shapes`
    0.245 / 0.332 -> 0.244 / 0.408, at about 4x the time (README, methods table).
    """
    if image_size >= 160:
        return 16
    if image_size >= 64:
        return 8
    if image_size >= 32:
        return 4
    return 2


class ViT(LibraryNet):
    """timm VisionTransformer with a CLS token; ``forward`` returns the normed CLS token,
    which is what ``timm.create_model(..., num_classes=0)`` returns too (exportable as a
    timm state dict)."""

    library = "timm"

    def __init__(self, in_chans: int, image_size: int, embed_dim: int, depth: int,
                 num_heads: int, patch_size: int | None = None, drop_path: float = 0.0):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.patch_size = patch_size or default_patch_size(image_size)
        if image_size % self.patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch {self.patch_size}")
        self.timm_kwargs = dict(img_size=image_size, patch_size=self.patch_size, in_chans=in_chans,
                                embed_dim=embed_dim, depth=depth, num_heads=num_heads, num_classes=0,
                                dynamic_img_size=True)
        self.vit = VisionTransformer(**self.timm_kwargs, drop_path_rate=drop_path)
        self.num_features = embed_dim

    @property
    def library_model(self) -> nn.Module:
        return self.vit

    def recipe(self) -> dict:
        args = ", ".join(f"{k}={v!r}" for k, v in self.timm_kwargs.items())
        return {"build": [f"m = timm.models.vision_transformer.VisionTransformer({args})"],
                "input": "as the encoder"}

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)  # (N, 1 + L, D), after the final norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)[:, 0]  # (N, D): CLS token


@BACKBONES.register("vit_tiny", help="timm ViT, 192-d, 12 blocks, 3 heads (patch from image size)")
def vit_tiny(*, in_chans: int, image_size: int, patch_size: int | None = None,
             depth: int = 12, drop_path: float = 0.0) -> nn.Module:
    return ViT(in_chans, image_size, 192, depth, 3, patch_size, drop_path)


@BACKBONES.register("vit_small", help="timm ViT, 384-d, 12 blocks, 6 heads (patch from image size)")
def vit_small(*, in_chans: int, image_size: int, patch_size: int | None = None,
              depth: int = 12, drop_path: float = 0.0) -> nn.Module:
    return ViT(in_chans, image_size, 384, depth, 6, patch_size, drop_path)


# --- the MAE encoder ---------------------------------------------------------------------


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


def mae_init_weights(module: nn.Module) -> None:
    """MAE's init: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def vit_blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    from timm.models.vision_transformer import Block

    return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True,
                               norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth))


class MAEViT(nn.Module):
    """The MAE encoder: patch embedding + fixed sin-cos positions + CLS + timm Blocks + norm.

    ``forward(x)`` -> (N, D) CLS token after the final norm (full image, no masking), or
    with ``pool="mean"`` the mean of the patch tokens after the final norm (the global
    pooling of MAE's fine-tuning code; far more informative than the CLS token for a
    small MAE's frozen features);
    ``forward_tokens(x)`` -> (N, 1 + L, D); ``forward_masked(x, ratio, noise)`` ->
    (latent (N, 1 + keep, D), mask (N, L) with 1 = removed, ids_restore (N, L)).
    Inputs are already normalised images (the :class:`Encoder` wrapper does that).
    """

    def __init__(self, in_chans: int, image_size: int, embed_dim: int, depth: int, num_heads: int,
                 patch_size: int | None = None, mlp_ratio: float = 4.0, pool: str = "cls"):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        self.pool = pool
        self.patch_size = patch_size or default_patch_size(image_size)
        if image_size % self.patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch {self.patch_size}")
        self.grid = image_size // self.patch_size
        self.num_features = embed_dim
        self.patch_embed = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = sincos_pos_embed_2d(embed_dim, self.grid, self.grid, cls_token=True)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)  # (1, 1 + L, D), fixed
        self.blocks = vit_blocks(embed_dim, depth, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.apply(mae_init_weights)
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
        tokens = self.forward_tokens(x)  # (N, 1 + L, D) after the final norm
        return tokens[:, 1:].mean(1) if self.pool == "mean" else tokens[:, 0]  # (N, D)

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


@BACKBONES.register("vit_mae_tiny", help="MAE ViT encoder, 192-d, 12 blocks, 3 heads, sin-cos positions")
def vit_mae_tiny(*, in_chans: int, image_size: int, patch_size: int | None = None, depth: int = 12,
                 embed_dim: int = 192, num_heads: int = 3, pool: str = "cls") -> nn.Module:
    return MAEViT(in_chans, image_size, embed_dim, depth, num_heads, patch_size, pool=pool)


@BACKBONES.register("vit_mae_small", help="MAE ViT encoder, 384-d, 12 blocks, 6 heads, sin-cos positions")
def vit_mae_small(*, in_chans: int, image_size: int, patch_size: int | None = None, depth: int = 12,
                  embed_dim: int = 384, num_heads: int = 6) -> nn.Module:
    return MAEViT(in_chans, image_size, embed_dim, depth, num_heads, patch_size)
