"""The plugin test kit catches what plugins get wrong, with a sentence naming the plugin and
the fault (the planted faults of issue 15 and others)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness import DatasetSpec, ReporterSpec, StrategySpec, WeightSourceSpec
from harness.train.data import DataInfo, DataSplits, TensorSplit
from harness.train.strategy import Strategy
from harness.testkit import (ConformanceError, TinyBackbone, check_dataset, check_reporter,
                             check_strategy, check_weight_source, make_tiny_splits)
from harness.train.loop import Phase


# -- check_strategy: the declaration is held against what training changed --------------------
class ClaimsFrozen(Strategy):
    """Planted fault: says it trains the head only (its one phase), but unfreezes all."""

    def phases(self, model, ctx):
        return [Phase("head", ["head"])]

    def on_epoch_start(self, model, phase, epoch):
        for p in model.parameters():
            p.requires_grad_(True)


class ClaimsAll(Strategy):
    """Declares everything trained (the default of one phase over all groups) but freezes
    the backbone's first group."""

    def on_epoch_start(self, model, phase, epoch):
        for p in model.backbone.stem.parameters():
            p.requires_grad_(False)


def test_check_strategy_catches_a_strategy_that_trains_what_it_declares_frozen():
    with pytest.raises(ConformanceError) as err:
        check_strategy(StrategySpec("claims_frozen", cls=ClaimsFrozen), epochs=1)
    msg = str(err.value)
    assert msg.startswith("strategy 'claims_frozen': changed 8 of the 8 parameters it "
                          "declares frozen (backbone.stem.0.weight"), msg
    assert "requires_grad_(False)" in msg and "trained_parameters()" in msg


def test_check_strategy_catches_declared_trained_parameters_that_never_change():
    with pytest.raises(ConformanceError) as err:
        check_strategy(StrategySpec("claims_all", cls=ClaimsAll), epochs=1)
    assert str(err.value).startswith("strategy 'claims_all': did not change 4 of the 10 "
                                     "parameters it declares trained (backbone.stem.0.weight")


class PhaseOverstates(Strategy):
    """Declares the head only (trained_parameters) and trains only it, but its phase names
    every group: the phase record says the backbone trained. bench run fails such a cell;
    the kit says so first."""

    def trained_parameters(self, model, ctx):
        return [f"head.{n}" for n, _ in model.head.named_parameters()]

    def on_epoch_start(self, model, phase, epoch):
        model.backbone.requires_grad_(False)


def test_check_strategy_holds_each_phase_to_the_groups_it_names():
    with pytest.raises(ConformanceError) as err:
        check_strategy(StrategySpec("overstates", cls=PhaseOverstates), epochs=1)
    assert str(err.value).startswith("strategy 'overstates' declares layer group(s) "
                                     "backbone.stem, backbone.stage trained in phase 'all'")


def test_check_strategy_passes_a_strategy_true_to_its_declaration(plugin_system):
    report = check_strategy(plugin_system.strategies.get("frozen"), epochs=2)
    assert (report["trained"], report["frozen"]) == (2, 8)  # the head's Linear; the backbone
    assert report["accuracy"] > report["chance"]


# -- check_dataset ------------------------------------------------------------------------------
def _load(fault: str):
    def load(task, image_size, seed, cache_dir):
        good = make_tiny_splits(image_size=image_size, n_train=32, seed=seed)
        info = DataInfo("t", num_classes=4, class_names=list("abcd"))
        splits = [good.train, good.val, good.test]
        if fault == "labels_from_1":
            splits = [TensorSplit(s.images, s.targets + 1) for s in splits]
        elif fault == "grey":
            splits = [TensorSplit(s.images[:, :1], s.targets) for s in splits]
        elif fault == "fixed_size":
            small = make_tiny_splits(image_size=32, n_train=32, seed=seed)
            splits = [small.train, small.val, small.test]
        elif fault == "leak":
            splits[2] = TensorSplit(torch.cat([splits[2].images, splits[0].images[:3]]),
                                    torch.cat([splits[2].targets, splits[0].targets[:3]]))
        elif fault == "float":
            splits = [TensorSplit(s.images.float() / 255, s.targets) for s in splits]
        return DataSplits(*splits, info)
    return load


