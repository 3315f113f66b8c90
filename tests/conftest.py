"""Test session set-up (generated data is cached in a temporary folder, never in $HOME) and
the helpers the method tests share."""
import os
from dataclasses import dataclass

import pytest
import torch

from selfsup.api import channel_stats
from selfsup.config import RunConfig, apply_overrides
from selfsup.data import create_dataset
from selfsup.eval.features import extract_features
from selfsup.eval.knn import knn_accuracy
from selfsup.methods import Method, create_method
from selfsup.models import create_backbone
from selfsup.train import engine


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`: two workers, one thread each, subprocesses too
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    else:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("selfsup-cache")
    old = os.environ.get("SELFSUP_CACHE")
    os.environ["SELFSUP_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SELFSUP_CACHE", None)
    else:
        os.environ["SELFSUP_CACHE"] = old


@pytest.fixture
def one_thread():
    """One intra-op thread for the method tests: their models are tiny, one thread is as fast
    as two on an idle machine and far faster on a busy shared one (two OpenMP threads on two
    loaded cores ran up to 30x slower), and a fixed count keeps measured numbers reproducible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Learned:
    random_init: float        # kNN accuracy of the backbone at its random initialisation
    trained: float            # ... after the run
    history: list[dict]       # the engine's metric records
    method: Method
    measured: tuple = ()      # measure(method) before and after the run, when given


def learn_on_shapes(method: str, out_dir, *, options: dict | None = None, backbone: str = "small_cnn",
                    backbone_cfg: dict | None = None, image_size: int = 16, num_train: int = 2000,
                    num_test: int = 500, seed: int = 0, measure=None, **optim_train) -> Learned:
    """Pretrain ``method`` on a small `shapes` split and measure kNN on the shape labels
    (test split) before and after.  ``optim_train`` are dotted run-config overrides, e.g.
    ``{"train.epochs": 40, "optim.base_lr": 4e-3}`` passed as keywords with ``__`` for dots;
    ``measure(method, dataset)`` is recorded before and after training."""
    ds = create_dataset("shapes", num_train=num_train, num_test=num_test, image_size=image_size)
    ytr, yte = torch.from_numpy(ds.train.labels), torch.from_numpy(ds.test.labels)

    def knn(encoder):
        return knn_accuracy(extract_features(encoder, ds.train.images), ytr,
                            extract_features(encoder, ds.test.images), yte)

    mean, std = channel_stats(ds.train.images)
    torch.manual_seed(seed)
    enc = create_backbone(backbone, in_chans=3, image_size=image_size, mean=mean, std=std,
                          **(backbone_cfg or {"width": 16}))
    m = create_method(method, enc, options or {}, image_size=image_size, channels=3)
    random_init = knn(m.encoder)
    before = measure(m, ds) if measure else None
    cfg = RunConfig(method=method, backbone=backbone)
    cfg.train.seed, cfg.train.log_every, cfg.train.progress = seed, 20, False
    apply_overrides(cfg, {k.replace("__", "."): v for k, v in optim_train.items()})
    history = engine.train(m, ds.train.images, cfg, out_dir, log=lambda s: None)
    measured = (before, measure(m, ds)) if measure else ()
    return Learned(random_init, knn(m.encoder), history, m, measured)


def stop_and_resume(make, data, out_dir, *, stop_at: int, method: str, batch_size: int = 8,
                    **optim) -> tuple[Method, Method, Method]:
    """Three runs of 2 epochs on ``data``: uninterrupted, stopped after ``stop_at`` steps, and
    resumed from that stop (with a different global seed, which must not matter).  Returns
    ``(full, part, resumed)`` after asserting that ``full`` and ``resumed`` end bit-identical."""

    def run(path, resume=False, **train):
        m = make()
        cfg = RunConfig(method=method)
        cfg.train.epochs, cfg.train.batch_size, cfg.train.progress = 2, batch_size, False
        cfg.optim.warmup_epochs = 1
        apply_overrides(cfg, {**{f"train.{k}": v for k, v in train.items()},
                              **{f"optim.{k}": v for k, v in optim.items()}})
        engine.train(m, data, cfg, path, resume=resume, log=lambda s: None)
        return m

    full = run(out_dir / "full")
    part = run(out_dir / "part", max_steps=stop_at)
    torch.manual_seed(123)
    resumed = run(out_dir / "part", resume=True)
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    return full, part, resumed
