"""Tuning every strategy with the same budget (``--tune N``) and successive halving over a
matrix's cells (``--halving``), issue 31: a search finds a planted best learning rate, trials
never see the test split, halving keeps the best of cells with known curves."""
from __future__ import annotations

import contextlib
import io
import json
import math
import sys

import pytest

pytest.importorskip("optuna")

from harness import SearchDim, StrategySpec, hookimpl  # noqa: E402
from harness.api.errors import BenchError, ConfigError  # noqa: E402
from harness.run import hparam_search  # noqa: E402
from harness.run.config import MatrixConfig, matrix_kwargs  # noqa: E402
from harness.run.hparam_search import (CellHalving, Stopped, TuneSettings, search,  # noqa: E402
                                       split_params)
from harness.report.table import summary_table  # noqa: E402
from harness.train.loop import TrainSettings  # noqa: E402
from plugins.strategies import FineTune  # noqa: E402

PLANTED = 3e-2  # the best rate of the synthetic objective, 1.5 decades above the 1e-3 default


def _planted_objective(params, report):
    """A validation curve that rises towards 1 - (distance of log10(lr) from the planted
    rate)^2 over 4 epochs: the default 1e-3 scores 1 - 1.5^2 < 0."""
    top = 1.0 - (math.log10(params["lr"]) - math.log10(PLANTED)) ** 2
    for epoch in range(1, 5):
        report(top * epoch / 4)
    return top, {"epochs": 4}


def test_search_finds_a_planted_best_learning_rate():
    space = (SearchDim("lr", 1e-6, 1.0), SearchDim("weight_decay", 1e-6, 1e-2))
    out = search(space, _planted_objective, TuneSettings(trials=24), maximize=True, seed=0)
    best = out["best"]["params"]["lr"]
    assert abs(math.log10(best) - math.log10(PLANTED)) < 0.5, out["best"]
    assert len(out["trials"]) == 24
    import optuna
    assert out["optuna"] == optuna.__version__  # the engine's version, with its trials
    assert out["counts"]["complete"] + out["counts"]["pruned"] == 24
    assert out["counts"]["pruned"] > 0  # the median rule stopped hopeless rates early
    for t in out["trials"]:
        assert set(t["params"]) == {"lr", "weight_decay"}
        assert t["curve"] and t["cost"]["seconds"] >= 0
        if t["state"] == "pruned":
            assert len(t["curve"]) < 4 and t["value"] is None
        else:
            assert len(t["curve"]) == 4 and t["value"] == pytest.approx(t["curve"][-1])
    # seeded: the same search again makes the same trials
    again = search(space, _planted_objective, TuneSettings(trials=24), maximize=True, seed=0)
    assert [t["params"] for t in again["trials"]] == [t["params"] for t in out["trials"]]


def test_the_untuned_configuration_is_trial_0_and_wins_when_every_draw_is_worse():
    """bench run's searches start with the cell's untuned configuration (no parameter
    drawn): when every drawn rate diverges to a chance plateau (the median pruner would
    otherwise compare healthy slow starters only against those), the search delivers the
    untuned configuration, never a worse one."""
    def objective(params, report):
        if not params:  # the untuned configuration: learns slowly from below chance
            curve = [0.05, 0.3, 0.5, 0.6]
        elif params["lr"] > 1e-2:  # diverges: one class predicted, chance
            curve = [0.1, 0.1, 0.1, 0.1]
        else:  # would learn, but starts below chance and is compared at epoch 1
            curve = [0.04, 0.2, 0.4, 0.5]
        for v in curve:
            report(v)
        return curve[-1], {}

    space = (SearchDim("lr", 1e-3, 1.0),)
    out = search(space, objective, TuneSettings(trials=6), maximize=True, seed=0,
                 untuned_first=True)
    first = out["trials"][0]
    assert first["untuned"] and first["params"] == {} and first["state"] == "complete"
    assert all("untuned" not in t and set(t["params"]) == {"lr"} for t in out["trials"][1:])
    assert out["best"] == {"number": 0, "params": {}, "value": 0.6, "untuned": True}
    assert len(out["trials"]) == 6  # one of the budget's trials, not an extra one


