"""Rank backbones before training: transferability estimators on frozen features.

For every (dataset, backbone with its weights, seed) of a matrix the backbone runs once,
frozen and in eval mode, over the training and validation images (the frozen strategy's
extractor, ``harness.train.features.extract_features``); every estimator then scores the
same features, each timed on its own. The weights' own classifier, where the weight
source kept it (:class:`harness.model.SourceClassifier`), gives the source-class
probabilities LEEP and NCE need. A unit that fails (weights that cannot be had, a
non-classification task) records its error and the ranking goes on. The tables are in
:mod:`harness.report.ranking`.
"""
from __future__ import annotations

import math
import time
import traceback
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn

from ..api.errors import ConfigError, EstimatorUnavailable
from ..api.manager import PluginSystem
from ..api.specs import EstimatorInput, EstimatorSpec
from ..train.features import extract_features
from ..train.model import TransferModel
from .cell import build_backbone, load_data
from .config import AxisItem, CellConfig, MatrixConfig
from .contracts import plugin_label

DEFAULT_ESTIMATOR = "logme"


def resolve_estimators(plugins: PluginSystem, names: Iterable[str]) -> list[tuple[AxisItem,
                                                                                 EstimatorSpec]]:
    """``["logme", "gbc,pca_dim=32"]`` -> items with their specs; unknown names list the
    registered ones, and every estimator when ``names`` is empty."""
    items = [AxisItem.parse(n, "estimator") for n in names] or \
        [AxisItem(n) for n in plugins.estimators.names()]
    return [(item, plugins.estimators.get(item.name)) for item in items]


def rank_units(matrix: MatrixConfig) -> list[CellConfig]:
    """One unit per (dataset, task, backbone, weights, seed) of the matrix: its cells
    without the strategy axis (every pretrained strategy starts from the same weights)."""
    seen, out = set(), []
    for cfg in matrix.cells():
        key = (cfg.dataset.label(), cfg.task.label(), cfg.backbone.label(), cfg.weights,
               cfg.seed)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def _softmax(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=1).numpy()


def frozen_inputs(plugins: PluginSystem, cfg: CellConfig,
                  progress: Callable[[str], None] = lambda m: None) -> tuple[EstimatorInput,
                                                                           dict]:
    """The estimators' inputs for one unit, and facts about it (weights, sizes, seconds)."""
    data = load_data(plugins, cfg)
    if data.train.targets.dim() != 1 or data.train.targets.dtype != torch.long:
        raise ConfigError(f"transferability estimators score class labels; task "
                          f"{cfg.task.label()!r} on {cfg.dataset.label()!r} has targets of "
                          f"shape {tuple(data.train.targets.shape[1:])}: rank a "
                          "classification task")
    t0 = time.perf_counter()
    _spec, backbone, winfo, _scratch = build_backbone(plugins, cfg, pretrained=True,
                                                      progress=progress)
    weights_seconds = time.perf_counter() - t0
    model = TransferModel(backbone, nn.Identity(), "pooled")
    batch = int(cfg.train.get("batch_size") or 32)
    progress("extracting features")
    t0 = time.perf_counter()
    train = extract_features(model, data.train, batch)
    val = extract_features(model, data.val, batch)
    feature_seconds = time.perf_counter() - t0
    head = getattr(backbone, "source_classifier", None)
    probs, missing, classes = None, "", ""
    if head is not None:
        with torch.no_grad():
            probs = _softmax(head.logits(train.images))
        classes = head.classes
    else:
        missing = (f"the weights {winfo.get('short') or winfo.get('source')!r} keep no "
                   "source classifier")
    inputs = EstimatorInput(
        features=train.images.double().numpy(), labels=train.targets.numpy(),
        val_features=val.images.double().numpy(), val_labels=val.targets.numpy(),
        num_classes=data.info.num_classes, source_probs=probs, source_classes=classes,
        source_missing=missing, seed=cfg.seed)
    facts = {"weights": winfo, "n_train": len(train.targets), "n_val": len(val.targets),
             "feature_dim": int(train.images.shape[1]), "weights_seconds": weights_seconds,
             "feature_seconds": feature_seconds, "source_classes": classes or None}
    return inputs, facts


