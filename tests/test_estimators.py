"""Transferability estimators against values computed independently, on small fixed inputs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from plugins.estimators.gbc import bhattacharyya_coefficient, gbc
from plugins.estimators.hscore import h_score
from plugins.estimators.leep import leep, nce
from plugins.estimators.logme import log_evidence, logme, logme_per_class
from plugins.estimators.probes import knn_accuracy, linear_probe_accuracy


@pytest.mark.parametrize("n,d", [(40, 5), (12, 30)])  # more samples than dims, and fewer
def test_logme_fixed_point_is_the_evidence_maximum_scipy_finds(n, d):
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    y = (f[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(float)
    fp = logme_per_class(f, y, tol=1e-10)
    assert fp["converged"] and fp["iterations"] < 1000

    def neg(logab):
        return -log_evidence(f, y, math.exp(logab[0]), math.exp(logab[1]))

    best = min((minimize(neg, x0, method="Nelder-Mead",
                         options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
                for x0 in ([0.0, 0.0], [3.0, -2.0], [-3.0, 2.0])), key=lambda r: r.fun)
    alpha, beta = math.exp(best.x[0]), math.exp(best.x[1])
    assert fp["alpha"] == pytest.approx(alpha, rel=1e-3)
    assert fp["beta"] == pytest.approx(beta, rel=1e-3)
    # the SVD form of the evidence equals the dense one, and it is the maximum
    assert fp["evidence"] * n == pytest.approx(-best.fun, abs=1e-6)
    assert fp["evidence"] * n == pytest.approx(log_evidence(f, y, fp["alpha"], fp["beta"]),
                                               abs=1e-8)


def test_logme_is_the_mean_over_classes_and_prefers_informative_features():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 30)
    informative = np.eye(3)[labels] * 3 + rng.normal(size=(90, 3))
    noise = rng.normal(size=(90, 3))
    out = logme(informative, labels)
    per = [logme_per_class(informative, (labels == c).astype(float))["evidence"]
           for c in range(3)]
    assert out["score"] == pytest.approx(np.mean(per))
    assert out["converged"]
    assert out["score"] > logme(noise, labels)["score"]


def test_h_score_hand_checkable():
    # 1-D: classes at 0 and 2; var(f) = 1, var(E[f|y]) = 1  ->  H = 1
    assert h_score(np.array([[0.], [0.], [2.], [2.]]), np.array([0, 0, 1, 1])) == \
        pytest.approx(1.0)
    # f = -1, 1 | 1, 3: var(f) = 2, class means 0 and 2 -> var = 1  ->  H = 1/2
    assert h_score(np.array([[-1.], [1.], [1.], [3.]]), np.array([0, 0, 1, 1])) == \
        pytest.approx(0.5)
    # 2-D, independent axes: only axis 0 carries the label; H = 1/2 + 0
    f = np.array([[-1., 1.], [1., -1.], [1., -1.], [3., 1.]])  # uncorrelated axes
    assert h_score(f, np.array([0, 0, 1, 1])) == pytest.approx(0.5)


def test_leep_hand_checkable():
    y = np.array([0, 1])
    assert leep(np.array([[1., 0.], [0., 1.]]), y) == pytest.approx(0.0)
    assert leep(np.full((2, 2), 0.5), y) == pytest.approx(math.log(0.5))
    # joint rows y: [0.4, 0.1], [0.2, 0.3]; P(z) = [0.6, 0.4]; both EEPs are 7/12
    assert leep(np.array([[0.8, 0.2], [0.4, 0.6]]), y) == pytest.approx(math.log(7 / 12))


def test_nce_hand_computation():
    # joint: (y0,z0) 1/4, (y1,z0) 1/4, (y1,z1) 1/2; H(Y|Z) = 1/2 log 2
    assert nce(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])) == \
        pytest.approx(-0.5 * math.log(2))
    assert nce(np.array([2, 0, 1]), np.array([0, 1, 2])) == pytest.approx(0.0)


def test_bhattacharyya_coefficient_matches_numerical_integration():
    from scipy.integrate import quad
    from scipy.stats import norm

    for m1, v1, m2, v2 in [(0.0, 1.0, 2.0, 1.0), (0.0, 0.5, 1.0, 2.0)]:
        numeric, _ = quad(lambda x: math.sqrt(norm.pdf(x, m1, v1 ** .5) * norm.pdf(x, m2, v2 ** .5)),
                          -30, 30)
        assert bhattacharyya_coefficient([m1], [v1], [m2], [v2]) == pytest.approx(numeric,
                                                                                 rel=1e-6)
    assert bhattacharyya_coefficient([0.0], [1.0], [2.0], [1.0]) == pytest.approx(math.exp(-0.5))


def test_gbc_separated_gaussians_score_near_zero_overlapping_near_minus_two():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 200)
    base = rng.normal(size=(400, 2))
    far = base + np.where(labels[:, None] == 1, [10.0, 0.0], [0.0, 0.0])
    near = base + np.where(labels[:, None] == 1, [0.1, 0.0], [0.0, 0.0])
    sep, over = gbc(far, labels, pca_dim=2), gbc(near, labels, pca_dim=2)
    assert sep["score"] > -1e-3  # 2 exp(-100/8) ~ 7e-6
    assert over["score"] < -1.95  # 2 coefficients of ~0.99 each
    assert sep["dims"] == 2
    assert gbc(far, labels, pca_dim=1)["dims"] == 1


def test_knn_and_linear_probe_accuracy():
    tr = np.array([[0.], [0.1], [0.2], [5.], [5.1], [5.2]])
    ty = np.array([0, 0, 0, 1, 1, 1])
    va, vy = np.array([[0.05], [5.05], [4.9]]), np.array([0, 1, 0])
    assert knn_accuracy(tr, ty, va, vy, k=3) == pytest.approx(2 / 3)
    assert knn_accuracy(tr, ty, va, vy, k=1) == pytest.approx(2 / 3)
    assert linear_probe_accuracy(tr, ty, va[:2], vy[:2]) == 1.0
