"""Expanding, validating and running a matrix into a results store."""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from .cell import no_default_weights_message, resolve_profile, run_cell
from .config import AXES, CellConfig, MatrixConfig, check_run_name, matrix_kwargs
from ..train.device import Hardware, declared_hardware, resolve_hardware
from ..measure.env import environment, package_versions
from ..api.errors import BenchError, ConfigError, UnknownName
from ..measure.lifetime import sweep_temp_folders
from .executor import CellJob, InProcessExecutor, cell_needs_gpu, failure_record, recipe_for
from .contracts import PluginFault, plugin_label
from ..api.manager import PluginSystem
from .results import RunStore, atomic_write_json
from .weights_plan import refuse_target_pretraining
from .plan import Plan, estimate, plan_run

_AXIS_REGISTRY = {"backbones": "backbones", "tasks": "tasks", "datasets": "datasets",
                  "strategies": "strategies"}


def merge_weights(base: dict, given: dict, base_name: str = "the preset"
                  ) -> tuple[dict, list[str]]:
    """Weights that follow what the user typed: ``given`` (the command line) over ``base``
    (a matrix file's or preset's), and in each layer a backbone's own entry over ``*``.

    A global ``--weights SRC`` therefore replaces every per-backbone entry of the base too
    (the user asked for SRC everywhere), while ``--weights resnet18=SRC`` replaces only
    resnet18's. Returns the merged mapping and one note per base value that was replaced.
    """
    given = {k: v for k, v in (given or {}).items() if v}
    if not given:
        return dict(base or {}), []
    out, notes = {}, []
    if "*" not in given:
        out = dict(base or {})
    for bb, old in sorted((base or {}).items()):
        new = given.get(bb, given.get("*"))
        if new is not None and new != old:
            what = "for every backbone" if bb == "*" else f"for {bb}"
            flag = f"--weights {new}" if bb not in given else f"--weights {bb}={new}"
            notes.append(f"{flag} replaces {base_name}'s weights {what} ({old})")
    out.update(given)
    return out, notes


def build_matrix(base: dict, overrides: dict, base_name: str = "the preset") -> MatrixConfig:
    """A matrix from a preset or file mapping, with command-line values replacing its own.

    Args:
        base: the preset's or matrix file's mapping.
        overrides: command-line values (empty ones are ignored); ``weights`` follows
            :func:`merge_weights`.
        base_name: how notes name ``base`` ("preset 'default'", "matrix file m.toml").
    """
    data = dict(base)
    notes: list[str] = []
    for k, v in overrides.items():
        if v in (None, (), [], {}):
            continue
        if k in ("train", "latency", "tune"):
            data[k] = {**data.get(k, {}), **v}
        elif k == "weights":
            data[k], notes = merge_weights(data.get(k, {}), v, base_name)
        else:
            data[k] = list(v) if isinstance(v, tuple) else v
    kw = matrix_kwargs(data)
    kw.setdefault("name", base.get("name", "matrix"))
    user = dict(overrides.get("weights") or {})
    if not base_name.startswith("the preset") and not base_name.startswith("preset"):
        user = {**(base.get("weights") or {}), **user}  # a matrix file is the user's too
    return MatrixConfig(**kw, notes=notes, user_weights=user, weights_from=base_name)


