"""The online monitor: is the encoder learning anything, measured while it trains.

A falling loss does not show that the representation improves: a method can lower its
loss while its features stay at, or fall below, what a random network gives (MoCo with a
fast key encoder does, see :mod:`selfsup.methods.moco`).  The monitor compares the
encoder with its own random initialisation, so a run that is not learning is flagged
while it runs instead of after it.

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
  values, Roy & Vetterli 2007, as RankMe uses it to judge self-supervised features,
  Garrido et al. 2022, arXiv 2210.02313;
  :func:`selfsup.eval.diagnostics.compactness.effective_rank`), and
  ``eff_rank_random_init``: a label-free collapse signal (dimensional collapse drives it
  towards 1);
* ``cka_random_init``: linear CKA (Kornblith, Norouzi, Lee & Hinton, "Similarity of Neural
  Network Representations Revisited", ICML 2019, arXiv 1905.00414) between the embeddings
  and those of the random initialisation, label-free: 1 while the representation is still
  the random one (up to rotation and scale).

A check *fails* when kNN is not above random init by more than the sampling noise of the
estimate (two binomial standard errors, at least ``MIN_MARGIN``), or when the effective
rank has fallen under ``RANK_FLOOR`` of random init's (:func:`failing`).  A warning is
printed (once) after ``WARN_CHECKS`` failing checks in a row, from epoch
``max(WARN_AFTER, WARN_FRACTION * epochs)`` on -- slow starters (MoCo, DINO) are often
still at random init after 3 epochs and learn later; when kNN climbs back above random
init, the monitor says so.  The rule was chosen by replaying the runs of
``benchmarks/bench_methods.py``: it warned on every run whose final kNN on the test split
did not clear random init, and on the runs that did only when they ended close to it,
where warning on the first failing check from epoch 3 on also warned on many runs that
learned well (the replay's counts are in ``docs/results.md``).
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

WARN_AFTER = 3       # no warning before this epoch ...
WARN_FRACTION = 0.3  # ... nor before this fraction of the run's epochs
WARN_CHECKS = 2      # failing checks in a row before a warning
MIN_MARGIN = 0.02    # kNN must beat random init by at least this much (accuracy)
RANK_FLOOR = 0.25    # effective rank below this fraction of random init's: dimensional collapse


def knn_margin(random_init: float, samples: int) -> float:
    """How far kNN must be above ``random_init`` to count: two binomial standard errors, at least ``MIN_MARGIN``."""
    return max(MIN_MARGIN, 2 * math.sqrt(random_init * (1 - random_init) / samples))


def failing(check: dict[str, float]) -> str | None:
    """Why one check's metrics (``measure``'s, with their ``*_random_init``) fail, or None."""
    if check["eff_rank"] < RANK_FLOOR * check["eff_rank_random_init"]:
        return "collapse"
    if "knn_monitor" in check and check["knn_monitor"] <= check["knn_random_init"] + knn_margin(
            check["knn_random_init"], check["monitor_samples"]):
        return "not learning"
    return None


def warn_from(epochs: int) -> float:
    """The first epoch at which a run of ``epochs`` epochs may be warned."""
    return max(WARN_AFTER, WARN_FRACTION * epochs)


def warning_due(in_row: int, epoch: float, epochs: int) -> bool:
    """The rule: ``WARN_CHECKS`` failing checks in a row, from epoch :func:`warn_from` on."""
    return in_row >= WARN_CHECKS and epoch >= warn_from(epochs)


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

    def __init__(self, data: Any, random_init: torch.nn.Module, *, epochs: int, samples: int = 1000,
                 seed: int = 0, amp: bool = True):
        data = as_samples(data)
        n = len(data)
        if data.has_labels:
            labels = np.asarray(data.labels)
            idx = stratified_subset(labels, min(1.0, samples / n), seed)[:samples]
        else:
            idx = np.sort(np.random.default_rng(seed).permutation(n)[:samples])
        self.samples: SampleSet = data.subset(idx)
        self.labels = torch.from_numpy(np.asarray(self.samples.labels)) if data.has_labels else None
        self.amp, self.epochs = amp, epochs
        self.warned, self.in_row = False, 0
        self.random_feats = None
        self.baseline = self._measure(random_init)  # the same backbone at random initialisation

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
        reason = failing(metrics)
        self.in_row = self.in_row + 1 if reason else 0
        if self.warned and reason is None:
            self.warned = False
            return metrics, (f"online kNN {now['knn_monitor']:.3f} is now above random init "
                             f"({base['knn_monitor']:.3f})" if "knn_monitor" in now else None)
        if self.warned or reason is None or not warning_due(self.in_row, epoch, self.epochs):
            return metrics, None
        self.warned = True
        if reason == "collapse":
            return metrics, (f"dimensional collapse suspected after {epoch:g} epochs: the embeddings' effective "
                             f"rank is {now['eff_rank']:.1f} against {base['eff_rank']:.1f} at random init")
        margin = knn_margin(base["knn_monitor"], len(self.samples))
        return metrics, (f"not learning after {epoch:g} epochs: online kNN {now['knn_monitor']:.3f} is not above "
                         f"the same backbone at random init ({base['knn_monitor']:.3f} +- {margin:.3f} on "
                         f"{len(self.samples)} training images); check the method's recipe (views, lr, "
                         "momentum) before training longer")
