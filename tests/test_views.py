"""Tests for selfsup.views: batched augmentations for self-supervised views."""
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from selfsup.data.views import (
    GRAY_WEIGHTS,
    ViewConfig,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment,
    blur_kernel_size,
    byol_views,
    dino_views,
    for_small_images,
    gaussian_blur,
    hsv_to_rgb,
    mae_views,
    moco_v2_views,
    rgb_to_hsv,
    simclr_views,
)

# Full-image crop, nothing random switched on: the identity recipe.
IDENTITY = dict(
    crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0,
    blur_p=0.0, solarize_p=0.0,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, c: int = 3, side: int = 32, seed: int = 123) -> torch.Tensor:
    return torch.rand(n, c, side, side, generator=gen(seed))


def ramps(n: int, side: int) -> torch.Tensor:
    """(n, 3, side, side): channel 0 = x position, channel 1 = y position (pixel centres,
    as fractions of the side), channel 2 = 0.5."""
    pos = (torch.arange(side) + 0.5) / side
    x = pos.view(1, side).expand(side, side)
    y = pos.view(side, 1).expand(side, side)
    return torch.stack((x, y, torch.full_like(x, 0.5))).expand(n, 3, side, side).clone()


def test_same_seed_same_output_and_different_seed_differs():
    x = images()
    cfg = simclr_views()
    a, b = augment(x, cfg, gen(7)), augment(x, cfg, gen(7))
    assert torch.equal(a, b)
    assert not torch.allclose(a, augment(x, cfg, gen(8)))


