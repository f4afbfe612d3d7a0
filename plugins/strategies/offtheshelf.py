"""Off-the-shelf features with a shallow model (lecture, "Off-the-shelf (Feature
Extractor)": "use outputs of one or more layers of a network trained on a different task
as generic feature detectors. Train a new shallow model on these features"; Razavian et
al. 2014, "CNN Features off-the-shelf: an Astounding Baseline for Recognition", who use a
linear SVM)."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from harness.train.data import DataSplits
from harness.train.model import TransferModel
from harness.train.strategy import Strategy
from harness.train.loop import EpochRecord, History, TrainContext, evaluate

from .frozen import extract_features

MODELS = ("logreg", "svm")


def linear_from_sklearn(clf, scaler, num_classes: int) -> nn.Linear:
    """A torch ``Linear`` whose outputs give the fitted scikit-learn model's decisions.

    The standardisation ``(x - mean) / scale`` is folded into the weights. For two
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
    mean = np.asarray(scaler.mean_, dtype=np.float64)
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    w = coef / scale[None, :]
    b = intercept - w @ mean
    layer = nn.Linear(coef.shape[1], num_classes)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
        layer.bias.copy_(torch.from_numpy(b))
    return layer


class OffTheShelf(Strategy):
    """Frozen pretrained backbone features, then scikit-learn logistic regression or a
    linear SVM; the fitted model becomes the network's head.

    The backbone runs once (eval mode) over the train and validation splits; features
    are standardised and the shallow model is fitted on the training features. Its
    weights are then installed in ``model.head`` as an equivalent ``torch.nn.Linear``
    (standardisation folded in), so test evaluation, ONNX export and latency measure the
    deployed network. ``fit`` returns a history of one record (train and validation
    loss/metric of the fitted model). Classification only.

    Early stopping: none needed; the shallow model is fitted to convergence by its
    solver (``max_iter``) with L2 regularisation ``C``. Batch norm: frozen; the backbone
    stays in eval mode.

    Args:
        model: ``"logreg"`` (multinomial logistic regression) or ``"svm"`` (LinearSVC,
            one-vs-rest).
        C: inverse regularisation strength.
        max_iter: solver iterations.
    """

    bn_policy = "freeze"

    def __init__(self, model: str = "logreg", C: float = 1.0, max_iter: int = 1000):
        if model not in MODELS:
            raise ValueError(f"offtheshelf model must be one of {', '.join(MODELS)}, "
                             f"not {model!r}")
        if float(C) <= 0:
            raise ValueError(f"C must be > 0, not {C!r}")
        self.model = model
        self.C = float(C)
        self.max_iter = int(max_iter)

    def _classifier(self, seed: int):
        if self.model == "logreg":
            from sklearn.linear_model import LogisticRegression
            return LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=seed)
        from sklearn.svm import LinearSVC
        return LinearSVC(C=self.C, max_iter=self.max_iter, random_state=seed)

    def trained_parameters(self, model, ctx):
        """The head only (replaced by the fitted linear model); the backbone stays."""
        return [f"head.{n}" for n, _ in model.head.named_parameters()]

    def fit(self, model: TransferModel, data: DataSplits, ctx: TrainContext) -> History:
        from sklearn.preprocessing import StandardScaler

        t0 = time.perf_counter()
        if model.head_input != "pooled" or data.train.targets.dim() != 1 \
                or data.train.targets.dtype != torch.long:
            raise ValueError("offtheshelf fits a linear classifier on pooled features: use it "
                             "with a classification task (integer class labels)")
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        train = extract_features(model, data.train, ctx.eval_batch_size, ctx)
        val = extract_features(model, data.val, ctx.eval_batch_size, ctx)
        x = train.images.double().cpu().numpy()  # scikit-learn fits on the CPU
        scaler = StandardScaler().fit(x)
        clf = self._classifier(ctx.settings.seed).fit(scaler.transform(x),
                                                      train.targets.cpu().numpy())
        model.head = linear_from_sklearn(clf, scaler, ctx.info.num_classes)
        model.head.requires_grad_(False)
        ctx.place(model)  # the fitted head joins the backbone on the training device
        ctx.progress(f"offtheshelf {self.model} fitted")
        head = model.head
        tr_loss, tr_m = evaluate(head, train, ctx)
        va_loss, va_m = evaluate(head, val, ctx)
        pm = ctx.task.primary_metric
        history = History()
        seconds = time.perf_counter() - t0
        history.epochs.append(EpochRecord(
            phase=f"offtheshelf-{self.model}", epoch=0, train_loss=tr_loss,
            train_metric=float(tr_m[pm]), val_loss=va_loss, val_metric=float(va_m[pm]),
            lr=0.0, seconds=seconds, trainable_groups=["head"]))
        history.phases.append({"name": f"offtheshelf-{self.model}", "groups": ["head"],
                               "epochs_run": 1, "best_epoch": 0, "best_val_loss": va_loss,
                               "restored_best": False, "seconds": seconds,
                               "solver_iterations": int(np.max(clf.n_iter_))})
        history.seconds = seconds
        return history
