"""A plugin cannot make a run lie (issue 27): faults planted in tiny plugins registered in
process are caught by ``bench run`` itself, each failing its cell with a message that
names the plugin, its distribution and the fault."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from harness import BackboneSpec, DatasetSpec, EstimatorSpec, ExecutorSpec, PresetSpec, ReporterSpec, RuntimeSpec, StrategySpec, TaskSpec, WeightSourceSpec, hookimpl
from harness.measure.latency import MeasureSettings
from harness.run.config import MatrixConfig
from harness.run.runner import run_matrix
from harness.testkit import TestkitPlugin, TinyBackbone, make_tiny_splits
from harness.train.loop import Phase, TrainSettings, record_start, run_phase
from harness.train.data import TensorSplit
from harness.train.model import LayerGroup
from harness.train.strategy import TrainingStrategy


class MissingGroup(TinyBackbone):
    """Forgets the stage's parameters in its layer groups."""

    def layer_groups(self):
        return super().layer_groups()[:1]


class TwiceGroup(TinyBackbone):
    """Lists the stem's first weight in both groups."""

    def layer_groups(self):
        stem, stage = super().layer_groups()
        return [stem, LayerGroup("stage", stage.params + stem.params[:1])]


class WrongFeatures(TinyBackbone):
    """Declares a feature size it does not give."""

    def __init__(self):
        super().__init__()
        self.num_features = 16  # forward gives 32


def reshape_load(backbone_spec, backbone, arg, context):
    """Loads 'weights' by replacing the stem's conv with a wider one."""
    backbone.stem[0] = nn.Conv2d(3, 8, 5, padding=2)
    return {"description": "reshaped"}


class NanFeatures(TinyBackbone):
    """Gives NaN features."""

    def forward(self, x):
        return super().forward(x) * float("nan")


def nothing_load(backbone_spec, backbone, arg, context):
    """Says pretrained, loads nothing."""
    return {"description": "nothing"}


class NoHistory(TrainingStrategy):
    """Trains, then returns a dict instead of a History."""

    def fit(self, model, data, ctx):
        super().fit(model, data, ctx)
        return {"epochs": 1}


class NanLoss:
    head_input, primary_metric, higher_is_better, name = "pooled", "accuracy", True, "nan_loss"

    def build_head(self, backbone, info):
        return nn.Linear(backbone.num_features, info.num_classes)

    def loss(self, outputs, targets):
        return outputs.sum() * float("nan")

    def check_targets(self, targets, info):
        return None

    def metrics(self, outputs, targets, info):
        return {"accuracy": 0.5}


class NoMetric(NanLoss):
    name = "no_metric"

    def loss(self, outputs, targets):
        return nn.functional.cross_entropy(outputs, targets)

    def metrics(self, outputs, targets, info):
        return {"acc": 0.5}


class WrongHead(NoMetric):
    """Builds a head for a feature size the backbone does not declare."""
    name = "wrong_head"

    def build_head(self, backbone, info):
        return nn.Linear(backbone.num_features + 3, info.num_classes)

    def metrics(self, outputs, targets, info):
        return {"accuracy": 0.5}


def _quad_any(task, image_size, seed, cache_dir):
    import dataclasses
    d = make_tiny_splits(image_size=image_size, n_train=32, seed=seed)
    cut = [TensorSplit(s.images[:16], s.targets[:16]) for s in (d.val, d.test)]
    return dataclasses.replace(d, val=cut[0], test=cut[1])  # 16 images: fast to evaluate


class HeadOnlyButAll(TrainingStrategy):
    """Declares the head only, trains everything."""

    def trained_parameters(self, model, ctx):
        return [f"head.{n}" for n, _ in model.head.named_parameters()]

    def phases(self, model, ctx):
        return [Phase("all", [g.name for g in model.layer_groups()])]


class AllButNothing(TrainingStrategy):
    """Declares every parameter trained (the default), trains none."""

    def fit(self, model, data, ctx):
        history = ctx.new_history(len(data.train))
        record_start(model, data.val, ctx, history)
        return history


