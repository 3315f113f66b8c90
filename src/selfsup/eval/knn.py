"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu, Xiong, Yu & Lin, "Unsupervised Feature Learning via Non-Parametric
Instance Discrimination" (CVPR 2018, arXiv 1805.01978), as DINO evaluates with it (Caron
et al. 2021, arXiv 2104.14294).  It needs no training and no hyper-parameter search, so it
measures the features themselves, cheaply enough to run during training.

Features are L2-normalised; each test point takes its ``k`` most cosine-similar training
points, which vote for their class with weight ``exp(sim / T)``.  Defaults k=20,
T=0.07 (DINO); MoCo's CIFAR monitor uses k=200, T=0.1.  Works for any number of test
points, for fewer training points than ``k``, for features of any float dtype and on
any device (the votes are counted where the training features are; predictions come
back on the CPU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, *,
                k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
                chunk: int = 1024) -> torch.Tensor:
    """Predicted labels ``(M,)`` for ``test_feats`` (M, D) from ``train_feats`` (N, D).

    Example::

        >>> import torch
        >>> from selfsup.eval.knn import knn_predict
        >>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> labels = torch.tensor([0, 0, 1, 1])
        >>> knn_predict(train, labels, torch.tensor([[1.0, 0.2], [0.2, 1.0]]), k=2)
        tensor([0, 1])
    """
    train = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.long().to(train.device)
    c = int(num_classes or int(labels.max()) + 1)
    k = min(k, len(train))
    preds = []
    for s in range(0, len(test_feats), chunk):
        q = F.normalize(test_feats[s:s + chunk].float().to(train.device), dim=1)
        sims, idx = (q @ train.T).topk(k, dim=1)  # (m, k)
        weights = (sims / temperature).exp()
        votes = torch.zeros(len(q), c, dtype=weights.dtype, device=weights.device)
        votes.scatter_add_(1, labels[idx], weights)  # (m, c)
        preds.append(votes.argmax(dim=1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, **kw) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``test_labels`` (``kw``: k, temperature, ...)."""
    pred = knn_predict(train_feats, train_labels, test_feats, **kw)
    return (pred == test_labels.long()).float().mean().item()
