"""The ``>>>`` examples in docstrings run and give what they show."""
import doctest
import importlib

import pytest

MODULES = [
    "selfsup.registry",
    "selfsup.schedules",
    "selfsup.data",
    "selfsup.data.views",
    "selfsup.methods.base",
    "selfsup.methods.losses",
    "selfsup.methods.simclr",
    "selfsup.methods.moco",
    "selfsup.methods.byol",
    "selfsup.methods.distill",
    "selfsup.methods.autoencoder",
    "selfsup.methods.mlm",
    "selfsup.eval.knn",
    "selfsup.eval.selection",
    "selfsup.eval.propagation",
    "selfsup.eval.linear",
    "selfsup.eval.diagnostics.compactness",
    "selfsup.eval.diagnostics.geometry",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