class AllButBackboneInLifecycle(TrainingStrategy):
    """Declares every group trained (fine-tune's phase and declaration) but freezes the
    backbone before every epoch: only the head trains."""

    def on_epoch_start(self, model, phase, epoch):
        model.backbone.requires_grad_(False)


class AllButHeadFit(TrainingStrategy):
    """Declares every parameter trained (the default, from phases()) but its own fit trains
    only the head."""

    def fit(self, model, data, ctx):
        history = ctx.new_history(len(data.train), model, data.train)
        record_start(model, data.val, ctx, history)
        run_phase(model, Phase("head", ["head"]), data.train, data.val, ctx, history)
        return history


class HeadPhaseTrainsAll(TrainingStrategy):
    """Declares every parameter trained overall, but its one phase names only the head,
    and it unfreezes everything in that phase."""

    def trained_parameters(self, model, ctx):
        return [n for n, _ in model.named_parameters()]

    def phases(self, model, ctx):
        return [Phase("head", ["head"])]

    def on_epoch_start(self, model, phase, epoch):
        model.requires_grad_(True)


class ZeroRateBackbone(TrainingStrategy):
    """Fine-tune's phase over every group, the backbone's groups at a rate of 0."""

    def phases(self, model, ctx):
        groups = [g.name for g in model.layer_groups()]
        return [Phase("all", groups, lr={g: 1e-3 if g == "head" else 0.0 for g in groups})]


class TrainsThenReverts(TrainingStrategy):
    """Fine-tunes everything, then puts the backbone's weights back as they were."""

    def fit(self, model, data, ctx):
        import copy
        saved = copy.deepcopy(model.backbone.state_dict())
        history = super().fit(model, data, ctx)
        model.backbone.load_state_dict(saved)
        return history


class UnfreezeOnce(TrainingStrategy):
    """Gradual unfreezing (Howard & Ruder 2018) with no epoch held back for the whole
    model (``track_from`` 0): a total budget of 2 epochs ends it with the bottom group
    never unfrozen, which the run records instead of failing the cell. ``stuck=True``
    freezes instead (the trainable set never grows): a fault."""

    def __init__(self, stuck: bool = False):
        super().__init__()
        self.stuck = stuck

    def phases(self, model, ctx):
        return [Phase("unfreezing", [g.name for g in model.layer_groups()], epochs=10)]

    def on_epoch_start(self, model, phase, epoch):
        from harness.train.model import set_trainable
        groups = [g.name for g in model.layer_groups()]
        set_trainable(model, groups[-1:] if self.stuck else groups[max(0, len(groups) - 1 - epoch):])


class FreezeEverything(TrainingStrategy):
    """Leaves no parameter trainable."""

    def phases(self, model, ctx):
        return [Phase("none", [])]


class Faulty:
    @hookimpl
    def register_backbones(self):
        return [BackboneSpec("missing_group", build=MissingGroup, default_weights="random"),
                BackboneSpec("twice_group", build=TwiceGroup, default_weights="random"),
                BackboneSpec("wrong_features", build=WrongFeatures, default_weights="random"),
                BackboneSpec("nan_features", build=NanFeatures, default_weights="random")]

    @hookimpl
    def register_weight_sources(self):
        return [WeightSourceSpec("reshape", load=reshape_load),
                WeightSourceSpec("nothing", load=nothing_load)]

    @hookimpl
    def register_tasks(self):
        return [TaskSpec("nan_loss", factory=NanLoss), TaskSpec("no_metric", factory=NoMetric),
                TaskSpec("wrong_head", factory=WrongHead)]

    @hookimpl
    def register_datasets(self):
        return [DatasetSpec("quad_any", load=_quad_any, synthetic=True,
                            tasks=("classification", "nan_loss", "no_metric", "wrong_head"))]

    @hookimpl
    def register_strategies(self):
        return [StrategySpec("head_only_but_all", cls=HeadOnlyButAll),
                StrategySpec("all_but_nothing", cls=AllButNothing),
                StrategySpec("freeze_everything", cls=FreezeEverything),
                StrategySpec("all_but_backbone", cls=AllButBackboneInLifecycle),
                StrategySpec("all_but_head_fit", cls=AllButHeadFit),
                StrategySpec("head_phase_trains_all", cls=HeadPhaseTrainsAll),
                StrategySpec("unfreeze_once", cls=UnfreezeOnce),
                StrategySpec("zero_rate_backbone", cls=ZeroRateBackbone),
                StrategySpec("trains_then_reverts", cls=TrainsThenReverts),
                StrategySpec("bias_only", cls=BiasOnly),
                StrategySpec("no_history", cls=NoHistory)]


