"""Test-kit checks of the kinds that run no model of their own: executors, profiles,
presets, commands and transferability estimators (re-exported by :mod:`harness.testkit`).

Each raises :class:`harness.kitparts.ConformanceError` (also ``harness.testkit.ConformanceError``) with a message that names the spec
and what to fix, and returns a small dict of what it measured.
"""
from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from . import hookimpl
from .api.errors import BenchError, EstimatorUnavailable
from .api.specs import EstimatorInput, EstimatorSpec, ExecutorSpec, PresetSpec, ProfileSpec
from .kitparts import ConformanceError, TestkitPlugin, _require


class _Registers:
    """A plugin registering one executor spec (the one under check)."""

    def __init__(self, spec: ExecutorSpec):
        self.spec = spec

    @hookimpl
    def register_executors(self):
        return [self.spec]


def check_executor(spec: ExecutorSpec, **options: Any) -> dict:
    """Check that an executor runs a real matrix as ``bench run --executor NAME`` does.

    ``spec.factory(**options)`` must build an object with ``run(jobs, run_one, on_done)``;
    then a two-cell matrix of the kit's tiny backbone and dataset (one epoch, no latency)
    runs through it in a temporary folder: each cell must come back with a record
    (``on_done`` once per job; the run fails a cell it returned no record for) and finish
    ``ok``.

    Args:
        **options: the executor's options as the user gives them (``jobs``,
            ``cell_timeout``, ``address``).

    Returns:
        ``{"cells", "statuses"}``.
    """
    from .api.manager import PluginSystem
    from .run.config import MatrixConfig
    from .run.runner import run_matrix
    from .train.loop import TrainSettings

    what = f"executor {spec.name!r}"
    _require(isinstance(spec, ExecutorSpec), what, "is not a harness.api.specs.ExecutorSpec")
    try:
        executor = spec.factory(**options)
    except Exception as exc:
        raise ConformanceError(f"{what}: factory({', '.join(f'{k}={v!r}' for k, v in options.items())}"
                               f") raised {type(exc).__name__}: {exc}") from exc
    _require(callable(getattr(executor, "run", None)), what,
             f"factory() returned {type(executor).__name__}, which has no run(jobs, run_one, "
             f"on_done); subclass harness.run.executor.Executor")
    system = PluginSystem(entry_points=False)
    system.register(TestkitPlugin(), name="testkit", origin="test kit")
    if spec.name not in system.executors:
        system.register(_Registers(spec), name=f"checked-{spec.name}", origin="test kit")
    system.rebuild()
    matrix = MatrixConfig(backbones=["testkit_tiny"], datasets=["testkit_quadrants,n_train=32"],
                          strategies=["frozen", "finetune"], runtimes=[], image_size=16,
                          name="executor-check", train=TrainSettings(epochs=1, batch_size=16))
    with tempfile.TemporaryDirectory() as tmp, \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            store = run_matrix(system, matrix, Path(tmp), executor=spec.name,
                               executor_options=options, show_progress=False)
        except BenchError as exc:
            raise ConformanceError(f"{what}: the run stopped: {exc}") from exc
        records = store.records()
    _require(len(records) == 2, what, f"a two-cell matrix left {len(records)} record(s)")
    bad = [r for r in records if r.get("status") != "ok"]
    _require(not bad, what, "cells did not finish ok: " + "; ".join(
        f"{r['config'].get('strategy')}: {r.get('status')}: {r.get('error')}" for r in bad))
    return {"cells": len(records), "statuses": [r["status"] for r in records]}


