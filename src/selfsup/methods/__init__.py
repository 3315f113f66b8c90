"""Self-supervised methods: one file per method, one registry.

Importing this package imports every module in it, and each method module registers
its class with ``@METHODS.register(name)``; nothing else needs editing to add one.
"""
from __future__ import annotations

import importlib
import pkgutil

from selfsup.methods.base import METHODS, Method, create_method

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "Method", "create_method"]
