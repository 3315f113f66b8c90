"""Compactness and collapse: how many directions the embeddings really use, and whether
all inputs map to (nearly) one point or one line."""
from __future__ import annotations

import numpy as np
import torch

from selfsup.eval.diagnostics.arrays import _normalize_rows, as_array
from selfsup.methods.base import COLLAPSE_STD, normalized_std

def singular_values(z) -> np.ndarray:
    """Singular values of the centred embedding matrix (N, D), largest first."""
    z = as_array(z)
    return np.linalg.svd(z - z.mean(0), compute_uv=False)


def effective_rank(z) -> float:
    """Effective rank (Roy & Vetterli, "The effective rank: a measure of effective
    dimensionality", EUSIPCO 2007): ``exp(H(p))`` with ``p = s / sum(s)`` the normalised
    singular values of the centred embeddings and ``H`` the Shannon entropy in nats.
    Between 1 and ``min(N, D)``; exactly ``k`` when ``k`` singular values are equal and the
    rest zero.  0 for embeddings that are all the same point.  RankMe (Garrido et al. 2022,
    arXiv 2210.02313) finds it tracks downstream accuracy of self-supervised features.

    Example: the 4 corners of a simplex span 3 directions once centred::

        >>> import numpy as np
        >>> from selfsup.eval.diagnostics.compactness import effective_rank
        >>> round(effective_rank(np.eye(4)), 6)
        3.0
    """
    s = singular_values(z)
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def dims_for_variance(z, fraction: float = 0.9) -> int:
    """The number of principal components that together hold ``fraction`` of the total
    variance (the smallest ``m`` with ``sum(s[:m]**2) >= fraction * sum(s**2)``)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    var = singular_values(z) ** 2
    if var.sum() <= 0:
        return 0
    cum = np.cumsum(var) / var.sum()
    return int(min(np.searchsorted(cum, fraction - 1e-12) + 1, len(var)))


def per_dim_std(z) -> dict[str, float]:
    """Standard deviation of each dimension of the L2-normalised embeddings, over samples.

    Returns its ``mean`` and ``min`` over dimensions, and ``z_std = mean * sqrt(D)``
    (:func:`selfsup.methods.base.normalized_std`, SimSiam's collapse diagnostic): about 1
    when the embeddings spread evenly over the sphere, 0 when they all point one way.
    """
    z = as_array(z)
    std = _normalize_rows(z).std(axis=0, ddof=1)  # (D,), unbiased like torch.std
    return {"mean": float(std.mean()), "min": float(std.min()),
            "z_std": normalized_std(torch.from_numpy(z))}


def collapse_flag(z) -> bool:
    """True when the embeddings look collapsed: ``z_std`` (see :func:`per_dim_std`) below
    :data:`selfsup.methods.base.COLLAPSE_STD` (complete collapse: one point) or an effective
    rank below 2 (dimensional collapse: one line)."""
    return normalized_std(torch.from_numpy(as_array(z))) < COLLAPSE_STD or effective_rank(z) < 2
