"""Off-the-shelf features with a shallow model (lecture, "Off-the-shelf (Feature
Extractor)": "use outputs of one or more layers of a network trained on a different task
as generic feature detectors. Train a new shallow model on these features"; Razavian et
al. 2014, "CNN Features off-the-shelf: an Astounding Baseline for Recognition", CVPR
workshops: the feature vector "L2 normalized to unit length", then a linear SVM)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from harness.api.lazy import lazy_exports
from harness.train.strategy import Strategy

if TYPE_CHECKING:  # numpy and torch are imported in fit: bench list reads the parameters
    import numpy as np

    from harness.train.data import DataSplits
    from harness.train.loop import History, TrainContext
    from harness.train.model import TransferModel

MODELS = ("logreg", "svm")
NORMALIZATIONS = ("l2", "standard")
#: the C values tried when ``C="val"``: a log grid; the one with the best validation
#: accuracy wins (the smaller C, i.e. more regularisation, on a tie)
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


class OffTheShelf(Strategy):
    """Frozen pretrained backbone features, then a linear SVM (default) or logistic
    regression from scikit-learn; the fitted model becomes the network's head.

    Default, Razavian et al.'s recipe: pooled features L2-normalised to unit length, a
    linear SVM (``LinearSVC``, one-vs-rest), and its regularisation ``C`` picked on the
    validation split from :data:`C_GRID` (``C="val"``; the paper tunes it on held-out
    data, the grid is ours). ``model=logreg,normalize=standard,C=1`` is the earlier
    recipe of this benchmark (standardised features, logistic regression, fixed C).

    The backbone runs once (eval mode) over the train and validation splits; the shallow
    model is fitted on the training features. It is then installed in ``model.head`` as
    ``[L2Normalize] + Linear`` (standardisation folded into the linear layer), so test
    evaluation, ONNX export and latency measure the deployed network. ``fit`` records the
    model before fitting (``History.start``, with the task's untrained head) and one
    record for the fitted model; the phase lists the validation accuracy of every C
    tried. Classification only.

    Early stopping: none needed; the solver runs to convergence (``max_iter``). Batch
    norm: frozen; the backbone stays in eval mode. Budget: no optimizer steps; training
    FLOPs count the backbone pass over the training images only (the solver's work is
    not counted, and the record says so).

    Args:
        model: ``"svm"`` (LinearSVC) or ``"logreg"`` (multinomial logistic regression).
        normalize: ``"l2"`` (unit length) or ``"standard"`` (zero mean, unit variance).
        C: inverse regularisation strength, or ``"val"`` to pick it on validation.
        max_iter: solver iterations.
    """

    bn_policy = "freeze"

    def __init__(self, model: str = "svm", normalize: str = "l2", C: object = "val",
                 max_iter: int = 5000):
        if model not in MODELS:
            raise ValueError(f"offtheshelf model must be one of {', '.join(MODELS)}, "
                             f"not {model!r}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"offtheshelf normalize must be one of "
                             f"{', '.join(NORMALIZATIONS)}, not {normalize!r}")
        if C != "val" and (isinstance(C, bool) or not isinstance(C, (int, float))
                           or float(C) <= 0):
            raise ValueError(f"C must be a number > 0 or 'val' (picked on validation), "
                             f"not {C!r}")
        self.model = model
        self.normalize = normalize
        self.C = C if C == "val" else float(C)
        self.max_iter = int(max_iter)

    def _classifier(self, seed: int, C: float):
        if self.model == "logreg":
            from sklearn.linear_model import LogisticRegression
            return LogisticRegression(C=C, max_iter=self.max_iter, random_state=seed)
        from sklearn.svm import LinearSVC
        return LinearSVC(C=C, max_iter=self.max_iter, random_state=seed)

    def _prepare(self, x: np.ndarray):
        """(scaler or None, a function mapping features to the classifier's input)."""
        import numpy as np

        if self.normalize == "standard":
            from sklearn.preprocessing import StandardScaler
            scaler = StandardScaler().fit(x)
            return scaler, scaler.transform
        return None, lambda z: z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def trained_parameters(self, model, ctx):
        """The head only (replaced by the fitted linear model); the backbone stays."""
        return [f"head.{n}" for n, _ in model.head.named_parameters()]

    def fit(self, model: TransferModel, data: DataSplits, ctx: TrainContext) -> History:
        import warnings

        import numpy as np
        import torch
        from sklearn.exceptions import ConvergenceWarning
        from torch import nn

        from harness.train.features import extract_features, extraction_flops
        from harness.train.loop import EpochRecord, evaluate, record_start
        from harness.train.model import HeadOnly

        from ._linear_head import L2Normalize, linear_from_sklearn

        t0 = time.perf_counter()
        if model.head_input != "pooled" or data.train.targets.dim() != 1 \
                or data.train.targets.dtype != torch.long:
            raise ValueError("offtheshelf fits a linear classifier on pooled features: use it "
                             "with a classification task (integer class labels)")
        history = ctx.new_history(len(data.train), model, data.train)
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        train = extract_features(model, data.train, ctx.eval_batch_size, ctx)
        val = extract_features(model, data.val, ctx.eval_batch_size, ctx)
        record_start(HeadOnly(model.head), val, ctx, history)
        history.usage.add_flops(extraction_flops(model, data.train))
        history.usage.flops_note = ("backbone pass over the training images only; the "
                                    "scikit-learn solver's work is not counted")
        x, xv = train.images.double().cpu().numpy(), val.images.double().cpu().numpy()
        scaler, prep = self._prepare(x)
        xt, xvt, yt = prep(x), prep(xv), train.targets.cpu().numpy()
        grid = C_GRID if self.C == "val" else (self.C,)
        tried, fitted = [], []
        for C in grid:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                clf = self._classifier(ctx.settings.seed, C).fit(xt, yt)
            acc = float((clf.predict(xvt) == val.targets.cpu().numpy()).mean())
            converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
            tried.append({"C": C, "val_accuracy": acc, "converged": converged,
                          "iterations": int(np.max(clf.n_iter_))})
            fitted.append(clf)
        pick = max(range(len(grid)), key=lambda i: (tried[i]["val_accuracy"], -grid[i]))
        clf = fitted[pick]
        linear = linear_from_sklearn(clf, scaler, ctx.info.num_classes)
        model.head = nn.Sequential(L2Normalize(), linear) if self.normalize == "l2" else linear
        model.head.requires_grad_(False)
        ctx.place(model)  # the fitted head joins the backbone on the training device
        label = f"offtheshelf-{self.model}-{self.normalize}"
        ctx.progress(f"{label} fitted, C={grid[pick]:g}")
        head = HeadOnly(model.head)
        tr_loss, tr_m = evaluate(head, train, ctx)
        va_loss, va_m = evaluate(head, val, ctx)
        pm = ctx.task.primary_metric
        seconds = time.perf_counter() - t0
        history.epochs.append(EpochRecord(
            phase=label, epoch=0, train_loss=tr_loss,
            train_metric=float(tr_m[pm]), val_loss=va_loss, val_metric=float(va_m[pm]),
            lr=0.0, seconds=seconds, trainable_groups=["head"], images=len(train)))
        history.usage.epochs = 1
        history.kept_epoch = len(history.epochs) - 1  # the fitted model is the one delivered
        history.usage.images = len(train)
        history.phases.append({"name": label, "groups": ["head"],
                               "epochs_run": 1, "best_epoch": 0, "best_val_loss": va_loss,
                               "restored_best": False, "seconds": seconds,
                               "C": grid[pick], "C_search": tried,
                               "solver_iterations": tried[pick]["iterations"]})
        history.seconds = seconds
        return history


# names defined here before they moved to _linear_head.py (torch-free import of this module)
__getattr__ = lazy_exports(__name__, {"L2Normalize": ("._linear_head", "L2Normalize"),
                                      "linear_from_sklearn": ("._linear_head",
                                                              "linear_from_sklearn")})
