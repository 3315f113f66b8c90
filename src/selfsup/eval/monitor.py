"""The online monitor: is the encoder learning anything, measured while it trains.

Every ``train.monitor_every`` epochs the engine hands the encoder to
:meth:`OnlineMonitor.measure`, which embeds a fixed sample of at most
``train.monitor_samples`` training images (eval mode, the training's precision) and
reports:

* ``knn_monitor`` (labelled sources only): leave-one-out weighted kNN accuracy (k=20,
  T=0.07, :mod:`selfsup.eval.knn`) of those images against each other -- every image is
  classified by the *others*, so none is its own neighbour.  Labels are only read here,
  never by the method.  ``knn_random_init`` is the same number for the same backbone
  freshly initialised (seed of the run), measured once at the start: a method that
  learns must beat it.
* ``eff_rank``: effective rank of the embeddings (exp entropy of the normalised singular
  values; :func:`selfsup.eval.diagnostics.compactness.effective_rank`), and
  ``eff_rank_random_init``: a label-free collapse signal (dimensional collapse drives it
  towards 1);
* ``cka_random_init``: linear CKA (Kornblith et al. 2019) between the embeddings and those
  of the random initialisation, label-free: 1 while the representation is still the
  random one (up to rotation and scale).

A warning is raised (once) when, from epoch ``WARN_AFTER`` on, kNN is not above random
init by more than the sampling noise of the estimate (two binomial standard errors, at
least ``MIN_MARGIN``), or the effective rank has fallen under ``RANK_FLOOR`` of random
init's.  When kNN climbs back above random init later, the monitor says so.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.data import SampleSet
from selfsup.data.python import as_samples
from selfsup.data.splits import stratified_subset
from selfsup.eval.diagnostics.compactness import effective_rank
from selfsup.eval.features import extract_features

WARN_AFTER = 3       # epochs before a "not learning" warning can fire
MIN_MARGIN = 0.02    # kNN must beat random init by at least this much (accuracy)
RANK_FLOOR = 0.25    # effective rank below this fraction of random init's: dimensional collapse


@torch.no_grad()
def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment of two embeddings of the same samples, (N, D1) and (N, D2)."""
    x, y = x.double() - x.double().mean(0), y.double() - y.double().mean(0)
    cross = (x.T @ y).square().sum()
    return (cross / ((x.T @ x).square().sum().sqrt() * (y.T @ y).square().sum().sqrt()).clamp_min(1e-30)).item()


@torch.no_grad()
def knn_leave_one_out(feats: torch.Tensor, labels: torch.Tensor, *, k: int = 20,
                      temperature: float = 0.07) -> float:
    """Weighted kNN accuracy of every row of ``feats`` (N, D) against all the *other* rows."""
    z = F.normalize(feats.float(), dim=1)
    labels = labels.long()
    c = int(labels.max()) + 1
    sims = z @ z.T  # (N, N)
    sims.fill_diagonal_(-math.inf)  # an image is not its own neighbour
    top, idx = sims.topk(min(k, len(z) - 1), dim=1)  # (N, k)
    votes = torch.zeros(len(z), c).scatter_add_(1, labels[idx], (top / temperature).exp())
    return (votes.argmax(1) == labels).float().mean().item()


class OnlineMonitor:
    """Measures an encoder on a fixed sample of the training data (see the module docs)."""

    def __init__(self, data: Any, random_init: torch.nn.Module, *, samples: int = 1000, seed: int = 0,
                 amp: bool = True):
        data = as_samples(data)
        n = len(data)
        if data.has_labels:
            labels = np.asarray(data.labels)
            idx = stratified_subset(labels, min(1.0, samples / n), seed)[:samples]
        else:
            idx = np.sort(np.random.default_rng(seed).permutation(n)[:samples])
        self.samples: SampleSet = data.subset(idx)
        self.labels = torch.from_numpy(np.asarray(self.samples.labels)) if data.has_labels else None
        self.amp = amp
        self.warned = False
        self.random_feats = None
        self.baseline = self._measure(random_init)  # the same backbone at random initialisation

    @property
    def margin(self) -> float:
        p = self.baseline.get("knn_monitor", 0.0)
        return max(MIN_MARGIN, 2 * math.sqrt(p * (1 - p) / len(self.samples)))

    def _measure(self, encoder: torch.nn.Module) -> dict[str, float]:
        feats = extract_features(encoder, self.samples, amp=self.amp)  # (n, D)
        if self.random_feats is None:
            self.random_feats = feats
        out = {"eff_rank": effective_rank(feats.numpy()), "cka_random_init": linear_cka(feats, self.random_feats),
               "monitor_samples": len(self.samples)}
        if self.labels is not None:
            out["knn_monitor"] = knn_leave_one_out(feats, self.labels)
        return out

    def measure(self, encoder: torch.nn.Module, epoch: float) -> tuple[dict[str, float], str | None]:
        """The metrics of ``encoder`` after ``epoch`` epochs, and a message worth printing (or None)."""
        now = self._measure(encoder)
        base = self.baseline
        metrics = {**now, "eff_rank_random_init": base["eff_rank"]}
        if "knn_monitor" in base:
            metrics["knn_random_init"] = base["knn_monitor"]
        learning = "knn_monitor" not in now or now["knn_monitor"] > base["knn_monitor"] + self.margin
        collapsed = now["eff_rank"] < RANK_FLOOR * base["eff_rank"]
        if self.warned and learning and not collapsed:
            self.warned = False
            return metrics, (f"online kNN {now['knn_monitor']:.3f} is now above random init "
                             f"({base['knn_monitor']:.3f})" if "knn_monitor" in now else None)
        if self.warned or epoch < WARN_AFTER or (learning and not collapsed):
            return metrics, None
        self.warned = True
        if collapsed:
            return metrics, (f"dimensional collapse suspected after {epoch:g} epochs: the embeddings' effective "
                             f"rank is {now['eff_rank']:.1f} against {base['eff_rank']:.1f} at random init")
        return metrics, (f"not learning after {epoch:g} epochs: online kNN {now['knn_monitor']:.3f} is not above "
                         f"the same backbone at random init ({base['knn_monitor']:.3f} +- {self.margin:.3f} on "
                         f"{len(self.samples)} training images); check the method's recipe (views, lr, "
                         "momentum) before training longer")
