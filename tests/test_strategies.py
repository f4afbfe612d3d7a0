"""Fine-tune strategies: what each trains, in which order, at which rates, and that it learns."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from harness import BackboneSpec, DatasetSpec, hookimpl
from harness.run.config import AxisItem, CellConfig
from harness.train.model import Backbone, LayerGroup, TransferModel
from harness.train.schedules import stlr_multiplier
from harness.train.loop import History, TrainContext, TrainSettings, evaluate, predict
from plugins.strategies import (ChainThaw, Discriminative, Frozen, GradualUnfreezing,
                                LayerTransfer, OffTheShelf, ULMFiT)
from plugins.tasks import Classification

pytestmark = pytest.mark.slow  # trains models, starts workers or exports ONNX


class TinyBackbone(Backbone):
    """Three layer groups (conv+BN, conv+BN, conv), pooled to a 2x2 grid (64 features),
    so that even random frozen features keep where the bright quadrant is."""

    num_features = 64
    feature_channels = 16
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    input_size = 16

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16)
        self.c3 = nn.Conv2d(16, 16, 3, padding=1)

    def forward_spatial(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return torch.relu(self.c3(x))

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(self.forward_spatial(x), 2).flatten(1)

    def layer_groups(self):
        names = [n for n, _ in self.named_parameters()]
        return [LayerGroup(f"g{i}", [n for n in names if n[1] in pre])
                for i, pre in enumerate(("1", "2", "3"))]


def make_model(seed=0, hidden=(32,)):
    torch.manual_seed(seed)
    bb = TinyBackbone()
    task = Classification(hidden=hidden, dropout=0.1)
    from harness.train.data import DataInfo
    head = task.build_head(bb, DataInfo("q", num_classes=4))
    return TransferModel(bb, head), task


def make_ctx(task, splits, **kw):
    settings = TrainSettings(**{"epochs": 6, "batch_size": 32, "lr": 1e-2, "patience": 2, **kw})
    return TrainContext(task, splits.info, settings)


def accuracy(model, split, ctx):
    return evaluate(model, split, ctx)[1]["accuracy"]


class TinyPlugin:
    """Registers the tiny backbone and the quadrant problem as a dataset."""

    def __init__(self, splits):
        self.splits = splits

    @hookimpl
    def register_backbones(self):
        return [BackboneSpec("tinynet", build=TinyBackbone, default_weights="random",
                             description="3-group test backbone")]

    @hookimpl
    def register_datasets(self):
        return [DatasetSpec("quadrants", load=lambda **kw: self.splits, synthetic=True,
                            offline=True)]


def strategy_names():
    from harness.api.manager import PluginSystem
    return PluginSystem(entry_points=False).strategies.names()


# -- every strategy, end to end through the cell runner --------------------------------------
@pytest.mark.parametrize("name", strategy_names())
def test_each_strategy_learns_well_above_chance(name, register_plugin, tiny_splits):
    """A cell with the tiny backbone reaches far above the 25% of chance on test images."""
    from harness.run.cell import run_cell
    plugins = register_plugin(TinyPlugin(tiny_splits))
    params = {"layer_transfer": (("n", 1),), "chain_thaw": (("epochs_per_phase", 3),)}
    cfg = CellConfig(backbone=AxisItem("tinynet"), task=AxisItem("classification"),
                     dataset=AxisItem("quadrants"),
                     strategy=AxisItem(name, params.get(name, ())), weights="random", seed=0,
                     image_size=16, train={**vars(TrainSettings(epochs=8, batch_size=32,
                                                                lr=1e-2, patience=2))},
                     runtimes=(), profiles=(), latency={})
    rec = run_cell(plugins, cfg, "k")
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["test_metrics"]["accuracy"] >= 0.6, rec["history"]["phases"]
    assert rec["history"]["epochs"], "every strategy records a learning curve"
    assert rec["strategy"]["bn_policy"] in ("freeze", "train")


def test_unknown_parameter_lists_the_accepted_ones():
    with pytest.raises(TypeError, match="factor.*lr.*schedule"):
        Discriminative(facter=3)
    with pytest.raises(ValueError, match="logreg, svm"):
        OffTheShelf(model="tree")


# -- frozen ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", [True, False])
def test_frozen_backbone_bit_identical_after_training(cache, tiny_splits):
    model, task = make_model()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    ctx = make_ctx(task, tiny_splits, epochs=3)
    Frozen(cache_features=cache).fit(model, tiny_splits, ctx)
    after = model.backbone.state_dict()
    for k, v in before.items():  # weights and batch-norm statistics alike
        assert torch.equal(v, after[k]), k


def test_frozen_cached_equals_naive_loop(tiny_splits):
    m1, task = make_model()
    m2 = copy.deepcopy(m1)
    h1 = Frozen(cache_features=True).fit(m1, tiny_splits, make_ctx(task, tiny_splits, epochs=3))
    h2 = Frozen(cache_features=False).fit(m2, tiny_splits, make_ctx(task, tiny_splits, epochs=3))
    assert len(h1.epochs) == len(h2.epochs)
    for a, b in zip(h1.epochs, h2.epochs):
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4, abs=1e-5)
    ctx = make_ctx(task, tiny_splits)
    assert accuracy(m1, tiny_splits.test, ctx) == pytest.approx(accuracy(m2, tiny_splits.test, ctx),
                                                                abs=0.02)


# -- off the shelf ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["logreg", "svm"])
def test_offtheshelf_head_is_the_sklearn_model(kind, tiny_splits):
    """The installed torch head reproduces the fitted scikit-learn model's outputs."""
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits)
    strat = OffTheShelf(model=kind)
    captured = {}
    real = strat._classifier

    def spy(seed):
        captured["clf"] = real(seed)
        return captured["clf"]
    strat._classifier = spy
    hist = strat.fit(model, tiny_splits, ctx)
    assert len(hist.epochs) == 1
    assert isinstance(model.head, nn.Linear)
    clf = captured["clf"]
    from sklearn.preprocessing import StandardScaler
    model.eval()
    train_f = torch.cat([model.features(x) for x, _ in tiny_splits.train.batches(256)]).detach()
    test_f = torch.cat([model.features(x) for x, _ in tiny_splits.test.batches(256)]).detach()
    scaler = StandardScaler().fit(train_f.double().numpy())
    z = scaler.transform(test_f.double().numpy())
    out = predict(model, tiny_splits.test).double()
    if kind == "logreg":
        ref = torch.from_numpy(clf.predict_proba(z))
        assert torch.allclose(out.softmax(1), ref, atol=1e-4)
    else:
        ref = torch.from_numpy(clf.decision_function(z))
        assert torch.allclose(out, ref, atol=1e-3)
    assert torch.equal(out.argmax(1), torch.from_numpy(clf.predict(z)))


