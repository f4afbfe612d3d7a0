"""Strategies compared at their best: an equal tuning budget per cell (``--tune N``) and
successive halving over a matrix's cells (``--halving``), both through Optuna.

Tuning (``bench run --tune N``, ``[tune] trials = N``): every cell of the matrix runs the same
``N`` Optuna trials of its strategy's search space (``StrategySpec.search_space``: learning
rates and weight decay, ranges from the papers) with the TPE sampler (Bergstra et al. 2011),
seeded with the cell's seed, and a pruner on the validation curve (each epoch's validation
metric is reported through ``TrainContext.epoch_hook``): the median rule by default (Golovin
et al. 2017, Google Vizier's "median stopping rule") or Optuna's asynchronous successive
halving. A trial trains on the training split and is scored on the validation split only: its
data has no test split at all (:func:`without_test`). The best trial's configuration is then
retrained as the cell's ordinary run and scored once on the test split. Every trial is
recorded in the cell (``rec["tuning"]``: parameters, validation curve, cost, state). The budget
is the matrix's, so every strategy gets the same number of trials (VTAB, Zhai et al. 2019;
Kornblith et al. 2019 tune each model the same way before comparing).

Halving (``--halving``): the cells of one comparison group (same dataset, task and seed) are
the trials of one Optuna study with a ``SuccessiveHalvingPruner(min_resource,
reduction_factor)`` (Jamieson & Talwalkar 2016; its asynchronous form, ASHA, Li et al. 2018):
resource = training epochs; at rung k (``min_resource * reduction_factor**k`` epochs) a cell
goes on only if its validation metric is in the top ``1 / reduction_factor`` of the cells
that reached that rung before it (Optuna promotes the first cells while fewer than
``reduction_factor`` have reached a rung, when they are the best so far). Cells run one after
the other in this process, so the order of the matrix matters, as in ASHA; a stopped cell is
recorded with status ``stopped (halving)`` and its partial curve. The studies are kept in
the run folder (Optuna's JournalStorage, ``halving.journal``), so an interrupted run started
again continues with the decisions already taken (:class:`CellHalving`).

Optuna is optional (``pip install 'transfer-bench[tune]'``) and imported only here, when a
run tunes or halves.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Optional

from ..api.errors import BenchError, ConfigError

PRUNERS = ("median", "halving", "none")
INSTALL = "pip install 'transfer-bench[tune]' (or: pip install 'optuna>=3.4')"
STOPPED = "stopped (halving)"


@dataclass
class TuneSettings:
    """The ``[tune]`` table of a matrix file (and ``bench run --tune N --halving``).

    Attributes:
        trials: Optuna trials per cell (0: no tuning, every strategy at its defaults).
            The same for every cell: an equal tuning budget per strategy.
        pruner: ``median`` (Optuna's MedianPruner: a trial stops when its validation
            metric is worse than the median of earlier trials at the same epoch),
            ``halving`` (Optuna's SuccessiveHalvingPruner over the trials) or ``none``.
        startup_trials: trials the median pruner lets finish before it prunes.
        halving: successive halving over the matrix's cells (see the module docstring).
        min_resource: epochs a cell trains before halving may first stop it (``--halving``)
            and trials before the ``halving`` pruner may (its rungs start there).
        reduction_factor: keep the best 1 / this at each rung (Jamieson & Talwalkar's eta).
    """

    trials: int = 0
    pruner: str = "median"
    startup_trials: int = 2
    halving: bool = False
    min_resource: int = 1
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        for name in ("trials", "startup_trials", "min_resource", "reduction_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"[tune] {name} must be an integer, not {v!r}")
        if self.trials < 0:
            raise ConfigError(f"[tune] trials must be >= 0 (0: no tuning), not {self.trials}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"[tune] pruner must be one of {', '.join(PRUNERS)}, "
                              f"not {self.pruner!r}")
        if self.startup_trials < 0 or self.min_resource < 1:
            raise ConfigError("[tune] startup_trials must be >= 0 and min_resource >= 1")
        if self.reduction_factor < 2:
            raise ConfigError(f"[tune] reduction_factor must be >= 2 (keep the best 1/eta), "
                              f"not {self.reduction_factor}")

    @property
    def active(self) -> bool:
        return self.trials > 0 or self.halving

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def keys(cls) -> dict:
        return {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}


def require_optuna():
    """The ``optuna`` module, or a :class:`ConfigError` naming the install command."""
    try:
        import optuna
    except ImportError:
        raise ConfigError(f"--tune and --halving need Optuna, which is not installed: "
                          f"{INSTALL}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class Stopped(BenchError):
    """Raised from an epoch hook: the pruner stopped this trial or cell (a
    :class:`BenchError`, so that it passes a plugin's blame unchanged)."""


def split_params(spec, params: dict) -> tuple[dict, dict]:
    """``params`` (a search space's names) as ``(strategy keywords, [train] settings)``.

    Raises:
        ConfigError: a name that is neither (the strategy's spec is wrong).
    """
    from ..train.loop import TrainSettings
    accepted = spec.cls.parameters()
    train_keys = {f.name for f in fields(TrainSettings)}
    strategy_kw, train = {}, {}
    for name, value in params.items():
        if name in accepted:
            strategy_kw[name] = value
        elif name in train_keys:
            train[name] = value
        else:
            raise ConfigError(
                f"strategy {spec.name!r}: its search_space names {name!r}, which is neither "
                f"one of its parameters ({', '.join(sorted(accepted)) or 'none'}) nor a "
                f"[train] setting")
    return strategy_kw, train


def check_space(spec) -> None:
    """Fail before a run starts when a strategy's search space names an unknown setting."""
    split_params(spec, {d.name: d.low for d in spec.search_space})


def without_test(data):
    """``data`` with no test split: what a trial trains and validates on (the test split is
    scored once, by the retrained best configuration)."""
    import dataclasses
    return dataclasses.replace(data, test=None)


def _pruner(optuna, settings: TuneSettings):
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials)
    if settings.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=settings.min_resource, reduction_factor=settings.reduction_factor)
    return optuna.pruners.NopPruner()


def search(space: tuple, objective: Callable, settings: TuneSettings, maximize: bool,
           seed: int, progress: Callable[[str], None] = lambda m: None,
           untuned_first: bool = False) -> dict:
    """Run ``settings.trials`` Optuna trials of ``objective`` over ``space``.

    Args:
        space: :class:`harness.api.specs.SearchDim` ranges.
        objective: ``objective(params, report) -> (value, cost)``: trains with ``params``
            (a dict name -> value), calls ``report(value)`` after every epoch with the
            validation metric (which raises :class:`Stopped` when the pruner says so), and
            returns the validation value of the model it delivers and a dict of what it
            cost (seconds, epochs, FLOPs...).
        maximize: the metric is higher-is-better.
        seed: the TPE sampler's seed.
        untuned_first: trial 0 is the untuned configuration: ``objective({}, report)``,
            no parameter drawn (``bench run --tune`` does this, so that a search never
            delivers a configuration worse on validation than the one it replaces, and
            the pruner's median has a reference that learns; see docs/tuning.md). It is
            one of the ``settings.trials`` trials, and TPE's start-up trials count it.

    Returns:
        The tuning record: settings, the Optuna version, every trial (``number``,
        ``params``, ``state`` ``complete``/``pruned``/``failed``, ``value``, ``curve``,
        ``cost``, ``error``; ``untuned`` on the untuned trial, whose ``params`` are empty),
        and ``best`` (``number``, ``params``, ``value``, ``untuned``).

    Raises:
        BenchError: no trial completed (each one's error is in the message).
    """
    optuna = require_optuna()
    # TPE models the trials after its random start-up ones (Optuna's default: 10, more than
    # a small budget); half the budget, 2 to 10, leaves it room to exploit
    startup = max(2, min(10, settings.trials // 2))
    study = optuna.create_study(direction="maximize" if maximize else "minimize",
                                sampler=optuna.samplers.TPESampler(
                                    seed=seed, n_startup_trials=startup),
                                pruner=_pruner(optuna, settings))
    trials = []
    for i in range(settings.trials):
        trial = study.ask()
        untuned = untuned_first and i == 0
        params = {} if untuned else {
            d.name: trial.suggest_float(d.name, d.low, d.high, log=d.log) for d in space}
        curve: list = []

        def report(value: float, trial=trial, curve=curve) -> None:
            curve.append(float(value))
            trial.report(float(value), len(curve))
            if trial.should_prune():
                raise Stopped(f"pruned after epoch {len(curve)}")

        shown = ("untuned configuration" if untuned
                 else ", ".join(f"{k}={v:.3g}" for k, v in params.items()))
        progress(f"trial {i + 1}/{settings.trials} {shown}")
        row: dict[str, Any] = {"number": trial.number, "params": params, "curve": curve}
        if untuned:
            row["untuned"] = True
        t0 = time.perf_counter()
        try:
            value, cost = objective(params, report)
            study.tell(trial, float(value))
            row.update(state="complete", value=float(value), cost=cost)
        except Stopped as exc:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            row.update(state="pruned", value=None, note=str(exc))
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # a rate that diverges fails its trial, not the search
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            row.update(state="failed", value=None, error=f"{type(exc).__name__}: {exc}")
        row.setdefault("cost", {})
        row["cost"]["seconds"] = time.perf_counter() - t0
        row["cost"].setdefault("epochs", len(curve))
        trials.append(row)
    done = [t for t in trials if t["state"] == "complete"]
    if not done:
        why = "; ".join(f"trial {t['number']}: {t.get('error') or t.get('note')}"
                        for t in trials)
        raise BenchError(f"tuning: none of the {settings.trials} trials completed ({why}); "
                         f"check the strategy's search space or raise --tune")
    best = study.best_trial
    return {"settings": settings.to_dict(), "optuna": optuna.__version__,
            "sampler": f"TPE (seed {seed}, {startup} random start-up trials)",
            "pruner": settings.pruner, "direction": study.direction.name.lower(),
            "objective": "validation metric of the delivered model", "trials": trials,
            "best": {"number": best.number, "params": dict(best.params),
                     "value": float(best.value),
                     "untuned": bool(trials[best.number].get("untuned"))},
            "counts": {s: sum(t["state"] == s for t in trials)
                       for s in ("complete", "pruned", "failed")}}


@dataclass
class CellTrial:
    """A cell's place in the matrix's successive halving (:meth:`CellHalving.start`).

    Attributes:
        report: ``report(value, record=None)`` after each epoch with its validation metric
            (and the epoch's record, kept so that a resumed run can show the curve);
            raises :class:`Stopped` when halving stops the cell.
        finish: ``finish(value or None, failed=False)`` when the fit ends (``None``:
            stopped; ``failed``: the fit raised); once, later calls do nothing.
        resumed: what an earlier, interrupted run of the same folder had decided for this
            cell ('' when this run is its first).
    """

    report: Callable
    finish: Callable
    resumed: str = ""

    def __iter__(self):  # report, finish = halving.start(...)
        return iter((self.report, self.finish))


def journal_storage(optuna, path):
    """Optuna's JournalStorage in a file (``path``): an append-only log with file locks,
    so a study survives a crash and several processes may share it."""
    try:
        from optuna.storages.journal import JournalFileBackend  # Optuna >= 4.0
        backend = JournalFileBackend(str(path))
    except ImportError:  # Optuna 3.x
        backend = optuna.storages.JournalFileStorage(str(path))
    return optuna.storages.JournalStorage(backend)


class CellHalving:
    """Successive halving over a matrix's cells, one Optuna study per comparison group.

    ``start(group, maximize, key)`` opens the cell's trial (:class:`CellTrial`).

    With ``storage`` (a file: the run folder's ``halving.journal``) the studies live in
    Optuna's JournalStorage, so a run that is interrupted and started again continues:
    the cells already finished or stopped keep their trials, and so their values at every
    rung, which judge the cells still to run; a cell stopped before its record was saved
    is stopped again without training; a cell interrupted in the middle of its fit takes
    up its own trial again (the rungs it already passed stand: it is judged again only at
    rungs beyond them, on the values the first attempt reported).
    """

    engine = "Optuna SuccessiveHalvingPruner"

    def __init__(self, settings: TuneSettings, storage=None):
        self.settings = settings
        self.optuna = require_optuna()
        self.storage = journal_storage(self.optuna, storage) if storage is not None else None
        self.studies: dict = {}
        self.told: dict = {}  # group -> numbers of the trials already told

    def _study(self, group: tuple, maximize: bool):
        if group not in self.studies:
            optuna = self.optuna
            direction = "maximize" if maximize else "minimize"
            pruner = optuna.pruners.SuccessiveHalvingPruner(
                min_resource=self.settings.min_resource,
                reduction_factor=self.settings.reduction_factor)
            if self.storage is None:
                study = optuna.create_study(direction=direction, pruner=pruner)
            else:
                study = optuna.create_study(
                    storage=self.storage, study_name="halving " + json.dumps(list(group)),
                    direction=direction, pruner=pruner, load_if_exists=True)
                if study.direction.name.lower() != direction:
                    raise BenchError(f"the halving study of {list(group)} in this run folder "
                                     f"is to {study.direction.name.lower()}, this run's "
                                     f"metric is to {direction}: rerun with --fresh")
            self.studies[group] = study
        return self.studies[group]

    def _stop_message(self, epochs: int) -> str:
        return (f"stopped by successive halving after epoch {epochs} "
                f"(min_resource {self.settings.min_resource}, reduction factor "
                f"{self.settings.reduction_factor}): its validation metric was "
                f"not in the best 1/{self.settings.reduction_factor} of the "
                f"cells of its group at that rung")

    def start(self, group: tuple, maximize: bool, key: Optional[str] = None,
              snapshot: Optional[Callable[[], dict]] = None) -> CellTrial:
        """The trial of cell ``key`` in its group's study (``snapshot``: unused here; an
        executor that halves elsewhere saves the partial record with it).

        Raises:
            Stopped: an earlier run of this folder stopped this cell (its epochs ride on
                the exception, ``epochs``).
        """
        optuna = self.optuna
        study = self._study(group, maximize)
        told = self.told.setdefault(group, set())
        states = optuna.trial.TrialState
        earlier = [t for t in study.get_trials(deepcopy=False)
                   if key is not None and t.user_attrs.get("cell") == key]
        earlier = earlier[-1] if earlier else None
        resumed, skip_to = "", 0
        if earlier is not None and earlier.state == states.PRUNED:
            exc = Stopped(earlier.user_attrs.get("note") or self._stop_message(
                earlier.last_step or 0))
            exc.epochs = _epochs_of(earlier)
            raise exc
        if earlier is not None and earlier.state == states.COMPLETE:
            # halving let it finish; its record was lost (a crash after the fit): train it
            # again, and leave the study as it was
            return CellTrial(lambda value, record=None: None, lambda *a, **k: None,
                             f"an earlier run of this folder let this cell finish (trial "
                             f"{earlier.number}); its record was not saved, so it trained "
                             f"again, unjudged")
        if earlier is not None and earlier.state == states.RUNNING:
            trial = optuna.trial.Trial(study, earlier._trial_id)  # take up its own trial
            skip_to = earlier.last_step or 0
            resumed = (f"an earlier run of this folder stopped in the middle of this cell "
                       f"(trial {earlier.number}, {skip_to} epochs reported): it trained "
                       f"again and the halving decisions of those epochs stood")
        else:  # first time, or the earlier fit failed
            trial = study.ask()
            if key is not None:
                trial.set_user_attr("cell", key)
        steps = [0]

        def report(value: float, record: Optional[dict] = None) -> None:
            steps[0] += 1
            if steps[0] <= skip_to:
                return  # decided in the earlier run: it went on
            if self.storage is not None and record is not None:
                trial.set_user_attr(f"epoch {steps[0]:04d}", record)
            trial.report(float(value), steps[0])
            if trial.should_prune():
                note = self._stop_message(steps[0])
                if self.storage is not None:
                    trial.set_user_attr("note", note)
                raise Stopped(note)

        def finish(value: Optional[float], failed: bool = False) -> None:  # once
            if trial.number in told:
                return
            told.add(trial.number)
            if failed:  # a rerun runs the cell again, with a new trial
                study.tell(trial, state=states.FAIL)
            elif value is None:
                study.tell(trial, state=states.PRUNED)
            else:
                study.tell(trial, float(value))

        return CellTrial(report, finish, resumed)


def _epochs_of(trial) -> list:
    """The epoch records a trial kept (``epoch NNNN`` user attributes), in order."""
    return [trial.user_attrs[k] for k in sorted(trial.user_attrs) if k.startswith("epoch ")]
