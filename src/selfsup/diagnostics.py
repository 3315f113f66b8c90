"""What a representation learned, measured on its embeddings.

Pure functions of embeddings (numpy arrays or torch tensors, rows are samples) that
return floats or small JSON-ready dicts, plus two helpers that run an encoder:
:func:`transfer` (linear probe on another dataset) and :func:`inspect` (everything at
once on one dataset).

Compactness
    :func:`effective_rank` and :func:`dims_for_variance`: how many directions the
    embeddings really use.
Collapse
    :func:`per_dim_std` and :func:`collapse_flag`: are all inputs mapped to (nearly) one
    point or one line?  The threshold is the training monitor's
    (:data:`selfsup.monitor.COLLAPSE_STD`).
Alignment and uniformity (Wang & Isola 2020)
    :func:`alignment` (positive pairs close, lower is better), :func:`relative_alignment`
    (the same relative to pairs of different samples, so that collapse does not score
    well) and :func:`uniformity` (points spread over the sphere, lower is better).
Disentanglement against known factors
    :func:`dci` (Eastwood & Williams 2018) and :func:`mig` (Chen et al. 2018), both with
    a per-factor breakdown.

Factor kinds
    A factor is ``"categorical"`` (a class: a classification target for DCI, its values
    used as-is for MIG), ``"continuous"`` (a regression target; histogram-binned for
    MIG) or *periodic* with a period ``p`` (DCI regresses ``cos(2 pi v / p)`` and
    ``sin(2 pi v / p)``, so ``0`` and ``p`` are the same value; MIG bins it like a
    continuous factor, which mutual information does not mind).  :data:`FACTOR_KINDS`
    knows the ``shapes`` dataset's factors; other names are categorical when they take
    at most 20 distinct integer values and continuous otherwise; ``kinds=`` overrides.

    Caveats on ``shapes``: rotation is only defined up to each shape's symmetry (a
    circle has none to find, a square repeats every 90 degrees), so no code can predict
    it fully and its informativeness and MIG are capped below 1; the texture factors
    (frequency, angle, phase, contrast) are invisible on flat backgrounds
    (``texture_kind`` 0) and the background hue is barely visible at low saturation.
    The factors are sampled independently, except that object and background
    brightness are tied (their levels sit 0.4 to 0.6 apart on a circle).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from selfsup.features import eval_mode
from selfsup.monitor import COLLAPSE_STD, normalized_std

# Kinds of the shapes dataset's factors: "categorical", or the period of a periodic one.
FACTOR_KINDS: dict[str, str | float] = {
    "shape": "categorical",
    "texture_kind": "categorical",
    "rotation": 2 * math.pi,
    "object_hue": 1.0,
    "background_hue": 1.0,
    "texture_angle": math.pi,  # stripes at angle a and a + pi are the same picture
    "texture_phase": 2 * math.pi,
}
MIG_BINS = 20  # histogram bins per code dimension and per continuous factor
ALIGNMENT_VIEW_STRENGTH = 0.5  # colour-jitter strength of the SimCLR views used by inspect


def as_array(z) -> np.ndarray:
    """Embeddings as a float64 numpy array (torch tensors are detached and moved to CPU)."""
    if isinstance(z, torch.Tensor):
        z = z.detach().cpu().double().numpy()
    return np.asarray(z, dtype=np.float64)


def _normalize_rows(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


# ----------------------------------------------------------------------------- compactness


def singular_values(z) -> np.ndarray:
    """Singular values of the centred embedding matrix (N, D), largest first."""
    z = as_array(z)
    return np.linalg.svd(z - z.mean(0), compute_uv=False)


def effective_rank(z) -> float:
    """Effective rank (Roy & Vetterli 2007): ``exp(H(p))`` with ``p = s / sum(s)`` the
    normalised singular values of the centred embeddings and ``H`` the Shannon entropy
    in nats.  Between 1 and ``min(N, D)``; exactly ``k`` when ``k`` singular values are
    equal and the rest zero.  0 for embeddings that are all the same point."""
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


# ----------------------------------------------------------------------------- collapse


def per_dim_std(z) -> dict[str, float]:
    """Standard deviation of each dimension of the L2-normalised embeddings, over samples.

    Returns its ``mean`` and ``min`` over dimensions, and ``z_std = mean * sqrt(D)``
    (:func:`selfsup.monitor.normalized_std`, SimSiam's collapse diagnostic): about 1
    when the embeddings spread evenly over the sphere, 0 when they all point one way.
    """
    z = as_array(z)
    std = _normalize_rows(z).std(axis=0, ddof=1)  # (D,), unbiased like torch.std
    return {"mean": float(std.mean()), "min": float(std.min()),
            "z_std": normalized_std(torch.from_numpy(z))}


def collapse_flag(z) -> bool:
    """True when the embeddings look collapsed: ``z_std`` (see :func:`per_dim_std`) below
    :data:`selfsup.monitor.COLLAPSE_STD` (complete collapse: one point) or an effective
    rank below 2 (dimensional collapse: one line)."""
    return normalized_std(torch.from_numpy(as_array(z))) < COLLAPSE_STD or effective_rank(z) < 2


# ----------------------------------------------------------------------------- alignment and uniformity


def alignment(z1, z2, alpha: float = 2) -> float:
    """Alignment (Wang & Isola 2020): ``E ||f(x) - f(y)||^alpha`` over positive pairs
    ``(x, y)``, rows ``i`` of ``z1`` and ``z2``, after L2 normalisation.  0 when every
    pair maps to the same point; at most ``2**alpha``."""
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


# ----------------------------------------------------------------------------- factors


def factor_kinds(factors, names: Sequence[str],
                 kinds: Mapping[str, str | float] | None = None) -> list[str | float]:
    """The kind of each factor column: ``"categorical"``, ``"continuous"`` or a period.

    ``kinds`` (name -> kind) wins, then :data:`FACTOR_KINDS`, then a guess from the values
    (at most 20 distinct integers: categorical).
    """
    factors = as_array(factors)
    out: list[str | float] = []
    for k, name in enumerate(names):
        kind = (kinds or {}).get(name, FACTOR_KINDS.get(name))
        if kind is None:
            col = factors[:, k]
            whole = np.all(col == np.round(col))
            kind = "categorical" if whole and len(np.unique(col)) <= 20 else "continuous"
        if not (kind in ("categorical", "continuous") or (isinstance(kind, (int, float)) and kind > 0)):
            raise ValueError(f"factor {name!r}: kind must be 'categorical', 'continuous' or a "
                             f"positive period, got {kind!r}")
        out.append(kind)
    return out


def _names(factors: np.ndarray, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [f"factor_{k}" for k in range(factors.shape[1])]
    if len(names) != factors.shape[1]:
        raise ValueError(f"{len(names)} factor names for {factors.shape[1]} factor columns")
    return list(names)


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """Shannon entropy (nats) of distributions ``p`` along ``axis`` (zeros contribute 0)."""
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(axis=axis)


def _classifier_importance(x_tr, x_te, y_tr, y_te, predictor: str, seed: int):
    """Importance of each code dimension (D,) for one categorical factor, test accuracy."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    classes, y_tr = np.unique(y_tr, return_inverse=True)
    pos = np.minimum(np.searchsorted(classes, y_te), len(classes) - 1)
    y_te = np.where(classes[pos] == y_te, pos, -1)  # a class unseen in training is never right
    if len(classes) < 2:
        return np.zeros(x_tr.shape[1]), 1.0
    if predictor == "linear":
        model = LogisticRegression(C=1.0, max_iter=1000).fit(x_tr, y_tr)
        importance = np.abs(model.coef_).sum(0)  # (D,), summed over classes
    else:
        model = RandomForestClassifier(n_estimators=10, max_depth=8, random_state=seed,
                                       n_jobs=1).fit(x_tr, y_tr)
        importance = model.feature_importances_
    return importance, float((model.predict(x_te) == y_te).mean())


def _regression_targets(values: np.ndarray, kind) -> np.ndarray:
    """A continuous factor as one column, a periodic one as (cos, sin): (N, 1 or 2)."""
    if kind == "continuous":
        return values[:, None]
    w = 2 * math.pi / float(kind)
    return np.stack([np.cos(w * values), np.sin(w * values)], 1)


def importance_matrix(codes, factors, factor_names: Sequence[str] | None = None, *,
                      kinds: Mapping[str, str | float] | None = None, predictor: str = "linear",
                      test_fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """DCI's importance matrix ``R`` (D codes, K factors) and the informativeness (K,).

    Predictors map the standardised codes to each factor, fitted on a random
    ``1 - test_fraction`` of the samples:

    * ``predictor="linear"`` (default, fast): ridge regression on the standardised
      targets of all continuous and periodic factors at once (penalty chosen per target
      by leave-one-out CV, ``RidgeCV(alpha_per_target=True)``), logistic regression
      (C=1) per categorical factor; importance ``|coef|`` summed over a factor's outputs
      (cos and sin, or classes).  It sees only linearly decodable information.
    * ``predictor="forest"``: a random forest per factor (10 trees, depth 8), impurity
      importances.  Sees non-linear information too, at a higher cost and with noisier
      importances.

    Each factor's column of ``R`` is normalised to sum to 1, so every factor carries the
    same weight (as with the random forests of the original paper).  Informativeness is
    the test R^2 (mean over cos and sin for periodic factors) or test accuracy.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    if predictor not in ("linear", "forest"):
        raise ValueError(f"unknown predictor {predictor!r}; use 'linear' or 'forest'")
    codes, factors = as_array(codes), as_array(factors)
    names = _names(factors, factor_names)
    kind_of = factor_kinds(factors, names, kinds)
    n = len(codes)
    order = np.random.default_rng(seed).permutation(n)
    n_te = max(1, int(round(test_fraction * n)))
    te, tr = order[:n_te], order[n_te:]
    mu, sd = codes[tr].mean(0), codes[tr].std(0)
    x = (codes - mu) / np.where(sd > 1e-12, sd, 1.0)  # constant dims stay at 0
    r = np.zeros((codes.shape[1], len(names)))
    score = np.zeros(len(names))

    regressed = [k for k, kind in enumerate(kind_of) if kind != "categorical"]
    if regressed:
        blocks = [_regression_targets(factors[:, k], kind_of[k]) for k in regressed]
        group = np.concatenate([[k] * b.shape[1] for k, b in zip(regressed, blocks)])  # column -> factor
        t = np.concatenate(blocks, axis=1)  # (N, T)
        t = (t - t[tr].mean(0)) / np.maximum(t[tr].std(0), 1e-12)
        if predictor == "linear":
            model = RidgeCV(alphas=np.logspace(-3, 3, 7), alpha_per_target=True).fit(x[tr], t[tr])
            coef = np.abs(model.coef_.reshape(t.shape[1], -1))  # (T, D)
            pred = model.predict(x[te]).reshape(len(te), -1)
            for k in regressed:
                cols = group == k
                r[:, k] = coef[cols].sum(0)
                score[k] = r2_score(t[te][:, cols], pred[:, cols])
        else:
            for k in regressed:
                cols = group == k
                y = t[:, cols] if cols.sum() > 1 else t[:, cols][:, 0]
                model = RandomForestRegressor(n_estimators=10, max_depth=8, random_state=seed,
                                              n_jobs=1).fit(x[tr], y[tr])
                r[:, k] = model.feature_importances_
                score[k] = r2_score(y[te], model.predict(x[te]))
    for k, kind in enumerate(kind_of):
        if kind == "categorical":
            r[:, k], score[k] = _classifier_importance(x[tr], x[te], factors[tr, k], factors[te, k],
                                                       predictor, seed)
    total = r.sum(0)
    r = r / np.where(total > 0, total, 1.0)
    return r, score


def dci(codes, factors, factor_names: Sequence[str] | None = None, *,
        kinds: Mapping[str, str | float] | None = None, predictor: str = "linear",
        test_fraction: float = 0.25, seed: int = 0) -> dict[str, Any]:
    """Disentanglement, completeness and informativeness (Eastwood & Williams 2018).

    From the importance matrix ``R`` (D codes x K factors, :func:`importance_matrix`):

    * disentanglement: each code ``i`` scores ``D_i = 1 - H_K(P_i)`` with ``P_ij =
      R_ij / sum_j R_ij`` and ``H_K`` the entropy in base K (1 when the code matters for
      one factor only); ``D = sum_i rho_i D_i`` weighted by the code's share of the total
      importance ``rho_i = sum_j R_ij / sum R``;
    * completeness: each factor ``j`` scores ``C_j = 1 - H_D(R_.j / sum_i R_ij)`` (1 when a
      single code captures it); ``C`` is their mean;
    * informativeness: test R^2 or accuracy per factor; ``I`` is their mean.

    Returns ``disentanglement``, ``completeness``, ``informativeness``, the settings,
    and ``per_factor``: name -> {kind, completeness, informativeness (with its metric),
    top_code (the most important code dimension)}.
    """
    codes, factors = as_array(codes), as_array(factors)
    names = _names(factors, factor_names)
    kind_of = factor_kinds(factors, names, kinds)
    r, score = importance_matrix(codes, factors, names, kinds=kinds, predictor=predictor,
                                 test_fraction=test_fraction, seed=seed)
    n_codes, n_factors = r.shape
    row = r.sum(1)  # (D,)
    used = row > 0
    if n_factors > 1:
        p = r[used] / row[used, None]
        d_code = 1 - _entropy(p, axis=1) / math.log(n_factors)
    else:
        d_code = np.ones(int(used.sum()))  # one factor: every code is trivially disentangled
    disentanglement = float((d_code * row[used] / row.sum()).sum()) if used.any() else 0.0
    col = r.sum(0)  # (K,), 1 or 0
    if n_codes > 1:
        q = r / np.where(col > 0, col, 1.0)
        c_factor = np.where(col > 0, 1 - _entropy(q, axis=0) / math.log(n_codes), 0.0)
    else:
        c_factor = (col > 0).astype(float)
    per_factor = {
        name: {"kind": kind if kind in ("categorical", "continuous") else f"periodic, period {kind:.4g}",
               "completeness": float(c_factor[k]),
               "informativeness": float(score[k]),
               "metric": "accuracy" if kind == "categorical" else "r2",
               "top_code": int(np.argmax(r[:, k]))}
        for k, (name, kind) in enumerate(zip(names, kind_of))
    }
    return {"disentanglement": disentanglement, "completeness": float(c_factor.mean()),
            "informativeness": float(score.mean()), "predictor": predictor,
            "test_fraction": test_fraction, "per_factor": per_factor}


def discretize(x, bins: int = MIG_BINS) -> np.ndarray:
    """Each column of ``x`` (N, D) binned into ``bins`` equal-width histogram bins (as in
    disentanglement_lib's ``_histogram_discretize``); returns int (N, D) in [0, bins)."""
    x = as_array(x)
    if x.ndim == 1:
        x = x[:, None]
    out = np.empty(x.shape, dtype=np.int64)
    for d in range(x.shape[1]):
        edges = np.histogram_bin_edges(x[:, d], bins=bins)
        out[:, d] = np.clip(np.digitize(x[:, d], edges[1:-1]), 0, bins - 1)
    return out


def mutual_information(codes_binned: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``I(z_d; v)`` in nats for every column ``d`` of ``codes_binned`` (N, D) and one
    discrete variable ``v`` (N,), both non-negative ints, from the joint histogram.
    Equal to ``sklearn.metrics.mutual_info_score(codes_binned[:, d], v)`` for each ``d``,
    computed for all columns at once with a single ``bincount``."""
    n, d = codes_binned.shape
    bz, bv = int(codes_binned.max()) + 1, int(v.max()) + 1
    cells = (np.arange(d) * bz)[None, :] + codes_binned  # (N, D): column-local code bin
    joint = np.bincount((cells * bv + v[:, None]).ravel(), minlength=d * bz * bv)
    p = joint.reshape(d, bz, bv) / n  # (D, bz, bv)
    pz, pv = p.sum(2, keepdims=True), p.sum(1, keepdims=True)
    ratio = np.where(p > 0, p / np.where(pz * pv > 0, pz * pv, 1.0), 1.0)
    return np.maximum((p * np.log(ratio)).sum((1, 2)), 0.0)


def mig(codes, factors, factor_names: Sequence[str] | None = None, *,
        kinds: Mapping[str, str | float] | None = None, bins: int = MIG_BINS) -> dict[str, Any]:
    """Mutual information gap (Chen et al. 2018), on discretised codes.

    Codes are binned per dimension (:func:`discretize`); categorical factors are used
    as they are and the others binned the same way.  For each factor ``v_k``:
    ``MIG_k = (I(z_a; v_k) - I(z_b; v_k)) / H(v_k)`` where ``z_a`` and ``z_b`` are the
    two code dimensions with the most mutual information (nats, :func:`mutual_information`,
    the plug-in estimate of ``sklearn.metrics.mutual_info_score``) with it.  ``mig`` is
    the mean over factors with non-zero entropy.  With finite samples the MI of
    independent variables is biased upwards by about ``(bins - 1)**2 / (2 N)`` nats, so
    use thousands of samples.
    """
    codes, factors = as_array(codes), as_array(factors)
    names = _names(factors, factor_names)
    if codes.shape[1] < 2:
        raise ValueError("MIG needs at least two code dimensions")
    kind_of = factor_kinds(factors, names, kinds)
    zc = discretize(codes, bins)
    per_factor: dict[str, float] = {}
    for k, (name, kind) in enumerate(zip(names, kind_of)):
        v = (np.unique(factors[:, k], return_inverse=True)[1] if kind == "categorical"
             else discretize(factors[:, k], bins)[:, 0])
        h = float(mutual_information(v[:, None], v)[0])  # H(v) = I(v; v)
        if h <= 0:
            continue  # a constant factor has nothing to find
        mi = np.sort(mutual_information(zc, v))
        per_factor[name] = float((mi[-1] - mi[-2]) / h)
    value = float(np.mean(list(per_factor.values()))) if per_factor else 0.0
    return {"mig": value, "bins": bins, "per_factor": per_factor}


# ----------------------------------------------------------------------------- encoders


def fit_images(images: np.ndarray, encoder: torch.nn.Module) -> np.ndarray:
    """``images`` (N, H, W, C) uint8 converted to what ``encoder`` takes: resized to its
    ``image_size`` and, when the channel counts differ, grey repeated to RGB or RGB
    turned to grey (BT.601 luma)."""
    from selfsup.data import resize_images

    spec = getattr(encoder, "kwargs", {}) or {}
    size, chans = spec.get("image_size"), spec.get("in_chans")
    if size and images.shape[1] != size:
        images = resize_images(images, size)
    c = images.shape[3]
    if chans and c != chans:
        if c == 1 and chans == 3:
            images = np.repeat(images, 3, axis=3)
        elif c == 3 and chans == 1:
            luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            images = np.round(luma)[..., None].astype(np.uint8)
        else:
            raise ValueError(f"cannot feed {c}-channel images to a {chans}-channel encoder")
    return images


def transfer(encoder: torch.nn.Module, target, *, random_encoder: torch.nn.Module | None = None,
             max_train: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Linear-probe accuracy of ``encoder``'s frozen features on another labelled dataset.

    ``target`` is a :class:`selfsup.data.Dataset` (or a spec for
    :func:`selfsup.data.create_dataset`) with labels and a test split; its images are
    adapted to the encoder (:func:`fit_images`).  The probe is
    :func:`selfsup.linear.linear_probe_accuracy` (L2 chosen on a train split).  With
    ``random_encoder`` (the same architecture at random initialisation) its accuracy is
    reported too, as the baseline the transfer has to beat.
    """
    from selfsup.data import Dataset, create_dataset, random_subset
    from selfsup.features import extract_features
    from selfsup.linear import linear_probe_accuracy

    ds = target if isinstance(target, Dataset) else create_dataset(target, seed=seed)
    if ds.test is None or not ds.train.has_labels or not ds.test.has_labels:
        raise ValueError(f"transfer needs a labelled dataset with a test split; {ds.name} is not")
    train = random_subset(ds.train, max_train, seed)
    ytr, yte = torch.from_numpy(train.labels), torch.from_numpy(ds.test.labels)
    c = len(ds.train.classes)

    def probe(enc: torch.nn.Module) -> float:
        ftr = extract_features(enc, fit_images(train.images, enc))
        fte = extract_features(enc, fit_images(ds.test.images, enc))
        return linear_probe_accuracy(ftr, ytr, fte, yte, num_classes=c, seed=seed)

    out: dict[str, Any] = {"data": ds.name, "n_train": len(train), "n_test": len(ds.test),
                           "linear_top1": probe(encoder)}
    if random_encoder is not None:
        out["random_init_linear_top1"] = probe(random_encoder)
    return out


@torch.no_grad()
def _two_view_embeddings(encoder: torch.nn.Module, images: np.ndarray, seed: int,
                         batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of two SimCLR views (strength :data:`ALIGNMENT_VIEW_STRENGTH`) per image."""
    from selfsup.views import augment, for_small_images, simclr_views

    device = next(encoder.parameters()).device
    cfg = for_small_images(simclr_views(ALIGNMENT_VIEW_STRENGTH), images.shape[1])
    gen = torch.Generator().manual_seed(seed)
    a, b = [], []
    with eval_mode(encoder):
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).to(device)
            x = x.permute(0, 3, 1, 2).float().div_(255)  # (B, C, H, W) in [0, 1]
            a.append(encoder(augment(x, cfg, gen)).float().cpu())
            b.append(encoder(augment(x, cfg, gen)).float().cpu())
    return torch.cat(a), torch.cat(b)


def inspect(encoder: torch.nn.Module, dataset, *, max_samples: int = 5000, seed: int = 0,
            predictor: str = "linear", transfer_to=None,
            random_encoder: torch.nn.Module | None = None) -> dict[str, Any]:
    """All the diagnostics above for ``encoder``'s features on one dataset.

    Uses the test split (the train split when there is none), at most ``max_samples``
    random images.  Alignment compares two SimCLR views (strength 0.5; no blur at 32 px
    or less, see :func:`selfsup.views.for_small_images`) of each image;
    uniformity uses the clean images.  With ground-truth factors (``shapes``) adds DCI
    (``predictor`` as in :func:`importance_matrix`) and MIG; with ``transfer_to`` (a
    labelled dataset or spec) adds :func:`transfer`, with ``random_encoder`` as its
    baseline.  Everything returned is JSON-ready.
    """
    from selfsup.data import Dataset, create_dataset, random_subset
    from selfsup.features import extract_features

    ds = dataset if isinstance(dataset, Dataset) else create_dataset(dataset, seed=seed)
    split = "test" if ds.test is not None else "train"
    part = random_subset(ds.test if ds.test is not None else ds.train, max_samples, seed)
    images = fit_images(part.images, encoder)
    h = extract_features(encoder, images)  # (N, D)
    v1, v2 = _two_view_embeddings(encoder, images, seed)
    spread = per_dim_std(h)
    out: dict[str, Any] = {
        "data": ds.name, "split": split, "n": len(h), "dim": int(h.shape[1]),
        "effective_rank": effective_rank(h),
        "dims_for_90pct_variance": dims_for_variance(h, 0.9),
        "per_dim_std_mean": spread["mean"], "per_dim_std_min": spread["min"],
        "z_std": spread["z_std"], "collapsed": bool(collapse_flag(h)),
        "alignment": alignment(v1, v2), "relative_alignment": relative_alignment(v1, v2, seed=seed),
        "uniformity": uniformity(h, seed=seed),
        "alignment_views": f"simclr_views(strength={ALIGNMENT_VIEW_STRENGTH})",
    }
    if part.factors is not None and len(part.factor_names):
        out["dci"] = dci(h, part.factors, part.factor_names, predictor=predictor, seed=seed)
        out["mig"] = mig(h, part.factors, part.factor_names)
    if transfer_to is not None:
        out["transfer"] = transfer(encoder, transfer_to, random_encoder=random_encoder, seed=seed)
    return out
