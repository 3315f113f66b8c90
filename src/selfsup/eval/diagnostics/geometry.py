"""Alignment and uniformity of the embeddings on the sphere.

Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere" (ICML 2020, arXiv 2005.10242): a contrastive loss
optimises two things at once, views of one image close together (alignment) and all
images spread over the sphere (uniformity); measuring them apart says which of the two a
representation lacks.
"""
from __future__ import annotations

import numpy as np

from selfsup.eval.diagnostics.arrays import _normalize_rows, as_array

def alignment(z1, z2, alpha: float = 2) -> float:
    """Alignment (Wang & Isola 2020): ``E ||f(x) - f(y)||^alpha`` over positive pairs
    ``(x, y)``, rows ``i`` of ``z1`` and ``z2``, after L2 normalisation.  0 when every
    pair maps to the same point; at most ``2**alpha``.

    Example: orthogonal unit vectors are sqrt(2) apart, so alpha = 2 gives 2::

        >>> import numpy as np
        >>> from selfsup.eval.diagnostics.geometry import alignment
        >>> round(alignment(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])), 6)
        2.0
    """
    a, b = _normalize_rows(as_array(z1)), _normalize_rows(as_array(z2))
    if a.shape != b.shape:
        raise ValueError(f"positive pairs need equal shapes, got {a.shape} and {b.shape}")
    return float((np.linalg.norm(a - b, axis=1) ** alpha).mean())


def relative_alignment(z1, z2, *, seed: int = 0) -> float:
    """Alignment divided by the same mean squared distance between views of *different*
    samples (row i of ``z1`` against a random other row of ``z2``), after L2 normalisation.

    Lower is better: 0 when the two views of every sample coincide, about 1 when views of
    one sample are no closer than views of two samples.  Unlike :func:`alignment` it does
    not reward collapse: shrinking every embedding towards one point leaves it unchanged.
    """
    a, b = _normalize_rows(as_array(z1)), _normalize_rows(as_array(z2))
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"positive pairs need equal shapes with at least 2 rows, got {a.shape} and {b.shape}")
    n = len(a)
    other = (np.arange(n) + np.random.default_rng(seed).integers(1, n, n)) % n  # never the same row
    positive = (np.linalg.norm(a - b, axis=1) ** 2).mean()
    negative = (np.linalg.norm(a - b[other], axis=1) ** 2).mean()
    return float(positive / max(negative, 1e-12))


def uniformity(z, t: float = 2, *, max_pairs: int = 200_000, seed: int = 0) -> float:
    """Uniformity (Wang & Isola 2020): ``log E exp(-t ||f(x) - f(y)||^2)`` over pairs of
    distinct samples, after L2 normalisation.  0 (its maximum) for a collapsed set; more
    negative the more evenly the points cover the sphere.  All pairs are used when there
    are at most ``max_pairs`` of them, else ``max_pairs`` random pairs."""
    z = _normalize_rows(as_array(z))
    n = len(z)
    if n < 2:
        raise ValueError("uniformity needs at least two samples")
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, max_pairs)
        j = (i + rng.integers(1, n, max_pairs)) % n  # never equal to i
    d2 = np.concatenate([2 - 2 * np.einsum("pd,pd->p", z[i[s:s + 8192]], z[j[s:s + 8192]])
                         for s in range(0, len(i), 8192)])  # ||a - b||^2 of unit rows, in chunks
    x = -t * np.maximum(d2, 0.0)
    m = x.max()
    return float(m + np.log(np.exp(x - m).mean()))  # log-mean-exp, stable
