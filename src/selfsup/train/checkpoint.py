"""The checkpoint format, in one place.

A run folder's ``last.pt`` is a dict with ``format == FORMAT`` and: ``config`` (the
RunConfig as a dict), ``step``, ``data_position`` (epoch, batch within it, world size
and number of samples: where the loader continues), ``method_state`` (the model and
every training state of the method), ``optimizer``, ``scaler``, the RNG states
(``aug_rng``, ``torch_rng``, ``cuda_rng``) and ``encoder`` (backbone name and builder
arguments).  Files are written atomically and read with ``weights_only=True`` (torch's
restricted unpickler: a crafted pickle is refused, never run).

An exported encoder (``encoder.safetensors``, :func:`save_encoder_file`) is a
safetensors file -- no pickle at all -- whose header metadata holds ``format ==
ENCODER_FORMAT`` and the encoder spec (``{"name", "kwargs"}``) as JSON.  Encoders exported
before (``encoder.pt``, a dict with ``format``, ``encoder`` and ``state_dict``) still load.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import SelfSupError
from selfsup.files import atomic_write

CHECKPOINT = "last.pt"
FORMAT = "selfsup-checkpoint"
ENCODER_FORMAT = "selfsup-encoder"


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a
    half-written checkpoint in place of the last good one, and a failed write (a full or
    read-only disk) leaves neither a temporary file nor a changed one, and is a one-line
    :class:`~selfsup.files.WriteError` (torch's own "unexpected pos" never reaches the user)."""
    atomic_write(path, lambda f: torch.save(obj, f))


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


def is_torch_file(path: Path) -> bool:
    """True for a file written by ``torch.save`` (a zip archive), False for safetensors."""
    with Path(path).open("rb") as f:
        return f.read(2) == b"PK"


def save_encoder_file(path: Path, spec: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
    """The encoder as safetensors, its spec in the header (atomic)."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    meta = {"format": ENCODER_FORMAT, "version": "2", "encoder": json.dumps(spec)}
    atomic_write(path, lambda f: f.write(save(tensors, metadata=meta)))  # bytes: written through selfsup's file


def save_state_file(path: Path, state: dict[str, torch.Tensor]) -> None:
    """A plain state dict as safetensors (atomic), for another library to load."""
    from safetensors.torch import save

    atomic_write(path, lambda f: f.write(save({k: v.detach().cpu().contiguous().clone() for k, v in state.items()})))


def read_encoder(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(spec, state)`` of an exported encoder file (safetensors, or an older ``.pt``
    export) or of a run checkpoint; a one-line error for anything else."""
    p = Path(path)
    if not p.is_file():
        raise SelfSupError(f"{str(p)!r} not found; pass a run folder or an exported encoder")
    if is_torch_file(p):
        ckpt = load_checkpoint(p)
        return ckpt["encoder"], encoder_state(ckpt)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != ENCODER_FORMAT:
                raise SelfSupError(f"{str(p)!r} is a safetensors file without a selfsup encoder spec; load plain "
                                   "weights with --init")
            return json.loads(meta["encoder"]), {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        raise SelfSupError(f"cannot read {str(p)!r}: not a selfsup encoder or corrupt ({type(err).__name__})") from None


def is_selfsup_file(path: Path) -> bool:
    """True for a selfsup checkpoint or export (a safetensors file with the encoder spec,
    or a torch file with selfsup's ``format``)."""
    try:
        read_encoder(path)
        return True
    except SelfSupError:
        return False


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from safetensors or a torch file (``weights_only``; a dict under
    ``state_dict`` or ``model`` is unwrapped)."""
    p = Path(path)
    try:
        if not is_torch_file(p):
            from safetensors.torch import load_file

            return load_file(str(p))
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and torch raise many types for foreign files
        raise SelfSupError(f"cannot read weights from {str(p)!r} ({type(err).__name__}); give a safetensors file or "
                           "a torch state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SelfSupError(f"{str(p)!r} is not a state dict (a mapping of names to tensors)")
    return state


RESUME_KEYS = ("config", "step", "method_state", "optimizer", "scaler", "aug_rng", "torch_rng", "encoder")


def require_keys(ckpt: dict[str, Any], keys: tuple[str, ...], path: str | Path) -> dict[str, Any]:
    """``ckpt`` when it has every key in ``keys``, else a one-line error naming the first missing one."""
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise SelfSupError(f"the checkpoint {path} lacks {missing[0]!r}: written by another version or damaged; "
                           "it cannot be resumed")
    return ckpt


def encoder_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder's weights from a run checkpoint or an exported encoder."""
    key = "state_dict" if ckpt["format"] == ENCODER_FORMAT else "method_state"
    if not isinstance(ckpt.get(key), dict) or not isinstance(ckpt.get("encoder"), dict):
        raise SelfSupError(f"the checkpoint lacks {key if key not in ckpt else 'encoder'!r}: written by another "
                           "version or damaged")
    if key == "state_dict":
        return ckpt["state_dict"]
    prefix = "encoder."
    return {k[len(prefix):]: v for k, v in ckpt["method_state"].items() if k.startswith(prefix)}
