"""The torch head a fitted scikit-learn linear model becomes (off-the-shelf strategy)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class L2Normalize(nn.Module):
    """Scale each feature vector to unit L2 length (Razavian et al. 2014)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, p=2.0, dim=1)


def linear_from_sklearn(clf, scaler, num_classes: int) -> nn.Linear:
    """A torch ``Linear`` whose outputs give the fitted scikit-learn model's decisions.

    The standardisation ``(x - mean) / scale`` is folded into the weights (``scaler=None``:
    the classifier saw the features as they come). For two
    classes scikit-learn keeps one decision value ``d`` (for class 1); the layer outputs
    ``(0, d)``, whose softmax is exactly logistic regression's ``predict_proba`` and
    whose argmax is the SVM's prediction.
    """
    coef = np.asarray(clf.coef_, dtype=np.float64)
    intercept = np.asarray(clf.intercept_, dtype=np.float64).reshape(-1)
    if coef.shape[0] == 1 and num_classes == 2:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    if coef.shape[0] != num_classes:
        raise ValueError(f"the shallow model saw {coef.shape[0]} classes in training but "
                         f"the dataset has {num_classes}; every class needs training images")
    mean = (np.zeros(coef.shape[1]) if scaler is None
            else np.asarray(scaler.mean_, dtype=np.float64))
    scale = (np.ones(coef.shape[1]) if scaler is None
             else np.asarray(scaler.scale_, dtype=np.float64))
    w = coef / scale[None, :]
    b = intercept - w @ mean
    layer = nn.Linear(coef.shape[1], num_classes)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
        layer.bias.copy_(torch.from_numpy(b))
    return layer
