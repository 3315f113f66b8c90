"""The checkpoint format, in one place.

A run folder's ``last.pt`` is a dict with ``format == FORMAT`` and: ``config`` (the
RunConfig as a dict), ``step``, ``data_position`` (epoch, batch within it, world size
and number of samples: where the loader continues), ``method_state`` (the model and
every training state of the method), ``optimizer``, ``scaler``, the RNG states
(``aug_rng``, ``torch_rng``, ``cuda_rng``) and ``encoder`` (backbone name and builder
arguments).  An exported encoder (``encoder.pt``) has ``format == ENCODER_FORMAT``,
``encoder`` and ``state_dict``.  Files are written atomically and read with
``weights_only=True``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import SelfSupError

CHECKPOINT = "last.pt"
FORMAT = "selfsup-checkpoint"
ENCODER_FORMAT = "selfsup-encoder"


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a
    half-written checkpoint in place of the last good one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT
    if not p.is_file():
        raise SelfSupError(f"checkpoint {str(p)!r} not found; pass a run folder or a .pt file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated or foreign file
        raise SelfSupError(f"cannot read checkpoint {str(p)!r}: not a selfsup checkpoint or "
                           f"corrupt ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (FORMAT, ENCODER_FORMAT):
        raise SelfSupError(f"{str(p)!r} is not a selfsup checkpoint or exported encoder")
    return ckpt


def encoder_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder's weights from a run checkpoint or an exported encoder."""
    if ckpt["format"] == ENCODER_FORMAT:
        return ckpt["state_dict"]
    prefix = "encoder."
    return {k[len(prefix):]: v for k, v in ckpt["method_state"].items() if k.startswith(prefix)}