def test_failed_trials_are_recorded_and_all_failing_is_an_error():
    def diverges(params, report):
        if params["lr"] > 1e-2:
            raise FloatingPointError("loss is nan")
        report(0.5)
        return 0.5, {}

    out = search((SearchDim("lr", 1e-4, 1.0),), diverges, TuneSettings(trials=6, pruner="none"),
                 maximize=True, seed=1)
    failed = [t for t in out["trials"] if t["state"] == "failed"]
    assert all("loss is nan" in t["error"] for t in failed)
    assert out["best"]["params"]["lr"] <= 1e-2

    def always(params, report):
        raise FloatingPointError("loss is nan")

    with pytest.raises(BenchError, match="none of the 2 trials completed.*loss is nan"):
        search((SearchDim("lr", 1e-4, 1.0),), always, TuneSettings(trials=2), True, 0)


# -- successive halving over cells with known curves -------------------------------------------
CURVES = {  # validation accuracy per epoch; "best" leads from the first epoch on
    "best": [0.50, 0.70, 0.80, 0.90, 0.92, 0.95, 0.96, 0.97, 0.97],
    "good": [0.45, 0.60, 0.70, 0.75, 0.80, 0.82, 0.83, 0.84, 0.85],
    "slow": [0.30, 0.40, 0.50, 0.60, 0.65, 0.70, 0.72, 0.74, 0.75],
    "flat": [0.25, 0.25, 0.26, 0.26, 0.26, 0.27, 0.27, 0.27, 0.27],
    "bad": [0.10, 0.12, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.20],
    "worse": [0.05, 0.06, 0.07, 0.08, 0.09, 0.10, 0.11, 0.12, 0.13],
}


def _halve(order, settings):
    halving = CellHalving(settings)
    trained = {}
    for name in order:
        report, finish = halving.start(("digits", "classification", 0), maximize=True)
        seen = []
        try:
            for value in CURVES[name]:
                seen.append(value)
                report(value)
            finish(max(seen))
        except Stopped:
            finish(None)
        trained[name] = seen
    return trained


def _halve_with_ray_asha(order, settings, tmp_path):
    """The same cells, one after the other, judged by Ray Tune's ASHA scheduler as the ray
    executor configures it (its own decision code, driven here without a cluster)."""
    from types import SimpleNamespace
    pytest.importorskip("ray.tune", reason="Ray Tune is not installed "
                        "(pip install 'transfer-bench[ray]')")
    from ray.tune.schedulers.trial_scheduler import TrialScheduler
    from plugins.ray_asha import SCORE, observed_asha
    sched = observed_asha(settings, tmp_path / "asha.pkl")
    trained = {}
    for name in order:
        trial = SimpleNamespace(trial_id=f"t-{name}", config={"key": name})
        sched.on_trial_add(None, trial)
        seen = []
        for value in CURVES[name]:
            seen.append(value)
            result = {"training_iteration": len(seen), SCORE: value}
            if sched.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                break
        else:
            sched.on_trial_complete(None, trial, result)
        trained[name] = seen
    assert {k: len(trained[k]) for k in sched.stopped} == sched.stopped
    return trained


@pytest.mark.parametrize("engine", ["optuna", "ray_asha"])
@pytest.mark.parametrize("order, stopped", [
    (list(CURVES), {"good", "slow", "flat", "bad", "worse"}),
    (["flat", "good", "best", "bad", "slow", "worse"], {"bad", "slow", "worse"}),
    # asynchronous halving judges a cell against those before it: worst first, each is the
    # best so far at every rung and none is stopped (ASHA's order sensitivity, docs/tuning.md)
    (list(reversed(CURVES)), set()),
])
def test_halving_keeps_the_best_cell_of_known_curves(order, stopped, engine, tmp_path):
    settings = TuneSettings(halving=True, min_resource=1, reduction_factor=3)
    trained = (_halve(order, settings) if engine == "optuna"
               else _halve_with_ray_asha(order, settings, tmp_path))
    full = len(CURVES["best"])
    assert trained["best"] == CURVES["best"]  # never stopped, whatever the order
    assert {n for n, c in trained.items() if len(c) < full} == stopped
    for n in stopped:  # a stopped cell keeps the partial curve it trained: its first epoch
        assert trained[n] == CURVES[n][:1]
    assert sum(map(len, trained.values())) == full * (len(CURVES) - len(stopped)) + len(stopped)


@pytest.mark.parametrize("engine", ["optuna", "ray_asha"])
def test_halving_waits_for_min_resource(engine, tmp_path):
    settings = TuneSettings(halving=True, min_resource=3, reduction_factor=2)
    trained = (_halve(["best", "worse"], settings) if engine == "optuna"
               else _halve_with_ray_asha(["best", "worse"], settings, tmp_path))
    assert trained["best"] == CURVES["best"]
    assert len(trained["worse"]) == 3  # not judged before its third epoch, stopped at it