# -- chain-thaw -----------------------------------------------------------------------------
def test_chain_thaw_phases_groups_order_and_restores_best(tiny_splits, monkeypatch):
    """New layers, then g0, g1, g2 alone, then all; each phase ends on its best weights."""
    import harness.train.loop as train_mod
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=3, patience=1)
    seen = []  # (phase, trainable groups in the optimizer step, params that changed)
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        named = dict(model.named_parameters())
        before = {n: p.detach().clone() for n, p in named.items()}
        out = real_step(self, *a, **k)
        changed = {g.name for g in model.layer_groups()
                   if any(not torch.equal(before[n], named[n]) for n in g.params)}
        seen.append(changed)
        return out
    monkeypatch.setattr(torch.optim.AdamW, "step", step)

    best_states = []
    real_copy = train_mod.copy.deepcopy
    snapshots = {}

    def deepcopy(obj, *a):
        res = real_copy(obj, *a)
        if isinstance(obj, dict):
            snapshots["last"] = res
        return res
    monkeypatch.setattr(train_mod.copy, "deepcopy", deepcopy)
    real_load = nn.Module.load_state_dict

    def load(self, state, *a, **k):
        best_states.append(state is snapshots.get("last"))
        return real_load(self, state, *a, **k)
    monkeypatch.setattr(nn.Module, "load_state_dict", load)

    hist = ChainThaw().fit(model, tiny_splits, ctx)
    names = [p["name"] for p in hist.phases]
    assert names == ["new layers", "backbone.g0", "backbone.g1", "backbone.g2", "all"]
    assert [p["groups"] for p in hist.phases] == [
        ["head"], ["backbone.g0"], ["backbone.g1"], ["backbone.g2"],
        ["backbone.g0", "backbone.g1", "backbone.g2", "head"]]
    # every epoch of each phase trained exactly that phase's groups
    for e in hist.epochs:
        phase = next(p for p in hist.phases if p["name"] == e.phase)
        assert e.trainable_groups == phase["groups"]
    # and only those parameters moved
    i = 0
    steps_per_epoch = math.ceil(len(tiny_splits.train) / 32)
    for e in hist.epochs:
        phase = next(p for p in hist.phases if p["name"] == e.phase)
        for changed in seen[i:i + steps_per_epoch]:
            assert changed <= set(phase["groups"]) and changed
        i += steps_per_epoch
    # each phase restored the weights of its best epoch (the last snapshot taken)
    assert best_states == [True] * 5
    # the model ends at the best validation loss of the last phase
    assert evaluate(model, tiny_splits.val, ctx)[0] == pytest.approx(hist.phases[-1]["best_val_loss"],
                                                                     rel=1e-5)


