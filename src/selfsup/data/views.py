"""Batched, device-side image augmentations for self-supervised view generation.

:func:`augment` turns a batch ``(N, C, H, W)`` of images in ``[0, 1]`` into one random
"view" per image, following a :class:`ViewConfig` recipe.  The whole batch is processed
with a handful of tensor ops (no per-image Python loop), so it runs on whatever device
the images live on.  The recipe builders (:func:`simclr_views`, :func:`moco_v2_views`,
:func:`byol_views`, :func:`dino_views`, :func:`mae_views`) give the published settings.
Why not torchvision's per-image transforms: those run in data-loader workers, one PIL
image or tensor at a time, and draw from global random state; here the views are made
on the accelerator next to the model, and a run's views follow from its generator alone,
so a resumed run sees exactly the views an uninterrupted one would.

Example::

    >>> import torch
    >>> from selfsup.data.views import augment, simclr_views
    >>> x = torch.rand(8, 3, 32, 32)  # a batch of images in [0, 1]
    >>> recipe = simclr_views(strength=0.5, size=24)
    >>> v = augment(x, recipe, torch.Generator().manual_seed(0))
    >>> v.shape, bool(v.min() >= 0) and bool(v.max() <= 1)
    (torch.Size([8, 3, 24, 24]), True)
    >>> torch.equal(v, augment(x, recipe, torch.Generator().manual_seed(0)))  # same generator state
    True

Pipeline, in this fixed order (the order of torchvision's SimCLR/BYOL/DINO recipes):

1. random resized crop + horizontal flip, as one affine resampling per sample;
2. colour jitter (probability ``jitter_p``);
3. grayscale (probability ``gray_p``);
4. Gaussian blur (probability ``blur_p``);
5. solarize (probability ``solarize_p``);
6. clamp to ``[0, 1]``.

Randomness and resume
    Every call draws exactly ``N * 32`` uniforms from ``generator`` in one ``torch.rand``
    call (one row of 32 per sample, whatever the recipe), computes all per-sample
    parameters from them on the CPU and only then moves the small parameter tensors to
    the images' device.  Same generator state + same input -> same output, and the
    generator advances by the same amount on every call with the same batch size.

Differences from torchvision (documented choices, not bugs)
    * Crop: sizes and offsets are continuous (sub-pixel) fractions of the image instead
      of rounded integers.  Like torchvision, 10 (area, log-ratio) candidates are drawn
      per sample and the first whose width and height fit inside the image is used; if
      none fits, the fallback is torchvision's: the largest centred crop whose aspect
      ratio is clamped into ``crop_ratio`` (the whole image when its own ratio is in
      range).  Resampling is bilinear without antialiasing, so strong downscaling
      (output much smaller than the crop) aliases more than torchvision's
      ``antialias=True``.
    * Colour jitter: the four adjustments are always applied in the order brightness,
      contrast, saturation, hue; torchvision's ``ColorJitter`` draws a random order per
      image.  Each adjustment clamps to ``[0, 1]`` as torchvision does.
    * Blur: ``blur_sigma`` is given in pixels *at 224 px* (the ImageNet setting of the
      papers) and is scaled to the output side ``S``: ``sigma_px = sigma * S / 224``.
      The kernel side is ``round(blur_kernel_frac * S)``, bumped to the next odd number,
      at least 3 (and at most ``2 * S - 1`` so that reflect padding is possible).
      DINO's local crops therefore get a proportionally smaller sigma than in DINO's
      code, which uses the same pixel sigma at 96 px as at 224 px.

Only ``C == 3`` is taken for colour: saturation, hue and grayscale apply to RGB alone.
Images with ``C == 1`` (grey) get brightness and contrast; images with any other ``C``
(data bands: multispectral, RGB + infrared, RGBA kept as data) get the same, with contrast
blending each band with its own mean, since bands need not share a scale.  Blur and
solarize (an intensity inversion of the bright values) apply to any ``C``.
Half-precision inputs are processed in float32 and cast back; float64 stays float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
import torch.nn.functional as F

from selfsup.errors import SelfSupError

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights for R, G, B
BLUR_REFERENCE_SIDE = 224  # image side (px) at which ``ViewConfig.blur_sigma`` is given
SMALL_IMAGE_SIDE = 32  # for_small_images drops blur at or below this side (px)
# ViewConfig overrides for small data on a CPU: SimCLR-strength colour jitter (s = 1) and
# crops of at least half the image.  With their papers' milder views MoCo, BYOL and DINO
# learned background colour and texture on `shapes`, not shape.  At 16 px a quarter-image
# crop often cuts the object away: raising the floor from 0.25 to 0.5 lifted kNN after the
# cpu preset on 16 px `shapes` for all three methods and left `digits` about where it was
# (measurements in docs/results.md).
STRONG_VIEWS = {"jitter": [0.8, 0.8, 0.8, 0.2], "crop_scale": [0.5, 1.0]}

# Columns of the (N, 32) uniform draw made once per augment() call.
_CROP_TRIES = 10  # (area, log-ratio) candidates per sample, as in torchvision
_AREA = slice(0, 10)
_LOG_RATIO = slice(10, 20)
_OFFSET_X, _OFFSET_Y = 20, 21
_FLIP = 22
_JITTER = 23
_JITTER_FACTORS = slice(24, 28)  # brightness, contrast, saturation, hue
_GRAY = 28
_BLUR = 29
_BLUR_SIGMA = 30
_SOLARIZE = 31
_N_DRAWS = 32


@dataclass
class ViewConfig:
    """One augmentation recipe; units in comments."""

    size: int | None = None  # output side in px; None = same as input (H, W kept)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # width/height range, log-uniform
    flip_p: float = 0.5  # horizontal flip probability
    # brightness, contrast, saturation, hue strengths (torchvision ColorJitter semantics:
    # factor U(max(0, 1-s), 1+s), hue shift U(-h, h) in turns, h <= 0.5)
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # px at 224 px; scaled by S / 224
    blur_kernel_frac: float = 0.1  # kernel side / image side (odd, >= 3)
    solarize_p: float = 0.0  # per-sample probability of x >= 0.5 -> 1 - x

    def __post_init__(self) -> None:
        # Accept lists (e.g. from YAML) but store tuples.
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        self.crop_ratio = tuple(float(v) for v in self.crop_ratio)
        self.jitter = tuple(float(v) for v in self.jitter)
        self.blur_sigma = tuple(float(v) for v in self.blur_sigma)
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"ViewConfig.size must be a positive int or None, got {self.size!r}")
        _check_range("crop_scale", self.crop_scale, upper=1.0)
        _check_range("crop_ratio", self.crop_ratio)
        _check_range("blur_sigma", self.blur_sigma)
        if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ValueError(
                "ViewConfig.jitter must be 4 non-negative strengths (brightness, contrast, "
                f"saturation, hue) with hue <= 0.5, got {self.jitter}"
            )
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"ViewConfig.{name} must be a probability in [0, 1], got {p}")
        if self.blur_kernel_frac <= 0:
            raise ValueError(
                f"ViewConfig.blur_kernel_frac must be > 0, got {self.blur_kernel_frac}"
            )


def _check_range(name: str, pair: tuple[float, ...], upper: float = math.inf) -> None:
    if len(pair) != 2 or not 0 < pair[0] <= pair[1] <= upper:
        bound = "" if upper == math.inf else f" <= {upper}"
        raise ValueError(f"ViewConfig.{name} must be (lo, hi) with 0 < lo <= hi{bound}, got {pair}")


# ----------------------------------------------------------------------------- recipes


def simclr_views(strength: float = 1.0, size: int | None = None, blur: bool = True) -> ViewConfig:
    """SimCLR (Chen et al. 2020, arXiv 2002.05709, Appendix A): crop (0.08, 1), flip,
    jitter (0.8s, 0.8s, 0.8s, 0.2s) with p=0.8, grayscale 0.2, blur p=0.5 with sigma
    U(0.1, 2) (off when ``blur=False``).  ``strength`` is the paper's colour strength s:
    1.0 on ImageNet, 0.5 on CIFAR-10.

    Example::

        >>> from selfsup.data.views import simclr_views
        >>> simclr_views(strength=0.5).jitter
        (0.4, 0.4, 0.4, 0.1)
    """
    s = float(strength)
    return ViewConfig(
        size=size,
        crop_scale=(0.08, 1.0),
        jitter=(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s),
        jitter_p=0.8,
        gray_p=0.2,
        blur_p=0.5 if blur else 0.0,
        blur_sigma=(0.1, 2.0),
    )


def moco_v2_views(size: int | None = None) -> ViewConfig:
    """MoCo v2 (Chen et al. 2020, arXiv 2003.04297): crop (0.2, 1), flip, jitter
    (0.4, 0.4, 0.4, 0.1) with p=0.8, grayscale 0.2, blur p=0.5 with sigma U(0.1, 2)."""
    return ViewConfig(
        size=size,
        crop_scale=(0.2, 1.0),
        jitter=(0.4, 0.4, 0.4, 0.1),
        jitter_p=0.8,
        gray_p=0.2,
        blur_p=0.5,
    )


def byol_views(size: int | None = None) -> tuple[ViewConfig, ViewConfig]:
    """BYOL (Grill et al. 2020, arXiv 2006.07733, Table 6), asymmetric: both views crop
    (0.08, 1), flip, jitter (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale 0.2; view 1 always
    blurred, never solarized; view 2 blurred with p=0.1 and solarized with p=0.2.

    Example::

        >>> from selfsup.data.views import byol_views
        >>> view1, view2 = byol_views()
        >>> (view1.blur_p, view1.solarize_p), (view2.blur_p, view2.solarize_p)
        ((1.0, 0.0), (0.1, 0.2))
    """
    base = ViewConfig(
        size=size,
        crop_scale=(0.08, 1.0),
        jitter=(0.4, 0.4, 0.2, 0.1),
        jitter_p=0.8,
        gray_p=0.2,
    )
    return replace(base, blur_p=1.0, solarize_p=0.0), replace(base, blur_p=0.1, solarize_p=0.2)


def dino_views(
    global_size: int, local_size: int, n_local: int
) -> tuple[ViewConfig, ViewConfig, ViewConfig]:
    """DINO (Caron et al. 2021, arXiv 2104.14294) multi-crop: (global 1, global 2, local).

    All views: flip, jitter (0.4, 0.4, 0.2, 0.1) with p=0.8, grayscale 0.2.  Global 1:
    crop (0.4, 1), blur p=1.0.  Global 2: crop (0.4, 1), blur p=0.1, solarize p=0.2.
    Local: crop (0.05, 0.4) to ``local_size``, blur p=0.5.  ``n_local`` is the number of
    local views the caller will draw with the third config; with ``n_local == 0`` the
    global crop scale widens to (0.14, 1), the setting DINO recommends without multi-crop.
    Multi-crop comes from SwAV (Caron et al. 2020, arXiv 2006.09882): the student must match
    the teacher's view of the whole image from small local crops ("local-to-global").
    """
    if not isinstance(n_local, int) or n_local < 0:
        raise ValueError(f"n_local must be a non-negative int, got {n_local!r}")
    base = ViewConfig(jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2)
    global_scale = (0.4, 1.0) if n_local > 0 else (0.14, 1.0)
    global1 = replace(base, size=global_size, crop_scale=global_scale, blur_p=1.0)
    global2 = replace(base, size=global_size, crop_scale=global_scale, blur_p=0.1, solarize_p=0.2)
    local = replace(base, size=local_size, crop_scale=(0.05, 0.4), blur_p=0.5)
    return global1, global2, local


def mae_views(size: int | None = None) -> ViewConfig:
    """MAE (He et al. 2021, arXiv 2111.06377): crop (0.2, 1) + flip only; no colour,
    grayscale or blur -- masking is the pretext task, and the paper finds colour jitter
    degrades the result."""
    return ViewConfig(
        size=size, crop_scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0
    )


def for_small_images(cfg: ViewConfig, side: int) -> ViewConfig:
    """Adapt a recipe to small images: at ``side <= 32`` px blur is dropped (``blur_p=0``),
    as the CIFAR recipes do (SimCLR's CIFAR-10 setup omits blur; at 32 px the scaled
    sigma is below 0.3 px anyway).  Larger images get ``cfg`` back unchanged."""
    return replace(cfg, blur_p=0.0) if side <= SMALL_IMAGE_SIDE else cfg


# ------------------------------------------------------------------------ colour helpers


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) luma with ITU-R 601 weights."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV (N, 3, H, W): hue in turns [0, 1), S and V in [0, 1]."""
    r, g, b = x.unbind(1)  # each (N, H, W)
    maxc, argmax = x.max(dim=1)
    minc = x.min(dim=1).values
    delta = maxc - minc
    sat = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue_r = torch.remainder((g - b) / safe, 6.0)  # red is the max: sector 5..1 (wraps)
    hue_g = (b - r) / safe + 2.0
    hue_b = (r - g) / safe + 4.0
    hue = torch.where(argmax == 0, hue_r, torch.where(argmax == 1, hue_g, hue_b))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))  # grays get hue 0
    return torch.stack((torch.remainder(hue, 1.0), sat, maxc), dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: (N, 3, H, W) HSV (hue in turns) -> RGB.

    Uses the closed form ``c_n = V - V * S * clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + 6 * H) mod 6`` and ``n = 5, 3, 1`` for R, G, B.
    """
    hue, sat, val = x[:, 0:1], x[:, 1:2], x[:, 2:3]  # each (N, 1, H, W)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * hue, 6.0)  # (N, 3, H, W)
    return val - val * sat * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def _per_sample(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1)  # (N,) -> (N, 1, 1, 1), broadcasts over C, H, W


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale intensities by a per-sample ``factor`` (N,); clamps to [0, 1]."""
    return (x * _per_sample(factor)).clamp(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with the mean of its grayscale (RGB), of its one channel (grey), or
    each channel with its own mean (other counts: bands of their own scale, not colours)."""
    if x.shape[1] == 3:
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    elif x.shape[1] == 1:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    else:
        mean = x.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
    f = _per_sample(factor)
    return (f * x + (1.0 - f) * mean).clamp(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each RGB image with its grayscale version: 0 = gray, 1 = unchanged."""
    f = _per_sample(factor)
    return (f * x + (1.0 - f) * grayscale(x)).clamp(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each RGB image by ``shift`` (N,) turns (1.0 = full circle)."""
    hsv = rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0:1] + _per_sample(shift), 1.0)
    return hsv_to_rgb(torch.cat((hue, hsv[:, 1:]), dim=1))


def solarize(x: torch.Tensor) -> torch.Tensor:
    """Invert every value at or above 0.5: ``x >= 0.5 -> 1 - x``."""
    return torch.where(x >= 0.5, 1.0 - x, x)


# -------------------------------------------------------------------------- blur helpers


def blur_kernel_size(side: int, frac: float) -> int:
    """Kernel side for an image side: round(frac * side) made odd, >= 3, <= 2 * side - 1."""
    k = max(3, round(frac * side))
    k += 1 - k % 2  # next odd
    return min(k, 2 * side - 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` (N,) in px; reflect padding.

    Each (sample, channel) plane is one group of a grouped convolution, so the whole batch
    is two ``conv2d`` calls (vertical, then horizontal) whatever the sigmas.
    """
    n, c, h, w = x.shape
    half = kernel_size // 2
    taps = torch.arange(-half, half + 1, dtype=x.dtype, device=x.device)  # (k,)
    kernel = torch.exp(-0.5 * (taps / sigma.view(-1, 1)) ** 2)  # (N, k)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, k)
    planes = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    # (1, N*C, H+2h, W+2h) -> vertical pass (1, N*C, H, W+2h) -> horizontal pass (1, N*C, H, W)
    planes = F.conv2d(planes, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    planes = F.conv2d(planes, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    return planes.view(n, c, h, w)


# ------------------------------------------------------------------------------ augment


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"augment expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"augment expects images shaped (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"augment expects float images in [0, 1], got dtype {x.dtype}")
    if min(x.shape[1:]) < 1:
        raise ValueError(f"augment expects C, H, W >= 1, got shape {tuple(x.shape)}")


def _crop_flip_theta(u: torch.Tensor, cfg: ViewConfig, h: int, w: int) -> torch.Tensor:
    """Per-sample affine matrices (N, 2, 3) for ``F.affine_grid`` from the uniforms ``u``.

    Works in fractions of the input: the crop has width ``cw`` and height ``ch`` (fractions
    of W and H) and centre ``(cx, cy)``; the matrix maps output coordinates in [-1, 1] to
    input coordinates in [-1, 1] (``x_in = ±cw * x_out + 2 cx - 1``, minus sign = flip).
    """
    lo, hi = cfg.crop_scale
    area = lo + (hi - lo) * u[:, _AREA]  # (N, 10) fraction of the image area
    log_lo, log_hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, _LOG_RATIO])  # (N, 10) width/height in px
    cw = torch.sqrt(area * ratio * (h / w))  # (N, 10) crop width / W
    ch = torch.sqrt(area / ratio * (w / h))  # (N, 10) crop height / H
    fits = (cw <= 1.0) & (ch <= 1.0)
    first = fits.int().argmax(dim=1, keepdim=True)  # (N, 1) first candidate that fits
    found = fits.any(dim=1)  # (N,)

    # torchvision's fallback: the largest centred crop with the ratio clamped into range.
    image_ratio = w / h
    if image_ratio < cfg.crop_ratio[0]:
        fallback_w, fallback_h = 1.0, image_ratio / cfg.crop_ratio[0]
    elif image_ratio > cfg.crop_ratio[1]:
        fallback_w, fallback_h = cfg.crop_ratio[1] / image_ratio, 1.0
    else:
        fallback_w, fallback_h = 1.0, 1.0
    cw = torch.where(found, cw.gather(1, first).squeeze(1), fallback_w)  # (N,)
    ch = torch.where(found, ch.gather(1, first).squeeze(1), fallback_h)  # (N,)
    cx = cw / 2 + (1.0 - cw) * torch.where(found, u[:, _OFFSET_X], 0.5)  # (N,) crop centre / W
    cy = ch / 2 + (1.0 - ch) * torch.where(found, u[:, _OFFSET_Y], 0.5)  # (N,) crop centre / H
    sign = torch.where(u[:, _FLIP] < cfg.flip_p, -1.0, 1.0)  # (N,) -1 = horizontal flip

    theta = torch.zeros(u.shape[0], 2, 3, dtype=u.dtype)
    theta[:, 0, 0] = sign * cw
    theta[:, 0, 2] = 2.0 * cx - 1.0
    theta[:, 1, 1] = ch
    theta[:, 1, 2] = 2.0 * cy - 1.0
    return theta


def _apply_to(
    x: torch.Tensor,
    chosen: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Apply ``fn(x[idx], idx)`` to the samples where the CPU mask ``chosen`` (N,) is True.

    ``idx`` (CPU, (M,)) lets ``fn`` pick its per-sample parameters; the other samples are
    returned bit-for-bit untouched.  Indices are computed on the CPU, so no device sync.
    """
    idx = chosen.nonzero().squeeze(1)  # (M,)
    if idx.numel() == 0:
        return x
    if idx.numel() == x.shape[0]:
        return fn(x, idx)
    on_device = idx.to(x.device)
    return x.index_copy(0, on_device, fn(x.index_select(0, on_device), idx))


def _color_jitter(
    x: torch.Tensor, factors: torch.Tensor, strengths: tuple[float, ...]
) -> torch.Tensor:
    """Brightness, contrast, saturation, hue (fixed order) with per-sample ``factors`` (N, 4)."""
    factors = factors.to(device=x.device, dtype=x.dtype)
    is_rgb = x.shape[1] == 3
    if strengths[0] > 0:
        x = adjust_brightness(x, factors[:, 0])
    if strengths[1] > 0:
        x = adjust_contrast(x, factors[:, 1])
    if is_rgb and strengths[2] > 0:
        x = adjust_saturation(x, factors[:, 2])
    if is_rgb and strengths[3] > 0:
        x = adjust_hue(x, factors[:, 3])
    return x


def augment(x: torch.Tensor, cfg: ViewConfig, generator: torch.Generator) -> torch.Tensor:
    """One random view per image.

    x: (N, C, H, W) float in [0, 1] on any device; returns (N, C, S, S) in [0, 1] on the
    same device and with the same dtype (S = ``cfg.size``; with ``size=None`` the input's
    (H, W) is kept).  All randomness comes from ``generator`` (CPU recommended; see the
    module docstring for the exact draw).
    """
    _check_input(x)
    n, c, h, w = x.shape
    out_h, out_w = (cfg.size, cfg.size) if cfg.size is not None else (h, w)
    u = torch.rand(n, _N_DRAWS, generator=generator, device=generator.device).cpu()  # (N, 32)
    if n == 0:
        return x.new_empty(0, c, out_h, out_w)
    out_dtype = x.dtype
    x = x.to(torch.float64 if out_dtype == torch.float64 else torch.float32)

    # 1. crop + flip: (N, C, H, W) -> (N, C, out_h, out_w)
    theta = _crop_flip_theta(u, cfg, h, w).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)  # (N, out_h, out_w, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # 2. colour jitter
    if any(cfg.jitter):
        lo = torch.tensor([max(0.0, 1.0 - s) for s in cfg.jitter[:3]] + [-cfg.jitter[3]])
        hi = torch.tensor([1.0 + s for s in cfg.jitter[:3]] + [cfg.jitter[3]])
        factors = lo + (hi - lo) * u[:, _JITTER_FACTORS]  # (N, 4)
        x = _apply_to(
            x, u[:, _JITTER] < cfg.jitter_p, lambda v, i: _color_jitter(v, factors[i], cfg.jitter)
        )

    # 3. grayscale, kept as 3 identical channels
    if c == 3:
        x = _apply_to(x, u[:, _GRAY] < cfg.gray_p, lambda v, i: grayscale(v).repeat(1, 3, 1, 1))

    # 4. Gaussian blur, sigma scaled from 224 px to the output side
    side = min(out_h, out_w)
    lo, hi = cfg.blur_sigma
    sigma = (lo + (hi - lo) * u[:, _BLUR_SIGMA]) * (side / BLUR_REFERENCE_SIDE)  # (N,) px
    ksize = blur_kernel_size(side, cfg.blur_kernel_frac)
    x = _apply_to(
        x, u[:, _BLUR] < cfg.blur_p, lambda v, i: gaussian_blur(v, sigma[i].to(v), ksize)
    )

    # 5. solarize
    x = _apply_to(x, u[:, _SOLARIZE] < cfg.solarize_p, lambda v, i: solarize(v))

    return x.clamp(0.0, 1.0).to(out_dtype)


def build_views(recipe: ViewConfig, image_size: int, overrides: dict) -> ViewConfig:
    """A method's recipe shrunk for small images, then the user's ``views`` overrides
    (lists from YAML become tuples); a bad option is a one-line :class:`SelfSupError`."""
    cfg = for_small_images(recipe, image_size)
    try:
        return replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    except TypeError:
        names = ", ".join(f.name for f in fields(ViewConfig))
        raise SelfSupError(f"unknown view option in {sorted(overrides)}; valid: {names}") from None
    except ValueError as e:
        raise SelfSupError(f"bad view option: {e}") from None


CLASSIFIER_VIEWS = ViewConfig(crop_scale=(0.35, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)


def classifier_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The light augmentation of supervised training (fine-tuning, the scratch baseline):
    images (float (N, C, H, W)) get a random resized crop of area 0.35-1 and flips; token
    ids are returned as they are (BERT fine-tunes without augmentation)."""
    return augment(x, CLASSIFIER_VIEWS, generator) if x.is_floating_point() else x
