"""MoCo v2: gradients, the queue, the key encoder, split BN, the closed form, resume, learning."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.api import build_config
from selfsup.data.views import augment
from selfsup.errors import SelfSupError
from selfsup.methods import create_method
from selfsup.methods.base import momentum_update
from selfsup.models import create_backbone
from conftest import learn_on_shapes, stop_and_resume

IDENTITY_VIEWS = {"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "flip_p": 0.0,
                  "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_moco(size=16, width=8, **options):
    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=3, image_size=size, width=width)
    options.setdefault("queue_size", 32)
    return create_method("moco", enc, options, image_size=size, channels=3)


def batch(n=8, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def sgd_step(m, x, gen, lr=0.5):
    loss, logs = m.training_step(x, gen)
    m.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        for _, p in m.trainable_parameters():
            p -= lr * p.grad
    return loss, logs


def test_forward_backward_gradients_only_into_the_query_side():
    m = make_moco()
    m.train()
    loss, logs = m.training_step(batch(), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    trainable = dict(m.trainable_parameters())
    assert trainable and not any(n.startswith(("key_encoder.", "key_head.")) for n in trainable)
    for name, p in trainable.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for p in [*m.key_encoder.parameters(), *m.key_head.parameters()]:
        assert not p.requires_grad and p.grad is None
    assert 0.0 <= logs["pos_acc"] <= 1.0 and 0.0 < logs["z_std"] <= 1.5


@pytest.mark.parametrize("symmetric", [False, True])
def test_closed_form_identical_query_and_key_with_orthogonal_negatives(symmetric):
    # Identity views and one BN group: q = k. Queue rows orthogonal to every q:
    # loss = -log(e^{1/T} / (e^{1/T} + K)) = log(1 + K e^{-1/T}), once per direction.
    m = make_moco(queue_size=32, bn_splits=1, temperature=0.2, symmetric=symmetric,
                  views=IDENTITY_VIEWS).double()
    m.train()
    x = batch().double()
    with torch.no_grad():
        q = F.normalize(m.head(m.encoder(x)), dim=1)  # (8, 128)
    # an orthonormal basis of the complement of span(q): the last columns of a full QR
    basis, _ = torch.linalg.qr(torch.cat([q.t(), torch.randn(128, 120, dtype=torch.float64)], 1))
    negatives = basis[:, 8:40].t()  # (32, 128), unit and orthogonal to every q
    assert (negatives @ q.t()).abs().max() < 1e-12
    m.queue.copy_(negatives)
    loss, logs = m.training_step(x, torch.Generator().manual_seed(0))
    directions = 2 if symmetric else 1
    assert loss.item() == pytest.approx(directions * math.log(1 + 32 * math.exp(-1 / 0.2)), rel=1e-9)
    assert logs["pos_acc"] == 1.0
    # the keys were enqueued after the loss: the first 8 (or 16) rows are now the keys = q
    n_new = 8 * directions
    assert int(m.queue_ptr) == n_new
    assert torch.allclose(m.queue[:n_new], q.repeat(directions, 1), atol=1e-10)
    assert torch.equal(m.queue[n_new:], negatives[n_new:])


def test_queue_is_a_ring_buffer_of_the_batch_keys():
    m = make_moco(queue_size=24, bn_splits=2)
    m.train()
    gen = torch.Generator().manual_seed(0)
    x = batch()
    for step in range(3):
        before = m.queue.clone()
        ptr = int(m.queue_ptr)
        assert ptr == (8 * step) % 24
        # recompute this step's keys on a copy with the same generator state
        twin, twin_gen = copy.deepcopy(m), torch.Generator()
        twin_gen.set_state(gen.get_state())
        sgd_step(m, x, gen)
        momentum_update(twin.encoder, twin.key_encoder, twin.cfg.momentum)
        momentum_update(twin.head, twin.key_head, twin.cfg.momentum)
        augment(x, twin.view_cfg, twin_gen)  # the query view
        keys = twin.keys(augment(x, twin.view_cfg, twin_gen), twin_gen)
        assert torch.equal(m.queue[ptr:ptr + 8], keys)
        assert torch.allclose(keys.norm(dim=1), torch.ones(8))
        rest = torch.ones(24, dtype=torch.bool)
        rest[ptr:ptr + 8] = False
        assert torch.equal(m.queue[rest], before[rest])
    assert int(m.queue_ptr) == 0  # wrapped around


def test_keys_use_split_bn_on_a_shuffled_batch_and_come_back_in_order():
    m = make_moco(bn_splits=2)
    m.train()
    x = batch()
    gen = torch.Generator().manual_seed(3)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = torch.empty(8, 128)
        for group in perm.tensor_split(2):  # each group with its own BN statistics
            expected[group] = F.normalize(m.key_head(m.key_encoder(x[group])), dim=1)
        full_batch = F.normalize(m.key_head(m.key_encoder(x)), dim=1)
    keys = m.keys(x, gen)
    assert torch.allclose(keys, expected, atol=1e-6)
    assert not torch.allclose(keys, full_batch, atol=1e-3)  # the split really changes BN statistics
    m.eval()  # with running statistics the grouping is invisible: only the order is tested
    with torch.no_grad():
        assert torch.allclose(m.keys(x, gen), F.normalize(m.key_head(m.key_encoder(x)), dim=1), atol=1e-6)


def test_key_encoder_is_an_ema_of_the_query_encoder_updated_first():
    m = make_moco(momentum=0.9)
    m.train()
    gen, x = torch.Generator().manual_seed(0), batch()
    for a, b in zip(m.encoder.parameters(), m.key_encoder.parameters()):
        assert torch.equal(a, b)  # a copy at start
    sgd_step(m, x, gen)
    old_key = [p.clone() for p in [*m.key_encoder.parameters(), *m.key_head.parameters()]]
    query = [p.clone() for p in [*m.encoder.parameters(), *m.head.parameters()]]
    sgd_step(m, x, gen)  # the update at the start of this step uses the query weights above
    new_key = [*m.key_encoder.parameters(), *m.key_head.parameters()]
    for old, q, new in zip(old_key, query, new_key):
        assert torch.allclose(new, 0.9 * old + 0.1 * q, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(m.encoder.parameters(), m.key_encoder.parameters()))


def test_queue_size_must_be_a_multiple_of_the_batch():
    m = make_moco(queue_size=30)
    with pytest.raises(SelfSupError, match="queue_size 30 must be a multiple of the 8 keys enqueued per step"):
        m.training_step(batch(), torch.Generator().manual_seed(0))


def test_presets_build_and_fit_the_queue():
    for name in ("cpu", "gpu"):
        cfg = build_config("moco", preset=name)
        assert cfg.method_cfg["queue_size"] % cfg.train.batch_size == 0


def test_resume_restores_queue_pointer_and_key_encoder(tmp_path):
    data = (np.random.default_rng(0).random((48, 16, 16, 3)) * 255).astype(np.uint8)  # 6 steps/epoch
    full, part, _ = stop_and_resume(lambda: make_moco(queue_size=32, momentum=0.9), data, tmp_path,
                                    stop_at=7, method="moco")
    assert int(part.queue_ptr) == (7 * 8) % 32
    assert {"queue", "queue_ptr"} <= set(full.state_dict())
    assert any(k.startswith("key_encoder.") for k in full.state_dict())
    assert not torch.equal(part.queue, full.queue)


@pytest.mark.slow
def test_moco_learns_shape_features_on_small_shapes(tmp_path):
    """The cpu preset on 16 px shapes, 2000 images, 40 short epochs (600 steps): kNN on the
    shape labels beats the same network at its random initialisation.  Needs strong colour
    jitter (SimCLR s=1), crop (0.25, 1) and T=0.1: with the plain v2 recipe at 32 px MoCo
    stayed within +-0.03 of random init for up to 775 steps -- its instance task is solved
    by colour and texture.  The symmetric loss (the preset) learns faster: on the shapes
    test split 0.356 against 0.306 for one direction (random init 0.255)."""
    options = build_config("moco", preset="cpu").method_cfg
    assert options["symmetric"]
    r = learn_on_shapes("moco", tmp_path, options=options, train__epochs=40, train__batch_size=128,
                        optim__base_lr=4e-3, optim__warmup_epochs=2)
    print(f"MoCo kNN: random init {r.random_init:.3f}, trained {r.trained:.3f}")
    assert not any(rec["collapse_suspected"] for rec in r.history)
    assert r.trained > r.random_init + 0.05