def test_restore_best_after_val_loss_rises(tiny_splits):
    """With a rate so high that validation loss rises, the phase ends on its best epoch."""
    from harness.train.loop import Phase, run_phase
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=4, patience=2, lr=0.5)
    hist = History()
    best = run_phase(model, Phase("all", [g.name for g in model.layer_groups()]),
                     tiny_splits.train, tiny_splits.val, ctx, hist)
    p = hist.phases[0]
    assert p["best_val_loss"] == min(e.val_loss for e in hist.epochs) == best
    assert evaluate(model, tiny_splits.val, ctx)[0] == pytest.approx(best, rel=1e-5)


# -- ULMFiT ---------------------------------------------------------------------------------
def test_discriminative_lrs_per_group(tiny_splits):
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=1)
    hist = Discriminative(lr=0.01).fit(model, tiny_splits, ctx)
    lrs = hist.phases[0]["lrs"]
    assert lrs["head"] == pytest.approx(0.01)
    assert lrs["backbone.g2"] == pytest.approx(0.01 / 2.6)
    assert lrs["backbone.g1"] == pytest.approx(0.01 / 2.6 ** 2)
    assert lrs["backbone.g0"] == pytest.approx(0.01 / 2.6 ** 3)
    hist = Discriminative(lr=0.01, factor=2.0).fit(make_model()[0], tiny_splits, ctx)
    assert hist.phases[0]["lrs"]["backbone.g0"] == pytest.approx(0.01 / 8)


def test_gradual_unfreezing_one_more_group_each_epoch(tiny_splits):
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=1, patience=1)
    hist = GradualUnfreezing().fit(model, tiny_splits, ctx)
    groups = [e.trainable_groups for e in hist.epochs]
    assert groups[:4] == [["head"], ["backbone.g2", "head"],
                          ["backbone.g1", "backbone.g2", "head"],
                          ["backbone.g0", "backbone.g1", "backbone.g2", "head"]]
    assert len(groups) >= 4, "early stopping waits until every group is unfrozen"


