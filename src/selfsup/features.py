"""Frozen-backbone feature extraction: the one entry point every evaluation uses."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``module`` in eval mode (BatchNorm running statistics, no dropout),
    then put it back in the mode it was in, also when the block raises."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def extract_features(encoder: nn.Module, images: np.ndarray, *, batch_size: int = 512,
                     device: torch.device | str | None = None, progress: bool = False) -> torch.Tensor:
    """Representations ``h`` of ``images`` (N, H, W, C) uint8 as a float32 CPU tensor (N, D).

    The encoder runs in eval mode (BatchNorm running statistics) and is put back in the
    mode it was in.
    """
    if device is None:
        device = next(encoder.parameters()).device
    out = []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="features", unit="batch", leave=False)
    with eval_mode(encoder):
        for s in starts:
            x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255)  # (B, C, H, W) in [0, 1]
            out.append(encoder(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, getattr(encoder, "num_features", 0))