def check_profile(spec: ProfileSpec, plugins: Any = None) -> dict:
    """Check that a profile can be measured: a positive int ``batch_size``, an int
    ``threads`` >= 0, ``device`` ``"cpu"`` or ``"gpu"``, a non-empty tuple of precision
    names each of which some registered runtime declares (``RuntimeSpec.precisions``;
    otherwise ``bench run -p NAME`` is refused before it starts).

    Args:
        plugins: the plugin system whose runtimes count (default: the process-wide one).

    Returns:
        ``{"precisions": {precision: [runtimes that measure it]}}``.
    """
    from .api.manager import get_plugins

    what = f"profile {spec.name!r}"
    _require(isinstance(spec, ProfileSpec), what, "is not a harness.api.specs.ProfileSpec")
    _require(isinstance(spec.batch_size, int) and spec.batch_size >= 1, what,
             f"batch_size is {spec.batch_size!r}; give a positive int")
    _require(isinstance(spec.threads, int) and spec.threads >= 0, what,
             f"threads is {spec.threads!r}; give an int (0 = all cores)")
    _require(spec.device in ("cpu", "gpu"), what, f"device is {spec.device!r}; use 'cpu' or 'gpu'")
    _require(isinstance(spec.precisions, tuple) and len(spec.precisions) > 0
             and all(isinstance(p, str) for p in spec.precisions), what,
             f"precisions is {spec.precisions!r}; give a tuple of names, e.g. ('fp32', 'int8')")
    plugins = plugins or get_plugins()
    known = {p: sorted(r.name for r in plugins.runtimes if p in r.precisions)
             for p in spec.precisions}
    missing = [p for p, rts in known.items() if not rts]
    _require(not missing, what, f"no registered runtime measures {', '.join(missing)}; "
             f"runtimes declare: {', '.join(sorted({p for r in plugins.runtimes for p in r.precisions}))}")
    return {"precisions": known}


def check_preset(spec: PresetSpec, plugins: Any = None) -> dict:
    """Check that a preset describes a matrix ``bench run --preset NAME`` accepts:
    ``resolve()`` gives a mapping in the matrix-file format and every name in it resolves,
    every parameter is accepted and every profile can be measured
    (:func:`harness.run.runner.validate`, the checks made before a run; nothing runs).

    Returns:
        ``{"cells", "notes"}``: how many cells the preset runs, the run's notes.
    """
    from .api.manager import get_plugins
    from .run.runner import build_matrix, validate

    what = f"preset {spec.name!r}"
    _require(isinstance(spec, PresetSpec), what, "is not a harness.api.specs.PresetSpec")
    try:
        mapping = spec.resolve()
    except Exception as exc:
        raise ConformanceError(f"{what}: resolve() raised {type(exc).__name__}: {exc}") from exc
    _require(isinstance(mapping, dict), what,
             f"matrix gives {type(mapping).__name__}; give a mapping in the matrix-file format")
    try:
        matrix = build_matrix(mapping, {}, f"preset {spec.name!r}")
        cells, notes = validate(plugins or get_plugins(), matrix)
    except (BenchError, TypeError, ValueError) as exc:
        raise ConformanceError(f"{what}: bench run would refuse it: {exc}") from exc
    return {"cells": len(cells), "notes": notes}


def check_command(name: str, plugins: Any = None, args: Sequence[str] = ("--help",)) -> dict:
    """Check that a plugin's ``register_commands`` adds command ``name`` to ``bench``:
    the hook (:meth:`harness.api.manager.PluginSystem.add_commands`, as ``bench`` calls it)
    adds a click command of that name with a help text, and ``bench NAME *args``
    (default ``--help``) exits 0.

    Args:
        plugins: the plugin system whose hooks to call (default: the process-wide one).

    Returns:
        ``{"command", "help", "output"}``.
    """
    import click
    from click.testing import CliRunner

    from .api.manager import get_plugins

    what = f"command {name!r}"
    from .cli import matrix_options

    plugins = plugins or get_plugins()
    group = click.Group("bench")
    group.matrix_options = matrix_options  # what bench's own group hands register_commands
    plugins.add_commands(group)
    broken = [i.message for i in plugins.broken() if "register_commands" in (i.error or "")]
    _require(not broken, what, "; ".join(broken))
    _require(name in group.commands, what, f"no plugin's register_commands(cli) added it; "
             f"added: {', '.join(sorted(group.commands)) or 'none'}")
    cmd = group.commands[name]
    short = cmd.get_short_help_str() if hasattr(cmd, "get_short_help_str") else ""
    _require(bool((cmd.help or "").strip()), what,
             "has no help text; give the command function a docstring")
    res = CliRunner().invoke(group, [name, *args])
    _require(res.exit_code == 0, what,
             f"bench {name} {' '.join(args)} exited {res.exit_code}: {res.output[-500:]}"
             + (f"{type(res.exception).__name__}: {res.exception}" if res.exception and
                not isinstance(res.exception, SystemExit) else ""))
    return {"command": name, "help": short, "output": res.output}