def test_ulmfit_combines_stlr_discriminative_and_unfreezing(tiny_splits, monkeypatch):
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=2, patience=5, lr=0.01)
    rates = []
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        rates.append({pg["group"]: pg["lr"] for pg in self.param_groups})
        return real_step(self, *a, **k)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    hist = ULMFiT().fit(model, tiny_splits, ctx)
    assert hist.phases[0]["schedule"] == "stlr"
    steps = math.ceil(len(tiny_splits.train) / 32)
    total = (4 - 1 + 2) * steps
    for t in (0, 1, total // 2, len(rates) - 1):
        m = stlr_multiplier(t, total, 0.1, 32.0)
        assert rates[t]["head"] == pytest.approx(0.01 * m)
        assert rates[t]["backbone.g0"] == pytest.approx(0.01 / 2.6 ** 3 * m)
    assert hist.epochs[0].trainable_groups == ["head"]


# -- Yosinski layer transfer ----------------------------------------------------------------
@pytest.mark.parametrize("fine_tune", [False, True])
def test_layer_transfer_copies_n_groups_and_reinitialises_the_rest(fine_tune, tiny_splits):
    model, task = make_model(seed=0)
    source = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    ctx = make_ctx(task, tiny_splits, epochs=2)
    strat = LayerTransfer(n=1, fine_tune=fine_tune)
    strat._seed = 0
    strat.freeze_before_training(model)
    bb = model.backbone.state_dict()
    assert torch.equal(bb["c1.weight"], source["c1.weight"])  # copied
    assert not torch.equal(bb["c2.weight"], source["c2.weight"])  # re-initialised
    assert not torch.equal(bb["c3.weight"], source["c3.weight"])
    model, task = make_model(seed=0)
    hist = strat.fit(model, tiny_splits, ctx)
    after = model.backbone.state_dict()
    if fine_tune:  # AnB+: copied layers learn too
        assert hist.epochs[0].trainable_groups == ["backbone.g0", "backbone.g1",
                                                   "backbone.g2", "head"]
        assert not torch.equal(after["c1.weight"], source["c1.weight"])
    else:  # AnB: copied layers stay frozen, statistics included
        assert hist.epochs[0].trainable_groups == ["backbone.g1", "backbone.g2", "head"]
        for k in ("c1.weight", "c1.bias", "b1.weight", "b1.running_mean", "b1.running_var"):
            assert torch.equal(after[k], source[k]), k


def test_layer_transfer_n_out_of_range_names_the_groups(tiny_splits):
    model, task = make_model()
    with pytest.raises(ValueError, match="3 layer groups.*n=0..3"):
        LayerTransfer(n=4).fit(model, tiny_splits, make_ctx(task, tiny_splits))


# -- the three benefits (Torrey & Shavlik) ----------------------------------------------------
def _rec(strategy, curve, key, seed=0, status="ok"):
    return {"key": key, "status": status, "higher_is_better": True, "metric_name": "accuracy",
            "transfer": strategy != "scratch",  # what run_cell records from Strategy.pretrained
            "config": {"backbone": "b", "task": "t", "dataset": "d", "seed": seed,
                       "strategy": strategy},
            "history": {"epochs": [{"val_metric": v} for v in curve]}}


def test_transfer_benefits_against_scratch():
    from harness.report.benefits import normalized_auc, transfer_benefits
    cells = [_rec("scratch", [0.2, 0.4, 0.6, 0.7], "s"),
             _rec("finetune,lr=0.01", [0.6, 0.8], "f"),
             _rec("frozen", [0.1, 0.2, 0.3, 0.4], "z", seed=1)]
    out = {e["key"]: e for e in transfer_benefits(cells)}
    f = out["f"]
    assert f["baseline_key"] == "s"
    assert f["start"] == {"value": 0.6, "baseline": 0.2, "gain": pytest.approx(0.4),
                          "better": True}
    assert f["asymptote"]["gain"] == pytest.approx(0.1)
    # finetune stopped after 2 epochs: extended with its best (0.8) to the 4-epoch horizon
    assert f["slope"]["value"] == pytest.approx((0.7 + 0.8 + 0.8) / 3)
    assert f["slope"]["baseline"] == pytest.approx((0.3 + 0.5 + 0.65) / 3)
    assert out["z"]["baseline_key"] is None and "no ok from-scratch" in out["z"]["missing"]
    named = {e["key"]: e for e in transfer_benefits(cells, baseline="frozen")}
    assert named["s"]["baseline_key"] is None and "no ok 'frozen' cell" in named["s"]["missing"]
    assert normalized_auc([0.5]) == 0.5