def validate(plugins: PluginSystem, matrix: MatrixConfig) -> tuple[list[CellConfig], list[str]]:
    """Check everything that can be checked before anything runs (names, parameters of
    every plugin, profiles, precisions, weights); drop dataset/task pairs with no labels.

    Raises:
        UnknownName: an axis names something no plugin registered (lists the choices).
        ConfigError: parameters a plugin does not accept, an impossible profile, or an
            empty matrix.
    """
    matrix.fill_defaults(plugins)  # the task and profile plugins declared default, if unnamed
    for axis in AXES:
        reg = getattr(plugins, _AXIS_REGISTRY[axis])
        for item in getattr(matrix, axis):
            reg.resolve(item.name)
        if not getattr(matrix, axis):
            raise ConfigError(f"the matrix has no {axis}; name at least one")
    for item in matrix.backbones:
        _check_backbone(plugins, item)
    for item in matrix.datasets:
        _check_dataset_params(plugins, item)
    runtimes = [plugins.runtimes.get(rt) for rt in matrix.runtimes]
    notes = list(matrix.notes)
    for pr in matrix.profiles:
        notes += _check_profile(plugins, pr, matrix, runtimes)
    _check_weights(plugins, matrix)
    pretrained = _check_strategies_and_tasks(plugins, matrix)
    notes += _unused_weights(matrix, pretrained)
    for item in matrix.backbones:
        spec, _ = plugins.backbones.resolve(item.name)
        if pretrained and spec.default_weights is None and not (
                item.name in matrix.weights or "*" in matrix.weights):
            notes.append(no_default_weights_message(item.name))
    cells = _runnable_cells(plugins, matrix, notes)
    if not cells:
        raise ConfigError("no cell left to run: " + "; ".join(notes))
    refuse_target_pretraining(plugins, matrix, cells)  # not transfer unless asked for
    return cells, notes


def _check_weights(plugins: PluginSystem, matrix: MatrixConfig) -> None:
    """Every weights source named resolves and accepts its argument (``spec.check``)."""
    for bb, w in matrix.weights.items():
        for one in (w if isinstance(w, list) else [w]):  # a list: the weights axis
            spec, arg = plugins.weights.resolve(one)
            if spec.check is not None:
                try:
                    spec.check(arg)
                except (TypeError, ValueError, OSError) as exc:
                    flag = f"--weights {one}" if bb == "*" else f"--weights {bb}={one}"
                    raise ConfigError(f"{flag}: {exc}") from None


def _check_strategies_and_tasks(plugins: PluginSystem, matrix: MatrixConfig) -> bool:
    """Every strategy and task accepts its parameters; True when some strategy starts from
    pretrained weights."""
    pretrained = []
    for item in matrix.strategies:
        cls = plugins.strategies.get(item.name).cls
        accepts = cls.parameters()
        bad = [k for k in item.kwargs if k not in accepts]
        if bad:
            raise ConfigError(unknown_parameters(f"strategy {item.label()!r}", bad,
                                                 [f"{k}={v}" for k, v in accepts.items()]))
        try:
            pretrained.append(bool(cls(**item.kwargs).pretrained))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"strategy {item.label()!r}: {exc}") from None
    for item in matrix.tasks:
        try:
            plugins.tasks.get(item.name).factory(**item.kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"task {item.label()!r}: {exc}") from None
    return any(pretrained)


def _runnable_cells(plugins: PluginSystem, matrix: MatrixConfig, notes: list) -> list:
    """The matrix's cells, less the dataset/task pairs without labels (a note each) and the
    repeats of a from-scratch cell over the weights axis (it trains from random weights
    whatever the axis says: run once)."""
    cells, scratch_seen = [], set()
    for cell in matrix.cells():
        if len(matrix.weights_of(cell.backbone.name)) > 1 \
                and not plugins.strategies.get(cell.strategy.name).cls.pretrained:
            same = (cell.dataset, cell.task, cell.backbone, cell.strategy, cell.seed)
            if same in scratch_seen:
                continue
            scratch_seen.add(same)
        ds = plugins.datasets.get(cell.dataset.name)
        if cell.task.name not in ds.tasks:
            note = (f"skipped {cell.dataset.name} x {cell.task.name}: the dataset has labels for "
                    f"{', '.join(ds.tasks)} only")
            if note not in notes:
                notes.append(note)
            continue
        cells.append(cell)
    return cells


def unknown_parameters(what: str, bad: list, accepted: list) -> str:
    """One sentence for parameters a plugin does not take: each with the closest accepted
    name where one is close (a typo), then what it accepts, once."""
    import difflib
    names = [a.split("=")[0] for a in accepted]
    hints = []
    for b in bad:
        close = difflib.get_close_matches(b, names, n=1)
        hints.append(f"{b} (did you mean {close[0]}?)" if close else b)
    return (f"{what}: unknown parameter(s) {', '.join(hints)}. It accepts: "
            f"{', '.join(accepted) or 'no parameters'}")


