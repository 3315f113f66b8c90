"""Vision transformers: one class, :class:`ViT`, for every method that needs one.

A ViT (Dosovitskiy et al. 2020, "An Image is Worth 16x16 Words", arXiv 2010.11929) cuts
the image into ``p x p`` patches, embeds each with one linear map, adds a position
embedding, prepends a learned CLS token and runs transformer blocks, then a final
LayerNorm.  :class:`ViT` wraps timm's ``VisionTransformer`` (its patch embedding, CLS
token, position table, ``Block`` s and norm) and adds the two entry points the methods
need:

* ``forward_tokens(x) -> (N, 1 + L, D)``: every token after the final norm (CLS first),
  for DINO's attention maps (Caron et al. 2021, arXiv 2104.14294) and for pictures;
* ``forward_masked(x, mask_ratio, noise)``: MAE's encoder pass (He et al. 2021, "Masked
  Autoencoders Are Scalable Vision Learners", arXiv 2111.06377): positions are added to
  all patches, then a random subset is removed and only the visible ones (plus CLS) go
  through the blocks.

Options, so that one class covers the DINO-style and the MAE-style encoder:

* ``pos_embed="learned"`` (timm's, the ViT paper's) or ``"sincos"``: the fixed 2-D
  sin-cos table of MAE (:func:`sincos_pos_embed_2d`), a buffer, never trained;
* ``pool="cls"`` (the CLS token after the final norm, what
  ``timm.create_model(..., num_classes=0)`` returns) or ``"mean"`` (the mean of the patch
  tokens after the final norm: the global pooling of MAE's fine-tuning code, far more
  informative than the CLS token for a small MAE's frozen features);
* ``init="timm"`` (timm's) or ``"mae"`` (MAE's: xavier-uniform linear layers, the patch
  embedding as a linear map on flattened patches, CLS normal with std 0.02); by default
  ``"mae"`` with sin-cos positions and ``"timm"`` with learned ones.

The registered backbones are thin builders: ``vit_tiny`` / ``vit_small`` (learned
positions, timm init: DINO's ``gpu`` preset) and ``vit_mae_tiny`` / ``vit_mae_small``
(sin-cos positions, MAE init: MAE's presets).  Every one exports as a plain timm state
dict (``library_model``, ``recipe``); sin-cos tables are part of it, so plain timm gives
the same features at the training image size.  Other image sizes work too: learned
positions are resampled as timm resamples them, sin-cos ones are computed for the new
grid.

Encoders saved before the two ViT classes became one (the MAE encoder's
``patch_embed.weight``, ``cls_token``, ``blocks.*``, ``norm.*`` at the top level) load
into :class:`ViT` unchanged: :meth:`ViT._load_from_state_dict` renames their keys.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn as nn

from selfsup.models.backbones import BACKBONES, LibraryNet

POS_EMBEDS = ("learned", "sincos")
POOLS = ("cls", "mean")
INITS = ("timm", "mae")


def default_patch_size(image_size: int) -> int:
    """16 px patches from 160 px up, 8 px from 64, 4 px from 32, 2 px below: 8-14 patches per
    side at 16, 32, 64, 96 and 224 px.

    At 16 px, 2 px patches (an 8x8 grid, as at 32 px) rather than 4 px ones (a 4x4 grid,
    of which MAE's encoder sees only 4 patches): MAE's linear probe gained clearly on the
    16 px sources, its kNN less or not at all, at four times the tokens; docs/results.md
    has the measurements.
    """
    if image_size >= 160:
        return 16
    if image_size >= 64:
        return 8
    if image_size >= 32:
        return 4
    return 2


# --- position embeddings, masking and MAE's init: functions the MAE decoder shares ---------


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
    """``depth`` timm ``Block`` s as :class:`ViT` has them (qkv bias, LayerNorm eps 1e-6): the MAE decoder's."""
    from timm.models.vision_transformer import Block

    return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True,
                               norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth))


# --- the ViT ---------------------------------------------------------------------------

# Keys of the MAE encoder class this one replaced (``MAEViT``, which kept the parts at its
# own top level) -> the keys of the same parameters here.
LEGACY_KEYS = {"patch_embed.weight": "vit.patch_embed.proj.weight",
               "patch_embed.bias": "vit.patch_embed.proj.bias",
               "cls_token": "vit.cls_token"}
