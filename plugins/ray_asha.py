"""``--halving`` on the ``ray`` executor: the matrix's cells as Ray Tune trials under Ray
Tune's ASHA scheduler (``ray.tune.schedulers.ASHAScheduler``; Li et al. 2018, "A System for
Massively Parallel Hyperparameter Tuning", after Jamieson & Talwalkar 2016).

One Ray Tune experiment per comparison group (same dataset, task and seed: the cells share a
metric, as in process), its trials the group's cells in matrix order (a grid over their
indices). Each trial runs its cell with :func:`harness.run.executor.execute_job`, as the
plain ``ray`` executor does; after every epoch the cell saves its record as it stands (its
partial curve, status ``running``) into the run folder and reports the epoch's validation
metric with ``ray.tune.report``. ASHA decides on ``training_iteration`` (one report per
epoch), so the settings map one to one:

==========================  ====================================================
``[tune]`` / ``--halving``   ``ASHAScheduler``
==========================  ====================================================
``min_resource`` (epochs)    ``grace_period``
``reduction_factor``         ``reduction_factor``
(none)                       ``max_t`` = 2**20 epochs, ``stop_last_trials=False``:
                             no cap, a cell trains its own schedule (Optuna's
                             pruner has no maximum either)
(none)                       ``brackets=1`` (plain ASHA, like Optuna's pruner)
metric, direction            ``metric="halving_score"``, ``mode="max"``; the
                             score is the validation metric, negated when lower
                             is better
==========================  ====================================================

When ASHA stops a trial, Ray Tune ends its worker in the middle of the report: the driver
takes the record the cell last saved and records it as ``stopped (halving)`` with its
partial curve and the reason, exactly as the in-process path does. Which trials ASHA
stopped is read from the scheduler itself (:class:`ObservedASHA` records its own STOP
decisions; it decides nothing of its own).

The scheduler's state (its rungs, which cell each trial ran, the cells it stopped) is saved
into the run folder after every decision (``ray_tune/asha-GROUP.pkl``, ASHA's own
``save``/``restore``), so an interrupted run started again continues: finished and stopped
cells keep their records and their values at every rung, which judge the cells still to
run; a cell stopped before its record was saved is recorded as stopped without training
again; a cell interrupted in the middle trains again from its start and is judged again at
every rung (its earlier values are taken out of the rungs, so it is not counted twice).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

from harness.run.executor import execute_job, failure_record, worker_info
from harness.run.hparam_search import STOPPED, CellTrial, TuneSettings
from harness.run.results import FINISHED, RunStore

MAX_T = 2 ** 20  # epochs: far beyond any schedule, so ASHA never stops a cell for length
SCORE = "halving_score"


def asha_kwargs(settings: TuneSettings) -> dict:
    """The ``ASHAScheduler`` arguments of ``[tune]``'s halving settings (see the module
    docstring's table)."""
    return {"time_attr": "training_iteration", "metric": SCORE, "mode": "max",
            "grace_period": settings.min_resource,
            "reduction_factor": settings.reduction_factor, "max_t": MAX_T, "brackets": 1,
            "stop_last_trials": False}


def stop_note(settings: TuneSettings, epochs: int) -> str:
    return (f"stopped by Ray Tune's ASHA scheduler after epoch {epochs} (grace_period "
            f"{settings.min_resource}, reduction factor {settings.reduction_factor}): its "
            f"validation metric was below the cut-off of the best 1/"
            f"{settings.reduction_factor} of the cells of its group at that rung")