class BiasOnly(TrainingStrategy):
    """docs/writing-a-plugin.md's example (BitFit): one phase over every group, all but
    the backbone's biases frozen in on_epoch_start, declared as such."""

    def phases(self, model, ctx):
        return [Phase("head + biases", [g.name for g in model.layer_groups()])]

    def on_epoch_start(self, model, phase, epoch):
        for name, p in model.backbone.named_parameters():
            p.requires_grad_(name.endswith(".bias"))

    def trained_parameters(self, model, ctx):
        return [n for n, _ in model.named_parameters()
                if n.startswith("head.") or n.endswith(".bias")]


def _run(system, tmp_path, backbone="testkit_tiny", strategy="finetune", weights=None,
         task="classification", image_size=16, records=False, **train):
    matrix = MatrixConfig(backbones=[backbone], datasets=["quad_any"],
                          strategies=strategy if isinstance(strategy, list) else [strategy], tasks=[task], runtimes=[],
                          image_size=image_size, name="c",
                          weights={"*": weights} if weights else {},
                          train=TrainSettings(**{"epochs": 1, "batch_size": 16, **train}),
                          latency=MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=3,
                                                  min_s=0.0))
    store = run_matrix(system, matrix, tmp_path, show_progress=False)
    if records:
        return store.records()
    (rec,) = store.records()
    return rec


@pytest.fixture
def faulty(register_plugin):
    register_plugin(TestkitPlugin(), name="testkit")
    return register_plugin(Faulty(), name="faulty")


@pytest.mark.parametrize("axes,words", [
    ({"backbone": "missing_group"},
     ["backbone 'missing_group'", "in no layer group"]),
    ({"backbone": "twice_group"},
     ["backbone 'twice_group'", "more than one layer group"]),
    ({"backbone": "wrong_features"},
     ["backbone 'wrong_features'", "num_features = 16",
      "(2, 32)"]),
    ({"weights": "reshape"},
     ["weight source 'reshape'", "changed the shape",
      "stem.0.weight"]),
    ({"strategy": "head_only_but_all"},
     ["strategy 'head_only_but_all'", "declares frozen"]),
    ({"strategy": "all_but_nothing"},
     ["strategy 'all_but_nothing'", "changed none of them"]),
    ({"strategy": "all_but_backbone"},
     ["strategy 'all_but_backbone'", "declares layer group(s) backbone.stem, backbone.stage "
      "trained in phase 'all'", "changed none of their parameters",
      "froze what it declares trained"]),
    ({"strategy": "all_but_head_fit"},
     ["strategy 'all_but_head_fit'", "layer group(s) backbone.stem, backbone.stage trained "
      "(trained_parameters()) but training changed none of them",
      "froze what it declares trained"]),
    ({"strategy": "head_phase_trains_all"},
     ["strategy 'head_phase_trains_all'", "changed layer group(s) backbone.stem, "
      "backbone.stage in phase 'head', which trains only head"]),
    ({"strategy": "zero_rate_backbone"},
     ["strategy 'zero_rate_backbone'", "backbone.stem, backbone.stage trained in phase 'all'",
      "froze what it declares trained"]),
    ({"strategy": "trains_then_reverts"},
     ["strategy 'trains_then_reverts'", "backbone.stem, backbone.stage trained and its "
      "phases changed them, but the model it delivers has them as before training"]),
    ({"strategy": "unfreeze_once,stuck=true", "budget": "epochs", "epochs": 2},
     ["strategy 'unfreeze_once'", "backbone.stem, backbone.stage trained in phase "
      "'unfreezing'"]),
    ({"strategy": "freeze_everything"},
     ["strategy 'freeze_everything'", "no parameter trainable"]),
    ({"backbone": "nan_features"},
     ["backbone 'nan_features'", "non-finite features"]),
    ({"weights": "nothing"},
     ["weight source 'nothing'", "changed no parameter"]),
    ({"strategy": "no_history"},
     ["strategy 'no_history'", "returned dict"]),
    ({"task": "nan_loss"},
     ["task 'nan_loss'", "gives a loss of nan"]),
    ({"task": "no_metric"},
     ["task 'no_metric'", "lacks its primary metric 'accuracy'"]),
    ({"task": "wrong_head"},
     ["task 'wrong_head'", "(num_features = 32): the head does not fit the declared "
      "feature size"]),
], ids=["groups-missing", "groups-twice", "feature-size", "weights-reshape",
        "declares-head-trains-all", "declares-all-trains-nothing",
        "declares-all-freezes-backbone-per-epoch", "declares-all-fit-trains-head",
        "phase-names-head-trains-all", "backbone-at-rate-0", "trains-then-reverts", "unfreezing-that-never-grows", "freezes-everything",
        "nan-features", "weights-load-nothing", "fit-returns-no-history", "nan-loss",
        "no-primary-metric", "head-does-not-fit-features"])
