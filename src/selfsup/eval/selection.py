"""Which samples to label: choosing a labelling budget from the embeddings alone.

With a pool of unlabelled samples and budget for N labels, which N matter most at small
budgets.  Every strategy here reads only the pool's features -- never a label -- so a
selection can be compared with the labels it would buy (the label-efficiency study) and
is the same whether the pool has labels or not.  Features are L2-normalised first, so
distances are Euclidean between unit vectors (``||a - b||^2 = 2 - 2 cos(a, b)``).

Strategies (the :data:`SELECTIONS` registry):

- ``typiclust`` -- Hacohen, Dekel & Weinshall, "Active Learning on a Budget: Opposite
  Strategies Suit High and Low Budgets" (ICML 2022, arXiv 2202.02794): k-means into
  ``labelled + budget`` clusters (at most 500, as the authors' code caps them); from the
  largest cluster that holds no labelled or chosen point yet, the most *typical* point,
  typicality ``= 1 / (mean Euclidean distance to its K = min(20, |cluster| // 2) nearest
  neighbours within the cluster)`` (the paper's definition; the authors' code adds 1e-5 to
  the mean, as here).  Clusters under 5 points are skipped while larger ones are free.
- ``probcover`` -- Yehuda, Dekel, Hacohen & Weinshall, "Active Learning Through a Covering
  Lens" (NeurIPS 2022, arXiv 2205.11320): the delta-ball graph (an edge where two points
  are closer than ``delta``), then greedy maximum coverage: repeatedly the point whose ball
  holds the most points not yet covered by a labelled or chosen point's ball.  ``delta``
  defaults to the paper's purity heuristic: the largest delta for which at least 95% of the
  balls are *pure* -- hold one k-means pseudo-label only, with as many pseudo-classes as
  ``labelled + budget`` (the paper uses the number of classes, which a user does not know
  before labelling).  A ball around x is pure exactly when delta is at most the distance
  from x to its nearest point of another pseudo-label, so that delta is the 5% quantile of
  this distance over the points (estimated on 2,000 of them).  Once everything is covered,
  the rest of the budget is drawn at random.
- ``kcenter`` -- Sener & Savarese, "Active Learning for Convolutional Neural Networks: A
  Core-Set Approach" (ICLR 2018, arXiv 1708.00489), k-Center-Greedy: repeatedly the point
  farthest from every labelled and chosen point (the first at random when nothing is
  labelled); its covering radius is at most twice the optimal one.  It reaches for
  outliers, which is what hurts it at low budgets.
- ``random`` -- a uniform draw without replacement and without stratification: what a user
  gets without labels to stratify by.

Scale: features may be a numpy memmap larger than memory (``np.load(path, mmap_mode="r")``);
every pass reads :data:`CHUNK` rows at a time.  k-means is Lloyd's with k-means++ seeding
(Arthur & Vassilvitskii 2007) up to ``minibatch_above`` samples and mini-batch k-means
(Sculley 2010) beyond.  TypiClust's typicality is exact for clusters of up to
``exact_limit`` points; in a larger cluster the 256 candidates most typical against a
random sample of 2,048 of its points get their exact typicality over the whole cluster, and
the best of those is taken.  ProbCover's graph costs a pass over all pairs (``N^2``) and
memory for its edges; k-center reads the pool once per pick.

Example::

    >>> import numpy as np
    >>> from selfsup.eval.selection import select_samples
    >>> rng = np.random.default_rng(0)
    >>> centres = np.eye(4, 16) * 10
    >>> pool = np.concatenate([c + rng.normal(size=(50, 16)) for c in centres])  # 4 blobs of 50
    >>> res = select_samples("typiclust", pool, 4, seed=0)
    >>> sorted((res.indices // 50).tolist())  # one sample from each blob
    [0, 1, 2, 3]
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from selfsup.config import coerce
from selfsup.errors import SelfSupError
from selfsup.registry import Registry, no_option

SELECTIONS = Registry("selection strategy")

CHUNK = 8192  # rows of the pool read, normalised and compared at once


@dataclass
class SelectionResult:
    """What :func:`select_samples` chose, in the order chosen (rank 1 first)."""

    indices: np.ndarray  # (B,) int64 rows of the pool
    cluster: np.ndarray  # (B,) int64: the pick's k-means cluster (TypiClust) or pseudo-class (ProbCover); -1 if none
    score: np.ndarray  # (B,) float64: typicality, points newly covered, or distance to the nearest centre; NaN if none
    info: dict[str, Any] = field(default_factory=dict)  # the strategy, its settings and what it measured


# ----------------------------------------------------------------------------- the pool


class Pool:
    """The pool's features, L2-normalised, read by rows or in chunks of :data:`CHUNK`.

    A torch tensor or an in-memory numpy array is normalised once and kept; a numpy
    memmap (or any other array-like) is read and normalised chunk by chunk on every pass,
    so memory never holds more than a chunk of it."""

    def __init__(self, features: Any, chunk: int | None = None):
        if isinstance(features, torch.Tensor) or type(features) is np.ndarray:
            x = torch.as_tensor(features).detach().cpu()
            if x.ndim != 2:
                raise SelfSupError(f"features must be (N, D), got shape {tuple(x.shape)}")
            self._all: torch.Tensor | None = _normalise(x)
            self._store = None
        else:
            if len(getattr(features, "shape", ())) != 2:
                raise SelfSupError(f"features must be (N, D), got shape {getattr(features, 'shape', None)}")
            self._all, self._store = None, features
        self.n, self.d = int(features.shape[0]), int(features.shape[1])
        self.chunk = chunk or CHUNK

    def rows(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` (integer indices), normalised, (len(idx), D) float32."""
        idx = np.asarray(idx, dtype=np.int64)
        if self._all is not None:
            return self._all[torch.from_numpy(idx)]
        order = np.argsort(idx, kind="stable")  # a memmap reads sorted rows faster
        x = np.empty((len(idx), self.d), dtype=np.float32)
        x[order] = self._store[idx[order]]
        return _normalise(torch.from_numpy(x))

    def span(self, start: int, stop: int) -> torch.Tensor:
        if self._all is not None:
            return self._all[start:stop]
        return _normalise(torch.from_numpy(np.array(self._store[start:stop], dtype=np.float32)))

    def chunks(self, size: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, rows start..start+size)`` over the whole pool."""
        size = size or self.chunk
        for s in range(0, self.n, size):
            yield s, self.span(s, min(s + size, self.n))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    norms = x.norm(dim=1, keepdim=True)  # NaN or infinite wherever a row holds one
    if not bool(torch.isfinite(norms).all()):
        raise SelfSupError("the features hold NaN or infinite values; check the encoder (a diverged run?)")
    return x / norms.clamp_min(1e-12)


def _sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (len(a), len(b)) between unit rows."""
    return (2 - 2 * (a @ b.T)).clamp_min_(0)


