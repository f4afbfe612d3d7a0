"""H-score (Bao, Li, Huang, Zheng and Zhang, "An Information-Theoretic Approach to
Transferability in Task Transfer Learning", ICIP 2019)."""
from __future__ import annotations

import numpy as np


def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """``H(f) = tr( cov(f)^-1 cov(E_{P_X|Y}[f(X) | Y]) )`` (the H-score as Bao et al. 2019 define it).

    ``cov(f)`` is the covariance of the features over the target samples, and
    ``cov(E[f | Y])`` that of each sample's class-mean feature: the between-class
    scatter ``sum_y P(y) (mu_y - mu)(mu_y - mu)^T``. Both are population (1/n)
    moments, as the definition's expectations are. Where ``cov(f)`` is singular (fewer
    samples than dimensions) its pseudo-inverse is used. Higher is better; it lies in
    ``[0, min(d, K - 1)]``.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    f = f - f.mean(0, keepdims=True)
    cov_f = f.T @ f / len(f)
    class_means = np.zeros_like(f)
    for c in np.unique(y):
        class_means[y == c] = f[y == c].mean(0)
    cov_g = class_means.T @ class_means / len(f)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))