def test_planted_fault_fails_its_cell_naming_plugin(faulty, tmp_path, axes, words):
    rec = _run(faulty, tmp_path, **axes)
    assert rec["status"] == "failed"
    for w in words + ["of plugin 'faulty' (test)"]:
        assert w in rec["error"], (w, rec["error"])
    assert rec["error"].startswith("PluginFault: ")


def strategy_names():
    from harness.api.manager import PluginSystem
    return PluginSystem(entry_points=False).strategies.names()


def _only_rollbacks(rec):
    """Chain-thaw may roll a phase back and deliver its groups as they were (recorded);
    no other reason leaves a declared-trained group unchanged in these runs."""
    phases = rec["history"]["phases"]
    for g, why in rec["contracts"]["strategy"]["unchanged"].items():
        assert "rolled back" in why and all(p["rolled_back"] for p in phases
                                            if g in p["groups"]), (g, why)


@pytest.mark.parametrize("strategy", strategy_names())
def test_no_built_in_strategy_trips_the_trained_and_frozen_contract(faulty, tmp_path, strategy):
    """Every registered strategy, as bench run runs it at 32 px: what it declares trained
    changed, group by group and phase by phase, and nothing it declares frozen did."""
    rec = _run(faulty, tmp_path, strategy=strategy, image_size=32)
    assert rec["status"] == "ok", rec.get("error")
    c = rec["contracts"]["strategy"]
    assert c["groups_trained"] >= 1
    _only_rollbacks(rec)
    phases = rec["history"]["phases"]
    assert c["phases_checked"] == sum("changed_groups" in p for p in phases)
    for p in phases:
        if "changed_groups" in p:
            assert set(p["changed_groups"]) == set(p["groups"]), p


@pytest.mark.parametrize("budget", ["steps", "flops"])
def test_multi_phase_strategies_keep_the_contract_under_every_total_budget(
        faulty, tmp_path, budget):
    """Chain-thaw's phases (Felbo et al. 2017) and ULMFiT's gradual unfreezing (Howard &
    Ruder 2018) share a total budget that just fits them (6 steps; their phases cut inside
    an epoch): each phase trains its groups. (Whole-epoch phases: the test above.)"""
    store = _run(faulty, tmp_path, strategy=["chain_thaw", "ulmfit"], budget=budget,
                 epochs=3, records=True)
    for rec in store:
        assert rec["status"] == "ok", rec.get("error")
        _only_rollbacks(rec)
    assert len(store) == 2


@pytest.mark.parametrize("strategy,unchanged", [
    ("unfreeze_once", {"backbone.stem": "phase 'unfreezing' stopped (budget) before gradual "
                                        "unfreezing reached it"}),
    ("bias_only", {}),
], ids=["unfreezing-cut-by-budget", "bitfit-doc-example"])
def test_a_group_may_stay_as_it_was_only_for_a_recorded_reason(faulty, tmp_path, strategy,
                                                                unchanged):
    rec = _run(faulty, tmp_path, strategy=strategy, budget="epochs", epochs=2)
    assert rec["status"] == "ok", rec.get("error")
    assert rec["contracts"]["strategy"]["unchanged"] == unchanged