def _accepted(fn, skip: tuple) -> Optional[list[str]]:
    """The keyword parameters ``fn`` accepts beyond ``skip``; None when it takes any."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in skip
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _check_dataset_params(plugins: PluginSystem, item) -> None:
    spec = plugins.datasets.get(item.name)
    accepted = _accepted(spec.load, ("task", "image_size", "seed", "cache_dir"))
    if accepted is None:
        return
    bad = [k for k in item.kwargs if k not in accepted]
    if bad:
        raise ConfigError(unknown_parameters(f"dataset {item.label()!r}", bad, accepted))


def _check_backbone(plugins: PluginSystem, item) -> None:
    spec, arg = plugins.backbones.resolve(item.name)
    accepted = _accepted(spec.build, ("arg",))
    if accepted is not None:
        bad = [k for k in item.kwargs if k not in accepted]
        if bad:
            raise ConfigError(unknown_parameters(f"backbone {item.label()!r}", bad, accepted))
    if spec.check is not None:
        try:
            spec.check(arg, **item.kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"backbone {item.label()!r}: {exc}") from None


def _check_profile(plugins: PluginSystem, name: str, matrix: MatrixConfig,
                   runtimes: list) -> list[str]:
    """Raise for a profile that cannot be measured (a precision no runtime declares); notes
    for precisions of the user's own profiles that no runtime of the matrix measures
    although another registered runtime would (built-in profiles list GPU precisions on
    purpose: CPU runtimes show them as unavailable)."""
    try:
        profile = resolve_profile(plugins, name, matrix.custom_profiles)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[profile.{name}]: {exc}") from None
    known = {p: [r.name for r in plugins.runtimes if p in r.precisions]
             for r in plugins.runtimes for p in r.precisions}
    if not runtimes or any(not r.precisions for r in runtimes):
        return []  # nothing measured, or a runtime that does not say what it measures
    notes = []
    for prec in profile.precisions:
        if prec not in known:
            raise ConfigError(f"profile {name!r}: precision {prec!r} is measured by no "
                              f"runtime; choose from {', '.join(sorted(known))}")
        if name in matrix.custom_profiles and not any(prec in r.precisions for r in runtimes):
            notes.append(f"profile {name!r}: no runtime of the matrix measures {prec} "
                         f"(add -r {' or -r '.join(known[prec])})")
    return notes


def _unused_weights(matrix: MatrixConfig, any_pretrained: bool) -> list[str]:
    user = matrix.user_weights
    if not user:
        return []
    names = [i.name for i in matrix.backbones]
    notes = []
    for bb, w in user.items():
        if bb != "*" and bb not in names:
            notes.append(f"--weights {bb}={w} is not used: the matrix runs no backbone {bb} "
                         f"(it runs {', '.join(names)})")
    if "*" in user and all(n in user for n in names):
        notes.append(f"--weights {user['*']} is not used: every backbone has its own weights")
    if not any_pretrained:
        given = sorted({w for v in user.values() for w in (v if isinstance(v, list) else [v])})
        notes.append(f"--weights {', '.join(given)} is not used: no "
                     f"strategy of the matrix starts from pretrained weights")
    return notes


def run_dir_for(out_root: Path, matrix: MatrixConfig,
                plugins: Optional[PluginSystem] = None) -> Path:
    """``out_root/NAME-HASH``: the matrix's name (one folder name, checked by
    :func:`harness.run.config.check_run_name`) and a hash of the matrix and versions."""
    check_run_name(matrix.name)  # a matrix changed after it was built is checked too
    blob = json.dumps({"matrix": matrix.to_dict(), "versions": package_versions(plugins)},
                      sort_keys=True, default=str)
    return Path(out_root) / f"{matrix.name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def prepare_run_dir(path: Path, fresh: bool = False, out_root: Optional[Path] = None) -> None:
    """Create the run folder (emptied first with ``fresh``) and prove it is writable.

    ``fresh`` removes only a real folder directly inside ``out_root`` (default: ``path``'s
    parent): never a symbolic link's target, never anything outside ``--out``.

    Raises:
        ConfigError: the folder cannot be created or written (names it and the fix), or
            ``fresh`` would remove something outside ``out_root``.
    """
    if fresh and (path.is_symlink() or path.exists()):
        root = Path(out_root if out_root is not None else path.parent).resolve()
        if path.is_symlink() or path.resolve().parent != root:
            raise ConfigError(f"--fresh would remove {path} -> {path.resolve()}, which is not a "
                              f"folder directly inside --out {root}; nothing was removed. Remove "
                              f"it yourself if it should go, or give another --name")
    try:
        if fresh and path.exists():
            shutil.rmtree(path)
        (path / "cells").mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path / "cells", prefix=".probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write the run folder {path}: {exc.strerror or exc}; "
                          f"give --out a folder you can write") from None


class RecordNotSaved(BenchError):
    """A cell's record could not be written after retries; the run stops."""