def score(inputs: EstimatorInput, item: AxisItem, spec: EstimatorSpec,
          who: Optional[str] = None) -> dict:
    """One estimate, timed: ``{"score", "seconds", ...diagnostics}``, or ``{"unavailable"}``
    / ``{"error"}`` with the reason and ``score`` None.

    A score that is not a finite number (NaN, inf, None, text) is the estimator's error:
    the estimate says so by name (``who``, e.g. ``estimator 'x' of plugin 'p' (dist 1.0)``)
    and ranks nothing, in ``bench rank`` and in ``--rank-first``."""
    who = who or f"estimator {item.label()!r}"
    t0 = time.perf_counter()
    try:
        out = spec.score(inputs, **item.kwargs)
    except EstimatorUnavailable as exc:
        return {"score": None, "unavailable": str(exc), "seconds": time.perf_counter() - t0}
    except TypeError as exc:
        if "argument" in str(exc):  # a parameter the estimator does not take
            raise ConfigError(f"estimator {item.label()!r}: {exc}") from None
        return {"score": None, "error": f"{who} failed: TypeError: {exc}",
                "seconds": time.perf_counter() - t0}
    except Exception as exc:  # a failing estimate records its error and the others go on
        return {"score": None, "error": f"{who} failed: {type(exc).__name__}: {exc}",
                "seconds": time.perf_counter() - t0}
    seconds = time.perf_counter() - t0
    out = dict(out) if isinstance(out, dict) else {"score": out}
    value = out.get("score")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not math.isfinite(number):
        return {"score": None, "seconds": seconds,
                "error": f"{who} returned a score that is not a finite number ({value!r}); "
                         f"it ranks nothing until the estimator is fixed"}
    out["score"] = number
    out["seconds"] = seconds
    return out


def rank_matrix(plugins: PluginSystem, matrix: MatrixConfig,
                estimators: list[tuple[AxisItem, EstimatorSpec]],
                units: Optional[list[CellConfig]] = None,
                progress: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Score every unit of ``matrix`` (or the given ``units``) with every estimator.

    Returns:
        One row per unit: ``dataset``, ``backbone``, ``weights`` (source string),
        ``weights_label``, ``seed``, the facts of :func:`frozen_inputs` and ``estimates``
        (estimator label -> :func:`score`'s dict); a unit that failed has ``error``.
    """
    rows = []
    for cfg in units if units is not None else rank_units(matrix):
        row = {"dataset": cfg.dataset.label(), "task": cfg.task.label(),
               "backbone": cfg.backbone.label(), "weights": cfg.weights, "seed": cfg.seed,
               "image_size": cfg.image_size, "estimates": {}}
        progress(f"{row['backbone']} on {row['dataset']}")
        try:
            inputs, facts = frozen_inputs(plugins, cfg, progress)
        except ConfigError:
            raise
        except Exception as exc:
            row.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            rows.append(row)
            continue
        winfo = facts.pop("weights")
        row["weights"] = winfo.get("source", cfg.weights)
        row["weights_label"] = winfo.get("short") or winfo.get("description")
        row.update(facts)
        for item, spec in estimators:
            progress(f"{item.label()} {row['backbone']} on {row['dataset']}")
            row["estimates"][item.label()] = score(
                inputs, item, spec, who=plugin_label(plugins, "estimators", spec.name))
        rows.append(row)
    return rows


def pair_scores(rows: list[dict], estimator: str) -> dict:
    """``{(dataset, backbone, weights): mean score over seeds}`` of one estimator (pairs it
    could not score are left out)."""
    acc: dict = {}
    for r in rows:
        est = r.get("estimates", {}).get(estimator) or {}
        if est.get("score") is not None:
            acc.setdefault((r["dataset"], r["backbone"], r["weights"]), []).append(est["score"])
    return {k: float(np.mean(v)) for k, v in acc.items()}


def top_backbones(rows: list[dict], estimator: str, k: int,
                  higher_is_better: bool = True) -> dict:
    """Per dataset, the backbone labels of the ``k`` best-scored pairs, best first."""
    by_ds: dict = {}
    for (ds, bb, _w), s in pair_scores(rows, estimator).items():
        by_ds.setdefault(ds, []).append((s, bb))
    return {ds: [bb for _s, bb in sorted(v, key=lambda t: t[0], reverse=higher_is_better)[:k]]
            for ds, v in by_ds.items()}