@pytest.mark.parametrize("fault, tasks, expected", [
    ("labels_from_1", ("classification",),
     "dataset 'planted', train split: labels must be in [0, 4) for its 4 classes "
     "(DataInfo.num_classes) but range 1..4, 9 outside (they look numbered from 1: subtract 1)"),
    ("grey", ("classification",),
     "dataset 'planted', train split: images are grey, 1 channel (32, 1, 32, 32); give RGB"),
    ("fixed_size", ("classification",),
     "dataset 'planted', train split: images are 32x32 but the run asked for image_size=40"),
    ("leak", ("classification",),
     "dataset 'planted': 3 test image(s) also appear in an earlier split (first: test index 64)"),
    ("float", ("classification",),
     "dataset 'planted', train split: images are float32, not uint8 (0..255)"),
    ("none", ("classification", "counting"),
     "dataset 'planted': declares task 'counting', which no plugin registers"),
])
def test_check_dataset_names_the_dataset_and_the_fault(plugin_system, fault, tasks, expected):
    with pytest.raises(ConformanceError) as err:
        check_dataset(DatasetSpec("planted", load=_load(fault), tasks=tasks))
    assert expected in str(err.value), str(err.value)


def test_check_dataset_passes_a_good_dataset_for_each_declared_task(plugin_system):
    spec = plugin_system.datasets.get("shapes")
    report = check_dataset(spec, image_size=24)
    assert set(report) == set(spec.tasks) == {"classification", "localization", "pose"}
    assert all(min(sizes.values()) > 0 for sizes in report.values())


# -- check_weight_source ------------------------------------------------------------------------
def _loads_elsewhere(spec, backbone, arg, context):
    """Planted fault: builds and fills a new backbone instead of the one it is given."""
    other = spec.build()
    for p in other.parameters():
        torch.nn.init.normal_(p)
    return {"description": "mine"}


def test_check_weight_source_catches_weights_that_never_reach_the_backbone():
    with pytest.raises(ConformanceError) as err:
        check_weight_source(WeightSourceSpec("elsewhere", load=_loads_elsewhere))
    assert str(err.value) == ("weight source 'elsewhere': says its weights are pretrained but "
                              "load() changed no parameter of 'testkit_tiny'; load into the "
                              "backbone it is given, in place")


def test_check_weight_source_passes_file_weights_and_names_a_failing_load(plugin_system, tmp_path):
    torch.manual_seed(1)
    torch.save(TinyBackbone().state_dict(), tmp_path / "w.pth")
    spec = plugin_system.weights.get("file")
    report = check_weight_source(spec, arg=str(tmp_path / "w.pth"))
    # the 4 convolution tensors; batch norm starts at ones and zeros in both backbones
    assert (report["changed"], report["params"]) == (4, 8)
    with pytest.raises(ConformanceError, match=r"^weight source 'file': load\('testkit_tiny' "
                                               r"backbone, arg=None\) raised WeightsUnavailable"):
        check_weight_source(spec)


# -- check_reporter -----------------------------------------------------------------------------
def _counts(store, out=None):
    text = f"{sum(r.get('status') == 'ok' for r in store.records())} cells ok\n"
    if out is None:
        return text
    Path(out).write_text(text)
    return f"wrote {out}"


def _crashes_on_empty(store, out=None):
    text = f"first cell: {store.records()[0]['status']}"
    return text if out is None else Path(out).write_text(text) and None


def _marks_records(store, out=None):
    for p in store.cells_dir.glob("*.json"):
        rec = json.loads(p.read_text())
        rec["reported"] = True
        p.write_text(json.dumps(rec))
    return "marked"


def test_check_reporter_passes_a_good_reporter_and_catches_faulty_ones():
    report = check_reporter(ReporterSpec("counts", write=_counts))
    assert report == {"chars": len("1 cells ok\n"), "out": "file"}
    with pytest.raises(ConformanceError, match=r"^reporter 'empty_crash': write\(an empty run, "
                                               r"out=None\) raised IndexError"):
        check_reporter(ReporterSpec("empty_crash", write=_crashes_on_empty))
    with pytest.raises(ConformanceError, match=r"^reporter 'no_text': write\(store, None\) "
                                               r"returned None; with no out, return the report"):
        check_reporter(ReporterSpec("no_text", write=lambda store, out=None: None))
    with pytest.raises(ConformanceError, match=r"^reporter 'marker': write\(store, out\) wrote "
                                               r"nothing at out"):
        check_reporter(ReporterSpec("marker", write=_marks_records))
