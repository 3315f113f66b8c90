"""Linear probe on frozen features.

Protocol: features standardised with the training set's per-dimension mean and std
(a non-affine BatchNorm before the classifier, as in MAE's probe: He et al. 2021, arXiv
2111.06377, Appendix A), so that features of any scale are treated alike; then
multinomial logistic regression fitted to convergence by full-batch L-BFGS on
``mean cross-entropy + l2/2 * ||W||^2`` (no penalty on the bias).  This is the objective
of scikit-learn's ``LogisticRegression`` with ``C = 1 / (l2 * N)``.  ``l2`` is chosen on a
stratified validation split carved from the training labels -- never on the test split
-- then the probe is refitted on all training labels.  A convex objective solved to
convergence leaves no learning rate or epoch count to tune, so two encoders are compared
on their features alone.

Example (a label that is the sign of the first feature)::

    >>> import torch
    >>> from selfsup.eval.linear import linear_probe_accuracy
    >>> feats = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    >>> labels = (feats[:, 0] > 0).long()
    >>> round(linear_probe_accuracy(feats[:150], labels[:150], feats[150:], labels[150:]), 2)
    0.98
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.data.splits import stratified_split

L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclass
class LinearProbe:
    mean: torch.Tensor    # (D,)
    std: torch.Tensor     # (D,)
    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor    # (C,)
    l2: float

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return ((feats.float() - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        return self.logits(feats).argmax(dim=1)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float,
                 max_iter: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise mean CE + l2/2 ||W||^2 over (W, b) with L-BFGS; x is already standardised."""
    x64, y = x.double(), y.long()
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x64 @ w.T + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().float(), b.detach().float()


def train_linear_probe(feats: torch.Tensor, labels: torch.Tensor, *, num_classes: int | None = None,
                       l2: float | None = None, val_fraction: float = 0.2, seed: int = 0) -> LinearProbe:
    """Fit a probe; with ``l2=None`` pick it from :data:`L2_GRID` on a validation split."""
    feats, labels = feats.float(), labels.long()
    c = int(num_classes or int(labels.max()) + 1)
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    x = (feats - mean) / std
    if l2 is None:
        kept, val = stratified_split(labels.numpy(), val_fraction, seed)
        if len(val) == 0:  # too few labels to hold any out: use the middle of the grid
            l2 = L2_GRID[len(L2_GRID) // 2]
        else:
            scores = []
            for cand in L2_GRID:
                w, b = fit_logistic(x[kept], labels[kept], c, cand)
                scores.append(((x[val] @ w.T + b).argmax(1) == labels[val]).float().mean().item())
            l2 = L2_GRID[int(np.argmax(scores))]
    w, b = fit_logistic(x, labels, c, l2)
    return LinearProbe(mean, std, w, b, l2)


def linear_probe_accuracy(train_feats, train_labels, test_feats, test_labels, **kw) -> float:
    """Test accuracy of a probe fitted by :func:`train_linear_probe` (``kw`` go to it)."""
    probe = train_linear_probe(train_feats, train_labels, **kw)
    return (probe.predict(test_feats) == test_labels.long()).float().mean().item()
