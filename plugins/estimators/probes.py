"""Two direct baselines on frozen features: kNN accuracy and linear-probe accuracy.

Both fit on the target training features and score on the validation features, so they
estimate what a frozen backbone gives before any fine-tuning.
"""
from __future__ import annotations

import numpy as np


def _standardise(train: np.ndarray, *others: np.ndarray):
    mean = train.mean(0, keepdims=True)
    scale = train.std(0, keepdims=True)
    scale[scale == 0] = 1.0
    return [(a - mean) / scale for a in (train, *others)]


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                 val_y: np.ndarray, k: int = 5) -> float:
    """Validation accuracy of a ``k``-nearest-neighbour majority vote (Euclidean distance on
    features standardised with the training statistics; ties go to the nearest)."""
    tr, va = _standardise(np.asarray(train_x, np.float64), np.asarray(val_x, np.float64))
    ty, vy = np.asarray(train_y).astype(int), np.asarray(val_y).astype(int)
    k = max(1, min(int(k), len(tr)))
    d2 = (va ** 2).sum(1)[:, None] - 2 * va @ tr.T + (tr ** 2).sum(1)[None, :]
    order = np.argsort(d2, axis=1, kind="stable")[:, :k]
    votes = ty[order]
    num = int(max(ty.max(), vy.max()) + 1)
    counts = np.zeros((len(va), num))
    # weight each vote by 1 + a tiny rank bonus so that a tie goes to the nearer class
    np.add.at(counts, (np.arange(len(va))[:, None].repeat(k, 1), votes),
              1.0 + 1e-6 * (k - np.arange(k))[None, :])
    return float(np.mean(counts.argmax(1) == vy))


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                          val_y: np.ndarray, C: float = 1.0, max_iter: int = 1000,
                          seed: int = 0) -> float:
    """Validation accuracy of multinomial logistic regression (L2, ``C``) fitted on the
    standardised training features: the linear-evaluation protocol of representation
    learning, which the frozen strategies approximate with their heads."""
    from sklearn.linear_model import LogisticRegression

    tr, va = _standardise(np.asarray(train_x, np.float64), np.asarray(val_x, np.float64))
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    clf.fit(tr, np.asarray(train_y).astype(int))
    return float(np.mean(clf.predict(va) == np.asarray(val_y).astype(int)))
