"""Label propagation over the encoder's kNN graph: the unlabelled pool as information.

With 10 to 100 labels, most of what is known about the classes is in the unlabelled
samples around them.  Zhou, Bousquet, Lal, Weston & Schölkopf, "Learning with Local and
Global Consistency" (NIPS 2003): with an affinity graph ``W`` (no self-loops), its
symmetric normalisation ``S = D^-1/2 W D^-1/2`` and the one-hot labels ``Y`` (zero rows
for unlabelled points), the propagated scores are ``F* = (1 - alpha) (I - alpha S)^-1 Y``
(the limit of ``F <- alpha S F + (1 - alpha) Y``) and each point takes ``argmax F*``;
``alpha = 0.99``.  The graph is the one Iscen, Tolias, Avrithis & Chum use on deep features
("Label Propagation for Deep Semi-supervised Learning", CVPR 2019, arXiv 1904.04717):
each point's ``k`` nearest neighbours by cosine similarity on L2-normalised features,
weighted ``max(0, cos)^gamma`` with ``gamma = 3``, symmetrised ``W + W^T``, and the linear
system solved by conjugate gradient (``I - alpha S`` is symmetric positive definite for
``alpha < 1``) rather than by iterating.  A point whose connected component holds no label
gets all-zero scores and is predicted as class 0.

:func:`propagation_accuracy` is transductive by default: the test points join the graph
unlabelled and are classified by the propagation itself (as both papers evaluate).  With
``transductive=False`` the labels are propagated over the training pool alone and each
test point is classified by weighted kNN (:mod:`selfsup.eval.knn`) over the propagated
training labels, as a new sample would be.

Example::

    >>> import torch
    >>> from selfsup.eval.propagation import propagate_labels
    >>> feats = torch.tensor([[1.0, 0.0], [0.9, 0.2], [0.8, 0.3], [0.0, 1.0], [0.2, 0.9], [0.3, 0.8]])
    >>> labels = torch.tensor([0, -1, -1, -1, -1, 1])  # one label per group
    >>> propagate_labels(feats, labels, k=2)[0]
    tensor([0, 0, 0, 1, 1, 1])
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.errors import SelfSupError
from selfsup.eval.knn import knn_predict


@torch.no_grad()
def knn_graph(feats: torch.Tensor, k: int = 20, gamma: float = 3.0, chunk: int = 4096) -> torch.Tensor:
    """The symmetric affinity matrix ``W + W^T`` (N, N) as a coalesced sparse tensor: ``W_ij =
    max(0, cos(x_i, x_j))^gamma`` for the ``k`` nearest neighbours j of i (i itself left out)."""
    x = F.normalize(feats.float(), dim=1)
    n = len(x)
    k = min(k, n - 1)
    if k < 1:
        return torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (n, n),
                                       check_invariants=True).coalesce()
    rows, cols, vals = [], [], []
    for s in range(0, n, chunk):
        sim = x[s:s + chunk] @ x.T  # (m, N)
        sim[torch.arange(len(sim)), torch.arange(s, s + len(sim))] = -math.inf  # no self-loops
        top, idx = sim.topk(k, dim=1)
        rows.append(torch.arange(s, s + len(sim)).repeat_interleave(k))
        cols.append(idx.flatten())
        vals.append(top.clamp_min(0).pow(gamma).flatten())
    r, c, v = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    w = torch.sparse_coo_tensor(torch.stack([torch.cat([r, c]), torch.cat([c, r])]), torch.cat([v, v]), (n, n),
                                check_invariants=True)
    return w.coalesce()


def _conjugate_gradient(matvec, b: torch.Tensor, tol: float, max_iter: int) -> tuple[torch.Tensor, int]:
    """Solve ``A X = B`` column by column for a symmetric positive definite ``A`` given as
    ``matvec``; stops when every column's residual is below ``tol`` times its right-hand side."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(0)
    target = tol * b.norm(dim=0)
    it = 0
    for it in range(1, max_iter + 1):
        ap = matvec(p)
        pap = (p * ap).sum(0)
        a = torch.where(pap > 0, rs / pap.clamp_min(1e-30), torch.zeros_like(rs))
        x += a * p
        r -= a * ap
        rs_new = (r * r).sum(0)
        if bool((rs_new.sqrt() <= target).all()):
            break
        p = r + torch.where(rs > 0, rs_new / rs.clamp_min(1e-30), torch.zeros_like(rs)) * p
        rs = rs_new
    return x, it


