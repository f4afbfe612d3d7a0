"""Every hook a transfer-bench plugin can implement.

A plugin is any module (or object) with functions decorated by ``harness.hookimpl``
whose names match the specs below. Built-in plugins under ``plugins/`` use exactly
these hooks; third-party distributions declare an entry point in the group
``transfer_bench``.

Registration hooks are called once, when the plugin manager builds its registries
(at the start of every ``bench`` command). Each returns a list of small typed specs
from :mod:`harness.api.specs`; the core files them in a registry keyed by name, and a
name claimed by two plugins is an error that names both.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass

import pluggy

from .specs import (BackboneSpec, DatasetSpec, EstimatorSpec, ExecutorSpec, PresetSpec,
                    ProfileSpec, ReporterSpec, RuntimeSpec, StrategySpec, TaskSpec,
                    WeightSourceSpec)

hookspec = pluggy.HookspecMarker("transfer_bench")


@dataclass(frozen=True)
class Kind:
    """One kind of thing plugins register, defined once, by its hook below.

    Attributes:
        name: the registry's key (``plugins.backbones``, ``bench list backbones``).
        hook: the registration hook's name.
        noun: how messages name one of them ("weight source").
        spec: the spec type the hook returns a list of (from its annotation).
    """

    name: str
    hook: str
    noun: str
    spec: type


KINDS: dict[str, Kind] = {}
"""Registry kind -> :class:`Kind`, in the order the hooks are defined."""


def _registration(kind: str, noun: str):
    """Mark a registration hook: a hookspec whose return annotation names its spec type."""
    def mark(fn):
        (spec_type,) = typing.get_args(typing.get_type_hints(fn)["return"])
        KINDS[kind] = Kind(kind, fn.__name__, noun, spec_type)
        return hookspec(fn)
    return mark


@_registration("backbones", "backbone")
def register_backbones() -> list[BackboneSpec]:
    """Register backbones that can be built by name.

    A complete example with its test, the interfaces it receives and every default of
    its spec: docs/plugins/backbone.md.

    Called once when the registries are built. Receives nothing.

    Returns:
        A list of :class:`harness.api.specs.BackboneSpec`.

    Example::

        @hookimpl
        def register_backbones():
            return [BackboneSpec("tinynet", build=lambda: TinyBackbone(), device_class="mobile")]
    """


@_registration("tasks", "task")
def register_tasks() -> list[TaskSpec]:
    """Register target tasks (a head, a loss and metrics).

    A complete example with its test, the interfaces it receives and every default of
    its spec: docs/plugins/task.md.

    Called once when the registries are built. Receives nothing.

    Returns:
        A list of :class:`harness.api.specs.TaskSpec` whose ``factory`` returns a
        :class:`harness.train.task.Task`.

    Example::

        @hookimpl
        def register_tasks():
            return [TaskSpec("counting", factory=CountingTask, description="count objects")]
    """


@_registration("strategies", "strategy")
def register_strategies() -> list[StrategySpec]:
    """Register fine-tune strategies.

    A complete example with its test, the interfaces it receives and every default of
    its spec: docs/plugins/strategy.md.

    Called once when the registries are built. Receives nothing.

    Returns:
        A list of :class:`harness.api.specs.StrategySpec` whose ``cls`` subclasses
        :class:`harness.train.strategy.Strategy` and overrides its lifecycle methods.

    Example::

        @hookimpl
        def register_strategies():
            return [StrategySpec("head_only", cls=HeadOnly, description="train the head")]
    """


@_registration("datasets", "dataset")
def register_datasets() -> list[DatasetSpec]:
    """Register datasets.

    A complete example with its test, the interfaces it receives and every default of
    its spec: docs/plugins/dataset.md.

    Called once when the registries are built. Receives nothing. Loading happens later,
    per cell, through the spec's ``load`` callable.

    Returns:
        A list of :class:`harness.api.specs.DatasetSpec`.

    Example::

        @hookimpl
        def register_datasets():
            return [DatasetSpec("my_folder", load=load_my_folder, tasks=("classification",))]
    """


@_registration("weights", "weight source")
def register_weight_sources() -> list[WeightSourceSpec]:
    """Register sources of backbone weights (``imagenet``, ``packaged``, ``file``...).

    A complete example with its test, the interfaces it receives and every default of
    its spec: docs/plugins/weight-source.md.

    Called once when the registries are built. Receives nothing. A weights string
    ``"NAME:ARG"`` selects the source ``NAME`` and passes it ``ARG``.

    Returns:
        A list of :class:`harness.api.specs.WeightSourceSpec`.

    Example::

        @hookimpl
        def register_weight_sources():
            return [WeightSourceSpec("zeros", load=zero_all_weights, pretrained=False)]
    """


@_registration("runtimes", "runtime")
def register_runtimes() -> list[RuntimeSpec]:
    """Register inference runtimes whose latency is measured.

    A complete example with its test, the interfaces it receives and every default of
    its spec: docs/plugins/runtime.md.

    Called once when the registries are built. Receives nothing. Each runtime must say
    whether it can run here (``available()``) and why not.

    Returns:
        A list of :class:`harness.api.specs.RuntimeSpec`.

    Example::

        @hookimpl
        def register_runtimes():
            return [RuntimeSpec("tvm", available=tvm_available, measure=measure_tvm)]
    """


@_registration("profiles", "profile")
def register_profiles() -> list[ProfileSpec]:
    """Register deployment profiles (batch size, threads, precisions, device).

    A complete example with its test, the interfaces it receives and every default of
    its spec: docs/plugins/profile.md.

    Called once when the registries are built. Receives nothing. Users can also define
    profiles in a matrix file.

    Returns:
        A list of :class:`harness.api.specs.ProfileSpec`.

    Example::

        @hookimpl
        def register_profiles():
            return [ProfileSpec("edge", batch_size=1, threads=4, precisions=("fp32", "int8"))]
    """


@_registration("reporters", "reporter")
def register_reporters() -> list[ReporterSpec]:
    """Register report writers used by ``bench report --format NAME``.

    A complete example with its test, the interfaces it receives and every default of
    its spec: docs/plugins/reporter.md.

    Called once when the registries are built. Receives nothing.

    Returns:
        A list of :class:`harness.api.specs.ReporterSpec`.

    Example::

        @hookimpl
        def register_reporters():
            return [ReporterSpec("latex", write=write_latex_table)]
    """


@_registration("executors", "executor")
def register_executors() -> list[ExecutorSpec]:
    """Register executors that run the cells of a matrix (in process, processes, cluster).

    A complete example with its test, the interfaces it receives and every default of
    its spec: docs/plugins/executor.md.

    Called once when the registries are built. Receives nothing.

    Returns:
        A list of :class:`harness.api.specs.ExecutorSpec`.

    Example::

        @hookimpl
        def register_executors():
            return [ExecutorSpec("slurm", factory=SlurmExecutor)]
    """


@_registration("presets", "preset")
def register_presets() -> list[PresetSpec]:
    """Register named matrices for ``bench run --preset NAME``.

    A complete example with its test, the interfaces it receives and every default of
    its spec: docs/plugins/preset.md.

    Called once when the registries are built. Receives nothing. The preset named
    ``default`` is what ``bench run`` runs when given no axis.

    Returns:
        A list of :class:`harness.api.specs.PresetSpec`.

    Example::

        @hookimpl
        def register_presets():
            return [PresetSpec("tiny", matrix={"backbones": ["resnet18"], "strategies": ["frozen"]})]
    """


@_registration("estimators", "estimator")
def register_estimators() -> list[EstimatorSpec]:
    """Register transferability estimators, which score a pretrained backbone on target
    data from frozen features before any training (``bench rank``, ``--rank-first K``).

    Called once when the registries are built. Receives nothing. Each estimator's
    ``score`` is later called with a :class:`harness.api.specs.EstimatorInput` (features
    computed once per backbone, weights and dataset, shared by all estimators).

    Returns:
        A list of :class:`harness.api.specs.EstimatorSpec`.

    Example::

        @hookimpl
        def register_estimators():
            return [EstimatorSpec("fisher", score=lambda inputs: fisher_ratio(inputs.features,
                                                                            inputs.labels))]
    """


@hookspec
def register_commands(cli) -> None:
    """Add commands to the ``bench`` command line.

    A complete example with its test, the interfaces it receives and every default of
    its spec: docs/plugins/command.md.

    Called once when the CLI is built, with the top-level :class:`click.Group`.
    Returns nothing; attach commands with ``cli.add_command`` or ``@cli.command``.
    ``cli.matrix_options`` is a decorator that gives a command ``bench run``'s matrix
    options (``-b/-t/-d/-s/-r/-p/-w``, ``--matrix``, ``--preset``, training settings),
    whose values :func:`harness.run.options.matrix_from_options` turns into a matrix; a
    plugin never imports :mod:`harness.cli`.

    Example::

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                click.echo("hello from my plugin")
    """
