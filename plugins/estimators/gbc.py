"""GBC, the Gaussian Bhattacharyya coefficient (Pandy, Agostinelli, Uijlings, Ferrari and
Mensink, "Transferability Estimation using Bhattacharyya Class Separability", CVPR 2022)."""
from __future__ import annotations

import numpy as np


def pca(features: np.ndarray, dim: int) -> np.ndarray:
    """Project centred features on their top ``dim`` principal components."""
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(0, keepdims=True)
    dim = max(1, min(dim, f.shape[1], f.shape[0]))
    _u, _s, vt = np.linalg.svd(f, full_matrices=False)
    return f @ vt[:dim].T


def bhattacharyya_coefficient(mu1, var1, mu2, var2) -> float:
    """``BC = exp(-D_B)`` between two Gaussians with diagonal covariances, where

        D_B = 1/8 (mu1 - mu2)^T S^-1 (mu1 - mu2) + 1/2 ln( det S / sqrt(det S1 det S2) ),
        S = (S1 + S2) / 2

    (the Bhattacharyya distance between two Gaussians that Pandy et al. 2022 use).
    """
    mu1, var1, mu2, var2 = (np.asarray(a, dtype=np.float64) for a in (mu1, var1, mu2, var2))
    var = (var1 + var2) / 2
    diff = mu1 - mu2
    db = (np.sum(diff ** 2 / var) / 8
          + 0.5 * (np.sum(np.log(var)) - 0.5 * (np.sum(np.log(var1)) + np.sum(np.log(var2)))))
    return float(np.exp(-db))


def gbc(features: np.ndarray, labels: np.ndarray, pca_dim: int = 64,
        min_var: float = 1e-6) -> dict:
    """GBC: ``- sum_{i != j} BC(D_ci, D_cj)`` over ordered pairs of target classes, each
    class modelled as a Gaussian ``N(mu_c, diag(sigma_c^2))`` of its (PCA-reduced) features
    (Pandy et al. 2022's definition of GBC; the diagonal covariance is the paper's choice for its
    main results, and the features are first reduced by PCA as the paper does).

    Classes that overlap give a coefficient near 1 per pair, separated ones near 0: the
    score is in ``[-K (K - 1), 0]`` and higher is better. Variances are floored at
    ``min_var`` (relative to the mean feature variance) so that a class with constant
    features does not divide by zero.
    """
    y = np.asarray(labels).astype(int)
    z = pca(features, pca_dim)
    floor = min_var * max(float(z.var(0).mean()), 1e-300)
    classes = np.unique(y)
    stats = [(z[y == c].mean(0), np.maximum(z[y == c].var(0), floor)) for c in classes]
    total = 0.0
    for i, (m1, v1) in enumerate(stats):
        for j, (m2, v2) in enumerate(stats):
            if i != j:
                total += bhattacharyya_coefficient(m1, v1, m2, v2)
    return {"score": -total, "dims": int(z.shape[1])}