def test_generator_state_advances_by_fixed_amount():
    # Resume relies on the draw depending only on the batch size, not on the recipe.
    g1, g2 = gen(3), gen(3)
    augment(images(), simclr_views(), g1)
    augment(images(), mae_views(), g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_output_shape_and_range_with_resize():
    x = images(side=32)
    y = augment(x, simclr_views(size=16), gen())
    assert y.shape == (8, 3, 16, 16)
    assert y.dtype == x.dtype
    assert y.min() >= 0.0 and y.max() <= 1.0


def test_identity_config_returns_input():
    x = images()
    y = augment(x, ViewConfig(**IDENTITY), gen())
    assert torch.allclose(y, x, atol=1e-5)


def test_flip_with_full_crop_equals_torch_flip():
    x = images()
    y = augment(x, ViewConfig(**{**IDENTITY, "flip_p": 1.0}), gen())
    assert torch.allclose(y, torch.flip(x, dims=[3]), atol=1e-5)


def test_crop_geometry_axes_and_size():
    # Square crops of 1/4 area: the x-ramp must change by cw/S per output column along
    # the width axis and be constant down a column, the y-ramp the other way round.
    side = 32
    cfg = ViewConfig(**{**IDENTITY, "crop_scale": (0.25, 0.25)})
    y = augment(ramps(6, side), cfg, gen())
    step = 0.5 / side  # crop width 0.5 of the image, spread over 32 output pixels
    inner = slice(1, side - 1)  # edge pixels may be clamped by border padding
    dx = y[:, 0, :, inner].diff(dim=2)
    dy = y[:, 1, inner, :].diff(dim=1)
    assert torch.allclose(dx, torch.full_like(dx, step), atol=1e-5)
    assert torch.allclose(dy, torch.full_like(dy, step), atol=1e-5)
    assert torch.allclose(y[:, 0].diff(dim=1), torch.zeros(1), atol=1e-5)  # x constant down
    # Crops are not all in the same place.
    assert y[:, 0, 0, 0].std() > 0.01


def test_crop_aspect_ratio_and_fallback():
    side = 32
    # ratio 2 at area 1/4: crop width sqrt(0.5), height sqrt(0.125) of the image.
    cfg = ViewConfig(**{**IDENTITY, "crop_scale": (0.25, 0.25), "crop_ratio": (2.0, 2.0)})
    y = augment(ramps(4, side), cfg, gen())
    step_x, step_y = torch.tensor(math.sqrt(0.5) / side), torch.tensor(math.sqrt(0.125) / side)
    assert torch.allclose(y[:, 0, :, 1:-1].diff(dim=2), step_x, atol=1e-5)
    assert torch.allclose(y[:, 1, 1:-1, :].diff(dim=1), step_y, atol=1e-5)
    # Full area at ratio 2 never fits a square image: fallback is the centred full-width
    # crop of half the height, i.e. y spans [0.25, 0.75].
    cfg = ViewConfig(**{**IDENTITY, "crop_ratio": (2.0, 2.0)})
    y = augment(ramps(4, side), cfg, gen())
    assert torch.allclose(y[:, 0], ramps(4, side)[:, 0], atol=1e-5)
    expected_rows = 0.25 + 0.5 * (torch.arange(side) + 0.5) / side
    assert torch.allclose(y[:, 1, :, 0], expected_rows.expand(4, side), atol=1e-5)


def test_grayscale_p1_equal_channels_with_601_weights():
    x = images()
    y = augment(x, ViewConfig(**{**IDENTITY, "gray_p": 1.0}), gen())
    w = torch.tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    expected = (x * w).sum(dim=1, keepdim=True)
    for ch in range(3):
        assert torch.allclose(y[:, ch : ch + 1], expected, atol=1e-5)


def test_solarize_p1_matches_formula():
    x = images()
    y = augment(x, ViewConfig(**{**IDENTITY, "solarize_p": 1.0}), gen())
    assert torch.allclose(y, torch.where(x >= 0.5, 1 - x, x), atol=1e-5)
    assert not torch.allclose(y, x)


def test_per_sample_probability_leaves_others_untouched():
    x = images(n=64)
    y = augment(x, ViewConfig(**{**IDENTITY, "solarize_p": 0.5}), gen())
    changed = (y - x).abs().flatten(1).amax(dim=1) > 1e-4
    assert 10 < changed.sum() < 54
    assert torch.allclose(y[~changed], x[~changed], atol=1e-5)


def test_brightness_only_jitter_strength_zero_is_identity_and_nonzero_scales():
    x = images()
    cfg = ViewConfig(**{**IDENTITY, "jitter_p": 1.0, "jitter": (0.0, 0.0, 0.0, 0.0)})
    assert torch.allclose(augment(x, cfg, gen()), x, atol=1e-6)
    cfg = ViewConfig(**{**IDENTITY, "jitter_p": 1.0, "jitter": (0.5, 0.0, 0.0, 0.0)})
    dim = 0.2 + 0.4 * x  # in [0.2, 0.6]: no clamping for factors up to 1.5
    ratio = (augment(dim, cfg, gen()) / dim).flatten(1)  # (N, C*H*W)
    per_image = ratio[:, 0]
    assert torch.allclose(ratio, per_image[:, None], atol=1e-4)  # one factor per image
    assert ((per_image >= 0.5) & (per_image <= 1.5)).all() and per_image.std() > 0.01


def test_hsv_round_trip_on_random_colours():
    rgb = torch.rand(64, 3, 16, 16, generator=gen(1))
    rgb[0] = 0.3  # grays, black and white hit the degenerate branches
    rgb[1, :, 0, 0] = 0.0
    rgb[1, :, 0, 1] = 1.0
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-5)


def test_hue_full_turn_is_identity_and_matches_torchvision():
    rgb = torch.rand(16, 3, 8, 8, generator=gen(2))
    assert torch.allclose(adjust_hue(rgb, torch.ones(16)), rgb, atol=1e-5)
    for shift in (0.1, -0.3, 0.5):
        ours = adjust_hue(rgb, torch.full((16,), shift))
        assert not torch.allclose(ours, rgb, atol=1e-2)
        assert torch.allclose(ours, TF.adjust_hue(rgb, shift), atol=1e-4)


