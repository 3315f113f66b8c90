"""Two gloo processes on the CPU against one process on the concatenated batch: the loss
and every parameter's gradient (after DDP's averaging) must agree.  BatchNorm runs on its
running statistics (eval mode) and the views are a fixed function of each image, so the
comparison is exact up to float rounding."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
BATCH = 8  # the global batch: 4 images per process


def build(method: str):
    from selfsup.methods import create_method
    from selfsup.models import create_backbone

    torch.manual_seed(0)
    enc = create_backbone("small_cnn", in_chans=3, image_size=16, width=4)
    m = create_method(method, enc, {}, image_size=16, channels=3)
    m.setup_schedules(10, 5)
    # float64 so that the only difference left is the order of sums; BatchNorm on running
    # statistics: per-sample, the same in any split of the batch
    return m.double().eval()


def fixed_views(monkeypatch_target):
    """Replace the method module's ``augment`` by a fixed function of the image: the
    first call of a step gives the image, the second its mirror."""
    calls = []

    def augment(x, cfg, generator):
        calls.append(1)
        return x if len(calls) % 2 else x.flip(-1)

    monkeypatch_target.augment = augment


def images():
    return torch.rand(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def gradients(m) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in m.trainable_parameters() if p.grad is not None}


def worker(rank: int, method: str, init_file: str, out: str) -> None:
    import importlib

    from selfsup import distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        fixed_views(importlib.import_module(f"selfsup.methods.{method}"))
        m = build(method)
        step = distributed.training_step(m, torch.device("cpu"))
        share = BATCH // WORLD
        loss, _ = step(images()[rank * share:(rank + 1) * share], torch.Generator().manual_seed(0))
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": gradients(m)}, out.format(rank=rank))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["simclr", "autoencoder"])
def test_two_processes_match_one_on_the_joint_batch(method, tmp_path, monkeypatch):
    import importlib

    fixed_views(importlib.import_module(f"selfsup.methods.{method}"))
    m = build(method)
    loss, _ = m.training_step(images(), torch.Generator().manual_seed(0))
    loss.backward()
    want = gradients(m)

    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(worker, args=(method, str(tmp_path / "init"), out), nprocs=WORLD, join=True)
    got = [torch.load(out.format(rank=r), weights_only=True) for r in range(WORLD)]
    assert torch.stack([g["loss"] for g in got]).mean().item() == pytest.approx(loss.item(), abs=1e-6)
    for g in got:
        assert g["grads"].keys() == want.keys()
        for name, grad in want.items():
            assert (g["grads"][name] - grad).abs().max() < 1e-6, name