# -- settings, errors -------------------------------------------------------------------------
def test_tune_table_in_a_matrix_file_and_its_errors(tmp_path):
    kw = matrix_kwargs({"backbones": ["b"], "datasets": ["d"], "strategies": ["s"],
                        "tune": {"trials": 8, "halving": True, "reduction_factor": 2}})
    m = MatrixConfig(**kw)
    assert m.tune == TuneSettings(trials=8, halving=True, reduction_factor=2)
    assert all(c.tune["trials"] == 8 for c in m.cells())  # the same budget for every cell
    assert "tune" in m.to_dict()
    plain = MatrixConfig(backbones=["b"], datasets=["d"], strategies=["s"])
    assert all("tune" not in c.to_dict() for c in plain.cells())
    assert "tune" not in plain.to_dict()  # runs that do not tune keep their keys
    with pytest.raises(ConfigError, match="unknown key 'trails'.*Did you mean trials"):
        matrix_kwargs({"tune": {"trails": 3}})
    with pytest.raises(ConfigError, match="reduction_factor must be >= 2"):
        matrix_kwargs({"tune": {"reduction_factor": 1}})
    with pytest.raises(ConfigError, match="pruner must be one of median, halving, none"):
        TuneSettings(pruner="hyperband")


def test_command_line_tune_options_fill_the_tune_table(plugin_system):
    from harness.run.options import matrix_from_options
    m = matrix_from_options(plugin_system, {
        "backbones": ("resnet18",), "datasets": ("digits",), "strategies": ("finetune",),
        "tune": 4, "tune_pruner": "none", "halving": True, "halving_min_resource": 2,
        "halving_reduction_factor": 4})
    assert m.tune == TuneSettings(trials=4, pruner="none", halving=True, min_resource=2,
                                  reduction_factor=4)
    untouched = matrix_from_options(plugin_system, {"backbones": ("resnet18",)})
    assert untouched.tune == TuneSettings() and not untouched.tune.active


def test_missing_optuna_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(ConfigError, match=r"need Optuna.*pip install 'transfer-bench\[tune\]'"):
        hparam_search.require_optuna()


def test_every_built_in_search_space_names_real_settings(plugin_system):
    tuned = []
    for spec in plugin_system.strategies:
        hparam_search.check_space(spec)
        if spec.search_space:
            tuned.append(spec.name)
            assert {"weight_decay"} < {d.name for d in spec.search_space}
    assert {"scratch", "frozen", "finetune", "chain_thaw", "ulmfit"} <= set(tuned)
    spec = plugin_system.strategies.get("finetune")
    assert split_params(spec, {"lr": 1e-4, "weight_decay": 1e-5}) == (
        {"lr": 1e-4}, {"weight_decay": 1e-5})
    bad = StrategySpec("bad", cls=FineTune, search_space=(SearchDim("momentum", 0.5, 0.99),))
    with pytest.raises(ConfigError, match="'momentum', which is neither"):
        hparam_search.check_space(bad)


# -- real tiny cells ----------------------------------------------------------------------------
class _Spy(FineTune):
    fits: list = []

    def fit(self, model, data, ctx):
        type(self).fits.append({"test": data.test is not None, "lr": self.lr,
                                "ids": (id(data.val), id(data.test)),
                                "weight_decay": ctx.settings.weight_decay})
        return super().fit(model, data, ctx)


class _SpyPlugin:
    @hookimpl
    def register_strategies(self):
        return [StrategySpec("spy_finetune", cls=_Spy, search_space=(
            SearchDim("lr", 1e-3, 1e-1), SearchDim("weight_decay", 1e-6, 1e-3)))]


def _run(plugin_system, tmp_path, monkeypatch, strategies, executor=None, **tune):
    from harness.run.runner import run_matrix
    from harness.testkit import TestkitPlugin
    monkeypatch.setenv("TRANSFER_BENCH_CACHE", str(tmp_path / "cache"))
    if "testkit" not in plugin_system.infos:  # (a test may run twice)
        plugin_system.register(TestkitPlugin(), name="testkit", origin="test")
        plugin_system.register(_SpyPlugin(), name="spy", origin="test")
        plugin_system.rebuild()
    m = MatrixConfig(backbones=["testkit_tiny"], strategies=strategies,
                     datasets=["testkit_quadrants,n_train=64"], image_size=16, name="t",
                     train=TrainSettings(epochs=3, batch_size=32, device="cpu", lr=1e-6),
                     tune=tune)
    with contextlib.redirect_stderr(io.StringIO()):
        store = run_matrix(plugin_system, m, tmp_path / "runs", show_progress=False,
                           executor=executor,
                           # one cell at a time on the 2-CPU Ray: the in-process order
                           executor_options={"threads": 1, "cpus_per_cell": 2}
                           if executor == "ray" else None)
    return {r["config"]["strategy"]: r for r in store.records()}