def _distance(sim: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between unit vectors from their cosine similarity."""
    return (2 - 2 * sim).clamp_min(0).sqrt()


def _sq_dist_centres(x: torch.Tensor, centres: torch.Tensor, centre_sq: torch.Tensor) -> torch.Tensor:
    """Squared distances from unit rows ``x`` to arbitrary ``centres`` (their squared norms given)."""
    return (1 + centre_sq[None, :] - 2 * (x @ centres.T)).clamp_min_(0)


# ----------------------------------------------------------------------------- k-means


@dataclass
class KMeans:
    centres: torch.Tensor  # (k, D)
    assign: np.ndarray  # (N,) int64
    inertia: float  # sum of squared distances to the assigned centres
    iterations: int  # Lloyd iterations, or mini-batch steps
    minibatch: bool


def kmeans(pool: Pool | Any, k: int, *, seed: int = 0, max_iter: int = 50, tol: float = 1e-4,
           minibatch_above: int = 100_000, batch_size: int = 4096, init_sample: int = 20_000) -> KMeans:
    """k-means on the normalised pool: k-means++ seeding (Arthur & Vassilvitskii 2007) on a
    random sample of at most ``init_sample`` points, then Lloyd's iterations until the
    assignment no longer changes or the inertia improves by less than ``tol`` (relative),
    or -- above ``minibatch_above`` samples -- mini-batch k-means (Sculley 2010, per-centre
    learning rate 1/count) over two passes' worth of random batches, and one last
    assignment pass.  An empty cluster is restarted at the point farthest from its centre."""
    pool = pool if isinstance(pool, Pool) else Pool(pool)
    if not 1 <= k <= pool.n:
        raise SelfSupError(f"k-means needs 1 <= k <= {pool.n} (the pool's size), got k={k}")
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(pool.n, size=min(pool.n, init_sample), replace=False))
    centres = _kmeans_pp(pool.rows(sample), k, rng)
    if pool.n > minibatch_above:
        steps = max(50, 2 * math.ceil(pool.n / batch_size))
        counts = torch.zeros(k)
        for _ in range(steps):
            idx = np.unique(rng.integers(0, pool.n, size=batch_size))
            x = pool.rows(idx)
            a = _sq_dist_centres(x, centres, (centres * centres).sum(1)).argmin(1)
            n = torch.bincount(a, minlength=k).float()
            sums = torch.zeros_like(centres).index_add_(0, a, x)
            counts += n
            hit = n > 0
            centres[hit] += (sums[hit] - n[hit, None] * centres[hit]) / counts[hit, None]
        assign, dmin = _assign(pool, centres)
        return KMeans(centres, assign, float(dmin.sum()), steps, True)
    previous, inertia, it = None, math.inf, 0
    for it in range(1, max_iter + 1):
        assign, dmin, sums, counts = _assign(pool, centres, means=True)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):  # restart each at a point far from its centre
            far = np.argsort(-dmin, kind="stable")[:len(empty)]
            sums[empty], counts[empty] = pool.rows(far), 1.0
        centres = sums / counts[:, None]
        new_inertia = float(dmin.sum())
        done = previous is not None and (np.array_equal(assign, previous) or inertia - new_inertia <= tol * inertia)
        previous, inertia = assign, new_inertia
        if done and not len(empty):
            break
    return KMeans(centres, previous, inertia, it, False)


def _kmeans_pp(x: torch.Tensor, k: int, rng: np.random.Generator) -> torch.Tensor:
    """k-means++ seeds from the unit rows ``x``: the first uniformly, each next one with
    probability proportional to its squared distance to the nearest seed so far."""
    chosen = [int(rng.integers(len(x)))]
    d = _sq_dist(x, x[chosen[0]][None])[:, 0].double()
    for _ in range(1, k):
        total = float(d.sum())
        if total <= 0:  # every point sits on a seed: take any point not chosen yet
            nxt = int(np.setdiff1d(np.arange(len(x)), chosen)[0])
        else:
            nxt = int(np.searchsorted(np.cumsum(d.numpy()), rng.random() * total, side="right"))
            nxt = min(nxt, len(x) - 1)
        chosen.append(nxt)
        d = torch.minimum(d, _sq_dist(x, x[nxt][None])[:, 0].double())
    return x[chosen].clone()


def _assign(pool: Pool, centres: torch.Tensor, means: bool = False):
    """The nearest centre of every point and the squared distance to it, in one pass over
    the pool; with ``means`` also each cluster's sum of points and count."""
    csq = (centres * centres).sum(1)
    assign, dmin = np.empty(pool.n, dtype=np.int64), np.empty(pool.n, dtype=np.float64)
    sums, counts = torch.zeros_like(centres), torch.zeros(len(centres))
    for s, x in pool.chunks():
        d, a = _sq_dist_centres(x, centres, csq).min(1)
        assign[s:s + len(x)], dmin[s:s + len(x)] = a.numpy(), d.numpy()
        if means:
            sums.index_add_(0, a, x)
            counts += torch.bincount(a, minlength=len(centres)).float()
    return (assign, dmin, sums, counts) if means else (assign, dmin)


# ----------------------------------------------------------------------------- the entry point


def select_samples(strategy: str, features: Any, budget: int, *, labelled: Any = None, seed: int = 0,
                   **options: Any) -> SelectionResult:
    """Choose ``budget`` rows of ``features`` (N, D) -- a torch tensor, a numpy array or a
    memmap -- to label next, with ``strategy`` (see :data:`SELECTIONS`).

    ``labelled``: the rows already labelled (integer indices or a boolean mask); they are
    never chosen and the choice is made around them (a second round).  ``seed`` fixes the
    clustering and any random draw.  ``options`` are the strategy's own (``neighbours``,
    ``delta``, ...; an unknown one is an error naming the valid ones).  Nothing but the
    features is read: a selection is blind to labels.
    """
    fn = SELECTIONS.get(strategy)
    opts = strategy_options(strategy, options)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise SelfSupError(f"the budget must be a whole number of samples, at least 1, got {budget!r}")
    pool = Pool(features)
    mask = labelled_mask(labelled, pool.n)
    free = pool.n - int(mask.sum())
    if budget > free:
        raise SelfSupError(f"a budget of {budget} is more than the {free} unlabelled samples in the pool; "
                           f"choose at most {free}")
    t0 = time.perf_counter()
    indices, cluster, score, info = fn(pool, int(budget), mask, int(seed), **opts)
    indices = np.asarray(indices, dtype=np.int64)
    assert len(indices) == budget and len(np.unique(indices)) == budget and not mask[indices].any()
    info = {"strategy": strategy, "budget": int(budget), "seed": int(seed), "pool": pool.n,
            "labelled": int(mask.sum()), **opts, **info, "seconds": time.perf_counter() - t0}
    return SelectionResult(indices, np.asarray(cluster, dtype=np.int64), np.asarray(score, dtype=np.float64), info)


def strategy_options(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``strategy``'s keyword arguments (the closest one named
    for a typo) and typed like their defaults; every option, defaults included."""
    params = {n: p for n, p in inspect.signature(SELECTIONS.get(strategy)).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}
    typed = {n: p.default for n, p in params.items()}
    for key, value in options.items():
        if key not in params:
            raise SelfSupError(no_option(f"selection strategy {strategy!r}", key, params, ""))
        typed[key] = coerce(params[key].default, value, key, params[key].annotation)
        if isinstance(typed[key], int) and not isinstance(typed[key], bool) and typed[key] < 1:
            raise SelfSupError(f"{strategy}'s {key} must be at least 1, got {typed[key]}")
    return typed


def labelled_mask(labelled: Any, n: int) -> np.ndarray:
    """A boolean mask (N,) from ``labelled``: None, a boolean mask or integer row indices."""
    mask = np.zeros(n, dtype=bool)
    if labelled is None:
        return mask
    arr = np.asarray(labelled)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise SelfSupError(f"the labelled mask has shape {arr.shape}; the pool has {n} samples")
        return arr.copy()
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise SelfSupError("labelled must be row indices (whole numbers) or a boolean mask")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise SelfSupError(f"labelled row {int(arr.min() if arr.min() < 0 else arr.max())} is outside the pool "
                           f"of {n} samples")
    mask[arr] = True
    return mask


Picks = tuple[list[int], list[int], list[float], dict[str, Any]]


# ----------------------------------------------------------------------------- random


@SELECTIONS.register("random", help="a uniform draw, without stratification (what a user gets without labels)")
def random_selection(pool: Pool, budget: int, labelled: np.ndarray, seed: int) -> Picks:
    rng = np.random.default_rng(seed)
    picks = rng.choice(np.flatnonzero(~labelled), size=budget, replace=False)
    return list(picks), [-1] * budget, [math.nan] * budget, {}


# ----------------------------------------------------------------------------- TypiClust


@SELECTIONS.register("typiclust", help="TypiClust (Hacohen et al. 2022): the most typical point of each "
                                       "uncovered k-means cluster, largest first; for the lowest budgets")
def typiclust(pool: Pool, budget: int, labelled: np.ndarray, seed: int, *, neighbours: int = 20,
              max_clusters: int = 500, min_cluster_size: int = 5, exact_limit: int = 4096) -> Picks:
    k = min(int(labelled.sum()) + budget, max_clusters, pool.n)
    km = kmeans(pool, k, seed=seed)
    sizes = np.bincount(km.assign, minlength=k)
    holds = np.bincount(km.assign[labelled], minlength=k)  # labelled or chosen points per cluster
    blocked = labelled.copy()
    free = sizes - holds
    order = np.argsort(km.assign, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rng = np.random.default_rng(seed)
    picks, clusters, scores = [], [], []
    for _ in range(budget):
        open_ = free > 0
        big = open_ & (sizes >= min_cluster_size)
        allowed = np.flatnonzero(big if big.any() else open_)
        c = int(allowed[np.lexsort((-sizes[allowed], holds[allowed]))[0]])  # fewest held, then largest
        members = order[starts[c]:starts[c + 1]]  # ascending rows of the pool
        candidates = members[~blocked[members]]
        cand, typ = typicality(pool, members, candidates, neighbours, exact_limit=exact_limit, rng=rng)
        best = int(np.argmax(typ))  # ties: the lowest row
        picks.append(int(cand[best]))
        clusters.append(c)
        scores.append(float(typ[best]))
        blocked[cand[best]] = True
        holds[c] += 1
        free[c] -= 1
    return picks, clusters, scores, {"clusters": k, "kmeans_iterations": km.iterations,
                                     "kmeans_minibatch": km.minibatch, "kmeans_inertia": km.inertia}


def typicality(pool: Pool, members: np.ndarray, candidates: np.ndarray, neighbours: int = 20, *,
               exact_limit: int = 4096, sample: int = 2048, shortlist: int = 256,
               rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TypiClust's typicality of ``candidates`` within the cluster ``members`` (rows of the
    pool): ``1 / (1e-5 + mean distance to the K = min(neighbours, |members| // 2) nearest
    other members)``; 0 for a cluster of one.  Returns ``(rows, typicality)``: every
    candidate when the cluster has at most ``exact_limit`` members; otherwise the
    ``shortlist`` candidates most typical against a random ``sample`` of the members, each
    with its exact typicality over all of them."""
    k = min(neighbours, len(members) // 2)
    if k < 1:
        return candidates, np.zeros(len(candidates))
    if len(members) > exact_limit and len(candidates) > shortlist:
        rng = rng or np.random.default_rng(0)
        refs = np.sort(rng.choice(members, size=sample, replace=False))
        rough = mean_knn_distance(pool, candidates, refs, min(k, sample - 1))
        candidates = np.sort(candidates[np.argsort(rough, kind="stable")[:shortlist]])
    return candidates, 1.0 / (1e-5 + mean_knn_distance(pool, candidates, members, k))


def mean_knn_distance(pool: Pool, queries: np.ndarray, refs: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """For each query row, the mean Euclidean distance to its ``k`` nearest rows among
    ``refs``, itself excluded (by row, so a duplicate still counts as a neighbour)."""
    refs = np.sort(refs)
    out = np.empty(len(queries))
    parts = [refs[s:s + pool.chunk * 4] for s in range(0, len(refs), pool.chunk * 4)]
    held = [(torch.from_numpy(parts[0]), pool.rows(parts[0]))] if len(parts) == 1 else None
    for qs in range(0, len(queries), block):
        qi = queries[qs:qs + block]
        q, qt = pool.rows(qi), torch.from_numpy(qi)
        best = None  # the k largest cosine similarities so far, (len(qi), <= k)
        for part in parts:
            ri, r = held[0] if held else (torch.from_numpy(part), pool.rows(part))
            sim = q @ r.T
            at = torch.searchsorted(ri, qt).clamp_max(len(ri) - 1)  # where each query sits among the refs, if it does
            own = torch.nonzero(ri[at] == qt).flatten()
            sim[own, at[own]] = -math.inf
            top = sim.topk(min(k, sim.shape[1]), dim=1).values
            best = top if best is None else torch.cat([best, top], 1).topk(min(k, best.shape[1] + top.shape[1]),
                                                                           dim=1).values
        out[qs:qs + len(qi)] = _distance(best[:, :k]).mean(1).double().numpy()
    return out


# ----------------------------------------------------------------------------- ProbCover


@SELECTIONS.register("probcover", help="ProbCover (Yehuda et al. 2022): greedy maximum coverage of "
                                       "delta-balls, delta from k-means purity; for low budgets")
def probcover(pool: Pool, budget: int, labelled: np.ndarray, seed: int, *, delta: float | None = None,
              purity: float = 0.95, classes: int | None = None, purity_sample: int = 2000,
              max_edges: int = 200_000_000) -> Picks:
    if delta is not None and not delta > 0:
        raise SelfSupError(f"probcover's delta must be positive (a distance between unit vectors, at most 2), "
                           f"got {delta}")
    if not 0 < purity <= 1:
        raise SelfSupError(f"probcover's purity must be in (0, 1], got {purity}")
    info: dict[str, Any] = {}
    pseudo = None
    if delta is None:
        k = max(2, min(classes or int(labelled.sum()) + budget, 500, pool.n))
        km = kmeans(pool, k, seed=seed)
        pseudo = km.assign
        rng = np.random.default_rng(seed)
        queries = np.sort(rng.choice(pool.n, size=min(pool.n, purity_sample), replace=False))
        other = nearest_other(pool, queries, pseudo)
        other = np.sort(other[np.isfinite(other)])
        if len(other) == 0:
            raise SelfSupError("probcover cannot choose delta: k-means put every point in one cluster; pass "
                               "delta=VALUE")
        delta = float(other[min(int(math.floor((1 - purity) * len(other))), len(other) - 1)])
        info.update(delta_from=f"largest delta with {purity:.0%} of the balls pure over {k} k-means "
                               f"pseudo-classes (estimated on {len(queries)} points)", pseudo_classes=k)
    indptr, nbrs = ball_graph(pool, delta, max_edges=max_edges)
    degree = np.diff(indptr)  # points in each ball (itself included) not yet covered
    info.update(delta=float(delta), edges=int(len(nbrs) - pool.n), mean_ball=float(degree.mean()))
    covered = np.zeros(pool.n, dtype=bool)

    def cover(points: np.ndarray) -> None:
        covered[points] = True
        degree[:] -= np.bincount(nbrs[_gather(indptr, points)], minlength=pool.n)

    if labelled.any():
        cover(np.flatnonzero(np.bincount(nbrs[_gather(indptr, np.flatnonzero(labelled))], minlength=pool.n)))
    info["coverage_before"] = float(covered.mean())
    blocked = labelled.copy()
    rng = np.random.default_rng(seed)
    picks, scores = [], []
    for _ in range(budget):
        gain = np.where(blocked, -1, degree)
        p = int(np.argmax(gain))  # ties: the lowest row
        if gain[p] <= 0:  # everything is covered: the rest at random
            p = int(rng.choice(np.flatnonzero(~blocked)))
        ball = nbrs[indptr[p]:indptr[p + 1]]
        new = ball[~covered[ball]]
        picks.append(p)
        scores.append(float(len(new)))
        blocked[p] = True
        cover(new)
    info["coverage"] = float(covered.mean())
    clusters = pseudo[picks] if pseudo is not None else [-1] * budget
    return picks, clusters, scores, info


def nearest_other(pool: Pool, queries: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For each query row, the Euclidean distance to the nearest pool point with another
    label (inf when there is none)."""
    q, ql = pool.rows(queries), torch.from_numpy(labels[queries])
    best = torch.full((len(queries),), -math.inf)  # the largest cosine similarity to another label
    for s, x in pool.chunks():
        sim = q @ x.T
        sim[ql[:, None] == torch.from_numpy(labels[s:s + len(x)])[None, :]] = -math.inf
        best = torch.maximum(best, sim.max(1).values)
    return _distance(best).double().numpy()


def ball_graph(pool: Pool, delta: float, *, max_edges: int = 200_000_000,
               block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """The delta-ball graph as CSR ``(indptr (N+1,), neighbours)``: row i lists every
    point closer than ``delta`` to i, itself included (symmetric).  Each pair of blocks is
    compared once (the upper triangle), as cosine similarities against ``1 - delta^2 / 2``."""
    above = 1 - delta * delta / 2  # |a - b| < delta  <=>  cos(a, b) > 1 - delta^2 / 2 for unit vectors
    rows, cols = [], []
    edges = 0
    for a, xa in pool.chunks(block):
        for b in range(a, pool.n, block):
            xb = xa if b == a else pool.span(b, min(b + block, pool.n))
            r, c = torch.nonzero(xa @ xb.T > above, as_tuple=True)
            keep = c + b > r + a  # each unordered pair once; the diagonal is added below
            r, c = r[keep] + a, c[keep] + b
            edges += 2 * len(r)
            if edges > max_edges:
                raise SelfSupError(f"probcover's graph at delta={delta:.4g} has more than {max_edges:,} edges; pass a "
                                   "smaller delta (delta=VALUE) or raise max_edges if memory allows")
            rows.append(r.to(torch.int32))
            cols.append(c.to(torch.int32))
    self_ = torch.arange(pool.n, dtype=torch.int32)
    r = torch.cat([*rows, *cols, self_]).numpy()
    c = torch.cat([*cols, *rows, self_]).numpy()
    order = np.argsort(r, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=pool.n))]).astype(np.int64)
    return indptr, c[order].astype(np.int64)


def _gather(indptr: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Positions in the CSR ``neighbours`` array of every neighbour of ``points``."""
    starts, lens = indptr[points], indptr[points + 1] - indptr[points]
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return offsets + np.arange(total)


# ----------------------------------------------------------------------------- k-center greedy


@SELECTIONS.register("kcenter", help="k-center greedy (Sener & Savarese 2018): the point farthest from "
                                     "every labelled and chosen one; for larger budgets")
def kcenter(pool: Pool, budget: int, labelled: np.ndarray, seed: int) -> Picks:
    nearest = np.full(pool.n, np.inf)  # squared distance to the nearest labelled or chosen point

    def add(centres: np.ndarray) -> None:
        c = pool.rows(centres)
        for s, x in pool.chunks():
            d = _sq_dist(x, c).min(1).values.double().numpy()
            np.minimum(nearest[s:s + len(x)], d, out=nearest[s:s + len(x)])

    for s in range(0, int(labelled.sum()), pool.chunk):
        add(np.flatnonzero(labelled)[s:s + pool.chunk])
    info = {"radius_before": float(np.sqrt(nearest.max())) if labelled.any() else None}
    blocked = labelled.copy()
    rng = np.random.default_rng(seed)
    picks, scores = [], []
    for _ in range(budget):
        if not np.isfinite(nearest).any():  # nothing labelled: the first at random
            p, score = int(rng.choice(pool.n)), math.nan
        else:
            p = int(np.argmax(np.where(blocked, -1.0, nearest)))
            score = float(np.sqrt(nearest[p]))
        picks.append(p)
        scores.append(score)
        blocked[p] = True
        add(np.array([p]))
    info["radius"] = float(np.sqrt(nearest.max()))
    return picks, [-1] * budget, scores, info


def covering_radius(features: Any, centres: np.ndarray) -> float:
    """The largest distance from a point of the (normalised) pool to its nearest centre."""
    pool = Pool(features)
    c = pool.rows(np.asarray(centres))
    return max(float(_sq_dist(x, c).min(1).values.max().sqrt()) for _, x in pool.chunks())

