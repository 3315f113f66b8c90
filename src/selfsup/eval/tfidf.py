"""TF-IDF + logistic regression: the classical text baseline a learned encoder must beat.

Word unigrams and bigrams (scikit-learn's ``TfidfVectorizer``, sublinear term frequency,
fitted on the labelled training texts only), then multinomial logistic regression with
its inverse regularisation ``C`` chosen from :data:`C_GRID` on a stratified split of the
training labels (never the test split) and refitted on all of them -- the same protocol
as the linear probe, on sparse word counts instead of learned features.
"""
from __future__ import annotations

import warnings

import numpy as np

from selfsup.data.splits import stratified_split

C_GRID = (0.1, 1.0, 10.0, 100.0)


def _fit(texts, labels, c: float):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vec.fit_transform(texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny label sets
        clf = LogisticRegression(C=c, max_iter=2000).fit(x, labels)
    return vec, clf


def tfidf_accuracy(train_texts, train_labels, test_texts, test_labels, *, seed: int = 0,
                   val_fraction: float = 0.2) -> float:
    """Test accuracy of TF-IDF + logistic regression trained on the labelled texts."""
    train_texts, test_texts = [str(t) for t in train_texts], [str(t) for t in test_texts]
    y = np.asarray(train_labels)
    if len(np.unique(y)) < 2:  # one class seen: that is the prediction
        return float((np.asarray(test_labels) == y[0]).mean())
    kept, val = stratified_split(y, val_fraction, seed)
    c = C_GRID[len(C_GRID) // 2]
    if len(val) and len(np.unique(y[kept])) > 1:
        scores = []
        for cand in C_GRID:
            vec, clf = _fit([train_texts[i] for i in kept], y[kept], cand)
            scores.append((clf.predict(vec.transform([train_texts[i] for i in val])) == y[val]).mean())
        c = C_GRID[int(np.argmax(scores))]
    vec, clf = _fit(train_texts, y, c)
    return float((clf.predict(vec.transform(test_texts)) == np.asarray(test_labels)).mean())
