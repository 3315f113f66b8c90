"""Test session set-up (generated data is cached in a temporary folder, never in $HOME) and
the helpers the method tests share."""
import os
from dataclasses import dataclass

import pytest
import torch

from selfsup import engine
from selfsup.api import channel_stats
from selfsup.backbones import create_backbone
from selfsup.config import RunConfig, apply_overrides
from selfsup.data import create_dataset
from selfsup.features import extract_features
from selfsup.knn import knn_accuracy
from selfsup.methods import Method, create_method


def pytest_configure(config):
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
