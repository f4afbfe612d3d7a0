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
        name: registry key, e.g. ``"resnet18"``.
        build: ``build(**params) -> Backbone`` returns a fresh, randomly initialised
            :class:`harness.train.model.Backbone`. Weights are loaded afterwards by a weight source.
        family: free-form family label ("resnet", "vgg", ...), shown in listings.
        device_class: ``"mobile"`` or ``"server"``: which recommendation it competes in.
        default_weights: weight-source string used when a strategy wants pretrained weights
            and the user named none (e.g. ``"imagenet"`` or ``"packaged"``).
        description: one line for ``bench list``.
        facts: static facts (ImageNet top-1 of the default weights, paper, ...).
        check: optional ``check(arg, **params)``, cheap (builds nothing), raising
            ``ValueError`` with the fix for an argument or parameters ``build`` would refuse
            (``timm:not_a_model``); ``bench run`` calls it before any cell runs.
    """

    name: str
    build: Callable[..., Any]
    family: str = ""
    device_class: str = "server"
    default_weights: str = "imagenet"
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
        name: registry key, e.g. ``"classification"``.
        factory: ``factory(**params) -> harness.train.task.Task``.
        description: one line for ``bench list``.
        default: the task of a matrix that names none (the first registered one wins).
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
        name: registry key.
        cls: a subclass of :class:`harness.train.strategy.Strategy`; instantiated per cell with
            the user's parameters as keyword arguments.
        description: one line for ``bench list``; cite the paper where there is one.
    """

    name: str
    cls: type
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("strategy", self.name)


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset that can produce train/validation/test splits for one or more tasks.

    Attributes:
        name: registry key.
        load: ``load(task: str, image_size: int, seed: int, cache_dir: Path, **params)``
            returning a :class:`harness.train.data.DataSplits`.
        tasks: names of the tasks the dataset has labels for.
        synthetic: True for generated data; it is labelled so wherever it appears.
        offline: True when the data installs without internet (packaged or Debian).
        description: one line for ``bench list``.
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
        name: the prefix before ``:`` in a weights string (``file`` for ``file:/x.pth``).
        load: ``load(backbone_spec, backbone, arg, context) -> WeightsInfo``; loads weights
            into ``backbone`` in place. ``arg`` is the text after ``:`` or ``None``.
            Raise :class:`harness.api.errors.WeightsUnavailable` with the alternatives when the
            weights cannot be had here.
        pretrained: whether weights from this source count as pretrained.
        description: one line for ``bench list``.
        default: the source a strategy that does not transfer (``pretrained = False``)
            starts from; must not be ``pretrained`` (the first registered one wins).
        check: optional ``check(arg)``, cheap, raising ``ValueError`` or ``OSError`` with the
            fix for an argument ``load`` would refuse (a ``file:`` path that does not
            exist); ``bench run`` calls it before any cell runs.
    """

    name: str
    load: Callable[..., Any]
    pretrained: bool = True
    description: str = ""
    default: bool = False
    check: Optional[Callable[[Optional[str]], None]] = None

    def __post_init__(self) -> None:
        _check_name("weight source", self.name)


@dataclass(frozen=True)
class RuntimeSpec:
    """An inference runtime whose latency is measured (PyTorch, ONNX Runtime, TensorRT...).

    Attributes:
        name: registry key.
        available: ``available() -> (bool, reason)``; the reason is shown instead of a
            number when the runtime cannot run here.
        measure: ``measure(artifacts, profile, settings) -> dict`` with latency statistics;
            see :mod:`harness.measure.latency`.
        needs_onnx: whether the runtime consumes the exported ONNX file.
        description: one line for ``bench list``.
        packages: distributions the runtime runs on (``("onnxruntime",)``); their installed
            versions enter every cell's key and ``environment.json``, so a new version
            measures again instead of reusing cached latency.
        verify_export: ``verify_export(model, onnx_path, image_size) -> dict`` compares the
            exported ONNX file's outputs with the model's and raises
            :class:`harness.measure.export.ParityError` beyond tolerance; a cell runs the
            first one its runtimes offer.
        precisions: the precisions it can measure (``("fp32", "int8")``); a profile asking
            for one that no registered runtime declares is refused before the run. Empty:
            not declared (nothing is checked against this runtime).
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
        name: registry key (``mobile``, ``server``, or user-defined).
        batch_size: inference batch size.
        threads: CPU threads for runtimes; ``0`` means all cores.
        precisions: precisions to try, e.g. ``("fp32", "int8")``.
        device: ``"cpu"`` or ``"gpu"``; ``"gpu"`` runs on CUDA runtimes where present.
        description: one line for ``bench list``.
        default: the profile of a matrix that names none (the first registered one wins).
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
        name: registry key, used by ``bench report --format NAME``.
        write: ``write(run: harness.run.results.RunRecord, out: Path | None) -> str | None``.
        description: one line for ``bench list``.
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
        name: registry key, used by ``bench run --executor NAME``.
        factory: ``factory(**options) -> harness.run.executor.Executor``.
        description: one line for ``bench list``.
        default: what ``bench run`` uses when given no ``--executor`` ...
        parallel: ... and ``--jobs`` above 1 or ``--cell-timeout`` (the first registered
            one of each wins).
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
        name: registry key.
        matrix: a mapping in the matrix-file format (see README, "Picking a matrix"), or
            a callable returning one.
        description: one line for ``bench list``.
        default: what ``bench run`` runs when given no ``--preset`` or ``--matrix`` (the
            first registered one wins).
    """

    name: str
    matrix: Any
    description: str = ""
    default: bool = False

    def __post_init__(self) -> None:
        _check_name("preset", self.name)

    def resolve(self) -> dict:
        return self.matrix() if callable(self.matrix) else dict(self.matrix)
