"""The plugin test kit: pytest fixtures and conformance checks for plugin authors.

Installed with transfer-bench as a pytest plugin (entry point ``pytest11`` named
``transfer_bench``), so a plugin package's tests can use, with no import:

- ``plugin_system``: a fresh :class:`harness.api.manager.PluginSystem` with the built-ins and
  every installed entry-point plugin (yours included), installed as the process-wide one;
- ``register_plugin``: register a plugin object for one test (gone afterwards);
- ``tiny_splits``: a learnable 4-class problem of 16x16 images.

and call the conformance checks against what the plugin registers::

    from harness.testkit import check_backbone, check_strategy

    def test_my_backbone(plugin_system):
        check_backbone(plugin_system.backbones.get("my_net"))

Each check raises :class:`ConformanceError` (an ``AssertionError``) with a message that
names the spec and what to fix, and returns a small dict of what it measured.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
import torch
from torch import nn

from .train.data import DataInfo, DataSplits
from .train.model import Backbone, TransferModel
from .api.specs import (BackboneSpec, DatasetSpec, ReporterSpec, RuntimeSpec, StrategySpec,
                        TaskSpec, WeightSourceSpec)


from .kitparts import (ConformanceError, TestkitPlugin, TinyBackbone,  # noqa: F401
                       _load_tiny, _require, make_tiny_splits, tiny_backbone_spec,
                       tiny_dataset_spec)


# -- conformance checks -----------------------------------------------------------------------
def check_backbone(spec: BackboneSpec, image_size: int = 32, batch: int = 2,
                   weights: Optional[str] = None, plugins: Any = None, onnx: bool = True,
                   **build_params: Any) -> dict:
    """Check that a backbone builds, runs, and describes its layers as the harness needs.

    Long on purpose: a checklist of the hook's contract, one short step per promise, in the
    order a failure is easiest to read; split up it would be one-use helpers.

    Checked: ``build(**build_params)`` returns a :class:`harness.train.model.Backbone`; ``forward``
    gives ``(batch, num_features)`` and ``forward_spatial`` ``(batch, feature_channels, h, w)``;
    ``layer_groups()`` is non-empty, has unique names, and holds every parameter exactly
    once; one training step through a :class:`TransferModel` gives every parameter a
    gradient; with ``onnx`` the model exports to ONNX (the slowest check). With ``weights`` (e.g. ``"packaged"``) and
    ``plugins``, that weight source also loads into the backbone and changes it.

    Returns:
        ``{"num_features", "feature_channels", "params", "groups"}``.
    """
    what = f"backbone {spec.name!r}"
    _require(isinstance(spec, BackboneSpec), what, "is not a harness.api.specs.BackboneSpec")
    torch.manual_seed(0)
    bb = spec.build(**build_params)
    _require(isinstance(bb, Backbone), what,
             f"build() returned {type(bb).__name__}; subclass harness.train.model.Backbone")
    for attr in ("num_features", "feature_channels"):
        _require(isinstance(getattr(bb, attr, None), int) and getattr(bb, attr) > 0, what,
                 f"set {attr} to a positive int")
    for attr in ("mean", "std"):
        _require(len(tuple(getattr(bb, attr))) == 3, what, f"{attr} must have 3 values")
    bb.eval()
    x = torch.rand(batch, 3, image_size, image_size)
    with torch.no_grad():
        pooled = bb(x)
        spatial = bb.forward_spatial(x)
    _require(tuple(pooled.shape) == (batch, bb.num_features), what,
             f"forward gave {tuple(pooled.shape)}, expected ({batch}, {bb.num_features})")
    _require(spatial.dim() == 4 and spatial.shape[:2] == (batch, bb.feature_channels), what,
             f"forward_spatial gave {tuple(spatial.shape)}, expected "
             f"({batch}, {bb.feature_channels}, h, w)")
    _require(bool(torch.isfinite(pooled).all()), what, "forward gave non-finite values")

    groups = bb.layer_groups()
    names = [g.name for g in groups]
    _require(len(groups) > 0, what, "layer_groups() is empty")
    _require(len(set(names)) == len(names), what, f"layer group names repeat: {names}")
    _require("head" not in names, what, "a layer group may not be called 'head' (the task's)")
    all_params = [n for n, _ in bb.named_parameters()]
    listed = [p for g in groups for p in g.params]
    missing = sorted(set(all_params) - set(listed))
    extra = sorted(set(listed) - set(all_params))
    twice = sorted({p for p in listed if listed.count(p) > 1})
    _require(not missing, what, f"parameters in no layer group: {missing[:5]}")
    _require(not extra, what, f"layer groups name parameters that do not exist: {extra[:5]}")
    _require(not twice, what, f"parameters in more than one layer group: {twice[:5]}")

    model = TransferModel(bb, nn.Linear(bb.num_features, 3)).train()
    loss = model(torch.rand(batch + 2, 3, image_size, image_size)).logsumexp(1).mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    _require(not no_grad, what, f"parameters got no gradient (unused?): {no_grad[:5]}")

    if onnx:
        from .measure.export import export_onnx
        with tempfile.TemporaryDirectory() as tmp:
            try:
                export_onnx(model.eval(), image_size, Path(tmp) / "m.onnx")
            except Exception as exc:
                raise ConformanceError(f"{what}: ONNX export failed: {type(exc).__name__}: "
                                       f"{exc}") from exc

    if weights is not None:
        _require(plugins is not None, what, "pass plugins=plugin_system to check weights")
        ws, arg = plugins.weights.resolve(weights)
        fresh = spec.build(**build_params)
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        info = ws.load(spec, fresh, arg, {  # the keys a training cell on the CPU passes
            "cache_dir": Path(tempfile.gettempdir()), "plugins": plugins,
            "image_size": image_size, "seed": 0, "dataset": "testkit_quadrants",
            "dataset_params": {}, "progress": lambda message: None, "device": "cpu",
            "amp": "off"}) or {}
        _require(isinstance(info, dict), what, f"weight source {ws.name!r} must return a dict")
        changed = sum(not torch.equal(before[k], v) for k, v in fresh.state_dict().items())
        _require(changed > 0 or not ws.pretrained, what,
                 f"weight source {ws.name!r} loaded but changed no tensor")
    return {"num_features": bb.num_features, "feature_channels": bb.feature_channels,
            "params": len(all_params), "groups": names}


def check_task(spec: TaskSpec, splits: Optional[DataSplits] = None,
               backbone: Optional[Backbone] = None, **params: Any) -> dict:
    """Check that a task builds a head, a differentiable loss and JSON-able metrics, and,
    where it defines ``flip_targets`` (needed for ``augment``), that mirroring twice is the
    identity.

    Args:
        spec: the task's spec.
        splits: a few labelled examples in the task's target format; the default (the
            tiny 4-class images) fits classification-style tasks only.
        backbone: defaults to :class:`TinyBackbone`.
        **params: passed to ``spec.factory``.

    Returns:
        ``{"primary_metric", "value"}`` on the untrained model.
    """
    what = f"task {spec.name!r}"
    _require(isinstance(spec, TaskSpec), what, "is not a harness.api.specs.TaskSpec")
    splits = splits or make_tiny_splits()
    task = spec.factory(**params)
    _require(task.head_input in ("pooled", "spatial"), what,
             f"head_input is {task.head_input!r}; use 'pooled' or 'spatial'")
    torch.manual_seed(0)
    bb = backbone or TinyBackbone()
    head = task.build_head(bb, splits.info)
    _require(isinstance(head, nn.Module), what, "build_head must return an nn.Module")
    model = TransferModel(bb, head, task.head_input).train()
    x, y = next(iter(splits.train.batches(8)))
    out = model(x)
    loss = task.loss(out, y)
    _require(torch.is_tensor(loss) and loss.dim() == 0, what, "loss must be a scalar tensor")
    _require(bool(torch.isfinite(loss)), what, f"loss is {float(loss.detach())}")
    loss.backward()
    _require(any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters()),
             what, "the loss gives the head no gradient")
    for split in ("train", "test"):
        problem = task.check_targets(getattr(splits, split).targets, splits.info)
        _require(problem is None, what, f"check_targets() rejects the {split} targets of "
                 f"the splits given: {problem}")
    from .train.loop import predict
    metrics = task.metrics(predict(model, splits.test), splits.test.targets, splits.info)
    _require(task.primary_metric in metrics, what,
             f"metrics() lacks the primary metric {task.primary_metric!r}: {sorted(metrics)}")
    value = metrics[task.primary_metric]
    _require(isinstance(value, (int, float)), what,
             f"primary metric {task.primary_metric!r} must be a number, got {value!r}")
    try:
        json.dumps(metrics)
    except TypeError as exc:
        raise ConformanceError(f"{what}: metrics must be JSON-able: {exc}") from exc
    from .train.task import Task
    if type(task).flip_targets is not Task.flip_targets:  # optional: needed for augment
        y = splits.test.targets
        twice = task.flip_targets(task.flip_targets(y, splits.info), splits.info)
        _require(torch.is_tensor(twice) and twice.shape == y.shape
                 and torch.allclose(twice.float(), y.float()), what,
                 "flip_targets applied twice must give back the targets (a mirror of a mirror)")
    return {"primary_metric": task.primary_metric, "value": float(value)}


def check_strategy(spec: StrategySpec, splits: Optional[DataSplits] = None,
                   backbone_spec: Optional[BackboneSpec] = None, epochs: int = 6,
                   margin: float = 0.15, **params: Any) -> dict:
    """Check that a strategy trains what it declares, leaves the rest alone, and learns.

    Long on purpose: a checklist of the hook's contract, one short step per promise, in the
    order a failure is easiest to read; split up it would be one-use helpers.

    The default problem is the 4-class quadrant images (chance 0.25) on
    :class:`TinyBackbone` at random init (there are no pretrained weights for it, so a
    "pretrained" strategy starts from the same random backbone). Checked:

    - ``cls`` subclasses :class:`harness.train.strategy.Strategy`, ``bn_policy`` is ``"freeze"``
      or ``"train"``, and ``cls(**params)`` builds;
    - ``trained_parameters(model, ctx)`` names existing parameters;
    - after ``fit``: every parameter it does not name is bit-identical to before (a
      strategy that claims to freeze a part but trains it fails here), and every one it
      names has changed (or was replaced by a new module);
    - each phase of the shared loop changed every layer group its ``Phase.groups`` names
      and no other (measured before any rollback), as ``bench run`` checks in every cell;
    - ``fit`` returns a :class:`harness.train.loop.History` with at least one epoch, and test
      accuracy beats chance by ``margin``.

    Returns:
        ``{"accuracy", "chance", "epochs", "trained", "frozen"}`` (the last two: how many
        parameter tensors changed and stayed).
    """
    from .train.model import changed_parameters, parameter_fingerprints
    from .train.strategy import Strategy
    from .train.loop import History, TrainContext, TrainSettings, evaluate

    what = f"strategy {spec.name!r}"
    _require(isinstance(spec, StrategySpec), what, "is not a harness.api.specs.StrategySpec")
    _require(isinstance(spec.cls, type) and issubclass(spec.cls, Strategy), what,
             "cls must subclass harness.train.strategy.Strategy")
    _require(spec.cls.bn_policy in ("freeze", "train"), what,
             f"bn_policy is {spec.cls.bn_policy!r}; use 'freeze' or 'train'")
    spec.cls.parameters()  # must be introspectable for `bench list`
    splits = splits or make_tiny_splits()
    task = _ClassificationForChecks()
    def scratch_backbone():
        torch.manual_seed(0)
        return backbone_spec.build() if backbone_spec else TinyBackbone()

    bb = scratch_backbone()
    model = TransferModel(bb, task.build_head(bb, splits.info))
    ctx = TrainContext(task, splits.info, TrainSettings(epochs=epochs, batch_size=32, lr=1e-2,
                                                        patience=epochs))
    ctx.scratch_backbone = scratch_backbone
    strategy = spec.cls(**params)
    declared = list(strategy.trained_parameters(model, ctx))
    names = [n for n, _ in model.named_parameters()]
    unknown = sorted(set(declared) - set(names))
    _require(not unknown, what, f"trained_parameters() names parameters the model does not "
             f"have: {unknown[:5]}; use names from model.named_parameters()")
    before = parameter_fingerprints(model)
    history = strategy.fit(model, splits, ctx)
    _require(isinstance(history, History) and len(history.epochs) > 0, what,
             "fit() must return a harness.train.loop.History with at least one epoch")
    changed = set(changed_parameters(model, before))
    now = {n for n, _ in model.named_parameters()}
    frozen = [n for n in names if n not in set(declared)]
    touched = [n for n in frozen if n in changed or n not in now]
    _require(not touched, what,
             f"changed {len(touched)} of the {len(frozen)} parameters it declares frozen "
             f"({', '.join(touched[:4])}{', ...' if len(touched) > 4 else ''}): freeze them "
             f"(requires_grad_(False)), or name them in trained_parameters()")
    still = [n for n in declared if n in now and n not in changed]
    _require(not still, what,
             f"did not change {len(still)} of the {len(declared)} parameters it declares "
             f"trained ({', '.join(still[:4])}{', ...' if len(still) > 4 else ''}) in "
             f"{len(history.epochs)} epochs: train them, or leave them out of "
             f"trained_parameters()")
    _check_phases(what, history)
    _, metrics = evaluate(model.eval(), splits.test, ctx)
    chance = 1.0 / splits.info.num_classes
    acc = float(metrics["accuracy"])
    _require(acc >= chance + margin, what,
             f"test accuracy {acc:.3f} after {len(history.epochs)} epochs does not beat chance "
             f"{chance:.2f} by {margin}; the strategy does not seem to train the model")
    return {"accuracy": acc, "chance": chance, "epochs": len(history.epochs),
            "trained": len(declared), "frozen": len(frozen)}


def _check_phases(what: str, history) -> None:
    """Each phase the shared loop ran changed the groups it names and no other, as every
    ``bench run`` cell checks (:func:`harness.run.contracts.check_phase`)."""
    from .run.contracts import PluginFault, check_phase
    seen: dict = {}
    for rec in history.phases:
        if isinstance(rec, dict) and "changed_groups" in rec and "groups" in rec:
            try:
                check_phase(what, rec, history, seen)
            except PluginFault as exc:
                raise ConformanceError(str(exc)) from None


class _ClassificationForChecks:
    """Plain cross-entropy classification, so strategy checks need no task plugin."""

    name = "classification"
    head_input = "pooled"
    primary_metric = "accuracy"
    higher_is_better = True

    def build_head(self, backbone, info):
        return nn.Linear(backbone.num_features, info.num_classes)

    def loss(self, outputs, targets):
        return nn.functional.cross_entropy(outputs, targets)

    def metrics(self, outputs, targets, info):
        return {"accuracy": float((outputs.argmax(1) == targets).float().mean())}


def check_runtime(spec: RuntimeSpec, image_size: int = 32, min_count: int = 5) -> dict:
    """Check that a runtime says whether it can run here and, if it can, measures latency
    and computes what PyTorch computes.

    ``available()`` must return ``(bool, str)`` with a reason when False. When available,
    ``measure`` runs on a :class:`TinyBackbone` model (exported to ONNX first if
    ``needs_onnx``) under the ``mobile``-like profile, with the artifacts a run hands it
    (:class:`harness.run.cell.Artifacts`: ``calibration`` and ``test_images`` float32
    numpy arrays in [0, 1]), and must return a list of dicts, each with a ``precision``
    and either ``stats`` (positive ``p50_ms``) or an ``unavailable`` reason. Each measured
    row must return ``test_outputs`` (outputs on every test image) within the precision's
    tolerance of PyTorch's (:func:`harness.run.contracts.compare_outputs`), the check
    every cell of ``bench run`` makes.

    Args:
        image_size: the square input size.
        min_count: timed calls per measurement (kept small: the kit checks, it does not
            benchmark).

    Returns:
        ``{"available", "reason", "results"}``.
    """
    import numpy as np

    from .run.cell import Artifacts
    from .run.contracts import compare_outputs, reference_outputs
    from .measure.latency import MeasureSettings
    from .api.specs import ProfileSpec

    what = f"runtime {spec.name!r}"
    _require(isinstance(spec, RuntimeSpec), what, "is not a harness.api.specs.RuntimeSpec")
    ok_reason = spec.available()
    _require(isinstance(ok_reason, tuple) and len(ok_reason) == 2, what,
             "available() must return (bool, reason)")
    ok, reason = ok_reason
    _require(ok or (isinstance(reason, str) and reason.strip() != ""), what,
             "available() returned False without a reason")
    if not ok:
        return {"available": False, "reason": reason, "results": []}
    torch.manual_seed(0)
    model = TransferModel(TinyBackbone(), nn.Linear(32, 4)).eval()
    rng = np.random.default_rng(0)
    test = rng.random((8, 3, image_size, image_size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        art = Artifacts(model=model, image_size=image_size, workdir=Path(tmp),
                        calibration=rng.random((8, 3, image_size, image_size),
                                               dtype=np.float32),
                        test_images=test)
        if spec.needs_onnx:
            from .measure.export import export_onnx
            art.onnx_path = export_onnx(model, image_size, Path(tmp) / "model.onnx")
        profile = ProfileSpec("testkit", batch_size=1, threads=1)
        settings = MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=min_count, min_s=0.0)
        try:
            results = spec.measure(art, profile, settings)
        except Exception as exc:
            raise ConformanceError(f"{what}: measure() raised {type(exc).__name__}: "
                                   f"{exc}") from exc
    _require(isinstance(results, list) and results, what,
             "measure() must return a non-empty list of dicts")
    reference = reference_outputs(model, test)
    for r in results:
        _require(isinstance(r, dict) and "precision" in r, what,
                 f"each result needs a 'precision': {r!r}")
        if "unavailable" in r:
            _require(bool(str(r["unavailable"]).strip()), what, "an unavailable result needs a reason")
            continue
        stats = r.get("stats") or {}
        _require(stats.get("p50_ms", 0) > 0 and math.isfinite(stats["p50_ms"]), what,
                 f"result {r.get('precision')} has no positive stats['p50_ms']")
        _require(r.get("test_outputs") is not None, what,
                 f"result {r.get('precision')} has no test_outputs; return the outputs on "
                 f"artifacts.test_images, which every run compares with PyTorch's")
        check = compare_outputs(r["test_outputs"], reference, str(r["precision"]))
        _require(check["ok"], what,
                 f"result {r['precision']}: test_outputs disagree with PyTorch's: "
                 f"{check.get('problem') or 'relative RMS difference %.3g > %g' % (check['rel_rms'], check['tolerance'])}")
    return {"available": True, "reason": reason, "results": results}


def _task_objects(spec: DatasetSpec, plugins: Any) -> dict:
    """The task objects of a dataset's declared tasks, from ``plugins`` (default: the
    process-wide plugin system, which the ``plugin_system`` fixture sets)."""
    from .api.manager import get_plugins
    plugins = plugins or get_plugins()
    what = f"dataset {spec.name!r}"
    _require(isinstance(spec.tasks, (tuple, list)) and len(spec.tasks) > 0, what,
             f"tasks is {spec.tasks!r}; give a tuple of task names, e.g. ('classification',)")
    out = {}
    for name in spec.tasks:
        _require(name in plugins.tasks, what,
                 f"declares task {name!r}, which no plugin registers; tasks are "
                 f"{', '.join(plugins.tasks.names())}")
        out[name] = plugins.tasks.get(name).factory()
    return out


def check_dataset(spec: DatasetSpec, image_size: int = 32, seed: int = 0,
                  cache_dir: Optional[Path] = None, plugins: Any = None,
                  **params: Any) -> dict:
    """Check that a dataset loads, for every task it declares, what the harness trains on.

    For each name in ``spec.tasks`` (each must be a registered task), ``spec.load(task=...,
    image_size=..., seed=..., cache_dir=..., **params)`` must return a
    :class:`harness.train.data.DataSplits` whose three splits are non-empty and disjoint (no
    image in two splits), whose images are uint8 ``(N, 3, image_size, image_size)``, and
    whose targets pass the task's :meth:`harness.train.task.Task.check_targets` (class labels in
    ``[0, num_classes)``, boxes ``(N, 4)`` in [0, 1], ...): the checks ``bench run`` makes
    before training (:func:`harness.train.data.validate_splits`). The first task is also loaded
    at ``image_size + 8``, to catch a loader that ignores ``image_size``, and
    ``DataInfo.synthetic`` must match the spec's.

    Args:
        cache_dir: where the loader may download or cache; default a temporary folder,
            removed afterwards.
        plugins: the plugin system whose tasks to use (default: the process-wide one).
        **params: passed to ``load`` (the user's ``-d NAME,k=v``).

    Returns:
        ``{task name: {"train": n, "val": n, "test": n}}``.
    """
    from .train.data import InvalidDataset, validate_splits

    what = f"dataset {spec.name!r}"
    _require(isinstance(spec, DatasetSpec), what, "is not a harness.api.specs.DatasetSpec")
    tasks = _task_objects(spec, plugins)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(cache_dir) if cache_dir is not None else Path(tmp)
        sizes = [image_size, image_size + 8]
        for i, (name, task) in enumerate(tasks.items()):
            for size in sizes[:2 if i == 0 else 1]:
                try:
                    splits = spec.load(task=name, image_size=size, seed=seed, cache_dir=where,
                                       **params)
                except Exception as exc:
                    raise ConformanceError(f"{what}: load(task={name!r}, image_size={size}) "
                                           f"raised {type(exc).__name__}: {exc}") from exc
                try:
                    counts = validate_splits(splits, spec.name, size, task)
                except InvalidDataset as exc:
                    raise ConformanceError(f"{exc} (task {name!r}, image_size={size})") from None
                _require(splits.info.synthetic == spec.synthetic, what,
                         f"DataInfo.synthetic is {splits.info.synthetic} but the spec says "
                         f"synthetic={spec.synthetic}; make them agree")
            out[name] = counts
    return out


def check_weight_source(spec: WeightSourceSpec, backbone_spec: Optional[BackboneSpec] = None,
                        arg: Optional[str] = None, plugins: Any = None,
                        image_size: int = 32) -> dict:
    """Check that a weight source loads weights into a backbone in place, as cells call it.

    Long on purpose: a checklist of the hook's contract, one short step per promise, in the
    order a failure is easiest to read; split up it would be one-use helpers.

    ``spec.load(backbone_spec, backbone, arg, context)`` is called on a freshly built
    backbone (default :class:`TinyBackbone`) with the context a cell training on the CPU
    passes (``cache_dir`` a temporary folder, ``plugins``, ``image_size``, ``seed``,
    ``dataset``, ``dataset_params``, ``progress``, ``device`` ``"cpu"``, ``amp``
    ``"off"``). Checked: it returns a dict or None whose ``description`` (if any) is a
    string, ``pretrained`` a bool, ``mean``/``std`` three numbers, ``input_size`` a positive
    int; the backbone keeps its parameter names and shapes and gives finite outputs of the
    same shape; and, for a pretrained source, at least one parameter changed (weights put
    somewhere else than into the given backbone load nothing).

    Returns:
        ``{"changed", "params", "info"}``: parameters changed, parameters, the dict returned.
    """
    from .train.model import changed_parameters, parameter_fingerprints
    from .api.manager import get_plugins

    what = f"weight source {spec.name!r}"
    _require(isinstance(spec, WeightSourceSpec), what,
             "is not a harness.api.specs.WeightSourceSpec")
    backbone_spec = backbone_spec or tiny_backbone_spec()
    torch.manual_seed(0)
    bb = backbone_spec.build()
    shapes = {n: tuple(p.shape) for n, p in bb.named_parameters()}
    x = torch.rand(2, 3, image_size, image_size)
    before = parameter_fingerprints(bb)
    messages: list = []
    with tempfile.TemporaryDirectory() as tmp:
        # the context a training cell on the CPU passes (harness.run.cell.build_backbone)
        context = {"cache_dir": Path(tmp), "plugins": plugins or get_plugins(),
                   "image_size": image_size, "seed": 0, "dataset": "testkit_quadrants",
                   "dataset_params": {}, "progress": messages.append, "device": "cpu",
                   "amp": "off"}
        try:
            info = spec.load(backbone_spec, bb, arg, context)
        except Exception as exc:
            raise ConformanceError(f"{what}: load({backbone_spec.name!r} backbone, arg={arg!r})"
                                   f" raised {type(exc).__name__}: {exc}") from exc
    _require(info is None or isinstance(info, dict), what,
             f"load() returned {type(info).__name__}; return a dict describing the weights "
             f"(or None)")
    info = dict(info or {})
    for key, kind in (("description", str), ("pretrained", bool)):
        _require(key not in info or isinstance(info[key], kind), what,
                 f"the returned {key!r} must be a {kind.__name__}, not {info.get(key)!r}")
    for key in ("mean", "std"):
        _require(key not in info or len(tuple(info[key])) == 3, what,
                 f"the returned {key!r} must have 3 values, not {info.get(key)!r}")
    _require("input_size" not in info or (isinstance(info["input_size"], int)
                                          and info["input_size"] > 0), what,
             f"the returned 'input_size' must be a positive int, not {info.get('input_size')!r}")
    now = {n: tuple(p.shape) for n, p in bb.named_parameters()}
    _require(now == shapes, what,
             "load() changed the backbone's parameter names or shapes; load weights in place "
             "(backbone.load_state_dict(state)) instead of replacing modules")
    for attr in ("mean", "std"):
        _require(len(tuple(getattr(bb, attr))) == 3, what, f"backbone.{attr} must keep 3 values")
    bb.eval()
    with torch.no_grad():
        out = bb(x)
    _require(tuple(out.shape) == (2, bb.num_features) and bool(torch.isfinite(out).all()),
             what, "after load() the backbone gives non-finite or mis-shaped features")
    changed = changed_parameters(bb, before)
    pretrained = info.get("pretrained", spec.pretrained)
    _require(not pretrained or changed, what,
             f"says its weights are pretrained but load() changed no parameter of "
             f"{backbone_spec.name!r}; load into the backbone it is given, in place")
    return {"changed": len(changed), "params": len(now), "info": info}


_TINY_RUN: dict = {}


def tiny_run() -> Any:
    """A real finished run folder (a :class:`harness.run.results.RunStore`) to report on.

    ``bench run`` of :class:`TinyBackbone` on the quadrant problem, built-in plugins only:
    ``finetune`` with PyTorch latency on one profile, plus one cell that fails (a dataset
    with an empty training split), so reporters meet a failed cell too. Made once per
    process (seconds) in a temporary folder removed at exit.
    """
    if "store" not in _TINY_RUN:
        import atexit
        import shutil

        from .run.config import MatrixConfig
        from .measure.latency import MeasureSettings
        from .api.manager import PluginSystem
        from .run.runner import run_matrix
        from .train.loop import TrainSettings

        system = PluginSystem(entry_points=False)
        system.register(TestkitPlugin(), name="testkit", origin="test kit")
        system.rebuild()
        tmp = tempfile.mkdtemp(prefix="tb-testkit-run-")
        atexit.register(shutil.rmtree, tmp, True)
        matrix = MatrixConfig(
            backbones=["testkit_tiny"], strategies=["finetune"],
            datasets=["testkit_quadrants,n_train=64", "testkit_quadrants,n_train=0"],
            runtimes=["pytorch"], profiles=["testkit"], image_size=16, name="testkit",
            custom_profiles={"testkit": {"batch_size": 1, "threads": 1}},
            train=TrainSettings(epochs=1, batch_size=32),
            latency=MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=3, min_s=0.0))
        import io
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            # the planted failure would print "cell failed: ..." into the author's test log
            _TINY_RUN["store"] = run_matrix(system, matrix, Path(tmp), show_progress=False)
    return _TINY_RUN["store"]


@contextlib.contextmanager
def _working_dir(path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def check_reporter(spec: ReporterSpec, store: Any = None) -> dict:
    """Check that a reporter writes a run as ``bench report --format NAME`` calls it.

    Long on purpose: a checklist of the hook's contract, one short step per promise, in the
    order a failure is easiest to read; split up it would be one-use helpers.

    On ``store`` (default :func:`tiny_run`: ok and failed cells, latency rows):
    ``write(store, None)`` returns the report as a non-empty string; ``write(store, out)``
    writes to ``out`` (a file or a folder appears there) and returns a string or None;
    a reporter that takes ``budget_ms`` accepts ``budget_ms=1.0``; the cell records are
    left unchanged; and a run with no finished cell yet (``bench report`` on a run that
    was just started) reports without raising.

    Returns:
        ``{"chars", "out"}``: the length of the text report, what ``out`` became.
    """
    import inspect
    import shutil

    from .run.results import RunStore

    what = f"reporter {spec.name!r}"
    _require(isinstance(spec, ReporterSpec), what, "is not a harness.api.specs.ReporterSpec")
    store = RunStore(Path(store.path).resolve()) if store is not None else tiny_run()
    params = inspect.signature(spec.write).parameters
    takes_budget = "budget_ms" in params or any(p.kind is p.VAR_KEYWORD
                                                for p in params.values())
    cells = {p.name: p.read_bytes() for p in sorted(store.cells_dir.glob("*.json"))}

    def call(st, out, **kw):
        try:
            return spec.write(st, out, **kw)
        except Exception as exc:
            raise ConformanceError(f"{what}: write({'a run' if st is store else 'an empty run'}"
                                   f", out={'None' if out is None else 'PATH'}"
                                   f"{', budget_ms=1.0' if kw else ''}) raised "
                                   f"{type(exc).__name__}: {exc}") from exc

    with tempfile.TemporaryDirectory() as cwd, _working_dir(cwd):
        # a reporter may write beside the current folder (publish: results/); not the author's
        text = call(store, None)
    _require(isinstance(text, str) and text.strip() != "", what,
             f"write(store, None) returned {text!r}; with no out, return the report text")
    with tempfile.TemporaryDirectory() as tmp, _working_dir(tmp):
        if takes_budget:
            _require(isinstance(call(store, None, budget_ms=1.0), str), what,
                     "write(store, None, budget_ms=1.0) must return the report text")
        out = Path(tmp) / f"report-{spec.name}"
        summary = call(store, out)
        _require(summary is None or isinstance(summary, str), what,
                 f"write(store, out) returned {type(summary).__name__}; return a one-line "
                 f"summary or None")
        _require(out.exists(), what, f"write(store, out) wrote nothing at out ({out.name})")
        made = "folder" if out.is_dir() else "file"
        empty = RunStore(Path(tmp) / "empty-run")
        empty.path.mkdir()
        (empty.path / "cells").mkdir()
        shutil.copy(store.path / "config.json", empty.path / "config.json")
        shutil.copy(store.path / "environment.json", empty.path / "environment.json")
        call(empty, None)
    after = {p.name: p.read_bytes() for p in sorted(store.cells_dir.glob("*.json"))}
    _require(after == cells, what, "write() changed the run's cell records; a reporter "
             "only reads them")
    return {"chars": len(text), "out": made}


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def plugin_system() -> Iterator[Any]:
    """A fresh plugin system (built-ins and installed entry-point plugins), process-wide."""
    from .api.manager import PluginSystem, set_plugins
    system = PluginSystem(entry_points=True)
    set_plugins(system)
    yield system
    set_plugins(None)


@pytest.fixture
def register_plugin(plugin_system) -> Iterator[Any]:
    """``register_plugin(obj, name=...)`` registers a plugin for one test; returns the system."""
    names: list[str] = []

    def _register(plugin: Any, name: str = "test-plugin"):
        plugin_system.register(plugin, name=name, origin="test")
        plugin_system.rebuild()
        names.append(name)
        return plugin_system

    yield _register
    for n in names:
        plugin_system.unregister(n)


@pytest.fixture
def tiny_splits() -> DataSplits:
    """A learnable 4-class problem of 16x16 images: a bright quadrant gives the class."""
    return make_tiny_splits()


# the kinds that run no model of their own (executor, profile, preset, command, estimator)
from .kitchecks import (check_command, check_estimator, check_executor,  # noqa: E402
                        check_preset, check_profile, estimator_inputs)
