"""LogME: the logarithm of the maximum evidence of a Bayesian linear model on the features.

You, Liu, Wang and Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021.
"""
from __future__ import annotations

import numpy as np


def log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """The log evidence ``log p(y | F, alpha, beta)`` that LogME maximises, computed densely.

    The model is ``y = F w + e`` with prior ``w ~ N(0, alpha^-1 I)`` and noise
    ``e ~ N(0, beta^-1 I)``; integrating ``w`` out gives

        L(alpha, beta) = n/2 log beta + D/2 log alpha - n/2 log 2 pi
                         - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log |A|,

    with ``A = alpha I + beta F^T F`` and ``m = beta A^-1 F^T y``. This direct form (a
    D x D solve and log-determinant) is what the tests maximise with scipy to check
    :func:`logme_per_class`'s fixed point independently.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _sign, logdet = np.linalg.slogdet(a)
    resid = f @ m - y
    return float(n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                 - beta / 2 * resid @ resid - alpha / 2 * m @ m - logdet / 2)


def logme_per_class(features: np.ndarray, target: np.ndarray, tol: float = 1e-5,
                    max_iter: int = 1000) -> dict:
    """Maximise the evidence over ``alpha, beta`` for one target column (Algorithm 1).

    The paper's fixed-point iteration (Algorithm 1, from MacKay's evidence framework):
    with ``sigma_i`` the eigenvalues of ``F^T F``,

        gamma = sum_i beta sigma_i / (alpha + beta sigma_i),
        alpha <- gamma / (m^T m),     beta <- (n - gamma) / ||F m - y||^2,

    starting from ``alpha = beta = 1`` and repeated until both change by less than
    ``tol`` (relative). One SVD of ``F`` makes every iteration O(min(n, D)).

    Returns:
        ``{"evidence": L/n, "alpha", "beta", "iterations", "converged"}``.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    n, d = f.shape
    u, s, _vt = np.linalg.svd(f, full_matrices=False)
    sigma = s ** 2  # the nonzero-range eigenvalues of F^T F (D - r more are zero)
    z = u.T @ y  # y in the left singular basis
    rest = max(float(y @ y - z @ z), 0.0)  # the part of y no feature can explain
    alpha, beta = 1.0, 1.0
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        denom = alpha + beta * sigma
        gamma = float(np.sum(beta * sigma / denom))
        # n - gamma, summed from its own positive terms: subtracting gamma from n loses
        # every digit when the features can fit y almost exactly (n <= D), and a zero there
        # would collapse beta, then alpha, to 0
        n_minus_gamma = float(np.sum(alpha / denom)) + (n - len(sigma))
        mm = float(np.sum((beta * s * z / denom) ** 2))
        res2 = float(np.sum((alpha * z / denom) ** 2) + rest)
        new_alpha = gamma / max(mm, 1e-300)
        new_beta = n_minus_gamma / max(res2, 1e-300)
        done = (abs(new_alpha - alpha) <= tol * abs(alpha)
                and abs(new_beta - beta) <= tol * abs(beta))
        alpha, beta = new_alpha, new_beta
        if done:
            converged = True
            break
    denom = alpha + beta * sigma
    mm = float(np.sum((beta * s * z / denom) ** 2))
    res2 = float(np.sum((alpha * z / denom) ** 2) + rest)
    logdet = float(np.sum(np.log(denom)) + (d - len(sigma)) * np.log(alpha))
    evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                - beta / 2 * res2 - alpha / 2 * mm - logdet / 2)
    return {"evidence": float(evidence / n), "alpha": float(alpha), "beta": float(beta),
            "iterations": it, "converged": converged}


def logme(features: np.ndarray, labels: np.ndarray, num_classes: int | None = None,
          tol: float = 1e-5, max_iter: int = 1000) -> dict:
    """LogME of features for class labels: the mean over classes of the per-sample maximum
    log evidence (You et al. 2021, Algorithm 1: a classification target is its
    one-hot columns, each fitted as a regression target; the score is
    ``1/K sum_k L_k(alpha_k*, beta_k*) / n``).

    Features are used as given (the paper applies no normalisation). Higher is better.

    Returns:
        ``{"score", "converged" (all classes), "iterations" (max over classes),
        "per_class": [...]}``.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    k = int(num_classes or (y.max() + 1))
    per = [logme_per_class(f, (y == c).astype(np.float64), tol, max_iter) for c in range(k)]
    return {"score": float(np.mean([p["evidence"] for p in per])),
            "converged": all(p["converged"] for p in per),
            "iterations": max(p["iterations"] for p in per), "per_class": per}