LEGACY_PREFIXES = ("blocks.", "norm.")  # -> "vit.blocks.", "vit.norm."


class ViT(LibraryNet):
    """timm's VisionTransformer with a CLS token, learned or fixed sin-cos positions, and
    MAE's masked encoder pass (see the module docstring).

    ``forward(x)`` -> (N, D): the CLS token (``pool="cls"``) or the mean of the patch
    tokens (``pool="mean"``), after the final norm; ``forward_tokens(x)`` -> (N, 1 + L, D);
    ``forward_masked(x, ratio, noise)`` -> (latent (N, 1 + keep, D), mask (N, L) with
    1 = removed, ids_restore (N, L)).  Inputs are already normalised images (the
    :class:`~selfsup.models.Encoder` wrapper does that).  ``self.vit`` is the timm model
    (``library_model``); with sin-cos positions ``self.pos_embed`` is its fixed table
    (1, 1 + L, D), a buffer.
    """

    library = "timm"

    def __init__(self, in_chans: int, image_size: int, embed_dim: int, depth: int, num_heads: int,
                 patch_size: int | None = None, *, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 pos_embed: str = "learned", pool: str = "cls", init: str | None = None):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        init = init or ("mae" if pos_embed == "sincos" else "timm")
        for name, value, valid in (("pos_embed", pos_embed, POS_EMBEDS), ("pool", pool, POOLS), ("init", init, INITS)):
            if value not in valid:
                raise ValueError(f"{name} must be {' or '.join(map(repr, valid))}, got {value!r}")
        self.patch_size = patch_size or default_patch_size(image_size)
        if image_size % self.patch_size:
            raise ValueError(f"image size {image_size} is not divisible by patch {self.patch_size}")
        self.grid = image_size // self.patch_size  # patches per side at the training size
        self.num_features = embed_dim
        self.position, self.pool = pos_embed, pool
        # what plain timm needs to build the same model (recipe); training-only options apart
        self.timm_kwargs = dict(img_size=image_size, patch_size=self.patch_size, in_chans=in_chans,
                                embed_dim=embed_dim, depth=depth, num_heads=num_heads, num_classes=0,
                                dynamic_img_size=True)
        if mlp_ratio != 4.0:
            self.timm_kwargs["mlp_ratio"] = mlp_ratio
        if pool == "mean":  # timm's average of the patch tokens, after the final norm (not fc_norm)
            self.timm_kwargs.update(global_pool="avg", fc_norm=False)
        # With MAE's init timm's own is skipped: the modules then draw from the RNG only for
        # torch's default inits, in the order MAE's encoder drew them before this class
        # replaced it, so a seed gives the same MAE encoder as before.
        self.vit = VisionTransformer(**self.timm_kwargs, drop_path_rate=drop_path,
                                     weight_init="skip" if init == "mae" else "")
        if pos_embed == "sincos":
            table = sincos_pos_embed_2d(embed_dim, self.grid, self.grid, cls_token=True).unsqueeze(0)  # (1, 1 + L, D)
            del self.vit.pos_embed  # timm's trainable Parameter
            self.vit.register_buffer("pos_embed", table)  # persistent: in the exported timm state dict
            self.register_buffer("pos_embed", table, persistent=False)  # the same tensor, saved once
        if init == "mae":
            self._mae_init()

    def _mae_init(self) -> None:
        vit = self.vit
        vit.apply(mae_init_weights)
        w = vit.patch_embed.proj.weight.data  # (D, C, p, p)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear on flattened patches, (D, C*p*p)
        nn.init.normal_(vit.cls_token, std=0.02)
        if isinstance(vit.pos_embed, nn.Parameter):  # learned positions with MAE's init
            nn.init.normal_(vit.pos_embed, std=0.02)

    @property
    def patch_embed(self) -> nn.Conv2d:
        """The patch projection: a Conv2d with kernel and stride p, (N, C, H, W) -> (N, D, H/p, W/p)
        (timm's ``vit.patch_embed.proj``; timm's ``PatchEmbed`` around it only reorders)."""
        return self.vit.patch_embed.proj

    @property
    def library_model(self) -> nn.Module:
        return self.vit

    def recipe(self) -> dict:
        args = ", ".join(f"{k}={v!r}" for k, v in self.timm_kwargs.items())
        size = self.timm_kwargs["img_size"]
        return {"build": [f"m = timm.models.vision_transformer.VisionTransformer({args})"],
                "input": "as the encoder" if self.position == "learned" else
                f"as the encoder; at sizes other than {size} px timm resamples the saved sin-cos "
                "positions, where selfsup computes the table for the new grid"}

    # --- forward passes

    def positions(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings for a ``grid_h x grid_w`` patch grid, CLS slot first: (1, 1 + L, D)."""
        pos = self.vit.pos_embed  # (1, 1 + grid^2, D)
        if (grid_h, grid_w) == (self.grid, self.grid):
            return pos
        if self.position == "sincos":  # another image size: the table for its grid
            return sincos_pos_embed_2d(self.num_features, grid_h, grid_w, cls_token=True).unsqueeze(0).to(pos)
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(pos, new_size=[grid_h, grid_w], old_size=[self.grid, self.grid],
                                      num_prefix_tokens=1)  # as timm's own forward resamples them

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens with their positions (N, L, D), row-major, and the CLS token with its
        position (1, 1, D)."""
        x = self.vit.patch_embed(x)  # (N, h, w, D): timm's layout for dynamic image sizes
        n, h, w, d = x.shape
        pos = self.positions(h, w)  # (1, 1 + h*w, D)
        return x.reshape(n, h * w, d) + pos[:, 1:], self.vit.cls_token + pos[:, :1]

    def encode(self, tokens: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """CLS + tokens (N, M, D) through the blocks and the final norm: (N, 1 + M, D)."""
        vit = self.vit
        x = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)  # (N, 1 + M, D)
        x = vit.norm_pre(vit.pos_drop(x))  # as timm (both identities here)
        return vit.norm(vit.blocks(x))

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> every token after the final norm, CLS first: (N, 1 + L, D); at the
        training size the same as timm's ``forward_features``."""
        return self.encode(*self.embed(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(x)  # (N, 1 + L, D)
        return tokens[:, 1:].mean(1) if self.pool == "mean" else tokens[:, 0]  # (N, D)

    def forward_masked(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches only; ``noise`` (N, L) uniforms decide which (small = keep).
        Positions are added before masking, so they travel with their patches."""
        tokens, cls = self.embed(x)  # (N, L, D), (1, 1, D)
        visible, mask, ids_restore = random_masking(tokens, mask_ratio, noise)  # (N, keep, D)
        return self.encode(visible, cls), mask, ids_restore

    # --- loading

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Rename the keys of an encoder saved by the former MAE class (``LEGACY_KEYS``); its
        sin-cos table was not saved, so this one's is used."""
        legacy = False
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            new = LEGACY_KEYS.get(rest) or (f"vit.{rest}" if rest.startswith(LEGACY_PREFIXES) else None)
            if new is not None:
                state_dict[prefix + new] = state_dict.pop(key)
                legacy = True
        if legacy and self.position == "sincos":
            state_dict.setdefault(prefix + "vit.pos_embed", self.vit.pos_embed)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _builder(name: str, pos_embed: str, embed_dim: int, num_heads: int, help: str) -> Callable[..., nn.Module]:
    """Register and return backbone ``name``: a :class:`ViT` with these positions and default width / heads."""

    def build(*, in_chans: int, image_size: int, patch_size: int | None = None, depth: int = 12,
              embed_dim: int = embed_dim, num_heads: int = num_heads, pool: str = "cls",
              drop_path: float = 0.0) -> nn.Module:
        return ViT(in_chans, image_size, embed_dim, depth, num_heads, patch_size, drop_path=drop_path,
                   pos_embed=pos_embed, pool=pool)

    build.__name__ = build.__qualname__ = name
    return BACKBONES.register(name, build, help=help)


vit_tiny = _builder("vit_tiny", "learned", 192, 3,
                    "timm ViT, 192-d, 12 blocks, 3 heads, learned positions (patch from image size)")
vit_small = _builder("vit_small", "learned", 384, 6,
                     "timm ViT, 384-d, 12 blocks, 6 heads, learned positions (patch from image size)")
vit_mae_tiny = _builder("vit_mae_tiny", "sincos", 192, 3,
                        "timm ViT as MAE's encoder, 192-d, 12 blocks, 3 heads, sin-cos positions, MAE init")
vit_mae_small = _builder("vit_mae_small", "sincos", 384, 6,
                         "timm ViT as MAE's encoder, 384-d, 12 blocks, 6 heads, sin-cos positions, MAE init")
