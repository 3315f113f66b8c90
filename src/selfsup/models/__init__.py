"""Encoders: one registry of backbones, one contract (see :mod:`selfsup.models.backbones`).

Importing this package registers every backbone: the small CNN and torchvision ResNets
(``backbones.py``), the vision transformers (``vit.py``), the BERT text encoder
(``text.py``) and the pretrained models ``pretrained:NAME`` (``pretrained.py``).
"""
from __future__ import annotations

from selfsup.models import pretrained, text, vit  # noqa: F401  (registers the text encoder, the ViTs, pretrained:NAME)
from selfsup.models.backbones import BACKBONES, Encoder, create_backbone, eval_mode, modality, rebuild_encoder
from selfsup.models.text import TextEncoder

__all__ = ["BACKBONES", "Encoder", "TextEncoder", "create_backbone", "eval_mode", "modality", "rebuild_encoder"]