def observed_asha(settings: TuneSettings, state_path: Path):
    """An ``ASHAScheduler`` that remembers its own STOP decisions and saves its state after
    each one (restored from ``state_path`` when an earlier run left it)."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    class ObservedASHA(ASHAScheduler):
        def __init__(self):
            super().__init__(**asha_kwargs(settings))
            self.cells: dict = {}    # trial id -> cell key
            self.stopped: dict = {}  # cell key -> epochs it trained before ASHA stopped it

        def on_trial_add(self, controller, trial):
            super().on_trial_add(controller, trial)
            self.cells[trial.trial_id] = trial.config["key"]

        def on_trial_result(self, controller, trial, result):
            action = super().on_trial_result(controller, trial, result)
            if action == TrialScheduler.STOP:
                self.stopped[trial.config["key"]] = int(result["training_iteration"])
            self.save_state()
            return action

        def on_trial_complete(self, controller, trial, result):
            super().on_trial_complete(controller, trial, result)
            self.save_state()

        def save_state(self) -> None:
            tmp = state_path.with_name(state_path.name + ".tmp")
            self.save(str(tmp))
            os.replace(tmp, state_path)

        def forget(self, keys: set) -> None:
            """Take the rung values of trials that ran ``keys`` out (those cells run again)."""
            gone = {t for t, k in self.cells.items() if k in keys}
            for bracket in self._brackets:
                for _, recorded in bracket._rungs:
                    for t in gone & set(recorded):
                        del recorded[t]

    sched = ObservedASHA()
    if state_path.exists():
        sched.restore(str(state_path))
    return sched


class TuneReporter:
    """The worker's side (what :func:`harness.run.cell.run_cell` calls ``halving``): after
    each epoch, save the record as it stands, then report to Ray Tune."""

    engine = "Ray Tune ASHAScheduler"

    def __init__(self, settings: TuneSettings, run_dir: str):
        self.settings, self.run_dir = settings, run_dir

    def start(self, group: tuple, maximize: bool, key: Optional[str] = None,
              snapshot: Optional[Callable[[], dict]] = None) -> CellTrial:
        from ray import tune
        store, steps, worker = RunStore(Path(self.run_dir)), [0], worker_info()

        def report(value: float, record: Optional[dict] = None) -> None:
            steps[0] += 1
            if snapshot is not None:  # ASHA may end this worker inside tune.report
                store.write_cell({**snapshot(), "worker": worker})
            tune.report({SCORE: float(value) if maximize else -float(value),
                         "val_metric": float(value), "epoch": steps[0]})

        return CellTrial(report, lambda *a, **k: None)


def cell_trial(config: dict, jobs: dict, settings: TuneSettings, threads: int,
               gpus: dict) -> None:
    """A Ray Tune trainable: run the cell ``config["key"]`` (its record goes to the run
    folder, as the plain ray executor's tasks write theirs)."""
    job = jobs[config["key"]]
    execute_job(job, threads, None, bool(gpus[job.key]),
                halving=TuneReporter(settings, job.run_dir))


@contextlib.contextmanager
def _quiet_tune():
    """Ray Tune's settings for one ``fit``: Ctrl-C stops the bench run (Tune's own handler
    would end only this experiment and start the next group's), no progress tables on
    stdout (the bench run has its own bar), and of the result loggers only the JSON one (the
    records are ours; Tune reads its results back from it)."""
    env = {"TUNE_DISABLE_SIGINT_HANDLER": "1", "RAY_AIR_NEW_OUTPUT": "0",
           "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def read_record(job) -> Optional[dict]:
    path = RunStore(Path(job.run_dir)).cell_path(job.key)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stopped_record(job, rec: Optional[dict], settings: TuneSettings, epochs: int) -> dict:
    """The record of a cell ASHA stopped: the one it last saved (its partial curve), marked
    ``stopped (halving)`` with the reason."""
    if not rec or "history" not in rec:
        return failure_record(job, "failed", (
            f"Ray Tune's ASHA stopped this cell after epoch {epochs}, but the record it saves "
            f"after every epoch is not in {job.run_dir}/cells (is the run folder on a "
            f"filesystem every node mounts?)"))
    rec = {k: v for k, v in rec.items() if k not in ("error", "traceback")}
    note = stop_note(settings, epochs)
    rec["halving"] = {**rec.get("halving", {}), "stopped_after_epochs": epochs}
    rec.update(status=STOPPED, note=note, finished=time.time())
    return rec


def run_halving(ray, jobs: list, on_done: Callable, settings: TuneSettings, threads: int,
                cpus_per_cell: float, gpus_for: Callable) -> None:
    """Run ``jobs`` as Ray Tune trials under ASHA, one experiment per comparison group;
    ``on_done`` once per job."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    groups: dict = {}
    for job in jobs:
        c = job.cfg
        groups.setdefault((c.dataset.label(), c.task.label(), c.seed), []).append(job)
    cluster_gpus = float((ray.cluster_resources() or {}).get("GPU", 0))
    for n, (group, members) in enumerate(groups.items()):
        run_dir = Path(members[0].run_dir)
        folder = run_dir / "ray_tune"
        folder.mkdir(exist_ok=True)
        name = "asha-" + "".join(ch if ch.isalnum() else "_" for ch in json.dumps(list(group)))
        sched = observed_asha(settings, folder / f"{name}.pkl")
        done = [j for j in members if j.key in sched.stopped]
        for job in done:  # stopped by an earlier run before it saved the record
            on_done(stopped_record(job, read_record(job), settings, sched.stopped[job.key]))
        members = [j for j in members if j.key not in sched.stopped]
        if not members:
            continue
        sched.forget({j.key for j in members})
        by_key = {j.key: j for j in members}
        gpus = {j.key: gpus_for(j, cluster_gpus) for j in members}
        trainable = tune.with_resources(
            tune.with_parameters(cell_trial, jobs=by_key, settings=settings, threads=threads,
                                 gpus=gpus),
            lambda config: {"cpu": cpus_per_cell, "gpu": gpus[config["key"]]})
        tuner = tune.Tuner(
            trainable, param_space={"key": tune.grid_search(list(by_key))},
            tune_config=tune.TuneConfig(scheduler=sched, reuse_actors=False),
            run_config=tune.RunConfig(storage_path=str(folder), name=f"{name}-{int(time.time())}",
                                      verbose=0, callbacks=[JsonLoggerCallback()]))
        with _quiet_tune():
            results = tuner.fit()
        errors = {r.config["key"]: r.error for r in results if r.config and r.error}
        for job in members:
            rec = read_record(job)
            if job.key in sched.stopped:
                rec = stopped_record(job, rec, settings, sched.stopped[job.key])
            elif job.key in errors:
                rec = failure_record(job, "failed", f"Ray Tune trial failed: "
                                     f"{type(errors[job.key]).__name__}: {errors[job.key]}")
            elif not rec or rec.get("status") not in FINISHED:
                rec = failure_record(job, "failed", (
                    "the Ray Tune trial ended without a final record and ASHA did not stop "
                    "it (the worker could not write the run folder?)"))
            on_done(rec)


__all__ = ["asha_kwargs", "observed_asha", "run_halving", "TuneReporter", "MAX_T"]