def save_with_retries(what: str, path: Path, write, attempts: int = 3,
                      pause_s: float = 0.5):
    """``write()``, retried on ``OSError`` (a full disk that frees up, an NFS hiccup); the
    record stays in memory meanwhile. Raises :class:`RecordNotSaved` naming ``path``."""
    for i in range(attempts):
        try:
            return write()
        except OSError as exc:
            last = exc
            if i + 1 < attempts:
                time.sleep(pause_s * (i + 1))
    raise RecordNotSaved(
        f"cannot write {what} to {path} ({last.strerror or last}) after {attempts} tries; the "
        f"run stops so that no more results are lost. Make {path.parent} writable (or free "
        f"space) and run the same command again: finished cells are kept")


def run_matrix(plugins: PluginSystem, matrix: MatrixConfig, out_root: Path,
               executor: Optional[str] = None, executor_options: Optional[dict] = None,
               fresh: bool = False, show_progress: bool = True, keep_onnx: bool = False,
               ranking: Optional[dict] = None) -> RunStore:
    """Run every cell not already finished in the run folder; return the store.

    Several runs of one matrix may share the run folder at once: each cell is claimed
    before it runs (:meth:`RunStore.claim`), a run skips the cells another run holds and,
    after its own, waits for them (running those whose holder died or failed).
    ``keep_onnx`` keeps each cell's exported ONNX file as ``RUN/onnx/KEY.onnx`` (the
    ``mlflow`` reporter logs it); it is not part of the cells' configuration.
    ``ranking`` (from ``bench run --rank-first K``): only the cells of the backbones in
    ``ranking["kept"][dataset]`` run; the ranking is saved as ``ranking.json``.
    """
    cells, notes = validate(plugins, matrix)
    executor = executor or plugins.default("executors").name
    runner = make_executor(plugins, executor, executor_options)
    halving = _halving(plugins, matrix, runner, executor)
    # a cluster's cells run on other machines: the workers resolve the device there
    resolve = declared_hardware if getattr(runner, "remote", False) else resolve_hardware
    hardware = resolve(matrix.train.device, matrix.train.amp)  # ConfigError: usage
    cells = [with_hardware(c, hardware) for c in cells]
    if ranking is not None:
        cells = _ranked_cells(cells, ranking, notes)
    versions = package_versions(plugins)
    keyed = [(c, c.key(versions)) for c in cells]
    path = run_dir_for(out_root, matrix, plugins)
    made_here = fresh or not path.exists()
    config = {"matrix": matrix.to_dict(), "cell_keys": [k for _, k in keyed], "notes": notes,
              "executor": executor, "executor_options": dict(executor_options or {})}
    if ranking is not None:
        config["ranking"] = {k: ranking[k] for k in ("estimator", "k", "kept", "seconds")}
    store = _open_run_folder(plugins, path, fresh, config, hardware, ranking)
    recipe = recipe_for(plugins)
    todo = [CellJob(c, k, str(path), matrix.custom_profiles, recipe,
                    cell_needs_gpu(c, [resolve_profile(plugins, p, matrix.custom_profiles)
                                       for p in c.profiles]), keep_onnx=keep_onnx)
            for c, k in keyed if store.finished(k) is None]
    done_before = len(keyed) - len(todo)
    plan = plan_run(plugins, matrix, cells, notes, path, hardware.header(), done_before,
                    ranking=_ranking_line(ranking))
    estimate(plan, [j.cfg for j in todo], out_root)
    for line in plan.lines():  # the same plan bench run --dry-run prints
        print(line, file=sys.stderr)
    if done_before:
        print(f"resuming {path}: {done_before} of {len(keyed)} cells already finished",
              file=sys.stderr)
    driver = _Driver(plugins, matrix, store, _progress_bar(len(keyed), done_before,
                                                           show_progress), keep_onnx, executor)
    if halving and isinstance(runner, InProcessExecutor):
        from .hparam_search import CellHalving
        driver.halving = CellHalving(matrix.tune, storage=path / HALVING_JOURNAL)
    elif halving:  # an executor that halves cells through its own engine (ray: Ray Tune)
        runner.halving = matrix.tune
    driver.drive(runner, todo, made_here)
    atomic_write_json(path / "config.json", config)
    try:
        store.note_load_at_end()
    except (OSError, ValueError) as exc:  # context only: never lose a finished run over it
        print(f"warning: could not add the final load average to {path}/environment.json "
              f"({exc})", file=sys.stderr)
    return store