def test_tuning_a_cell_finds_a_working_rate_and_never_sees_the_test_split(
        plugin_system, tmp_path, monkeypatch):
    from harness.run import cell
    evaluated = []
    real = cell.evaluate
    monkeypatch.setattr(cell, "evaluate", lambda model, split, ctx: (
        evaluated.append(id(split)), real(model, split, ctx))[1])
    _Spy.fits = []
    recs = _run(plugin_system, tmp_path, monkeypatch, ["spy_finetune"], trials=3)
    rec = recs["spy_finetune"]
    assert rec["status"] == "ok", rec.get("error")
    tuning = rec["tuning"]
    assert len(tuning["trials"]) == 3
    # the trials trained without a test split; the retrained best one had it, once
    assert [f["test"] for f in _Spy.fits] == [False, False, False, True]
    # evaluated: each trial's delivered model on validation, then the retrained best one on
    # validation and on test, once
    val_id, test_id = _Spy.fits[-1]["ids"]
    assert evaluated == [val_id] * (tuning["counts"]["complete"] + 1) + [test_id]
    best = tuning["best"]["params"]
    # trial 0 is the untuned configuration; every trial's fit draws what the final fit
    # draws, so the retrained best trial is the trial it was chosen by, epoch for epoch
    assert tuning["trials"][0]["untuned"] and tuning["trials"][0]["params"] == {}
    chosen = tuning["trials"][tuning["best"]["number"]]
    assert [e["val_metric"] for e in rec["history"]["epochs"]] == chosen["curve"]
    assert _Spy.fits[-1]["lr"] == pytest.approx(best["lr"])
    assert _Spy.fits[-1]["weight_decay"] == pytest.approx(best["weight_decay"])
    # the run's rate (1e-6) cannot learn in 3 epochs: the tuned rate does, on the test split
    assert rec["test_metrics"]["accuracy"] > 0.6
    from harness.run.results import cell_rows
    row = cell_rows(rec)[0]  # results.csv says the budget and the configuration tested
    assert row["tuning_trials"] == 3 and json.loads(row["tuned_params"]) == best
    assert "1 trial" not in summary_table(list(recs.values()))
    assert "3 trials" in summary_table(list(recs.values()))


def test_halving_stops_the_hopeless_cell_and_records_its_partial_curve(
        plugin_system, tmp_path, monkeypatch):
    recs = _run(plugin_system, tmp_path, monkeypatch,
                ["finetune,lr=0.03", "finetune,lr=1e-07"], halving=True, reduction_factor=2)
    good, bad = recs["finetune,lr=0.03"], recs["finetune,lr=1e-07"]
    assert good["status"] == "ok" and len(good["halving"]["curve"]) == 3
    assert bad["status"] == "stopped (halving)"
    assert "successive halving" in bad["note"]
    assert bad["history"]["partial"] and len(bad["history"]["epochs"]) < 3
    assert bad["halving"]["curve"] == [e["val_metric"] for e in bad["history"]["epochs"]]
    assert "test_metrics" not in bad  # never scored
    # the seconds its partial fit took are its train s, as for a finished cell
    assert bad["train_seconds"] == bad["timers"]["train_s"] > 0
    table = summary_table(list(recs.values()))
    assert "stopped (halving)" in table
    from harness.report.table import budget_cell
    done = bad["history"]["epochs"]  # how far it trained, in its table row
    assert budget_cell(bad) == f"{len(done)} / {sum(e['steps'] for e in done)} (stopped)"
    assert "halving: 1 of 2 cells stopped early" in table


def test_halving_refuses_an_executor_that_runs_cells_elsewhere(plugin_system, tmp_path):
    from harness.run.runner import run_matrix
    m = MatrixConfig(backbones=["resnet18"], strategies=["finetune"], datasets=["digits"],
                     tune={"halving": True})
    with pytest.raises(ConfigError, match="--halving runs.*executor inprocess"):
        run_matrix(plugin_system, m, tmp_path, executor="processes")