@torch.no_grad()
def propagate_labels(feats: torch.Tensor, labels: torch.Tensor, *, k: int = 20, alpha: float = 0.99,
                     gamma: float = 3.0, num_classes: int | None = None, tol: float = 1e-6,
                     max_iter: int = 200, graph: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zhou et al.'s propagation of ``labels`` (N,) (-1 = unlabelled) over the kNN graph of
    ``feats`` (N, D); returns ``(predictions (N,), scores F* (N, C))``.  Labelled points keep
    their propagated prediction, which is their own label unless the graph outvotes it.
    ``graph``: :func:`knn_graph` of ``feats`` computed before (several label sets, one graph)."""
    if not 0 < alpha < 1:
        raise SelfSupError(f"alpha must be in (0, 1) (the weight of the graph against the labels), got {alpha}")
    if not (isinstance(k, int) and k >= 1):
        raise SelfSupError(f"k must be a whole number of neighbours, at least 1, got {k}")
    labels = torch.as_tensor(labels).long()
    if len(labels) != len(feats):
        raise SelfSupError(f"{len(labels)} labels for {len(feats)} feature rows")
    known = labels >= 0
    if not bool(known.any()):
        raise SelfSupError("label propagation needs at least one labelled point (labels >= 0)")
    c = int(num_classes or int(labels.max()) + 1)
    y = torch.zeros(len(labels), c, dtype=torch.float64)
    y[known, labels[known]] = 1.0
    w = knn_graph(feats, k, gamma) if graph is None else graph
    if w.shape != (len(labels), len(labels)):
        raise SelfSupError(f"the graph is {tuple(w.shape)}; {len(labels)} points need ({len(labels)}, {len(labels)})")
    deg = torch.zeros(len(labels), dtype=torch.float64)
    deg.index_add_(0, w.indices()[0], w.values().double())
    inv_sqrt = torch.where(deg > 0, deg.clamp_min(1e-30).rsqrt(), torch.zeros_like(deg))
    w = w.double()

    def matvec(v: torch.Tensor) -> torch.Tensor:  # (I - alpha S) v, S = D^-1/2 W D^-1/2
        return v - alpha * inv_sqrt[:, None] * torch.sparse.mm(w, inv_sqrt[:, None] * v)

    f, _ = _conjugate_gradient(matvec, y, tol, max_iter)
    f = (1 - alpha) * f
    return f.argmax(1), f.float()


def propagation_accuracy(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                         test_labels: torch.Tensor, *, k: int = 20, alpha: float = 0.99, gamma: float = 3.0,
                         transductive: bool = True, num_classes: int | None = None,
                         graph: torch.Tensor | None = None) -> float:
    """Test accuracy of label propagation from ``train_labels`` (-1 = unlabelled): the test
    points propagated over the graph of train + test (``transductive``, the default), or
    classified by weighted kNN (k=20, T=0.07) over the labels propagated within the
    training pool.  ``graph``: that graph (train + test, or train alone), computed before."""
    train_labels, test_labels = torch.as_tensor(train_labels).long(), torch.as_tensor(test_labels).long()
    c = int(num_classes or max(int(train_labels.max()), int(test_labels.max())) + 1)
    if transductive:
        feats = torch.cat([train_feats.float(), test_feats.float()])
        labels = torch.cat([train_labels, torch.full((len(test_feats),), -1, dtype=torch.long)])
        pred = propagate_labels(feats, labels, k=k, alpha=alpha, gamma=gamma, num_classes=c,
                                graph=graph)[0][len(train_feats):]
    else:
        pooled = propagate_labels(train_feats, train_labels, k=k, alpha=alpha, gamma=gamma, num_classes=c,
                                  graph=graph)[0]
        pred = knn_predict(train_feats, pooled, test_feats, num_classes=c)
    return (pred == test_labels).float().mean().item()