#: the Optuna studies of ``--halving`` in a run folder (JournalStorage: a rerun continues them)
HALVING_JOURNAL = "halving.journal"


def _halving(plugins: PluginSystem, matrix: MatrixConfig, runner, executor: str) -> bool:
    """Check a tuning or halving run can run (Optuna installed, every strategy's search
    space names real settings, halving on an executor that can halve: the in-process one,
    through Optuna's pruner, or one with ``halves = True`` (and ``check_halving()``), through
    its own engine, which ``run_matrix`` hands the settings as ``runner.halving``); whether
    the matrix halves its cells."""
    from .hparam_search import check_space, require_optuna
    if not matrix.tune.active:
        return False
    require_optuna()
    for item in matrix.strategies:
        check_space(plugins.strategies.get(item.name))
    if not matrix.tune.halving:
        return False
    if not isinstance(runner, InProcessExecutor) and not getattr(runner, "halves", False):
        raise ConfigError(
            f"--halving runs the matrix's cells in this process, through Optuna's "
            f"SuccessiveHalvingPruner, or on Ray, through Ray Tune's ASHA scheduler; the "
            f"{executor!r} executor cannot stop a cell it runs elsewhere: use --executor "
            f"inprocess or ray, or drop --halving")
    getattr(runner, "check_halving", lambda: None)()  # its engine importable (Ray Tune)
    return True


def dry_run(plugins: PluginSystem, matrix: MatrixConfig, out_root: Path,
            rank_first: Optional[tuple] = None) -> Plan:
    """The plan :func:`run_matrix` would print for ``matrix``, without running or writing
    anything (``bench run --dry-run``). ``rank_first``: ``(k, estimator)`` of
    ``--rank-first``, which is not computed here (it runs the backbones)."""
    cells, notes = validate(plugins, matrix)
    hardware = resolve_hardware(matrix.train.device, matrix.train.amp)
    cells = [with_hardware(c, hardware) for c in cells]
    versions = package_versions(plugins)
    path = run_dir_for(out_root, matrix, plugins)
    store = RunStore(path) if (path / "cells").is_dir() else None
    todo = [c for c in cells if store is None or store.finished(c.key(versions)) is None]
    ranking = None
    if rank_first is not None:
        k, by = rank_first
        ranking = (f"--rank-first {k}: {by} scores every backbone first (a frozen forward "
                   f"pass each) and only the {k} best per dataset train; the cells above "
                   f"count every backbone")
    plan = plan_run(plugins, matrix, cells, notes, path, hardware.header(),
                    len(cells) - len(todo), ranking=ranking)
    estimate(plan, todo, out_root)
    return plan


def _ranking_line(ranking: Optional[dict]) -> Optional[str]:
    if ranking is None:
        return None
    kept = "; ".join(f"{ds}: {', '.join(bbs)}" for ds, bbs in sorted(ranking["kept"].items()))
    return (f"ranked first by {ranking['estimator']} in {ranking['seconds']:.1f} s; training "
            f"the top {ranking['k']} per dataset: {kept}")


