"""Expanding, validating and running a matrix into a results store."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Optional

from .cell import resolve_profile, run_cell
from .config import AXES, CellConfig, MatrixConfig, matrix_kwargs
from ..measure.env import environment, package_versions
from ..api.errors import ConfigError, UnknownName
from .executor import CellJob, cell_needs_gpu, recipe_for
from ..api.manager import PluginSystem
from .results import RunStore, atomic_write_json

_AXIS_REGISTRY = {"backbones": "backbones", "tasks": "tasks", "datasets": "datasets",
                  "strategies": "strategies"}


def build_matrix(base: dict, overrides: dict) -> MatrixConfig:
    """A matrix from a preset or file mapping, with command-line values replacing its own."""
    data = dict(base)
    for k, v in overrides.items():
        if v in (None, (), []):
            continue
        if k in ("train", "latency"):
            data[k] = {**data.get(k, {}), **v}
        elif k == "weights":
            data[k] = {**data.get(k, {}), **v}
        else:
            data[k] = list(v) if isinstance(v, tuple) else v
    kw = matrix_kwargs(data)
    kw.setdefault("name", base.get("name", "matrix"))
    return MatrixConfig(**kw)


def validate(plugins: PluginSystem, matrix: MatrixConfig) -> tuple[list[CellConfig], list[str]]:
    """Check every name before anything runs; drop dataset/task pairs with no labels.

    Raises:
        UnknownName: an axis names something no plugin registered (lists the choices).
        ConfigError: parameters a plugin does not accept, or an empty matrix.
    """
    matrix.fill_defaults(plugins)  # the task and profile plugins declared default, if unnamed
    for axis in AXES:
        reg = getattr(plugins, _AXIS_REGISTRY[axis])
        for item in getattr(matrix, axis):
            reg.resolve(item.name)
        if not getattr(matrix, axis):
            raise ConfigError(f"the matrix has no {axis}; name at least one")
    for rt in matrix.runtimes:
        plugins.runtimes.get(rt)
    for pr in matrix.profiles:
        if pr not in matrix.custom_profiles:
            plugins.profiles.get(pr)
    unused = []
    for bb, w in matrix.weights.items():
        if bb != "*" and bb not in {i.name for i in matrix.backbones}:
            unused.append(bb)  # e.g. the default's weights for a backbone the user left out
        plugins.weights.resolve(w)
    for item in matrix.strategies:
        cls = plugins.strategies.get(item.name).cls
        try:
            cls(**item.kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"strategy {item.label()!r}: {exc}. It accepts: "
                              f"{', '.join(f'{k}={v}' for k, v in cls.parameters().items()) or 'no parameters'}"
                              ) from None
    for item in matrix.tasks:
        try:
            plugins.tasks.get(item.name).factory(**item.kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"task {item.label()!r}: {exc}") from None
    cells, notes = [], []
    if unused:
        notes.append(f"weights given for {', '.join(unused)}, which the matrix does not run")
    for cell in matrix.cells():
        ds = plugins.datasets.get(cell.dataset.name)
        if cell.task.name not in ds.tasks:
            note = (f"skipped {cell.dataset.name} x {cell.task.name}: the dataset has labels for "
                    f"{', '.join(ds.tasks)} only")
            if note not in notes:
                notes.append(note)
            continue
        cells.append(cell)
    if not cells:
        raise ConfigError("no cell left to run: " + "; ".join(notes))
    return cells, notes


def run_dir_for(out_root: Path, matrix: MatrixConfig,
                plugins: Optional[PluginSystem] = None) -> Path:
    blob = json.dumps({"matrix": matrix.to_dict(), "versions": package_versions(plugins)},
                      sort_keys=True, default=str)
    return Path(out_root) / f"{matrix.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def run_matrix(plugins: PluginSystem, matrix: MatrixConfig, out_root: Path,
               executor: Optional[str] = None, executor_options: Optional[dict] = None,
               fresh: bool = False, show_progress: bool = True) -> RunStore:
    """Run every cell not already finished in the run folder; return the store."""
    cells, notes = validate(plugins, matrix)
    executor = executor or plugins.default("executors").name
    runner = make_executor(plugins, executor, executor_options)
    versions = package_versions(plugins)
    keyed = [(c, c.key(versions)) for c in cells]
    path = run_dir_for(out_root, matrix, plugins)
    if fresh and path.exists():
        import shutil
        shutil.rmtree(path)
    store = RunStore(path)
    config = {"matrix": matrix.to_dict(), "cell_keys": [k for _, k in keyed], "notes": notes,
              "executor": executor, "executor_options": dict(executor_options or {})}
    store.write_meta(config, environment(plugins))
    recipe = recipe_for(plugins)
    todo = [CellJob(c, k, str(path), matrix.custom_profiles, recipe,
                    cell_needs_gpu(c, [resolve_profile(plugins, p, matrix.custom_profiles)
                                       for p in c.profiles]))
            for c, k in keyed if store.finished(k) is None]
    done_before = len(keyed) - len(todo)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if done_before:
        print(f"resuming {path}: {done_before} of {len(keyed)} cells already finished",
              file=sys.stderr)
    bar = _progress_bar(len(keyed), done_before, show_progress)

    def run_one(job: CellJob) -> dict:
        cfg, key = job.cfg, job.key
        bar.set_description(_short(cfg))
        store.write_cell({"key": key, "config": cfg.to_dict(), "status": "running"})
        return run_cell(plugins, cfg, key, progress=lambda m: bar.set_postfix_str(m[:60]),
                        custom_profiles=matrix.custom_profiles)

    def on_done(rec):
        store.write_cell(rec)
        store.aggregate()
        if rec.get("status") != "ok":
            bar.write(f"cell failed: {rec['config'].get('backbone')} / "
                      f"{rec['config'].get('strategy')}: {rec.get('error')}")
        bar.update(1)

    try:
        runner.run(todo, run_one, on_done)
    finally:
        bar.close()
        store.aggregate()
    atomic_write_json(path / "config.json", config)
    return store


def make_executor(plugins: PluginSystem, name: str, options: Optional[dict] = None):
    """Build the named executor; options it does not accept are a :class:`ConfigError`."""
    spec = plugins.executors.get(name)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    try:
        return spec.factory(**options)
    except (TypeError, ValueError) as exc:
        import inspect
        try:
            params = [p for p in inspect.signature(spec.factory).parameters
                      if p not in ("self", "options")]
        except (TypeError, ValueError):
            params = []
        raise ConfigError(f"executor {name!r}: {exc}. It accepts: "
                          f"{', '.join(params) or 'no options'}") from None


def _short(cfg: CellConfig) -> str:
    return f"{cfg.backbone.label()}/{cfg.strategy.label()}"[:40]


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="cell", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True)


__all__ = ["build_matrix", "validate", "run_matrix", "run_dir_for", "UnknownName"]
