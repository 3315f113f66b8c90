"""Test session set-up: generated data is cached in a temporary folder, never in $HOME."""
import os

import pytest
import torch


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
