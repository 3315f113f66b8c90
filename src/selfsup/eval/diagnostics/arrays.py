"""Embeddings as arrays: the conversions every diagnostic shares."""
from __future__ import annotations

import numpy as np
import torch


def as_array(z) -> np.ndarray:
    """Embeddings as a float64 numpy array (torch tensors are detached and moved to CPU)."""
    if isinstance(z, torch.Tensor):
        z = z.detach().cpu().double().numpy()
    return np.asarray(z, dtype=np.float64)


def _normalize_rows(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
