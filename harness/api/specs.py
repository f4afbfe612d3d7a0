"""Typed descriptors that plugins return from the registration hooks.

Each spec is a small frozen dataclass. The core collects them into registries keyed
by ``name`` (see :mod:`harness.api.registry`) and never looks inside a plugin otherwise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"{kind} name {name!r} is not valid: use letters, digits, '_', '-' and '.', "
            "starting with a letter or digit"
        )


@dataclass(frozen=True)
class BackboneSpec:
    """A pretrained CNN family member that can be built by name.

    Attributes:
        name: registry key, e.g. ``"resnet18"`` (required).
        build: ``build(**params) -> Backbone`` returns a fresh, randomly initialised
            :class:`harness.train.model.Backbone` (required). Weights are loaded afterwards by a
            weight source. ``params`` are the user's ``-b NAME,k=v`` parameters; for a
            ``NAME:ARG`` backbone string (``timm:convnext_nano``) ``ARG`` comes as ``arg=``.
        family: free-form family label ("resnet", "vgg", ...), shown in listings.
            Default ``""``.
        device_class: ``"mobile"`` or ``"server"``: which recommendation it competes in.
            Default ``"server"``.
        default_weights: weight-source string (``"imagenet"``, ``"packaged"``,
            ``"file:PATH"``, a plugin's own source...) used when a pretrained strategy runs
            and the user named no weights for this backbone. Default ``None``: no default
            weights, so a pretrained strategy starts from random initialisation unless the
            user gives ``--weights NAME=SOURCE``; ``bench run`` prints a note saying so and
            the cell's weights read "random init (not pretrained)".
        description: one line for ``bench list``. Default ``""``.
        facts: static facts shown by ``bench list backbones``. Default ``{}``; the keys
            ``params``, ``weights_mb`` and ``gmacs`` (at ``gmacs_at`` pixels) are computed
            from the built model when absent, ``imagenet_top1`` (percent) is shown when
            given. ``bench list`` builds nothing (it must stay fast): it shows the facts
            given here, else the sentence under ``note`` (a backbone whose facts depend on
            its parameters), else that ``bench list backbones --measure`` counts them.
        check: optional ``check(arg, **params)``, cheap (builds nothing), raising
            ``ValueError`` with the fix for an argument or parameters ``build`` would refuse
            (``timm:not_a_model``); ``bench run`` calls it before any cell runs. Default
            ``None`` (no check).
    """

    name: str
    build: Callable[..., Any]
    family: str = ""
    device_class: str = "server"
    default_weights: Optional[str] = None
    description: str = ""
    facts: dict = field(default_factory=dict)
    check: Optional[Callable[..., None]] = None

    def __post_init__(self) -> None:
        _check_name("backbone", self.name)
        if self.device_class not in ("mobile", "server"):
            raise ValueError(f"backbone {self.name}: device_class must be 'mobile' or 'server'")


@dataclass(frozen=True)
class TaskSpec:
    """A target task: which head to put on a backbone, its loss and its metrics.

    Attributes:
        name: registry key, e.g. ``"classification"`` (required).
        factory: ``factory(**params) -> harness.train.task.Task`` (required); ``params`` are the
            user's ``-t NAME,k=v`` parameters.
        description: one line for ``bench list``. Default ``""``.
        default: the task of a matrix that names none (the first registered one wins). Default ``False``.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    default: bool = False

    def __post_init__(self) -> None:
        _check_name("task", self.name)


@dataclass(frozen=True)
class StrategySpec:
    """A way of adapting a backbone to a task (scratch, frozen, fine-tune, chain-thaw...).

    Attributes:
        name: registry key (required).
        cls: a subclass of :class:`harness.train.strategy.Strategy` (required); instantiated per
            cell with the user's ``-s NAME,k=v`` parameters as keyword arguments, which are
            checked against its ``__init__`` before the run starts.
        description: one line for ``bench list``; cite the paper where there is one.
            Default ``""``.
        search_space: the :class:`SearchDim` ranges ``bench run --tune N`` searches for this
            strategy (:mod:`harness.run.hparam_search`); each names a keyword of ``cls``
            (``lr``) or a ``[train]`` setting (``weight_decay``). Default ``()``: the
            strategy is not tuned (its cells say so).
    """

    name: str
    cls: type
    description: str = ""
    search_space: tuple = ()

    def __post_init__(self) -> None:
        _check_name("strategy", self.name)
        object.__setattr__(self, "search_space", tuple(self.search_space))
        names = [d.name for d in self.search_space]
        for d in self.search_space:
            if not isinstance(d, SearchDim):
                raise ValueError(f"strategy {self.name}: search_space holds {d!r}, "
                                 f"not a SearchDim")
        if len(set(names)) != len(names):
            raise ValueError(f"strategy {self.name}: search_space names a parameter twice: "
                             f"{names}")


@dataclass(frozen=True)
class SearchDim:
    """One hyperparameter range of a strategy's tuning search (``--tune N``).

    Attributes:
        name: a keyword of the strategy's ``__init__`` (``lr``, ``new_lr``...) or a field of
            :class:`harness.train.loop.TrainSettings` (``weight_decay``) (required).
        low, high: the range, ``0 < low < high`` on a log scale (required).
        log: sample on a log scale (learning rates, weight decay). Default ``True``.
        default: the value an untuned run uses, for the record (``None``: the run's).
    """

    name: str
    low: float
    high: float
    log: bool = True
    default: Optional[float] = None

    def __post_init__(self) -> None:
        if not (self.low < self.high) or (self.log and self.low <= 0):
            raise ValueError(f"search dimension {self.name!r}: need "
                             f"{'0 < ' if self.log else ''}low < high, got "
                             f"[{self.low}, {self.high}]")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset that can produce train/validation/test splits for one or more tasks.

    Attributes:
        name: registry key (required).
        load: ``load(task: str, image_size: int, seed: int, cache_dir: Path, **params)``
            returning a :class:`harness.train.data.DataSplits` (required). ``params`` are the
            user's ``-d NAME,k=v`` parameters. Images must be uint8 ``(N, 3, image_size,
            image_size)``; targets in the task's format (class labels in
            ``[0, num_classes)`` for classification). ``bench run`` checks this before
            training and fails the cell with a message naming the dataset otherwise.
        tasks: names of the tasks the dataset has labels for. Default
            ``("classification",)``.
        synthetic: True for generated data; it is labelled so wherever it appears.
            Default ``False``.
        offline: True when the data installs without internet (packaged or Debian).
            Default ``False``.
        description: one line for ``bench list``. Default ``""``.
    """

    name: str
    load: Callable[..., Any]
    tasks: tuple = ("classification",)
    synthetic: bool = False
    offline: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("dataset", self.name)


@dataclass(frozen=True)
class WeightSourceSpec:
    """Where backbone weights come from (``imagenet``, ``packaged``, ``file:PATH``...).

    Attributes:
        name: the prefix before ``:`` in a weights string (``file`` for ``file:/x.pth``)
            (required).
        load: ``load(backbone_spec, backbone, arg, context) -> dict | None`` (required);
            loads weights into ``backbone`` (a freshly built :class:`harness.train.model.Backbone`)
            in place. ``arg`` is the text after ``:`` or ``None``. ``context`` is a dict
            with ``cache_dir`` (Path), ``plugins`` (the plugin system), ``image_size``,
            ``seed``, ``dataset`` (name) and ``progress`` (``progress(message)``). The
            returned dict describes the weights; every key is optional: ``description``
            (shown in tables; default the weights string), ``pretrained`` (default the
            spec's), ``imagenet_top1``, ``input_size``, ``mean``, ``std``, ``file``. Set
            ``backbone.mean``/``std`` when the weights expect another normalization.
            Raise :class:`harness.api.errors.WeightsUnavailable` with the alternatives when the
            weights cannot be had here.
        pretrained: whether weights from this source count as pretrained. Default ``True``.
        description: one line for ``bench list``. Default ``""``.
        default: the source a strategy that does not transfer (``pretrained = False``)
            starts from; must not be ``pretrained`` (the first registered one wins). Default ``False``.
        check: optional ``check(arg)``, cheap, raising ``ValueError`` or ``OSError`` with the
            fix for an argument ``load`` would refuse (a ``file:`` path that does not
            exist); ``bench run`` calls it before any cell runs. Default ``None``.
        pretraining: optional ``pretraining(arg) -> dict | None``, cheap: the training that
            loading these weights does here (a source that pretrains a backbone), for the
            run's plan: ``{"dataset": name, "dataset_params": {...}, "epochs": int,
            "image_size": int | None, "on_target": bool}`` (``on_target``: the weights
            string asks for pretraining on the target's own images), None when it trains
            nothing. Default ``None`` (trains nothing).
        shares_images: optional ``shares_images(arg, dataset, dataset_params) -> str |
            None``: why pretraining for these weights would use images of the cell's
            dataset (named with its parameters), else None. ``bench run`` refuses such a
            cell before anything runs unless the weights string asks for it
            (``pretraining(arg)["on_target"]``): that is not transfer. Default ``None``.
        pretraining_time: optional ``pretraining_time(arg, context) -> dict | None``,
            cheap (no training, no model build): how long the pretraining ``pretraining(arg)``
            announces will take here, from measurements only. ``context`` has ``backbone``
            (the registered backbone name), ``backbone_arg`` (its argument or None),
            ``image_size``, ``seed``, ``cache_dir`` (Path), ``device`` and ``amp`` of one
            cell. Return ``{"cached": bool, "seconds": float | None, "basis": str}``:
            ``cached`` when the weights are already on disk (nothing to train),
            ``seconds`` the estimate or None when nothing measured here can tell, and
            ``basis`` a few words on where the figure comes from. The run's plan prints
            it per backbone. Default ``None`` (the plan says no estimate is available).
    """

    name: str
    load: Callable[..., Any]
    pretrained: bool = True
    description: str = ""
    default: bool = False
    check: Optional[Callable[[Optional[str]], None]] = None
    pretraining: Optional[Callable[[Optional[str]], Optional[dict]]] = None
    shares_images: Optional[Callable[[Optional[str], str, dict], Optional[str]]] = None
    pretraining_time: Optional[Callable[[Optional[str], dict], Optional[dict]]] = None

    def __post_init__(self) -> None:
        _check_name("weight source", self.name)


@dataclass(frozen=True)
class RuntimeSpec:
    """An inference runtime whose latency is measured (PyTorch, ONNX Runtime, TensorRT...).

    Attributes:
        name: registry key (required).
        available: ``available() -> (bool, reason)`` (required); the reason is shown
            instead of a number when the runtime cannot run here.
        measure: ``measure(artifacts, profile, settings) -> list[dict]`` (required), run in
            a worker process. ``artifacts`` is a :class:`harness.run.cell.Artifacts` (the
            trained model, ``onnx_path``, calibration and test images), ``profile`` a
            :class:`ProfileSpec`, ``settings`` a :class:`harness.measure.latency.MeasureSettings`.
            One dict per precision: ``{"precision": "fp32", "stats": {...}}`` with the
            statistics of :func:`harness.measure.latency.measure`, or
            ``{"precision": ..., "unavailable": reason}``; optional ``test_outputs``
            (outputs on ``artifacts.test_images``) become ``accuracy_after``.
        needs_onnx: whether the runtime consumes the exported ONNX file
            (``artifacts.onnx_path``). Default ``False``.
        description: one line for ``bench list``. Default ``""``.
        packages: distributions the runtime runs on (``("onnxruntime",)``); their installed
            versions enter every cell's key and ``environment.json``, so a new version
            measures again instead of reusing cached latency. Default ``()``.
        verify_export: ``verify_export(model, onnx_path, image_size) -> dict`` compares the
            exported ONNX file's outputs with the model's and raises
            :class:`harness.measure.export.ParityError` beyond tolerance; a cell runs the
            first one its runtimes offer. Default ``None``.
        precisions: the precisions it can measure (``("fp32", "int8")``); a profile asking
            for one that no registered runtime declares is refused before the run. Empty:
            not declared (nothing is checked against this runtime). Default ``()``.
    """

    name: str
    available: Callable[[], tuple]
    measure: Callable[..., Any]
    needs_onnx: bool = False
    description: str = ""
    packages: tuple = ()
    verify_export: Optional[Callable[..., dict]] = None
    precisions: tuple = ()

    def __post_init__(self) -> None:
        _check_name("runtime", self.name)


@dataclass(frozen=True)
class ProfileSpec:
    """A deployment profile under which latency is measured.

    Attributes:
        name: registry key (``mobile``, ``server``, or user-defined) (required).
        batch_size: inference batch size. Default ``1``.
        threads: CPU threads for runtimes; ``0`` means all cores. Default ``1``.
        precisions: precisions to try, e.g. ``("fp32", "int8")``. Default ``("fp32",)``.
        device: ``"cpu"`` or ``"gpu"``; ``"gpu"`` runs on CUDA runtimes where present.
            Default ``"cpu"``.
        description: one line for ``bench list``. Default ``""``.
        default: the profile of a matrix that names none (the first registered one wins). Default ``False``.
    """

    name: str
    batch_size: int = 1
    threads: int = 1
    precisions: tuple = ("fp32",)
    device: str = "cpu"
    description: str = ""
    default: bool = False

    def __post_init__(self) -> None:
        _check_name("profile", self.name)
        if self.batch_size < 1:
            raise ValueError(f"profile {self.name}: batch_size must be >= 1")
        if self.threads < 0:
            raise ValueError(f"profile {self.name}: threads must be >= 0 (0 = all cores)")


@dataclass(frozen=True)
class ReporterSpec:
    """A way of writing a finished run (table, markdown, HTML...).

    Attributes:
        name: registry key, used by ``bench report --format NAME`` (required).
        write: ``write(store: harness.run.results.RunStore, out: Path | None) -> str | None``
            (required). ``store.records()`` gives the cell records (dicts: ``status``,
            ``config``, ``test_metrics``, ``latency``, ``error``...; see
            :class:`harness.run.results.RunStore`). With ``out`` None, return the report text
            (printed); otherwise write to ``out`` and return a one-line summary. Accept a
            ``budget_ms`` keyword to receive ``bench report --budget-ms``.
        description: one line for ``bench list``. Default ``""``.
    """

    name: str
    write: Callable[..., Any]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("reporter", self.name)


@dataclass(frozen=True)
class ExecutorSpec:
    """How the cells of a matrix are executed (in process, worker processes, a cluster).

    Attributes:
        name: registry key, used by ``bench run --executor NAME`` (required).
        factory: ``factory(**options) -> harness.run.executor.Executor`` (required). ``options``
            are those the user gave of ``jobs`` (``--jobs``), ``address`` (``--address``)
            and ``cell_timeout`` (``--cell-timeout``); one the factory does not accept is a
            usage error listing those it does.
        description: one line for ``bench list``. Default ``""``.
        default: what ``bench run`` uses when given no ``--executor`` ...
        parallel: ... and ``--jobs`` above 1 or ``--cell-timeout`` (the first registered
            one of each wins). Defaults ``False``.
    """

    name: str
    factory: Callable[..., Any]
    description: str = ""
    default: bool = False
    parallel: bool = False

    def __post_init__(self) -> None:
        _check_name("executor", self.name)


@dataclass(frozen=True)
class PresetSpec:
    """A named matrix that ``bench run --preset NAME`` runs.

    Attributes:
        name: registry key (required).
        matrix: a mapping in the matrix-file format (see README, "Picking a matrix"), or
            a callable returning one (required). Keys it leaves out take the matrix
            defaults of :class:`harness.run.config.MatrixConfig`.
        description: one line for ``bench list``. Default ``""``.
        default: what ``bench run`` runs when given no ``--preset`` or ``--matrix`` (the
            first registered one wins). Default ``False``.
    """

    name: str
    matrix: Any
    description: str = ""
    default: bool = False

    def __post_init__(self) -> None:
        _check_name("preset", self.name)

    def resolve(self) -> dict:
        return self.matrix() if callable(self.matrix) else dict(self.matrix)


@dataclass(frozen=True)
class EstimatorInput:
    """What a transferability estimator scores: frozen features of one backbone (with its
    weights) on one target dataset, computed once and shared by every estimator.

    Attributes:
        features: ``(n, d)`` float64 pooled features of the target training images.
        labels: ``(n,)`` integer class labels.
        val_features, val_labels: the same for the validation images (for estimators that
            fit on the training features and score held-out ones, such as kNN).
        num_classes: target classes.
        source_probs: ``(n, Z)`` softmax of the weights' own classifier on the training
            images, or ``None`` when the weights have none (see ``source_missing``).
        source_classes: what the ``Z`` source classes are (``"ImageNet-1k"``).
        source_missing: why ``source_probs`` is ``None``.
        seed: the cell's seed, for estimators that draw random numbers.
    """

    features: Any
    labels: Any
    val_features: Any
    val_labels: Any
    num_classes: int
    source_probs: Any = None
    source_classes: str = ""
    source_missing: str = ""
    seed: int = 0


@dataclass(frozen=True)
class EstimatorSpec:
    """A transferability estimator: scores a pretrained backbone on target data before
    any training, from frozen features (``bench rank``, ``bench run --rank-first K``).

    Attributes:
        name: registry key, used by ``bench rank -e NAME`` and ``--rank-by NAME``.
        score: ``score(inputs: EstimatorInput, **params) -> float | dict``; a dict holds
            ``"score"`` and any diagnostics (iterations, converged...). Raise
            :class:`harness.api.errors.EstimatorUnavailable` (also importable as
            ``harness.errors``) when it cannot score these inputs. A score that is not a
            finite number fails the estimator by name in every run; it ranks nothing.
        higher_is_better: whether a larger score predicts a better transfer.
        needs_source_classifier: whether it needs ``inputs.source_probs`` (LEEP, NCE).
        description: one line for ``bench list``; cite the paper.
    """

    name: str
    score: Callable[..., Any]
    higher_is_better: bool = True
    needs_source_classifier: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("estimator", self.name)