def _epoch(phase, groups, rolled_back=False):
    from harness.train.loop import EpochRecord
    return EpochRecord(phase, 0, 1.0, 0.5, 1.0, 0.5, 1e-3, 0.1, trainable_groups=groups,
                       rolled_back=rolled_back)


@pytest.mark.parametrize("epochs,kept,why", [
    # chain-thaw (Felbo et al. 2017): head phase kept, the stem's phase rolled back
    ([_epoch("new layers", ["head"]), _epoch("stem", ["stem"], rolled_back=True)], 0,
     "every phase that trained it was rolled back"),
    # a phase that restored its best epoch, from before the stem was unfrozen
    ([_epoch("u", ["head"]), _epoch("u", ["stem", "head"])], 0,
     "the delivered weights are epoch 1's, from before any kept epoch trained it"),
    ([_epoch("all", ["stem", "head"])], 0, None),  # trained and kept: undone by the strategy
], ids=["rolled-back", "kept-before-unfrozen", "undone"])
def test_a_group_trained_then_not_delivered_needs_a_rollback_or_an_earlier_kept_epoch(
        epochs, kept, why):
    from harness.run.contracts import PluginFault, check_groups_trained
    from harness.train.loop import History
    history = History(epochs=epochs, kept_epoch=kept)
    args = ("strategy 's'", ["stem.w", "head.w"], {"stem": ["stem.w"], "head": ["head.w"]},
            {"head.w"}, {"stem": "changed", "head": "changed"}, history)
    if why is None:
        with pytest.raises(PluginFault, match="it undid what it declares trained"):
            check_groups_trained(*args)
    else:
        assert why in check_groups_trained(*args)["unchanged"]["stem"]


def test_phase_checks_read_steps_the_fp16_scaler_skipped():
    """A phase whose every step fp16's gradient scaler skipped (inf gradients: here a real
    GradScaler with an infinite scale, on the CPU) changed nothing, legitimately, and its
    record says so; one step taken that changed nothing is a fault."""
    from harness.run.contracts import PluginFault, check_phase
    from harness.testkit import _ClassificationForChecks
    from harness.train.loop import TrainContext
    from harness.train.model import TransferModel
    splits, task = make_tiny_splits(n_train=32), _ClassificationForChecks()
    bb = TinyBackbone()
    model = TransferModel(bb, task.build_head(bb, splits.info))
    ctx = TrainContext(task, splits.info, TrainSettings(epochs=1, batch_size=16))
    ctx.precision.scaler = torch.amp.GradScaler("cpu", init_scale=float("inf"))
    history = ctx.new_history(len(splits.train))
    record_start(model, splits.val, ctx, history)
    run_phase(model, Phase("all", ["backbone.stem", "head"]), splits.train, splits.val, ctx,
              history)
    rec = history.phases[0]
    assert (rec["steps"], rec["steps_skipped"], rec["changed_groups"]) == (2, 2, [])
    seen: dict = {}
    check_phase("strategy 's'", rec, history, seen)
    assert seen == {g: "phase 'all' took no optimiser step (the fp16 gradient scaler "
                       "skipped all 2)"
                    for g in ("backbone.stem", "head")}
    with pytest.raises(PluginFault, match=r"declares layer group\(s\) backbone.stem, head "
                                          r"trained in phase 'all' but its 1 optimiser step"):
        check_phase("strategy 's'", {**rec, "steps_skipped": 1}, history, {})


def test_honest_cell_records_the_contracts_it_kept(faulty, tmp_path):
    rec = _run(faulty, tmp_path)
    assert rec["status"] == "ok", rec.get("error")
    c = rec["contracts"]
    n = sum(p.numel() > 0 for p in TinyBackbone().parameters())
    assert c["layer_groups"].startswith(f"{n} parameters")
    assert c["strategy"]["declared_frozen"] == 0 and c["strategy"]["changed"] > 0


class DroppingExecutor:
    """Runs every cell but the last one it is handed, and says nothing about it."""

    def run(self, jobs, run_one, on_done):
        jobs = list(jobs)
        for job in jobs[:-1]:
            on_done(run_one(job))