def test_contrast_and_saturation_match_torchvision():
    rgb = torch.rand(4, 3, 8, 8, generator=gen(4))
    for f in (0.3, 1.7):
        ours_c = adjust_contrast(rgb, torch.full((4,), f))
        ours_s = adjust_saturation(rgb, torch.full((4,), f))
        # torchvision weights R by 0.2989 instead of 0.299: allow that difference.
        assert torch.allclose(ours_c, TF.adjust_contrast(rgb, f), atol=1e-3)
        assert torch.allclose(ours_s, TF.adjust_saturation(rgb, f), atol=1e-3)


def test_blur_constant_image_stays_constant_and_random_image_loses_variance():
    big_sigma = (14.0, 28.0)  # at 224 px -> 2..4 px at 32 px
    cfg = ViewConfig(
        **{**IDENTITY, "blur_p": 1.0, "blur_sigma": big_sigma, "blur_kernel_frac": 0.3}
    )
    const = torch.full((4, 3, 32, 32), 0.37)
    assert torch.allclose(augment(const, cfg, gen()), const, atol=1e-6)
    x = images()
    y = augment(x, cfg, gen())
    assert (y.var(dim=(2, 3)) < 0.25 * x.var(dim=(2, 3))).all()
    assert torch.allclose(y.mean(), x.mean(), atol=1e-2)  # blur redistributes, keeps mass


def test_gaussian_blur_per_sample_sigma_and_kernel_rule():
    x = images(n=2)
    y = gaussian_blur(x, torch.tensor([0.01, 3.0]), kernel_size=9)
    assert torch.allclose(y[0], x[0], atol=1e-6)  # tiny sigma ~ delta kernel
    assert y[1].var() < 0.2 * x[1].var()
    assert [blur_kernel_size(s, 0.1) for s in (8, 32, 96, 224)] == [3, 3, 11, 23]


def test_one_channel_and_other_channel_counts():
    for c in (1, 5):
        x = images(c=c)
        y = augment(x, simclr_views(size=16), gen())
        assert y.shape == (8, c, 16, 16)
        assert y.min() >= 0.0 and y.max() <= 1.0


def test_half_precision_keeps_dtype():
    x = images().to(torch.bfloat16)
    y = augment(x, simclr_views(), gen())
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


def test_every_recipe_builds_and_runs():
    x = images()
    g = gen()
    cfgs = [
        simclr_views(), simclr_views(strength=0.5, size=16, blur=False), moco_v2_views(),
        *byol_views(), *dino_views(32, 16, n_local=6), mae_views(),
        for_small_images(moco_v2_views(), 32),
    ]
    for cfg in cfgs:
        size = cfg.size or 32
        y = augment(x, cfg, g)
        assert y.shape == (8, 3, size, size)
        assert torch.isfinite(y).all() and y.min() >= 0.0 and y.max() <= 1.0


def test_recipe_settings():
    v1, v2 = byol_views()
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    g1, g2, local = dino_views(224, 96, 8)
    assert g1.crop_scale == (0.4, 1.0) and local.crop_scale == (0.05, 0.4) and local.size == 96
    assert dino_views(224, 96, 0)[0].crop_scale == (0.14, 1.0)
    assert simclr_views(strength=0.5).jitter == (0.4, 0.4, 0.4, 0.1)
    m = mae_views()
    assert (m.jitter_p, m.gray_p, m.blur_p, m.solarize_p) == (0.0, 0.0, 0.0, 0.0)
    assert for_small_images(simclr_views(), 32).blur_p == 0.0
    assert for_small_images(simclr_views(), 64).blur_p == 0.5


@pytest.mark.parametrize(
    "bad",
    [torch.rand(3, 32, 32), torch.rand(2, 3, 4, 8, 8), torch.randint(0, 255, (2, 3, 8, 8)), "img"],
)
def test_invalid_input_raises(bad):
    with pytest.raises(ValueError):
        augment(bad, simclr_views(), gen())


def test_invalid_config_raises():
    with pytest.raises(ValueError):
        ViewConfig(flip_p=1.5)
    with pytest.raises(ValueError):
        ViewConfig(jitter=(0.4, 0.4, 0.4, 0.7))
    with pytest.raises(ValueError):
        ViewConfig(crop_scale=(0.5, 0.2))
