"""What a plugin author meets in ``bench``: honest defaults, counts and notes for plugins."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from harness import BackboneSpec, StrategySpec, hookimpl
from harness.cli import cli
from harness.run.config import MatrixConfig, TrainSettings
from harness.run.runner import run_matrix, validate
from harness.train.strategy import Strategy
from harness.testkit import TestkitPlugin, TinyBackbone
from harness.train.loop import Phase


class BiasOnly(Strategy):
    """Train the head and the backbone's biases (BitFit, Ben Zaken et al. 2022)."""

    def phases(self, model, ctx):
        return [Phase("head + biases", [g.name for g in model.layer_groups()])]

    def on_epoch_start(self, model, phase, epoch):
        for name, p in model.backbone.named_parameters():
            p.requires_grad_(name.endswith(".bias"))


class AuthorPlugin:
    @hookimpl
    def register_strategies(self):
        return [StrategySpec("bias_only_t", cls=BiasOnly)]

    @hookimpl
    def register_backbones(self):
        # no default_weights: pretrained strategies start from random init, and say so
        return [BackboneSpec("custom_cnn", build=TinyBackbone, device_class="mobile")]


@pytest.fixture
def author(register_plugin):
    register_plugin(TestkitPlugin(), name="testkit")
    return register_plugin(AuthorPlugin(), name="author")


def _matrix(**kw) -> MatrixConfig:
    base = dict(backbones=["testkit_tiny"], datasets=["testkit_quadrants,n_train=64"],
                strategies=["finetune"], image_size=16, name="author",
                train=TrainSettings(epochs=1, batch_size=32))
    return MatrixConfig(**{**base, **kw})


def test_trained_count_is_what_training_changed_not_whole_groups(author, tmp_path):
    store = run_matrix(author, _matrix(strategies=["finetune", "bias_only_t", "frozen"]),
                       tmp_path, show_progress=False)
    recs = {r["config"]["strategy"]: r for r in store.records()}
    assert all(r["status"] == "ok" for r in recs.values()), [r.get("error") for r in recs.values()]
    bb = TinyBackbone()
    biases = sum(p.numel() for n, p in bb.named_parameters() if n.endswith(".bias"))
    head = recs["finetune"]["backbone_facts"]["params_total"] - recs["finetune"][
        "backbone_facts"]["params_backbone"]
    assert recs["finetune"]["trainable_params"] == recs["finetune"]["backbone_facts"]["params_total"]
    assert recs["bias_only_t"]["trainable_params"] == head + biases
    assert recs["frozen"]["trainable_params"] == head


def test_backbone_without_default_weights_runs_random_and_says_so(author, tmp_path):
    m = _matrix(backbones=["custom_cnn"], strategies=["frozen"])
    _cells, notes = validate(author, m)
    assert any("backbone 'custom_cnn' has no default weights" in n and "--weights custom_cnn="
               in n for n in notes), notes
    (rec,) = run_matrix(author, m, tmp_path, show_progress=False).records()
    assert rec["status"] == "ok", rec.get("error")
    assert rec["weights"]["pretrained"] is False
    assert rec["weights"]["description"] == "random init (not pretrained)"
    assert "no default weights" in rec["weights"]["note"]
    # the user's weights silence the note
    _cells, notes = validate(author, _matrix(backbones=["custom_cnn"], strategies=["frozen"],
                                             weights={"custom_cnn": "random"}))
    assert not any("default weights" in n for n in notes)


def test_list_backbones_measures_plugin_backbones(author):
    """bench list builds nothing (it stays fast, issue 30); --measure builds a plugin's
    backbone that gives no facts and counts them."""
    out = CliRunner().invoke(cli, ["list", "backbones"]).output
    (line,) = [ln for ln in out.splitlines() if ln.startswith("custom_cnn ")]
    assert "weights: none" in line and "bench list backbones --measure" in line, line
    out = CliRunner().invoke(cli, ["list", "backbones", "--measure"]).output
    (line,) = [ln for ln in out.splitlines() if ln.startswith("custom_cnn ")]
    n = sum(p.numel() for p in TinyBackbone().parameters())
    assert "weights: none" in line
    assert f"{n / 1e3:.1f}K params" in line and "GMACs@224px" in line, line


# -- bench run checks what a dataset plugin returns, before training -------------------------
def _faulty_load(task, image_size, seed, cache_dir, fault="none"):
    """The quadrant problem (as 10 classes) with one planted fault."""
    from harness.train.data import DataInfo, DataSplits, TensorSplit
    from harness.testkit import make_tiny_splits

    good = make_tiny_splits(image_size=image_size, n_train=40, seed=seed)
    info = DataInfo("faulty", num_classes=10, class_names=[str(i) for i in range(10)])

    def bend(split, offset):
        x, y = split.images, split.targets + offset
        if fault == "labels_from_1":
            y = y + 1 + (torch.arange(len(y)) % 7)  # 1..10
        elif fault == "grey":
            x = x[:, :1]
        elif fault == "size":
            x = torch.nn.functional.interpolate(x.float(), size=image_size // 2).to(torch.uint8)
        return TensorSplit(x, y)

    return DataSplits(bend(good.train, 0), bend(good.val, 0), bend(good.test, 0), info)


class FaultyData:
    @hookimpl
    def register_datasets(self):
        from harness import DatasetSpec
        return [DatasetSpec("faulty", load=_faulty_load)]


@pytest.mark.parametrize("fault, expected", [
    ("labels_from_1", "labels must be in [0, 10) for its 10 classes (DataInfo.num_classes) "
                      "but range 1..10"),
    ("grey", "images are grey, 1 channel (40, 1, 16, 16); give RGB (N, 3, 16, 16)"),
    ("size", "images are 8x8 but the run asked for image_size=16"),
])
def test_bench_run_fails_a_faulty_dataset_cell_naming_the_dataset(author, register_plugin,
                                                                  tmp_path, fault, expected):
    register_plugin(FaultyData(), name="faulty")
    m = _matrix(datasets=[f"faulty,fault={fault}", "testkit_quadrants,n_train=64"])
    recs = {r["config"]["dataset"]: r for r in
            run_matrix(author, m, tmp_path, show_progress=False).records()}
    bad = recs[f"faulty,fault={fault}"]
    assert bad["status"] == "failed"
    assert bad["error"].startswith("InvalidDataset: dataset 'faulty', train split: "), bad["error"]
    assert expected in bad["error"], bad["error"]
    assert "history" not in bad  # it failed before training
    assert recs["testkit_quadrants,n_train=64"]["status"] == "ok"  # the matrix went on
