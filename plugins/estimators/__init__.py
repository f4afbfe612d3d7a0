"""Built-in transferability estimators (``bench list estimators``), one module per method.

Each scores frozen features computed once per backbone, weights and target dataset
(:class:`harness.specs.EstimatorInput`); higher is better for all of them.
"""
from __future__ import annotations

import numpy as np

from harness import EstimatorSpec, hookimpl
from harness.api.errors import EstimatorUnavailable

from .gbc import gbc
from .hscore import h_score
from .leep import leep, nce
from .logme import logme
from .probes import knn_accuracy, linear_probe_accuracy


def _source(inputs, name: str) -> np.ndarray:
    if inputs.source_probs is None:
        raise EstimatorUnavailable(
            f"{name} needs the classifier the weights were trained with, and "
            f"{inputs.source_missing or 'these weights have none'}; use weights that keep "
            "it (packaged, lite0-packaged, source:DATASET) or an estimator that needs none "
            "(logme, hscore, gbc, knn, linear_probe)")
    return np.asarray(inputs.source_probs, dtype=np.float64)


def _logme(inputs, tol: float = 1e-5, max_iter: int = 1000) -> dict:
    out = logme(inputs.features, inputs.labels, inputs.num_classes, tol=float(tol),
                max_iter=int(max_iter))
    return {"score": out["score"], "converged": out["converged"],
            "iterations": out["iterations"]}


def _leep(inputs) -> float:
    return leep(_source(inputs, "LEEP"), inputs.labels, inputs.num_classes)


def _nce(inputs) -> float:
    probs = _source(inputs, "NCE")
    return nce(probs.argmax(1), inputs.labels, probs.shape[1], inputs.num_classes)


def _hscore(inputs) -> float:
    return h_score(inputs.features, inputs.labels)


def _gbc(inputs, pca_dim: int = 64) -> dict:
    return gbc(inputs.features, inputs.labels, pca_dim=int(pca_dim))


def _knn(inputs, k: int = 5) -> float:
    return knn_accuracy(inputs.features, inputs.labels, inputs.val_features, inputs.val_labels,
                        k=int(k))


def _linear_probe(inputs, C: float = 1.0, max_iter: int = 1000) -> float:
    return linear_probe_accuracy(inputs.features, inputs.labels, inputs.val_features,
                                 inputs.val_labels, C=float(C), max_iter=int(max_iter),
                                 seed=inputs.seed)


@hookimpl
def register_estimators():
    return [
        EstimatorSpec("logme", score=_logme,
                      description="LogME, log maximum evidence of a Bayesian linear model "
                                  "(You et al. 2021)"),
        EstimatorSpec("leep", score=_leep, needs_source_classifier=True,
                      description="LEEP, log expected empirical prediction through the "
                                  "source classifier (Nguyen et al. 2020)"),
        EstimatorSpec("nce", score=_nce, needs_source_classifier=True,
                      description="NCE, negative conditional entropy of target given source "
                                  "labels (Tran et al. 2019)"),
        EstimatorSpec("hscore", score=_hscore,
                      description="H-score, tr(cov(f)^-1 cov(E[f|y])) (Bao et al. 2019)"),
        EstimatorSpec("gbc", score=_gbc,
                      description="GBC, minus the summed Bhattacharyya coefficients of "
                                  "per-class Gaussians after PCA (Pandy et al. 2022)"),
        EstimatorSpec("knn", score=_knn,
                      description="validation accuracy of a 5-nearest-neighbour vote on the "
                                  "frozen features"),
        EstimatorSpec("linear_probe", score=_linear_probe,
                      description="validation accuracy of logistic regression on the frozen "
                                  "features"),
    ]
