"""Built-in transferability estimators (``bench list estimators``), one module per method.

Each scores frozen features computed once per backbone, weights and target dataset
(:class:`harness.specs.EstimatorInput`); higher is better for all of them.
"""
from __future__ import annotations

from harness import EstimatorSpec, hookimpl
from harness.api.errors import EstimatorUnavailable

# Each method's module (numpy, scikit-learn) is imported when the estimator runs, not here:
# importing the plugin (bench --help, bench list) stays cheap.


def _source(inputs, name: str) -> "np.ndarray":
    import numpy as np

    if inputs.source_probs is None:
        raise EstimatorUnavailable(
            f"{name} needs the classifier the weights were trained with, and "
            f"{inputs.source_missing or 'these weights have none'}; use weights that keep "
            "it (packaged, lite0-packaged, source:DATASET) or an estimator that needs none "
            "(logme, hscore, gbc, knn, linear_probe)")
    return np.asarray(inputs.source_probs, dtype=np.float64)


def _logme(inputs, tol: float = 1e-5, max_iter: int = 1000) -> dict:
    from .logme import logme

    out = logme(inputs.features, inputs.labels, inputs.num_classes, tol=float(tol),
                max_iter=int(max_iter))
    return {"score": out["score"], "converged": out["converged"],
            "iterations": out["iterations"]}


def _leep(inputs) -> float:
    from .leep import leep

    return leep(_source(inputs, "LEEP"), inputs.labels, inputs.num_classes)


def _nce(inputs) -> float:
    from .leep import nce

    probs = _source(inputs, "NCE")
    return nce(probs.argmax(1), inputs.labels, probs.shape[1], inputs.num_classes)


def _hscore(inputs) -> float:
    from .hscore import h_score

    return h_score(inputs.features, inputs.labels)


def _gbc(inputs, pca_dim: int = 64) -> dict:
    from .gbc import gbc

    return gbc(inputs.features, inputs.labels, pca_dim=int(pca_dim))


def _knn(inputs, k: int = 5) -> float:
    from .probes import knn_accuracy

    return knn_accuracy(inputs.features, inputs.labels, inputs.val_features, inputs.val_labels,
                        k=int(k))


def _linear_probe(inputs, C: float = 1.0, max_iter: int = 1000) -> float:
    from .probes import linear_probe_accuracy

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