def _ranked_cells(cells: list, ranking: dict, notes: list) -> list:
    """The cells of the backbones ``--rank-first`` kept; a note per backbone left out."""
    kept = ranking["kept"]
    skipped = sorted({(c.dataset.label(), c.backbone.label()) for c in cells
                      if c.backbone.label() not in kept.get(c.dataset.label(), [])})
    cells = [c for c in cells if c.backbone.label() in kept.get(c.dataset.label(), [])]
    for ds, bb in skipped:
        notes.append(f"not trained: {bb} on {ds}, ranked below the top {ranking['k']} by "
                     f"{ranking['estimator']}")
    if not cells:
        raise ConfigError(f"--rank-first left no cell to run: {ranking['estimator']} could "
                          "score no backbone (see the warnings above)")
    return cells


def _open_run_folder(plugins: PluginSystem, path: Path, fresh: bool, config: dict,
                     hardware: Hardware, ranking: Optional[dict]) -> RunStore:
    """Create (or reopen) the run folder, sweep what killed runs left, write its metadata
    and settle the cells a killed run left "running"."""
    prepare_run_dir(path, fresh)
    sweep_temp_folders()  # what a SIGKILLed run left behind
    store = RunStore(path)
    store.write_meta(config, {**environment(plugins), "training": {
        "device": hardware.device, "device_name": hardware.device_name,
        "precision": hardware.precision, "how_chosen": hardware.note or "asked"}})
    store.aggregate()  # settles the cells a killed run left "running"
    if ranking is not None:
        atomic_write_json(path / "ranking.json", ranking)
    return store