def estimator_inputs(informative: bool = True, seed: int = 0, n: int = 120, classes: int = 4,
                     dim: int = 16, source_classes: int = 10) -> EstimatorInput:
    """Frozen-feature inputs to score: ``informative`` ones have class-dependent features
    and source-class probabilities (a transfer that should score well); the others have
    features and source probabilities that ignore the labels (one that should not)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * 3.0
    mapping = rng.permutation(source_classes)[:classes]

    def split(m: int):
        y = np.repeat(np.arange(classes), m // classes)
        f = rng.normal(size=(len(y), dim)) + (centers[y] if informative else 0.0)
        logits = rng.normal(size=(len(y), source_classes))
        if informative:
            logits[np.arange(len(y)), mapping[y]] += 4.0
        p = np.exp(logits - logits.max(1, keepdims=True))
        return f.astype(np.float64), y.astype(np.int64), p / p.sum(1, keepdims=True)

    f, y, p = split(n)
    vf, vy, _ = split(n // 2)
    return EstimatorInput(features=f, labels=y, val_features=vf, val_labels=vy,
                          num_classes=classes, source_probs=p, source_classes="test kit",
                          seed=seed)


def _score(spec: EstimatorSpec, inputs: EstimatorInput, what: str, params: dict) -> float:
    try:
        out = spec.score(inputs, **params)
    except EstimatorUnavailable as exc:
        raise ConformanceError(f"{what}: raised EstimatorUnavailable on inputs it should score "
                               f"({exc})") from exc
    except Exception as exc:
        raise ConformanceError(f"{what}: score() raised {type(exc).__name__}: {exc}") from exc
    _require(isinstance(out, (int, float, dict)) and not isinstance(out, bool), what,
             f"score() returned {type(out).__name__}; return a float or a dict with 'score'")
    value = out.get("score") if isinstance(out, dict) else out
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConformanceError(f"{what}: the score {value!r} is not a number") from None
    _require(math.isfinite(value), what, f"the score is {value}; return a finite number (a run "
             f"fails an estimator whose score is not)")
    return value


def check_estimator(spec: EstimatorSpec, **params: Any) -> dict:
    """Check that an estimator scores frozen features as ``bench rank`` calls it.

    On the kit's synthetic inputs (:func:`estimator_inputs`): ``score(inputs, **params)``
    returns a finite float (or a dict whose ``"score"`` is one), the same one twice for the
    same inputs and seed, and a better one (by ``higher_is_better``) for features that
    separate the classes than for features that ignore them. With
    ``needs_source_classifier`` and no ``source_probs`` it must raise
    :class:`harness.api.errors.EstimatorUnavailable` (with the reason) rather than fail.

    Returns:
        ``{"informative", "uninformative"}``: the two scores.
    """
    what = f"estimator {spec.name!r}"
    _require(isinstance(spec, EstimatorSpec), what, "is not a harness.api.specs.EstimatorSpec")
    good = _score(spec, estimator_inputs(True), what, params)
    again = _score(spec, estimator_inputs(True), what, params)
    _require(math.isclose(good, again, rel_tol=1e-9, abs_tol=1e-12), what,
             f"scored the same inputs {good} then {again}; seed any randomness with "
             f"inputs.seed")
    bad = _score(spec, estimator_inputs(False), what, params)
    better = good > bad if spec.higher_is_better else good < bad
    _require(better, what,
             f"scored class-separating features {good:.4g} and features that ignore the "
             f"classes {bad:.4g}, but higher_is_better={spec.higher_is_better}: check the "
             f"sign of the score or higher_is_better")
    if spec.needs_source_classifier:
        import dataclasses
        bare = dataclasses.replace(estimator_inputs(True), source_probs=None,
                                   source_missing="the weights keep no source classifier")
        try:
            spec.score(bare, **params)
        except EstimatorUnavailable as exc:
            _require(bool(str(exc).strip()), what, "EstimatorUnavailable needs a reason")
        except Exception as exc:
            raise ConformanceError(
                f"{what}: with source_probs None it raised {type(exc).__name__}: {exc}; "
                f"raise harness.api.errors.EstimatorUnavailable(inputs.source_missing)") from exc
        else:
            raise ConformanceError(f"{what}: needs_source_classifier is True but it scored "
                                   f"inputs without source_probs; raise EstimatorUnavailable")
    return {"informative": good, "uninformative": bad}


__all__ = ["check_executor", "check_profile", "check_preset", "check_command",
           "check_estimator", "estimator_inputs"]