@pytest.mark.slow
def test_an_interrupted_halving_run_continues_where_it_stopped(
        plugin_system, tmp_path, monkeypatch):
    """Ctrl-C after the first epoch of the third cell, then the same command again: the finished
    and the stopped cells keep their records and are not trained again, the study on disk
    keeps their decisions, and the interrupted cell takes up its own trial."""
    from harness.run import cell
    from harness.run.runner import HALVING_JOURNAL
    strategies = ["finetune,lr=0.03", "finetune,lr=1e-07", "finetune,lr=0.01"]
    fits, interrupt = [], [True]
    real_fit, real_report = cell._checked_fit, cell._report_to_halving

    def counted_fit(plugins, cfg, *args, **kwargs):
        fits.append(cfg.to_dict()["strategy"])
        return real_fit(plugins, cfg, *args, **kwargs)

    def interrupting(halving, cfg, task, ctx, rec):
        finish = real_report(halving, cfg, task, ctx, rec)
        if interrupt[0] and cfg.to_dict()["strategy"] == strategies[2]:
            hook = ctx.epoch_hook

            def ctrl_c_after_two_epochs(r):
                hook(r)
                if len(rec["halving"]["curve"]) == 1:  # (min_resource 2: not judged yet)
                    raise KeyboardInterrupt
            ctx.epoch_hook = ctrl_c_after_two_epochs
        return finish

    monkeypatch.setattr(cell, "_checked_fit", counted_fit)
    monkeypatch.setattr(cell, "_report_to_halving", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _run(plugin_system, tmp_path, monkeypatch, strategies, halving=True,
             min_resource=2, reduction_factor=2)
    assert fits == strategies
    run_dir = next((tmp_path / "runs").iterdir())
    before = {json.loads(p.read_text())["config"]["strategy"]: json.loads(p.read_text())
              for p in (run_dir / "cells").glob("*.json")}
    assert before[strategies[0]]["status"] == "ok"
    assert before[strategies[1]]["status"] == "stopped (halving)"
    assert before[strategies[2]]["status"] != "ok"

    optuna = hparam_search.require_optuna()
    (summary,) = optuna.study.get_all_study_summaries(
        hparam_search.journal_storage(optuna, run_dir / HALVING_JOURNAL))
    study = optuna.load_study(study_name=summary.study_name, storage=hparam_search
                              .journal_storage(optuna, run_dir / HALVING_JOURNAL))
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "PRUNED", "RUNNING"]

    interrupt[0], fits[:] = False, []
    recs = _run(plugin_system, tmp_path, monkeypatch, strategies, halving=True,
                min_resource=2, reduction_factor=2)
    assert fits == [strategies[2]]  # only the interrupted cell trained again
    for s in strategies[:2]:  # the others keep their records, unchanged
        assert recs[s] == before[s]
    third = recs[strategies[2]]
    assert third["status"] == "ok", third.get("error")
    assert "earlier run of this folder stopped in the middle" in third["halving"]["resumed"]
    study = optuna.load_study(study_name=summary.study_name, storage=hparam_search
                              .journal_storage(optuna, run_dir / HALVING_JOURNAL))
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]  # no new trial
    assert [t.user_attrs["cell"] for t in trials] == [before[s]["key"] for s in strategies]
    # the stopped cell's curve in the study is the one its record shows
    assert list(trials[1].intermediate_values.values()) == \
        before[strategies[1]]["halving"]["curve"]


def test_a_cell_stopped_before_its_record_was_saved_stays_stopped(tmp_path):
    """The study on disk says a cell was stopped, its record was lost (a crash in
    between): the rerun stops it again at once, with the curve the study kept."""
    settings = TuneSettings(halving=True, min_resource=1, reduction_factor=2)
    journal = tmp_path / "halving.journal"
    first = CellHalving(settings, storage=journal)
    for key, curve in (("best", CURVES["best"]), ("worse", CURVES["worse"])):
        report, finish = first.start(("d", "t", 0), True, key=key)
        try:
            for i, v in enumerate(curve):
                report(v, {"epoch": i, "val_metric": v})
            finish(max(curve))
        except Stopped:
            finish(None)
    again = CellHalving(settings, storage=journal)
    with pytest.raises(Stopped, match="stopped by successive halving after epoch 1") as exc:
        again.start(("d", "t", 0), True, key="worse")
    assert exc.value.epochs == [{"epoch": 0, "val_metric": CURVES["worse"][0]}]
    trial = again.start(("d", "t", 0), True, key="best")  # finished: not judged again
    assert "let this cell finish" in trial.resumed
    trial.report(0.0)  # a lost record's retrain cannot be stopped, nor change the study
    assert len(again._study(("d", "t", 0), True).get_trials()) == 2


