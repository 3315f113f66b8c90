"""The online monitor: kNN against random init and effective rank, every epoch, in metrics.jsonl."""
import json

import numpy as np
import pytest
import torch

import selfsup
from selfsup.errors import SelfSupError
from selfsup.eval.monitor import OnlineMonitor, knn_leave_one_out
from selfsup.eval.label_efficiency import fresh_copy
from selfsup.models import create_backbone


def test_leave_one_out_knn_never_counts_an_image_as_its_own_neighbour():
    feats = torch.eye(6)  # orthogonal: every other image is equally far
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    # with itself excluded, each image sees 2 of its class and 3 of the other at the same
    # similarity: the other class wins every vote
    assert knn_leave_one_out(feats, labels) == 0.0
    clusters = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.95, 0.05], [0.0, 1.0], [0.1, 0.9], [0.05, 0.95]])
    assert knn_leave_one_out(clusters, labels, k=2) == 1.0


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_monitor_warns_on_a_broken_recipe(tmp_path, one_thread):
    """SimCLR whose weights cannot move (lr 1e-9): the online kNN stays at random init and
    the run says so, once -- in the log and in metrics.jsonl, every epoch."""
    said = []
    run = selfsup.pretrain("simclr", "digits", out_dir=str(tmp_path / "run"), epochs=5, batch_size=64,
                           progress=False, log=said.append, overrides={"optim.base_lr": 1e-9})
    records = [r for r in metrics(run.run_dir) if "knn_monitor" in r]
    assert [round(r["epoch"]) for r in records] == [1, 2, 3, 4, 5]
    assert all(r["knn_random_init"] == records[0]["knn_random_init"] for r in records)
    assert all(abs(r["knn_monitor"] - r["knn_random_init"]) < 0.05 for r in records)
    warnings = [s for s in said if "not learning" in s]
    # two failing checks in a row from epoch 3 on (BatchNorm statistics still move at lr 1e-9, so
    # one early check can land just above the margin)
    assert len(warnings) == 1 and warnings[0].startswith(("epoch 3:", "epoch 4:", "epoch 5:")), said
    assert "random init" in said[-1] and "online kNN" in said[-1]


def test_monitor_is_quiet_on_a_healthy_run_and_sees_it_learn(tmp_path, one_thread):
    said = []
    run = selfsup.pretrain("simclr", "digits", out_dir=str(tmp_path / "run"), epochs=5, batch_size=64,
                           progress=False, log=said.append)
    last = [r for r in metrics(run.run_dir) if "knn_monitor" in r][-1]
    assert last["knn_monitor"] > last["knn_random_init"] + 0.02  # digits: random init is already ~0.92
    assert not [s for s in said if "warning" in s or "not learning" in s or "collapse" in s], said


def test_monitor_sees_dimensional_collapse_without_labels():
    """Unlabeled data: no kNN, but an encoder whose embeddings span one direction is flagged."""
    images = np.random.default_rng(0).integers(0, 256, size=(200, 8, 8, 1), dtype=np.uint8)
    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=1, image_size=8, width=8)
    monitor = OnlineMonitor(images, fresh_copy(enc, 0), epochs=10, samples=100)
    healthy, message = monitor.measure(enc, epoch=5)
    assert "knn_monitor" not in healthy and message is None
    assert healthy["eff_rank"] > 4

    class OneDirection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = enc

        def forward(self, x):
            return self.enc(x)[:, :1] * torch.ones(1, enc.num_features)  # (N, D), rank 1

    collapsed, message = monitor.measure(OneDirection(), epoch=5)
    assert collapsed["eff_rank"] < 1.01 and message is None  # one failing check is not enough
    assert "dimensional collapse" in monitor.measure(OneDirection(), epoch=6)[1]
    assert monitor.measure(OneDirection(), epoch=7)[1] is None  # said once


def test_monitor_can_be_switched_off(tmp_path, one_thread):
    run = selfsup.pretrain("simclr", "digits", out_dir=str(tmp_path / "run"), epochs=1, batch_size=64,
                           progress=False, log=lambda s: None, overrides={"train.monitor_every": 0})
    assert not any("knn_monitor" in r for r in metrics(run.run_dir))
    with pytest.raises(SelfSupError, match="monitor_every"):
        selfsup.pretrain("simclr", "digits", out_dir=str(tmp_path / "bad"), overrides={"train.monitor_every": -1})
