"""The engine: exact resume, the non-finite guard, schedules, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.config import RunConfig
from selfsup.errors import SelfSupError
from selfsup.methods import create_method
from selfsup.models import create_backbone
from selfsup.schedules import cosine_schedule
from selfsup.train import checkpoint, engine
from selfsup.train.optim import LARS, scaled_lr


def tiny_setup(tmp_path, method="simclr", **train):
    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=3, image_size=16, width=8)
    m = create_method(method, enc, {}, image_size=16, channels=3)
    cfg = RunConfig(method=method)
    cfg.train.epochs, cfg.train.batch_size, cfg.train.progress = 2, 16, False
    cfg.train.out_dir = str(tmp_path)
    cfg.optim.warmup_epochs = 1
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return m, cfg


def images(n=64, size=16, seed=0):
    return (np.random.default_rng(seed).random((n, size, size, 3)) * 255).astype(np.uint8)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    data = images()
    full, cfg = tiny_setup(tmp_path / "full")
    engine.train(full, data, cfg, tmp_path / "full", log=lambda s: None)

    part, cfg = tiny_setup(tmp_path / "part", max_steps=5)  # stops mid-epoch 2 (4 steps/epoch)
    engine.train(part, data, cfg, tmp_path / "part", log=lambda s: None)
    ckpt = checkpoint.load_checkpoint(tmp_path / "part")
    assert ckpt["step"] == 5

    resumed, cfg = tiny_setup(tmp_path / "part")
    torch.manual_seed(123)  # a different global RNG state must not matter after resume
    engine.train(resumed, data, cfg, tmp_path / "part", resume=True, log=lambda s: None)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the partial run really was different before resuming
    assert not torch.equal(part.state_dict()["encoder.net.features.0.0.weight"],
                           a["encoder.net.features.0.0.weight"])
    steps = [r["step"] for r in map(eval_json, (tmp_path / "part" / "metrics.jsonl").read_text().splitlines())]
    assert steps == sorted(set(steps))  # no duplicated metric lines after resume


def eval_json(line):
    import json

    return json.loads(line)


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    data = images()
    m, cfg = tiny_setup(tmp_path, epochs=1)
    engine.train(m, data, cfg, tmp_path, log=lambda s: None)
    before = (tmp_path / "last.pt").read_bytes()

    m2, cfg2 = tiny_setup(tmp_path, epochs=3)
    bad = lambda *a, **k: (torch.tensor(float("nan"), requires_grad=True), {})  # noqa: E731
    m2.training_step = bad
    with pytest.raises(SelfSupError, match="loss became nan at step 0.*intact"):
        engine.train(m2, data, cfg2, tmp_path, log=lambda s: None)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_batch_errors(tmp_path):
    m, cfg = tiny_setup(tmp_path, batch_size=1)
    with pytest.raises(SelfSupError, match="too small for simclr"):
        engine.train(m, images(), cfg, tmp_path, log=lambda s: None)
    m, cfg = tiny_setup(tmp_path, batch_size=100)
    with pytest.raises(SelfSupError, match="larger than the 64 training samples"):
        engine.train(m, images(), cfg, tmp_path, log=lambda s: None)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(SelfSupError, match="not found"):
        checkpoint.load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(SelfSupError, match="cannot read checkpoint"):
        checkpoint.load_checkpoint(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(SelfSupError, match="not a selfsup checkpoint"):
        checkpoint.load_checkpoint(other)


def test_cosine_schedule_warmup_reaches_base_at_last_warmup_step():
    s = cosine_schedule(1.0, 0.1, total_steps=20, warmup_steps=5)
    assert len(s) == 20
    assert s[0] == 0.0 and s[4] == pytest.approx(1.0)
    assert s[-1] == pytest.approx(0.1)
    assert np.all(np.diff(s[4:]) <= 1e-12)


def test_lr_scaling():
    cfg = RunConfig().optim
    cfg.base_lr = 0.3
    assert scaled_lr(cfg, 512) == pytest.approx(0.6)
    cfg.lr_scaling = "sqrt"
    assert scaled_lr(cfg, 256) == pytest.approx(0.3 * 16)
    cfg.lr_scaling = "bogus"
    with pytest.raises(SelfSupError, match="lr_scaling"):
        scaled_lr(cfg, 256)


def test_lars_trust_ratio_and_no_adaptation_for_biases():
    w = torch.nn.Parameter(torch.ones(2, 2))
    b = torch.nn.Parameter(torch.ones(2))
    opt = LARS([w, b], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.1)
    w.grad = torch.full((2, 2), 10.0)
    b.grad = torch.full((2,), 10.0)
    opt.step()
    # trust = 0.1 * ||w|| / ||g|| = 0.1 * 2 / 20 = 0.01 -> update 10 * 0.01 = 0.1
    assert torch.allclose(w, torch.full((2, 2), 0.9))
    assert torch.allclose(b, torch.full((2,), -9.0))  # plain SGD step for 1-D params