class DropPlugin:
    @hookimpl
    def register_executors(self):
        return [ExecutorSpec("dropper", factory=lambda **kw: DroppingExecutor())]


def test_a_cell_the_executor_drops_is_a_failed_cell_and_the_run_exits_1(
        register_plugin, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from harness.cli import cli
    system = register_plugin(TestkitPlugin(), name="testkit")
    register_plugin(DropPlugin(), name="dropper-plugin")
    monkeypatch.setattr("harness.cli.get_plugins", lambda *a, **k: system)
    matrix = tmp_path / "m.toml"
    matrix.write_text('name = "drop"\nbackbones = ["testkit_tiny"]\n'
                      'datasets = ["testkit_quadrants,n_train=32"]\n'
                      'strategies = ["frozen", "finetune"]\nruntimes = []\nimage_size = 16\n'
                      '[train]\nepochs = 1\nbatch_size = 16\n')
    out = tmp_path / "runs"
    args = ["run", "-m", str(matrix), "--executor", "dropper", "--out", str(out), "-q"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    (run,) = out.iterdir()
    from harness.run.results import RunStore
    recs = RunStore(run).records()
    assert sorted(r["status"] for r in recs) == ["failed", "ok"]
    (bad,) = [r for r in recs if r["status"] == "failed"]
    assert "executor 'dropper' of plugin 'dropper-plugin' (test) returned no record" \
        in bad["error"]
    res = CliRunner().invoke(cli, args)  # a rerun retries the dropped cell, fails it again
    assert res.exit_code == 1 and "1 of 2 cells already finished" in res.output


class NanEstimator:
    @hookimpl
    def register_estimators(self):
        return [EstimatorSpec("nan_est", score=lambda inputs: float("nan")),
                EstimatorSpec("text_est", score=lambda inputs: {"score": "high"})]


def test_a_non_finite_estimate_fails_by_name_and_ranks_nothing(register_plugin):
    from harness.run.rank import rank_matrix, resolve_estimators, top_backbones
    system = register_plugin(TestkitPlugin(), name="testkit")
    register_plugin(NanEstimator(), name="nan-plugin")
    matrix = MatrixConfig(backbones=["testkit_tiny"], datasets=["testkit_quadrants,n_train=32"],
                          strategies=["frozen"], runtimes=[], image_size=16, name="r")
    rows = rank_matrix(system, matrix, resolve_estimators(system, ["nan_est", "text_est",
                                                                   "hscore"]))
    est = rows[0]["estimates"]
    for name, shown in (("nan_est", "nan"), ("text_est", "'high'")):
        assert est[name]["score"] is None
        assert est[name]["error"].startswith(f"estimator {name!r} of plugin 'nan-plugin' (test)")
        assert f"not a finite number ({shown})" in est[name]["error"]
        assert top_backbones(rows, name, 1) == {}  # --rank-first keeps nothing by it
    assert np.isfinite(est["hscore"]["score"])
    assert top_backbones(rows, "hscore", 1) == {"testkit_quadrants,n_train=32": ["testkit_tiny"]}


def test_bench_rank_exits_1_naming_an_estimator_whose_score_is_nan(register_plugin,
                                                                   monkeypatch):
    from click.testing import CliRunner

    from harness.cli import cli
    register_plugin(TestkitPlugin(), name="testkit")
    system = register_plugin(NanEstimator(), name="nan-plugin")
    monkeypatch.setattr("harness.cli.get_plugins", lambda *a, **k: system)
    res = CliRunner().invoke(cli, ["rank", "-b", "testkit_tiny", "-d",
                                   "testkit_quadrants,n_train=32", "-e", "nan_est", "-e",
                                   "hscore", "--image-size", "16"])
    assert res.exit_code == 1, res.output
    assert "estimator 'nan_est' of plugin 'nan-plugin' (test) returned a score that is not " \
           "a finite number (nan)" in res.output
    assert " nan " not in res.output  # no NaN printed as if it were a score


def _raising_write(store, out):
    raise KeyError("test_metrics")


class RaisingReporter:
    @hookimpl
    def register_reporters(self):
        return [ReporterSpec("raiser", write=_raising_write)]


def test_a_reporter_that_raises_is_named(register_plugin, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from harness.cli import cli
    system = register_plugin(RaisingReporter(), name="raising-plugin")
    monkeypatch.setattr("harness.cli.get_plugins", lambda *a, **k: system)
    (tmp_path / "run" / "cells").mkdir(parents=True)  # a run with no cell yet: only the
    (tmp_path / "run" / "config.json").write_text('{"matrix": {"name": "m"}}')  # settings
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "run"), "--format", "raiser"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "reporter 'raiser' of plugin 'raising-plugin' (test) failed while writing the " \
           "report" in res.output and "KeyError: 'test_metrics'" in res.output


# -- runtimes: outputs compared with PyTorch's, every precision --------------------------------
SEEN_TYPES: list = []


def _measure(art, profile, settings, sign: float = 1.0, outputs: bool = True):
    from harness.measure.latency import measure
    SEEN_TYPES.append((type(art.test_images), type(art.calibration)))
    x = torch.from_numpy(art.test_images[:1])
    with torch.inference_mode():
        stats = measure(lambda: art.model(x), 1, settings)
        row = {"precision": "fp32", "stats": stats}
        if outputs:
            row["test_outputs"] = sign * art.model(torch.from_numpy(art.test_images)).numpy()
    return [row]


def negated_measure(art, profile, settings):
    return _measure(art, profile, settings, sign=-1.0)


def silent_measure(art, profile, settings):
    return _measure(art, profile, settings, outputs=False)


class Runtimes:
    def __init__(self, measure):
        self.measure = measure

    @hookimpl
    def register_runtimes(self):
        return [RuntimeSpec("neg-rt", available=lambda: (True, ""), measure=self.measure)]


def _latency_run(system, tmp_path):
    matrix = MatrixConfig(backbones=["testkit_tiny"], datasets=["testkit_quadrants,n_train=32"],
                          strategies=["finetune"], runtimes=["pytorch", "neg-rt"],
                          profiles=["t"], custom_profiles={"t": {"batch_size": 1, "threads": 1}},
                          image_size=16, name="rt", train=TrainSettings(epochs=1, batch_size=16),
                          latency=MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=3,
                                                  min_s=0.0, isolate=False))
    return run_matrix(system, matrix, tmp_path, show_progress=False)


def test_a_runtime_whose_outputs_disagree_is_marked_left_out_and_measured_again(
        register_plugin, tmp_path):
    from harness.report.recommend import candidates
    from harness.report.table import report_text
    register_plugin(TestkitPlugin(), name="testkit")
    system = register_plugin(Runtimes(negated_measure), name="neg-plugin")
    SEEN_TYPES.clear()
    store = _latency_run(system, tmp_path)
    (rec,) = store.records()
    assert rec["status"] == "ok"
    rows = {r["runtime"]: r for r in rec["latency"]}
    assert rows["pytorch"]["outputs_check"]["ok"] is True
    bad = rows["neg-rt"]
    assert bad["outputs_check"]["ok"] is False and bad["outputs_check"]["rel_rms"] > 1.9
    assert bad["outputs_check"]["tolerance"] == 1e-3 and bad["outputs_check"]["images"] == 64
    assert "runtime 'neg-rt' of plugin 'neg-plugin' (test)" in bad["disagrees"]
    assert rec["failed_measurements"] == ["neg-rt t fp32"]
    assert {c.runtime for c in candidates([rec])} == {"pytorch"}
    text = report_text(store.records())
    assert "DISAGREES with PyTorch" in text and "left out of the recommendation" in text
    # the run hands runtimes numpy images, as the test kit does
    assert SEEN_TYPES == [(np.ndarray, np.ndarray)]
    assert store.finished(rec["key"]) is None  # a rerun measures it again, no --fresh
    system.unregister("neg-plugin")
    register_plugin(Runtimes(_measure), name="neg-plugin")  # the fixed plugin
    (rec2,) = _latency_run(system, tmp_path).records()
    assert rec2["key"] == rec["key"] and rec2["status"] == "ok"
    assert "failed_measurements" not in rec2
    assert all(r["outputs_check"]["ok"] for r in rec2["latency"])


def test_a_runtime_that_returns_no_outputs_is_marked_unverified(register_plugin, tmp_path):
    from harness.report.table import report_text
    register_plugin(TestkitPlugin(), name="testkit")
    system = register_plugin(Runtimes(silent_measure), name="neg-plugin")
    store = _latency_run(system, tmp_path)
    (rec,) = store.records()
    row = {r["runtime"]: r for r in rec["latency"]}["neg-rt"]
    assert row["outputs_check"]["ok"] is None and "returned no test_outputs" in \
        row["outputs_check"]["problem"]
    assert "unverified" in report_text(store.records())


# -- a plugin distribution's version is part of every cell's key --------------------------------
def test_a_new_version_of_a_plugin_distribution_changes_the_cell_keys(tmp_path, monkeypatch):
    import importlib
    import os
    import shutil
    import sys

    from harness.api.manager import ONLY_ENV, PluginSystem
    from harness.measure.env import package_versions
    from test_plugins import GOOD, make_dist

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(ONLY_ENV, os.environ.get(ONLY_ENV, ""))
    matrix = MatrixConfig(backbones=["good_net"], datasets=["synthetic"], strategies=["frozen"],
                          runtimes=[], image_size=16, name="v")
    keys = []
    for version in ("1.0", "1.1"):
        shutil.rmtree(site)
        site.mkdir()
        make_dist(site, "good-dist", version, {"good_plugin_v": GOOD}, {"good": "good_plugin_v"})
        importlib.invalidate_caches()
        system = PluginSystem()
        versions = package_versions(system)
        assert versions["plugin good"] == f"good-dist {version}"
        keys.append([c.key(versions) for c in matrix.cells()])
        sys.modules.pop("good_plugin_v", None)
    assert keys[0] != keys[1]


def _raising_preset():
    raise FileNotFoundError("presets/missing.toml")


class BadPresetAndExecutor:
    @hookimpl
    def register_presets(self):
        return [PresetSpec("raising", matrix=_raising_preset)]

    @hookimpl
    def register_executors(self):
        return [ExecutorSpec("unbuildable", factory=lambda **kw: 1 / 0)]


@pytest.mark.parametrize("args,words", [
    (["--preset", "raising"], ["preset 'raising' of plugin 'bad-plugin' (test) failed",
                               "FileNotFoundError: presets/missing.toml"]),
    (["--preset", "deploy", "--executor", "unbuildable"],
     ["executor 'unbuildable' of plugin 'bad-plugin' (test) failed while being built",
      "ZeroDivisionError"]),
])
def test_a_preset_or_executor_that_raises_is_named(register_plugin, tmp_path, monkeypatch,
                                                   args, words):
    from click.testing import CliRunner

    from harness.cli import cli
    system = register_plugin(BadPresetAndExecutor(), name="bad-plugin")
    monkeypatch.setattr("harness.cli.get_plugins", lambda *a, **k: system)
    res = CliRunner().invoke(cli, ["run", *args, "--out", str(tmp_path), "-q"])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    for w in words:
        assert w in res.output, res.output


def test_output_tolerance_follows_the_precision_and_tf32():
    from harness.run.contracts import check_runtime_row, compare_outputs
    ref = np.linspace(-3, 3, 40, dtype=np.float32).reshape(10, 4)
    off = ref * 1.005  # 0.5 % off: too far for fp32, fine for fp16 and int8
    assert not compare_outputs(off, ref, "fp32")["ok"]
    assert compare_outputs(off, ref, "fp16")["ok"] and compare_outputs(off, ref, "int8")["ok"]
    assert not compare_outputs(-ref, ref, "int8")["ok"]
    assert compare_outputs(ref[:5], ref, "fp32")["problem"].startswith("test_outputs have shape")
    row = {"precision": "fp32", "stats": {"p50_ms": 1.0}, "tf32": True}
    check_runtime_row(None, "gpu-rt", row, off, lambda: ref)
    assert row["outputs_check"]["ok"] and row["outputs_check"]["tolerance"] == 1e-2