class _Driver:
    """Hands the executor the cells this run may run (claimed one by one), saves each
    record as it arrives, accounts for every cell the executor was handed (one it returned
    no record for is a failed cell) and waits for the cells another run holds."""

    def __init__(self, plugins: PluginSystem, matrix: MatrixConfig, store: RunStore, bar,
                 keep_onnx: bool, executor: str = "executor"):
        self.plugins, self.matrix, self.store, self.bar = plugins, matrix, store, bar
        self.keep_onnx = keep_onnx
        self.executor = executor
        self.halving = None  # the matrix's successive halving (--halving), set by run_matrix
        self.claims: dict = {}
        self.done: set = set()  # keys whose record came back through on_done

    def claimed(self, jobs: list, held: list):
        """The jobs this run may run now, claimed one by one as the executor draws them."""
        for job in jobs:
            c = self.store.claim(job.key)
            if c is None:
                held.append(job)  # another bench run is running it
                continue
            if self.store.finished(job.key) is not None:  # another run finished it meanwhile
                c.release()
                self.bar.update(1)
                continue
            self.claims[job.key] = c
            yield job

    def save(self, rec: dict) -> None:
        save_with_retries(f"the record of cell {rec.get('key')}",
                          self.store.cell_path(rec["key"]), lambda: self.store.write_cell(rec))

    def run_one(self, job: CellJob) -> dict:
        cfg, key = job.cfg, job.key
        self.bar.set_description(_short(cfg))
        self.save({"key": key, "config": cfg.to_dict(), "status": "running",
                   "started": time.time()})
        return run_cell(self.plugins, cfg, key,
                        progress=lambda m: self.bar.set_postfix_str(m[:60]),
                        custom_profiles=self.matrix.custom_profiles,
                        onnx_dir=self.store.path / "onnx" if self.keep_onnx else None,
                        halving=self.halving)

    def on_done(self, rec: dict) -> None:
        self.done.add(rec.get("key"))
        try:
            self.save(rec)
            save_with_retries("the results", self.store.path / "results.json",
                              self.store.aggregate)
        finally:
            c = self.claims.pop(rec.get("key"), None)
            if c is not None:
                c.release()
        if rec.get("status") == "stopped (halving)":
            self.bar.write(f"cell stopped early: {rec['config'].get('backbone')} / "
                           f"{rec['config'].get('strategy')}: {rec.get('note')}")
        elif rec.get("status") != "ok":
            self.bar.write(f"cell failed: {rec['config'].get('backbone')} / "
                           f"{rec['config'].get('strategy')}: {rec.get('error')}")
        self.bar.update(1)

    def account(self, jobs: list, held: list) -> None:
        """A failed record for each job the executor returned no record for (it dropped
        the cell, or never drew it), so the run's table and exit status say so."""
        held_keys = {j.key for j in held}
        for job in jobs:
            if job.key in self.done or job.key in held_keys \
                    or self.store.finished(job.key) is not None:
                continue
            if job.key not in self.claims:  # never drawn: claim it before writing its record
                c = self.store.claim(job.key)
                if c is None:
                    continue  # another bench run is running it
                self.claims[job.key] = c
            who = plugin_label(self.plugins, "executors", self.executor)
            self.on_done(failure_record(job, "failed", (
                f"{who} returned no record for this cell: an executor calls on_done once for "
                f"every cell it is handed (harness.run.executor.Executor.run)")))

    def drive(self, runner, todo: list, made_here: bool) -> None:
        """Run ``todo``, then the cells other runs held, until none is left; always leave
        ``results.json`` rebuilt and every claim released."""
        store, path, removed = self.store, self.store.path, False
        try:
            pending = todo
            while pending:
                held: list = []
                try:
                    runner.run(self.claimed(pending, held), self.run_one, self.on_done)
                except ConfigError:  # the executor could not start (Ray's address...)
                    if made_here and not any(store.cells_dir.glob("*.json")):
                        shutil.rmtree(path, ignore_errors=True)  # nothing half-made stays
                        removed = True
                    raise
                except (BenchError, KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:
                    raise PluginFault(f"{plugin_label(self.plugins, 'executors', self.executor)}"
                                      f" failed while running cells: {type(exc).__name__}: "
                                      f"{exc}") from exc
                self.account(pending, held)
                if not held:
                    break
                self.bar.write(f"waiting for {len(held)} cell(s) that another bench run is "
                               f"running in {path}")
                for job in held:
                    store.claim(job.key, wait=True).release()
                pending = [j for j in held if store.finished(j.key) is None]
                self.bar.update(len(held) - len(pending))
        finally:
            for c in self.claims.values():
                c.release()
            self.bar.close()
            sweep_temp_folders()  # those of workers killed on the way out
            try:
                if not removed:
                    store.aggregate()
            except OSError as exc:
                print(f"warning: could not rewrite {path}/results.json ({exc.strerror}); "
                      f"bench report {path} rebuilds it from cells/", file=sys.stderr)


def with_hardware(cell: CellConfig, hw: Hardware) -> CellConfig:
    """``cell`` with its device and precision resolved (so they are part of its key)."""
    return dataclasses.replace(cell, train={**cell.train, "device": hw.device, "amp": hw.amp},
                               device_name=hw.device_name)


def make_executor(plugins: PluginSystem, name: str, options: Optional[dict] = None):
    """Build the named executor; options it does not accept are a :class:`ConfigError`."""
    spec = plugins.executors.get(name)
    options = {k: v for k, v in (options or {}).items() if v is not None}
    try:
        return spec.factory(**options)
    except (TypeError, ValueError) as exc:
        try:
            params = [p for p in inspect.signature(spec.factory).parameters
                      if p not in ("self", "options")]
        except (TypeError, ValueError):
            params = []
        raise ConfigError(f"executor {name!r}: {exc}. It accepts: "
                          f"{', '.join(params) or 'no options'}") from None
    except BenchError:
        raise
    except Exception as exc:
        raise PluginFault(f"{plugin_label(plugins, 'executors', name)} failed while being "
                          f"built: {type(exc).__name__}: {exc}") from exc


def _short(cfg: CellConfig) -> str:
    return f"{cfg.backbone.label()}/{cfg.strategy.label()}"[:40]


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="cell", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True)


__all__ = ["build_matrix", "merge_weights", "validate", "run_matrix", "dry_run", "run_dir_for",
           "prepare_run_dir", "save_with_retries", "RecordNotSaved", "UnknownName"]
