"""MAE: position embeddings, masking, the loss on removed patches, training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.api import build_config
from selfsup.errors import SelfSupError
from selfsup.methods import create_method
from selfsup.methods.losses import hog_targets, mae_loss, patchify
from selfsup.methods.mae import reconstruct
from selfsup.models import Encoder, create_backbone, rebuild_encoder
from selfsup.models import eval_mode
from selfsup.models.vit import default_patch_size, random_masking, sincos_pos_embed_2d
from conftest import learn_on_shapes, stop_and_resume

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(depth=2, embed_dim=32, num_heads=2)


def make(size=16, channels=3, **options):
    torch.manual_seed(0)
    enc = create_backbone("vit_mae_tiny", in_chans=channels, image_size=size, **TINY)
    options = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, **options}
    return create_method("mae", enc, options, image_size=size, channels=channels)


def images(n=4, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------ position embeddings


def test_sincos_position_embedding_properties():
    d, gh, gw = 16, 3, 5
    emb = sincos_pos_embed_2d(d, gh, gw)
    assert emb.shape == (gh * gw, d)
    assert emb.abs().max() <= 1.0
    rows = torch.arange(gh).repeat_interleave(gw)
    cols = torch.arange(gw).repeat(gh)
    first, second = emb[:, : d // 2], emb[:, d // 2:]
    for l in range(gh * gw):  # first half: the column only; second half: the row only
        assert torch.equal(first[l], first[cols[l]])  # patch cols[l] lies in row 0
        assert torch.equal(second[l], second[rows[l] * gw])  # patch rows[l]*gw lies in column 0
    assert len({tuple(r.tolist()) for r in emb}) == gh * gw  # every patch distinct
    # 1-D code [sin(pos w), cos(pos w)]: at position 0 sines are 0 and cosines 1
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    assert torch.allclose(emb[1, 0], torch.tensor(np.sin(1.0), dtype=torch.float32))  # w_0 = 1
    with_cls = sincos_pos_embed_2d(d, gh, gw, cls_token=True)
    assert with_cls.shape == (1 + gh * gw, d) and torch.equal(with_cls[0], torch.zeros(d))


def test_position_embeddings_are_fixed_buffers():
    m = make()
    for owner in (m.encoder.net, m.decoder):
        assert "pos_embed" in dict(owner.named_buffers())
        assert "pos_embed" not in dict(owner.named_parameters())
        assert not owner.pos_embed.requires_grad
    names = [n for n, _ in m.trainable_parameters()]
    assert not any("pos_embed" in n for n in names)
    assert m.encoder.net.pos_embed.shape == (1, 1 + 64, 32)  # 16 px / patch 2 -> 8x8 grid


# ------------------------------------------------------------------------ masking


@pytest.mark.parametrize("length,ratio,keep", [(16, 0.75, 4), (16, 0.6, 6), (64, 0.75, 16), (10, 0.0, 10)])
def test_random_masking_keeps_floor_and_ids_restore_inverts(length, ratio, keep):
    n, d = 3, 5
    tokens = torch.randn(n, length, d)
    noise = torch.rand(n, length, generator=torch.Generator().manual_seed(0))
    visible, mask, ids_restore = random_masking(tokens, ratio, noise)
    assert visible.shape == (n, keep, d)
    assert mask.sum(1).tolist() == [length - keep] * n
    ids_shuffle = noise.argsort(1)
    assert torch.equal(ids_shuffle.gather(1, ids_restore), torch.arange(length).expand(n, -1))
    for i in range(n):
        kept = noise[i].argsort()[:keep]  # small noise = keep
        assert torch.equal(visible[i], tokens[i, kept])
        assert mask[i, kept].sum() == 0 and mask[i].sum() == length - keep


def test_positions_are_added_before_masking():
    """With nothing removed the shuffled encoder sees the same tokens with the same
    positions, so its CLS equals the full-image CLS: positions travel with the patches."""
    net = make().encoder.net.eval()
    x = images(2)
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    latent, mask, _ = net.forward_masked(x, 0.0, noise)
    assert mask.sum() == 0
    assert torch.allclose(latent[:, 0], net(x), atol=1e-5)


# ------------------------------------------------------------------------- the loss


def test_patch_vectors_are_ordered_p_q_c_and_match_the_token_order():
    m = make(size=8)  # patch 2 at 8 px: grid 4x4
    x = images(1, size=8)
    t = m.targets(x)
    p, c, grid = 2, 3, 4
    assert m.patch_size == p and t.shape == (1, grid * grid, p * p * c)
    for l in range(grid * grid):
        row, col = divmod(l, grid)  # patches row-major
        for r in range(p):
            for q in range(p):
                for ch in range(c):
                    assert t[0, l, (r * p + q) * c + ch] == x[0, ch, row * p + r, col * p + q]
    conv = m.encoder.net.patch_embed
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0, 0, 0] = 1.0  # token dim 0 = channel 0, pixel (0, 0) of the patch
    tokens = conv(x).flatten(2).transpose(1, 2)  # (1, L, D), the order forward uses
    assert torch.equal(tokens[0, :, 0], t[0, :, 0])


def capture(m, monkeypatch, change=None):
    """Record (pred, mask, target) of the next training step; ``change(pred, mask)`` may
    edit the prediction before the loss sees it."""
    seen = {}
    forward_masked, decoder = m.encoder.net.forward_masked, m.decoder.forward

    def masked(*a):
        latent, mask, ids = forward_masked(*a)
        seen["mask"] = mask
        return latent, mask, ids

    def decode(*a):
        pred = decoder(*a)
        return change(pred, seen["mask"]) if change else pred

    monkeypatch.setattr(m.encoder.net, "forward_masked", masked)
    monkeypatch.setattr(m.decoder, "forward", decode)
    return seen


def test_loss_ignores_predictions_of_visible_patches(monkeypatch):
    m = make()
    x = images()
    base, _ = m.training_step(x, torch.Generator().manual_seed(5))

    def at_visible(pred, mask):
        return pred + 100.0 * torch.randn_like(pred) * (1 - mask).unsqueeze(-1)

    capture(m, monkeypatch, at_visible)
    changed, _ = m.training_step(x, torch.Generator().manual_seed(5))
    assert changed.item() == pytest.approx(base.item(), rel=1e-6)

    capture(m, monkeypatch, lambda pred, mask: pred + mask.unsqueeze(-1))  # removed patches
    moved, _ = m.training_step(x, torch.Generator().manual_seed(5))
    assert abs(moved.item() - base.item()) > 0.1


@pytest.mark.parametrize("target, norm_pix, width", [("pixels", True, 12), ("pixels", False, 12), ("hog", True, 9),
                                                     ("pixels+hog", True, 21), ("pixels+hog", False, 21)])
def test_loss_is_mae_loss_on_the_targets_of_the_view(monkeypatch, target, norm_pix, width):
    m = make(norm_pix_loss=norm_pix, target=target,
             views={"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip_p": 0.0})  # identity view
    seen = capture(m, monkeypatch, lambda pred, mask: seen.setdefault("pred", pred))
    x = images()
    loss, _ = m.training_step(x, torch.Generator().manual_seed(0))
    assert seen["mask"].sum(1).tolist() == [48.0] * 4  # 64 patches, 0.75 removed
    assert seen["pred"].shape == (4, 64, width)  # 2x2x3 pixels, then 9 orientation bins
    pixels, hog, pred, mask = patchify(x, 2), hog_targets(x, 2), seen["pred"], seen["mask"]
    # HOG is normalised per patch already: norm_pix applies to the pixel part only
    if target == "pixels":
        wanted, expected = pixels, mae_loss(pred, pixels, mask, norm_pix)
    elif target == "hog":
        wanted, expected = hog, mae_loss(pred, hog, mask, False)
    else:
        wanted = torch.cat([pixels, hog], -1)
        expected = mae_loss(pred[..., :12], pixels, mask, norm_pix) + mae_loss(pred[..., 12:], hog, mask, False)
    assert torch.equal(m.targets(x), wanted)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------- training


def test_forward_backward_reaches_every_parameter():
    m = make()
    loss, logs = m.training_step(images(), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and "z_std" in logs
    loss.backward()
    for name, p in m.trainable_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert m.decoder.mask_token.grad.abs().sum() > 0


@pytest.mark.parametrize("size,patch", [(8, 2), (16, 2), (28, 2), (32, 4), (64, 8), (96, 8), (224, 16)])
def test_default_patch_size_gives_8_to_14_patches_per_side_from_16_px(size, patch):
    assert default_patch_size(size) == patch


@pytest.mark.parametrize("name", ["vit_mae_tiny", "vit_tiny"])
def test_a_saved_vit_keeps_its_patch_size_when_the_default_changes(name):
    enc = create_backbone(name, image_size=16, depth=1)
    assert enc.kwargs["patch_size"] == 2  # the spec records the size chosen, not only what was passed
    assert rebuild_encoder({"name": name, "kwargs": enc.kwargs}, enc.state_dict()).net.patch_size == 2
    old = create_backbone(name, image_size=16, depth=1, patch_size=4)  # the default at 16 px before
    spec = {"name": name, "kwargs": {k: v for k, v in old.kwargs.items() if k != "patch_size"}}  # as saved then
    assert rebuild_encoder(spec, old.state_dict()).net.patch_size == 4


def test_encoder_contract_cls_after_norm():
    m = make()
    enc = m.encoder.eval()
    assert isinstance(enc, Encoder) and enc.num_features == 32 and enc.net.patch_size == 2  # 16 px: 8x8 patches
    x = images(2)
    tokens = enc.forward_tokens(x)
    assert tokens.shape == (2, 65, 32)
    assert torch.equal(enc(x), tokens[:, 0])
    assert torch.allclose(tokens.mean(-1), torch.zeros(2, 65), atol=1e-4)  # LayerNorm'd, bias 0 at init
    assert enc(images(2, size=32)).shape == (2, 32)  # another size: positions computed on the fly


def test_mae_needs_an_mae_backbone():
    enc = create_backbone("small_cnn", in_chans=3, image_size=16, width=4)
    with pytest.raises(SelfSupError, match="mae needs backbone vit_mae_tiny or vit_mae_small; got small_cnn"):
        create_method("mae", enc, {}, image_size=16, channels=3)
    with pytest.raises(SelfSupError, match="mask_ratio"):
        make(mask_ratio=1.0)
    with pytest.raises(SelfSupError, match="target must be one of pixels, hog, pixels\\+hog, auto; got 'hogg'"):
        make(target="hogg")
    # "auto" (the cpu preset): HOG joins the pixels from 16 px up
    assert make(size=8, target="auto").target == "pixels" and make(size=16, target="auto").target == "pixels+hog"
    with pytest.raises(SelfSupError, match="hog_bins must be at least 2"):
        make(target="hog", hog_bins=1)
    with pytest.raises(SelfSupError, match="no reconstructions to show; pretrain with method_cfg.target=pixels \\(or pixels\\+hog\\)"):
        reconstruct(make(target="hog"), images(2))


def test_reconstruct_undoes_norm_pix_and_pastes_visible_patches(monkeypatch):
    m = make()
    x = images(3)
    orig, masked, recon = reconstruct(m, x, torch.Generator().manual_seed(0))
    assert orig.shape == masked.shape == recon.shape == x.shape
    assert 0 <= float(recon.min()) and float(recon.max()) <= 1
    visible = masked != 0.5
    assert torch.equal(recon[visible], x[visible])
    assert (masked == 0.5).float().mean().item() == pytest.approx(0.75, abs=0.01)
    # a perfect norm-pix prediction reconstructs the original exactly
    t = m.targets(x)
    perfect = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True) + 1e-6).sqrt()
    monkeypatch.setattr(m.decoder, "forward", lambda *a: perfect)
    _, _, recon = reconstruct(m, x, torch.Generator().manual_seed(0))
    assert torch.allclose(recon, x, atol=1e-5)
    # with pixels+hog, the pixel part of the prediction is the reconstruction
    both = make(target="pixels+hog", norm_pix_loss=False)
    perfect = torch.cat([both.targets(x)[..., :12], torch.full((3, 64, 9), 7.0)], -1)
    monkeypatch.setattr(both.decoder, "forward", lambda *a: perfect)
    _, masked, recon = reconstruct(both, x, torch.Generator().manual_seed(0))
    assert torch.allclose(recon, x, atol=1e-6) and (masked == 0.5).any()


def test_resume_equals_an_uninterrupted_run(tmp_path):
    data = (np.random.default_rng(0).random((64, 16, 16, 3)) * 255).astype(np.uint8)
    full, part, _ = stop_and_resume(make, data, tmp_path, stop_at=5, method="mae", batch_size=16,
                                    betas=(0.9, 0.95))
    assert not torch.equal(part.decoder.mask_token, full.decoder.mask_token)


# ------------------------------------------------------------------------- learns


@torch.no_grad()
def held_out_loss(m, images_nhwc):
    """(the model's masked-patch loss, the loss of predicting each removed patch's own mean)."""
    x = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).float() / 255
    with eval_mode(m):
        pred, mask, _ = m.masked_forward(x, torch.Generator().manual_seed(0))
    target, k = m.targets(x), m.pixel_dim
    pixels, hog = target[..., :k], target[..., k:]  # either may be empty

    # pixels: each patch's own mean (0 in norm-pix units, where the loss of it is (P-1)/P);
    # HOG: the average histogram of the removed patches, the best constant guess
    own_mean = torch.zeros_like(pixels) if m.cfg.norm_pix_loss else pixels.mean(-1, keepdim=True).expand_as(pixels)
    oracle = torch.cat([own_mean, hog[mask.bool()].mean(0).expand_as(hog)], -1)
    return m.loss(pred, target, mask).item(), m.loss(oracle, target, mask).item()


@pytest.mark.slow
def test_mae_learns_on_small_shapes(tmp_path):
    """The cpu preset on 16 px shapes (2000 images, 60 epochs of batch 32, 3780 steps): kNN
    of its representation (the mean of the patch tokens) beats random initialisation on
    2000 test images, and on test images it never saw the masked-patch loss falls far below
    its value at initialisation and below predicting each removed patch's own mean pixel value
    (an oracle: the model never sees the removed pixels) and the average HOG histogram.

    MAE's frozen features improve late, with steps: 30 epochs at batch 128 left kNN at its
    random-init level, batch 32 and then 60 epochs lifted it -- the preset's reasons for its
    small batch and its 60 epochs.  The gain of MAE's frozen features is small and varies
    with the seed (numbers: docs/results.md; the assertion allows kNN noise on 2000 test
    images).

    With 4 px patches (a 4x4 grid), not the 2 px ones the backbone now defaults to at 16 px:
    those learn more but take about 4x the time; the README's methods table measures them."""
    preset = build_config("mae", preset="cpu")
    r = learn_on_shapes("mae", tmp_path, options=preset.method_cfg, backbone="vit_mae_tiny", num_test=2000,
                        backbone_cfg={**preset.backbone_cfg, "patch_size": 4}, train__epochs=preset.train.epochs,
                        train__batch_size=preset.train.batch_size, optim__name=preset.optim.name,
                        optim__base_lr=preset.optim.base_lr, optim__warmup_epochs=preset.optim.warmup_epochs,
                        optim__betas=preset.optim.betas, optim__weight_decay=preset.optim.weight_decay,
                        measure=lambda m, ds: held_out_loss(m, ds.test.images))
    (before, patch_mean), (after, _) = r.measured
    print(f"MAE kNN: random init {r.random_init:.3f}, trained {r.trained:.3f}; held-out masked "
          f"loss {before:.4f} -> {after:.4f} (patch means {patch_mean:.4f})")
    assert after < 0.8 * before and after < patch_mean
    assert r.trained > r.random_init + 0.015  # 2000 test images: kNN noise about +-0.01
