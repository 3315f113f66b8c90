"""The one ViT class: timm's forward, plain-timm exports, masking, other image sizes, and
encoders saved by the former MAE encoder class."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.methods import create_method
from selfsup.models import create_backbone, rebuild_encoder
from selfsup.models.vit import ViT, random_masking, sincos_pos_embed_2d, vit_blocks

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["vit_tiny", "vit_small", "vit_mae_tiny", "vit_mae_small"]
SMALL = dict(depth=2, embed_dim=32, num_heads=2)


def build(name, size=16, **kw):
    torch.manual_seed(0)
    return create_backbone(name, in_chans=3, image_size=size, **{**SMALL, **kw}).eval()


def images(n=2, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("name", NAMES)
def test_every_configuration_is_timms_model_and_exports_to_plain_timm(name, pool):
    """forward_tokens is timm's forward_features; the recipe rebuilds a plain timm model whose
    output, with the exported state dict, is the backbone's forward (CLS or mean pool)."""
    import timm  # noqa: F401  (the recipe's namespace)

    net = build(name, pool=pool).net
    x = images()
    with torch.no_grad():
        tokens = net.forward_tokens(x)  # (N, 1 + L, D)
        assert torch.equal(tokens, net.vit.forward_features(x))
        namespace = {"timm": timm, "torch": torch}
        exec("\n".join(net.recipe()["build"]), namespace)
        m = namespace["m"].eval()
        m.load_state_dict(net.library_model.state_dict())
        assert torch.allclose(m(x), net(x), atol=1e-6)
    assert net(x).shape == (2, 32)
    assert torch.equal(net(x), tokens[:, 1:].mean(1) if pool == "mean" else tokens[:, 0])


def test_sincos_positions_are_the_fixed_table_and_learned_ones_train():
    mae, vit = build("vit_mae_tiny").net, build("vit_tiny").net
    table = sincos_pos_embed_2d(32, 8, 8, cls_token=True).unsqueeze(0)  # (1, 65, 32): 16 px / patch 2
    assert torch.equal(mae.pos_embed, table) and torch.equal(mae.vit.pos_embed, table)
    assert not any("pos_embed" in n for n, _ in mae.named_parameters())
    assert list(mae.state_dict()).count("vit.pos_embed") == 1 and "pos_embed" not in mae.state_dict()
    assert "vit.pos_embed" in dict(vit.named_parameters()) and vit.vit.pos_embed.requires_grad
    with pytest.raises(ValueError, match="pos_embed must be 'learned' or 'sincos', got 'rope'"):
        ViT(3, 16, 32, 1, 2, pos_embed="rope")
    with pytest.raises(ValueError, match="pool must be 'cls' or 'mean'"):
        ViT(3, 16, 32, 1, 2, pool="max")


@pytest.mark.parametrize("name", NAMES)
def test_forward_masked_with_nothing_removed_is_the_full_forward_reordered(name):
    net = build(name).net
    x = images()
    noise = torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        latent, mask, ids_restore = net.forward_masked(x, 0.0, noise)  # (N, 1 + 64, D)
        full = net.forward_tokens(x)
        order = noise.argsort(1)  # the visible tokens come in noise order
        assert mask.sum() == 0 and torch.equal(order.gather(1, ids_restore), torch.arange(64).expand(2, -1))
        assert torch.allclose(latent[:, 0], full[:, 0], atol=1e-5)
        assert torch.allclose(latent[:, 1:], full[:, 1:].gather(1, order.unsqueeze(-1).expand(-1, -1, 32)),
                              atol=1e-5)
        latent, mask, _ = net.forward_masked(x, 0.75, noise)
    assert latent.shape == (2, 1 + 16, 32) and mask.sum(1).tolist() == [48.0, 48.0]


def test_other_image_sizes_use_resampled_or_recomputed_positions():
    x = images(size=32)
    with torch.no_grad():
        vit = build("vit_tiny").net  # learned: resampled as timm resamples them
        assert torch.equal(vit.forward_tokens(x), vit.vit.forward_features(x))
        mae = build("vit_mae_tiny").net  # sin-cos: the table of the 16x16 grid, as a net built for 32 px
        at32 = build("vit_mae_tiny", size=32, patch_size=2).net
        at32.load_state_dict({k: v for k, v in mae.state_dict().items() if k != "vit.pos_embed"}, strict=False)
        assert torch.allclose(mae.forward_tokens(x), at32.forward_tokens(x), atol=1e-6)


