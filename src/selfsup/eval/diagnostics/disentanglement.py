"""Disentanglement against known factors: DCI and MIG, both with a per-factor breakdown.

DCI: Eastwood & Williams, "A Framework for the Quantitative Evaluation of Disentangled
Representations" (ICLR 2018).  MIG: Chen, Li, Grosse & Duvenaud, "Isolating Sources of
Disentanglement in Variational Autoencoders" (NeurIPS 2018, arXiv 1802.04942).  Both ask
whether each known generating factor (``shapes``' position, colour, rotation, ...) is
carried by few code dimensions and each dimension by few factors; DCI from the
importance a predictor of the factor gives each dimension, MIG from mutual information.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from selfsup.eval.diagnostics.arrays import as_array

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
