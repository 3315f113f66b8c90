"""The fast path: precision choice, channels-last layout, and that training, features and
the CLI use them (and turn them off on request)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selfsup.cli import main as cli_main
from selfsup.eval.features import extract_features
from selfsup.models import create_backbone, runtime
from selfsup.models.runtime import choose_precision, fast_layout
from selfsup.train import checkpoint, engine
from test_engine import images, tiny_setup

NATIVE_BF16 = runtime.cpu_bf16_support() is not None
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16")


def test_precision_follows_the_hardware_and_the_switch(monkeypatch):
    assert choose_precision("cpu", amp=False).dtype is None
    assert choose_precision("cpu", amp=False).name == "fp32"
    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: None)
    p = choose_precision("cpu")
    assert p.dtype is None and "no native bf16" in str(p)
    monkeypatch.setattr(runtime, "cpu_bf16_support", lambda: "AMX-BF16")
    p = choose_precision("cpu")
    assert p.dtype == torch.bfloat16 and p.name == "bf16" and "AMX-BF16" in str(p)
    assert not p.needs_loss_scaling
    with p.autocast():
        y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16


def test_fast_layout_keeps_values_and_makes_convolutions_channels_last():
    torch.manual_seed(0)
    enc = create_backbone("resnet18", in_chans=3, image_size=16).eval()
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        before = enc(x)
        fast_layout(enc, "cpu")
        after = enc(x)
    conv = enc.net.net.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    vit = fast_layout(create_backbone("vit_tiny", in_chans=3, image_size=16, patch_size=4, depth=1), "cpu")
    attn = [m for m in vit.modules() if hasattr(m, "fused_attn")]
    assert attn and not any(m.fused_attn for m in attn)  # explicit attention on the CPU


def train_tiny(tmp_path, **train):
    m, cfg = tiny_setup(tmp_path, **train)
    cfg.train.device = "cpu"  # the CPU's precision is what these tests check, also where a GPU is present
    lines = []
    engine.train(m, images(), cfg, tmp_path, log=lines.append)
    return m, lines, checkpoint.load_checkpoint(tmp_path)


def test_engine_prints_and_saves_the_precision(tmp_path):
    _, lines, ckpt = train_tiny(tmp_path / "fp32", amp=False)
    assert ckpt["precision"] == "fp32" and "precision fp32 (amp off)" in lines[0]
    _, lines, ckpt = train_tiny(tmp_path / "auto")
    assert ckpt["precision"] == choose_precision("cpu").name
    assert f"precision {choose_precision('cpu')}" in lines[0]
    rec = json.loads((tmp_path / "auto" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= rec["data_wait"] < 1.0


@needs_bf16
def test_training_runs_its_convolutions_in_bf16(tmp_path):
    seen = set()

    def spy(module, inputs, output):
        seen.add(output.dtype)

    m, cfg = tiny_setup(tmp_path)
    m.encoder.net.features[0][0].register_forward_hook(spy)
    engine.train(m, images(), cfg, tmp_path, log=lambda s: None)
    assert seen == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in m.parameters())  # master weights stay fp32
    seen.clear()
    m2, cfg = tiny_setup(tmp_path / "fp32", amp=False)
    m2.encoder.net.features[0][0].register_forward_hook(spy)
    engine.train(m2, images(), cfg, tmp_path / "fp32", log=lambda s: None)
    assert seen == {torch.float32}


@needs_bf16
def test_features_take_the_fast_path_and_fp32_on_request():
    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=3, image_size=16, width=8)
    data = images(40)
    exact = enc.eval()(torch.from_numpy(data).permute(0, 3, 1, 2).float() / 255).detach()
    fp32 = extract_features(enc, data, amp=False)
    fast = extract_features(enc, data)
    torch.testing.assert_close(fp32, exact, rtol=1e-4, atol=1e-5)
    assert fast.dtype == torch.float32 and not torch.equal(fast, fp32)  # computed in bf16 ...
    cos = torch.nn.functional.cosine_similarity(fast, fp32)
    assert cos.min() > 0.99  # ... and close to fp32


def test_evaluate_cli_reports_the_precision(tmp_path, capsys):
    from selfsup.api import export_encoder

    torch.manual_seed(0)
    path = export_encoder(create_backbone("small_cnn", in_chans=3, image_size=32, width=8), tmp_path / "e.pt")
    data = "shapes"
    assert cli_main(["evaluate", str(path), "--data", data, "--no-linear", "--no-amp",
                     "--out", str(tmp_path / "a.json")]) == 0
    assert json.loads((tmp_path / "a.json").read_text())["precision"] == "fp32"


@pytest.mark.slow
def test_compiled_training_keeps_parameter_names_and_resumes_uncompiled(tmp_path):
    m, lines, ckpt = train_tiny(tmp_path, compile=True, epochs=1)
    plain, _ = tiny_setup(tmp_path)
    assert set(ckpt["method_state"]) == set(plain.state_dict())
    plain.load_state_dict(ckpt["method_state"])
    assert np.isfinite(json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["loss"])
