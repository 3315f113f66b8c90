"""Stratified label splits: validation hold-outs and few-label subsets (never the test split)."""
from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out): ``fraction`` of each class held out, at least one kept."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        held.append(idx[:min(int(round(fraction * len(idx))), len(idx) - 1)])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=int)
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out


def smallest_class_to_split(fraction: float) -> int:
    """The fewest images a class needs for :func:`stratified_split` to hold one out."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    n = 2
    while min(int(round(fraction * n)), n - 1) < 1:
        n += 1
    return n


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``fraction`` of each class (at least one per class)."""
    if fraction >= 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        picked.append(idx[:max(1, int(round(fraction * len(idx))))])
    return np.sort(np.concatenate(picked))
