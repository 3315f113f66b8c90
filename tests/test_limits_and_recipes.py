"""Issue 26, cases 9 and 11: every size and option a user or a file can ask for is
bounded or checked before anything is allocated, and the loading recipes printed for
exports give the encoder's outputs when followed literally."""
from __future__ import annotations

import json

import pytest
import torch

import selfsup
from tests.test_cli import assert_one_line_error, run_cli


def test_the_printed_torchvision_recipe_followed_literally_gives_the_encoders_outputs(tmp_path, capsys, one_thread):
    """The recipe must put the model in eval mode: in train mode BatchNorm uses the batch's
    statistics (different outputs) and every forward pass changes its running statistics."""
    torch.manual_seed(0)
    enc = selfsup.models.create_backbone("resnet18", in_chans=3, image_size=32).eval()
    for m in enc.modules():  # running statistics far from a batch's own, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    selfsup.export_encoder(enc, tmp_path / "e.safetensors")
    code, out, err = run_cli(capsys, "export", str(tmp_path / "e.safetensors"), "--format", "torchvision",
                             "--out", str(tmp_path / "tv.safetensors"))
    assert code == 0, err
    printed = out.split("load it with:\n", 1)[1].split("\ninput:", 1)[0]
    scope: dict = {}
    exec("import torch, torchvision, safetensors.torch\n" + "\n".join(line.strip() for line in printed.splitlines()),
         scope)  # noqa: S102 -- our own recipe
    how = json.loads((tmp_path / "tv.json").read_text())
    mean, std = torch.tensor(how["mean"]).view(1, 3, 1, 1), torch.tensor(how["std"]).view(1, 3, 1, 1)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        theirs = scope["m"]((x - mean) / std)
        ours = selfsup.load_encoder(tmp_path / "e.safetensors", device="cpu")(x)
    assert (ours - theirs).abs().max() < 1e-4


def test_a_hugging_face_export_says_which_output_is_the_embedding(tmp_path, capsys, one_thread):
    from selfsup.models import create_backbone

    enc = create_backbone("bert", tokenizer=_tiny_tokenizer(tmp_path), layers=1, hidden=32, heads=2, max_length=16)
    selfsup.export_encoder(enc, tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "attention_mask" in card and "pooler_output" in card and "model.eval()" in card
    code, out, err = run_cli(capsys, "export", str(tmp_path / "hf"), "--out", str(tmp_path / "hf2"))
    assert code == 0, err
    assert "mean of last_hidden_state over the real tokens" in out and "`pooler_output` is NOT" in out


def _tiny_tokenizer(tmp_path):
    from selfsup.data.tokenizer import Tokenizer

    return Tokenizer.train(["the cat sat on the mat", "a dog ran in the park"] * 20, vocab_size=64)


@pytest.mark.parametrize("args,needles", [
    (["--set", "backbone_cfg.nosuch=1"], ["backbone 'small_cnn' has no option 'nosuch'", "width"]),
    (["--set", "backbone_cfg.widht=8"], ["did you mean backbone_cfg.width?"]),
    (["--set", "train.threads=100000"], ["train.threads must be", "at most"]),
    (["--image-size", "100000"], ["data.image_size=100000 needs about", "choose a smaller data.image_size"]),
    (["--method", "mlm", "--max-length", "100000000"], ["data.max_length=100000000 needs about"]),
], ids=["backbone-option", "backbone-typo", "threads", "image-size", "max-length"])
def test_bad_or_huge_options_are_one_line_errors_before_anything_is_read(args, needles, capsys, tmp_path,
                                                                         monkeypatch):
    import selfsup.api

    monkeypatch.setattr(selfsup.api, "load_data", lambda *a, **k: pytest.fail("data read before the check"))
    code, _, err = run_cli(capsys, "pretrain", *args, "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("yaml_text,needles", [
    ("train: 5\n", ["'train' is a section of options", "train.epochs"]),
    ("method_cfg: 3\n", ["'method_cfg' takes a mapping"]),
    ("backbone_cfg: {width: wide}\n", ["'backbone_cfg.width' takes a number, not 'wide'"]),
], ids=["section", "mapping", "typed"])
def test_a_yaml_config_of_the_wrong_shape_is_a_one_line_error(yaml_text, needles, capsys, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml_text)
    code, _, err = run_cli(capsys, "pretrain", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, *needles)


def test_backbone_options_get_their_defaults_type(tmp_path):
    from selfsup.api import build_config

    cfg = build_config("simclr", overrides={"backbone_cfg.width": "8"})  # as a YAML string
    assert cfg.backbone_cfg == {"width": 8}


@pytest.mark.parametrize("flag,value,needle", [
    ("--k", "-5", "--k must be a whole number of neighbours, at least 1"),
    ("--k", "0", "--k must be a whole number of neighbours, at least 1"),
    ("--temperature", "0", "--temperature must be positive"),
])
def test_knn_options_that_would_give_wrong_accuracies_are_refused(flag, value, needle, capsys, tmp_path):
    enc = selfsup.models.create_backbone("small_cnn", in_chans=1, image_size=8, width=4)
    selfsup.export_encoder(enc, tmp_path / "e.safetensors")
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "e.safetensors"), "--data", "digits", flag, value)
    assert_one_line_error(code, err, needle)


def test_an_encoder_file_whose_spec_asks_for_a_huge_model_is_refused_before_allocating(tmp_path, capsys):
    """A crafted spec (small_cnn at width 10**6: about 1.5 TB of weights) next to a few
    kilobytes of tensors must not make the loader allocate the model."""
    from selfsup.models import create_backbone
    from selfsup.train.checkpoint import save_encoder_file

    enc = create_backbone("small_cnn", in_chans=1, image_size=8, width=4)
    spec = {"name": enc.name, "kwargs": {**enc.kwargs, "width": 10**6}}
    save_encoder_file(tmp_path / "evil.safetensors", spec, enc.state_dict())
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "evil.safetensors"), "--data", "digits")
    assert_one_line_error(code, err, "asks for a model of", "MiB of weights")
