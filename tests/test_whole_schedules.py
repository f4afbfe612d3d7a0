"""Multi-phase strategies run their whole schedule under the presets' budgets: every layer
group trains and the final all-layers phase runs (chain-thaw: Felbo et al. 2017; gradual
unfreezing: Howard & Ruder 2018), checked from the cell records."""
from __future__ import annotations

import dataclasses

import pytest

from harness.run.runner import build_matrix, validate
from harness.train.data import DataInfo
from harness.train.loop import TrainSettings, check_budget
from harness.train.model import TransferModel

#: a tiny dataset for the runs: 8 generated 32-px images to train on
TINY_DATA = "shapes,n_train=8,n_val=8,n_test=4"


def _cells(system, preset, strategies=()):
    m = build_matrix(system.presets.get(preset).resolve(),
                     {"strategies": tuple(strategies)} if strategies else {})
    cells, _ = validate(system, m)
    return cells


def _phases(system, cell):
    """The cell's strategy and its phases on the cell's real backbone (random weights)."""
    spec, arg = system.backbones.resolve(cell.backbone.name)
    kw = dict(cell.backbone.kwargs, **({"arg": arg} if arg is not None else {}))
    backbone = spec.build(**kw)
    task = system.tasks.get(cell.task.name).factory(**cell.task.kwargs)
    model = TransferModel(backbone, task.build_head(backbone, DataInfo("x", num_classes=10,
                                                                       num_keypoints=4)),
                          task.head_input)
    strategy = system.strategies.get(cell.strategy.name).cls(**cell.strategy.kwargs)
    settings = TrainSettings(**{**cell.train, "seed": cell.seed})

    class Ctx:  # what phases() reads
        pass
    ctx = Ctx()
    ctx.settings = settings
    return strategy, strategy.phases(model, ctx), settings


PRESET_CASES = [("default", ()), ("default", ("chain_thaw", "gradual_unfreezing", "ulmfit")),
                ("ulmfit", ()), ("flowers_models_1_4", ()), ("yosinski", ()), ("deploy", ())]


@pytest.mark.parametrize("preset,strategies", PRESET_CASES)
def test_preset_budgets_let_every_strategy_run_its_whole_schedule(plugin_system, preset,
                                                                  strategies):
    """Every (backbone, strategy) of the preset (and the multi-phase strategies on the
    default's budget, as `-s chain_thaw` runs them) fits the preset's total budget."""
    seen = set()
    for cell in _cells(plugin_system, preset, strategies):
        if (cell.backbone.label(), cell.strategy.label()) in seen:
            continue
        seen.add((cell.backbone.label(), cell.strategy.label()))
        strategy, phases, settings = _phases(plugin_system, cell)
        needs = check_budget(phases, settings, 1000, cell.strategy.name)
        if settings.budget != "phase":
            assert needs is not None and sum(needs) <= settings.epochs, (cell.label(), needs)
    assert seen


@pytest.mark.slow
@pytest.mark.parametrize("preset,strategy,backbone", [
    ("ulmfit", "ulmfit", "mobilenetv2_100"),  # gradual unfreezing + STLR + discriminative
    ("default", "chain_thaw", "mobilenetv2_100"),  # -s chain_thaw: 10 phases in 10 epochs
    ("flowers_models_1_4", "chain_thaw", "vgg19"),  # the lecture's model 4: 18 phases in 20
])
def test_every_layer_group_trains_under_the_presets_budget(plugin_system, preset, strategy,
                                                           backbone, tmp_path, monkeypatch):
    """Run the cell with the preset's training settings (budget, epochs, patience, rates) on
    a tiny dataset, random weights and no latency: the record shows every phase ran within
    the budget, every layer group's parameters changed, and the all-layers model trained."""
    from harness.run.cell import run_cell
    monkeypatch.setenv("TRANSFER_BENCH_CACHE", str(tmp_path))
    cell = next(c for c in _cells(plugin_system, preset, (strategy,))
                if c.backbone.name == backbone)
    cell = dataclasses.replace(cell, dataset=type(cell.dataset).parse(TINY_DATA),
                               weights="random", image_size=32, runtimes=(), profiles=())
    rec = run_cell(plugin_system, cell, "k")
    assert rec["status"] == "ok", rec.get("traceback")
    groups = rec["backbone_facts"]["layer_groups"]
    phases = rec["history"]["phases"]
    use = rec["budget"]
    assert use["unit"] == cell.train["budget"] == "epochs"
    assert use["epochs"] <= use["limit"] == cell.train["epochs"]
    assert sum(p["epochs_run"] for p in phases) == use["epochs"]
    # every group's parameters changed in a phase that trained it
    assert set(groups) == {g for p in phases for g in p["changed_groups"]}
    for p in phases:
        assert p["epochs_run"] >= 1 and set(p["changed_groups"]) == set(p["groups"]), p
    epochs = rec["history"]["epochs"]
    if strategy == "chain_thaw":
        # DeepMoji's phases: new layers, each backbone group from the first, then all
        assert [p["groups"] for p in phases] == (
            [["head"]] + [[g] for g in groups if g != "head"] + [groups])
        # the delivered model keeps every group's change unless the phases that made it
        # were all rolled back (the record says so)
        for g in set(groups) - set(rec["changed_groups"]):
            assert all(p["rolled_back"] for p in phases if g in p["groups"]), g
    else:
        # one group more each epoch, then every group; the delivered (best) epoch is one
        # with all of them trainable, so the delivered model changed every group
        assert [len(e["trainable_groups"]) for e in epochs[:len(groups)]] == list(
            range(1, len(groups) + 1))
        assert len(epochs[rec["history"]["kept_epoch"]]["trainable_groups"]) == len(groups)
        assert set(rec["changed_groups"]) == set(groups)