# -- --halving on the ray executor: Ray Tune's ASHA scheduler -----------------------------------
HAVE_TUNE = __import__("importlib").util.find_spec("ray") is not None and \
    __import__("importlib").util.find_spec("ray.tune") is not None
needs_tune = pytest.mark.skipif(not HAVE_TUNE, reason="Ray Tune is not installed "
                                "(pip install 'transfer-bench[ray]')")


@needs_tune
def test_ray_asha_takes_the_halving_settings():
    from plugins.ray_asha import MAX_T, SCORE, asha_kwargs
    from ray.tune.schedulers import ASHAScheduler
    kw = asha_kwargs(TuneSettings(halving=True, min_resource=2, reduction_factor=4))
    assert kw["grace_period"] == 2 and kw["reduction_factor"] == 4
    assert kw["time_attr"] == "training_iteration" and kw["metric"] == SCORE
    assert kw["max_t"] == MAX_T and kw["stop_last_trials"] is False  # no cap on a schedule
    rungs = [m for m, _ in ASHAScheduler(**kw)._brackets[0]._rungs]
    assert sorted(rungs)[:3] == [2, 8, 32]  # min_resource * reduction_factor ** k epochs


def test_ray_without_tune_says_how_to_install(monkeypatch):
    pytest.importorskip("ray")
    from plugins.executors_ray import RayExecutor
    monkeypatch.setitem(sys.modules, "ray.tune.schedulers", None)
    with pytest.raises(ConfigError, match=r"ASHA scheduler.*pip install 'transfer-bench\[ray\]'"):
        RayExecutor().check_halving()


@pytest.fixture
def ray_two_cpus():
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@needs_tune
@pytest.mark.slow
def test_halving_on_ray_stops_the_hopeless_cell_through_asha(
        plugin_system, tmp_path, monkeypatch, ray_two_cpus):
    """The in-process test's matrix on a 2-CPU local Ray: the same records."""
    strategies = ["finetune,lr=0.03", "finetune,lr=1e-07"]
    recs = _run(plugin_system, tmp_path, monkeypatch, strategies, executor="ray",
                halving=True, reduction_factor=2)
    good, bad = recs[strategies[0]], recs[strategies[1]]
    assert good["status"] == "ok", good.get("error")
    assert len(good["halving"]["curve"]) == 3 and good["halving"]["engine"].startswith("Ray")
    assert good["worker"]["pid"] != __import__("os").getpid()
    assert bad["status"] == "stopped (halving)", bad.get("error")
    assert "ASHA" in bad["note"] and bad["halving"]["stopped_after_epochs"] == 1
    assert bad["history"]["partial"] and len(bad["history"]["epochs"]) == 1
    assert bad["halving"]["curve"] == [e["val_metric"] for e in bad["history"]["epochs"]]
    assert "test_metrics" not in bad  # never scored
    assert bad["worker"]["pid"] not in (good["worker"]["pid"], __import__("os").getpid())
    assert "halving: 1 of 2 cells stopped early" in summary_table(list(recs.values()))
    # the same command again: both are finished, nothing runs (no new Tune experiment)
    tune_dir = next((tmp_path / "runs").iterdir()) / "ray_tune"
    experiments = sorted(p.name for p in tune_dir.iterdir() if p.is_dir())
    again = _run(plugin_system, tmp_path, monkeypatch, strategies, executor="ray",
                 halving=True, reduction_factor=2)
    assert again == recs
    assert sorted(p.name for p in tune_dir.iterdir() if p.is_dir()) == experiments
    # a run that died after ASHA stopped the cell and before it saved the record: the cell's
    # last saved record is its partial one; the rerun records it stopped, without training
    path = tune_dir.parent / "cells" / f"{bad['key']}.json"
    path.write_text(json.dumps({**{k: v for k, v in bad.items() if k != "note"},
                                "status": "running"}))
    again = _run(plugin_system, tmp_path, monkeypatch, strategies, executor="ray",
                 halving=True, reduction_factor=2)
    assert again[strategies[0]] == good
    assert again[strategies[1]]["status"] == "stopped (halving)"
    assert again[strategies[1]]["history"] == bad["history"]
    assert "error" not in again[strategies[1]] and "ASHA" in again[strategies[1]]["note"]
    assert sorted(p.name for p in tune_dir.iterdir() if p.is_dir()) == experiments
