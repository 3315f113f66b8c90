"""Frozen-backbone feature extraction: the one entry point every evaluation uses.

kNN, the linear probe, fine-tuning's probe, the label-efficiency study, the online
monitor, the diagnostics' clean embeddings and ``embed`` all read their features through
:func:`extract_features`, so eval mode, precision, memory layout and sharding across
processes are decided in one place and every evaluation of an encoder sees the same
numbers.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from selfsup import distributed
from selfsup.data import to_input
from selfsup.data.loader import Loader
from selfsup.data.python import as_samples
from selfsup.models import eval_mode
from selfsup.models.runtime import choose_precision, fast_layout, keep_freed_memory


@torch.no_grad()
def extract_features(encoder: nn.Module, data, *, batch_size: int = 512,
                     device: torch.device | str | None = None, progress: bool = False,
                     out: np.ndarray | None = None, amp: bool = True) -> torch.Tensor:
    """Representations ``h`` of every sample of ``data`` (an ImageSet, or a (N, H, W, C)
    uint8 array), in order, as a float32 CPU tensor (N, D).

    The samples are read in batches (memory holds one batch of images, not the set).
    With ``out`` (an (N, D) float32 array, e.g. a memory-mapped ``.npy``) the features are
    written there batch by batch and ``out`` is returned as a tensor view.  The encoder
    runs in eval mode (BatchNorm running statistics) and is put back in the mode it was in,
    on the training's fast path (:mod:`selfsup.models.runtime`: bf16 autocast where the
    hardware has it unless ``amp`` is False, channels-last convolutions).
    """
    samples = as_samples(data)
    if device is None:
        device = next(encoder.parameters()).device
    device = torch.device(device)
    precision = choose_precision(device, amp)
    fast_layout(encoder, device)
    if device.type == "cpu":
        keep_freed_memory()
    world = distributed.current()
    loader = Loader(samples, batch_size, shuffle=False, drop_last=False, pin_memory=device.type == "cuda",
                    rank=world.rank, world_size=world.world_size)  # under torchrun each rank reads its shard
    batches = loader.epoch()
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=loader.steps_per_epoch, desc="features", unit="batch", leave=False)
    parts, seen = [], []
    with eval_mode(encoder), precision.autocast():
        for idx, images in batches:
            h = encoder(to_input(images, device)).float().cpu()  # (B, D)
            if out is None or world.distributed:
                parts.append(h)
                seen.append(idx)
            else:
                out[idx] = h.numpy()
    if world.distributed:  # every rank's shard, to every rank, in sample order
        shards = [None] * world.world_size
        dist.all_gather_object(shards, (np.concatenate(seen) if seen else np.zeros(0, np.int64),
                                        torch.cat(parts) if parts else torch.zeros(0, encoder.num_features)))
        feats = torch.zeros(len(samples), encoder.num_features)
        for idx, h in shards:
            feats[torch.from_numpy(idx)] = h
        if out is None:
            return feats
        out[:] = feats.numpy()
    if out is not None:
        return torch.from_numpy(np.asarray(out))
    return torch.cat(parts) if parts else torch.zeros(0, getattr(encoder, "num_features", 0))