def test_mae_trains_a_learned_position_vit_too():
    torch.manual_seed(0)
    enc = create_backbone("vit_tiny", in_chans=3, image_size=16, patch_size=4, **SMALL)
    m = create_method("mae", enc, {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
                      image_size=16, channels=3)
    loss, _ = m.training_step(images(4), torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and enc.net.vit.pos_embed.grad.abs().sum() > 0


def legacy_forward(state: dict, x: torch.Tensor, depth: int, heads: int, patch: int) -> torch.Tensor:
    """The former MAE encoder class's forward on its own state-dict layout: conv patches +
    sin-cos table, CLS (zero position) first, timm Blocks, LayerNorm; (N, 1 + L, D)."""
    w = state["net.patch_embed.weight"]  # (D, C, p, p)
    d = w.shape[0]
    x = (x - state["mean"]) / state["std"]
    t = F.conv2d(x, w, state["net.patch_embed.bias"], stride=patch)  # (N, D, h, w)
    grid_h, grid_w = t.shape[2:]
    t = t.flatten(2).transpose(1, 2) + sincos_pos_embed_2d(d, grid_h, grid_w)  # (N, L, D)
    t = torch.cat([state["net.cls_token"].expand(len(t), -1, -1), t], dim=1)  # (N, 1 + L, D)
    blocks = vit_blocks(d, depth, heads, 4.0).eval()
    blocks.load_state_dict({k[len("net.blocks."):]: v for k, v in state.items() if k.startswith("net.blocks.")})
    for blk in blocks:
        t = blk(t)
    return F.layer_norm(t, (d,), state["net.norm.weight"], state["net.norm.bias"], eps=1e-6)


def former_key(key: str) -> str:
    """The key the former MAE encoder class saved a parameter under: its parts sat at the
    net's top level (``net.patch_embed.weight`` for ``net.vit.patch_embed.proj.weight``)."""
    return key.replace("net.vit.patch_embed.proj.", "net.patch_embed.").replace("net.vit.", "net.")


def test_an_encoder_saved_by_the_former_mae_class_loads_and_gives_the_same_outputs():
    enc = build("vit_mae_tiny", pool="mean")
    g = torch.Generator().manual_seed(3)
    old = {former_key(k): v + 0.1 * torch.randn(v.shape, generator=g)  # no position table: it was not saved
           for k, v in enc.state_dict().items() if k != "net.vit.pos_embed"}
    old["mean"], old["std"] = enc.mean, enc.std
    assert {"net.patch_embed.weight", "net.cls_token", "net.blocks.0.attn.qkv.weight", "net.norm.weight"} <= set(old)
    loaded = rebuild_encoder({"name": enc.name, "kwargs": enc.kwargs}, old)
    x = torch.rand(3, 3, 16, 16, generator=g)
    with torch.no_grad():
        want = legacy_forward(old, x, depth=2, heads=2, patch=2)
        assert torch.allclose(loaded.forward_tokens(x), want, atol=1e-5)
        assert torch.allclose(loaded(x), want[:, 1:].mean(1), atol=1e-5)
    assert torch.equal(loaded.net.vit.pos_embed, sincos_pos_embed_2d(32, 8, 8, cls_token=True).unsqueeze(0))
    # and a whole MAE method's state (a run's checkpoint) loads too
    m = create_method("mae", build("vit_mae_tiny"), {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
                      image_size=16, channels=3)
    state = {former_key(k): v for k, v in m.state_dict().items() if k != "encoder.net.vit.pos_embed"}
    assert "encoder.net.patch_embed.weight" in state and "encoder.net.blocks.1.norm2.bias" in state
    m.load_state_dict(state)


def test_random_masking_is_unchanged():
    tokens = torch.arange(12.0).view(1, 6, 2)
    noise = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7, 0.2]])
    visible, mask, ids_restore = random_masking(tokens, 0.5, noise)
    assert visible[0, :, 0].tolist() == [2.0, 10.0, 6.0]  # patches 1, 5, 3: the smallest noise first
    assert mask.tolist() == [[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]
    assert ids_restore.tolist() == [[3, 0, 5, 2, 4, 1]]
