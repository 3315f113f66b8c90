"""Encoders: one registry of backbones, one contract (see :mod:`selfsup.models.backbones`).

Importing this package registers every backbone: the small CNN and torchvision ResNets
(``backbones.py``) and the vision transformers (``vit.py``).
"""
from __future__ import annotations

from selfsup.models import vit  # noqa: F401  (registers the ViTs)
from selfsup.models.backbones import BACKBONES, Encoder, create_backbone, eval_mode, rebuild_encoder

__all__ = ["BACKBONES", "Encoder", "create_backbone", "eval_mode", "rebuild_encoder"]
