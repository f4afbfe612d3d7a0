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
@pytest.mark.parametrize("kind,normalize,C", [("svm", "l2", "val"), ("logreg", "standard", 1.0)])
def test_offtheshelf_head_is_the_sklearn_model(kind, normalize, C, tiny_splits):
    """The installed torch head reproduces the fitted scikit-learn model's outputs; with
    C="val" the C kept is the one with the best validation accuracy (Razavian's recipe:
    L2-normalised features and a linear SVM is the default)."""
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits)
    strat = OffTheShelf(model=kind, normalize=normalize, C=C)
    fitted = {}
    real = strat._classifier

    def spy(seed, c):
        fitted[c] = real(seed, c)
        return fitted[c]
    strat._classifier = spy
    hist = strat.fit(model, tiny_splits, ctx)
    assert len(hist.epochs) == 1 and hist.start is not None
    search = hist.phases[0]["C_search"]
    if C == "val":
        from plugins.strategies.offtheshelf import C_GRID
        assert [t["C"] for t in search] == list(C_GRID)
        best = max(t["val_accuracy"] for t in search)
        assert hist.phases[0]["C"] == min(t["C"] for t in search if t["val_accuracy"] == best)
    else:
        assert [t["C"] for t in search] == [C]
    clf = fitted[hist.phases[0]["C"]]
    model.eval()
    train_f = torch.cat([model.features(x) for x, _ in tiny_splits.train.batches(256)]).detach()
    test_f = torch.cat([model.features(x) for x, _ in tiny_splits.test.batches(256)]).detach()
    xt = test_f.double().numpy()
    if normalize == "standard":
        from sklearn.preprocessing import StandardScaler
        z = StandardScaler().fit(train_f.double().numpy()).transform(xt)
        assert isinstance(model.head, nn.Linear)
    else:
        import numpy as np
        z = xt / np.linalg.norm(xt, axis=1, keepdims=True)
        assert isinstance(model.head, nn.Sequential)
    out = predict(model, tiny_splits.test).double()
    if kind == "logreg":
        ref = torch.from_numpy(clf.predict_proba(z))
        assert torch.allclose(out.softmax(1), ref, atol=1e-4)
    else:
        ref = torch.from_numpy(clf.decision_function(z))
        assert torch.allclose(out, ref, atol=1e-3)
    assert torch.equal(out.argmax(1), torch.from_numpy(clf.predict(z)))


def test_offtheshelf_rejects_bad_C():
    with pytest.raises(ValueError, match="C must be a number > 0 or 'val'"):
        OffTheShelf(C="best")


# -- chain-thaw -----------------------------------------------------------------------------
def test_chain_thaw_phases_groups_order_and_rates(tiny_splits, monkeypatch):
    """New layers at new_lr, then g0, g1, g2 alone, then all at lr; only those move."""
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=2, patience=1, lr=1e-2)
    seen = []  # (groups whose parameters changed in the step, rates of the step)
    real_step = torch.optim.AdamW.step

    def step(self, *a, **k):
        named = dict(model.named_parameters())
        before = {n: p.detach().clone() for n, p in named.items()}
        out = real_step(self, *a, **k)
        changed = {g.name for g in model.layer_groups()
                   if any(not torch.equal(before[n], named[n]) for n in g.params)}
        seen.append((changed, {pg["lr"] for pg in self.param_groups}))
        return out
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    hist = ChainThaw().fit(model, tiny_splits, ctx)
    names = [p["name"] for p in hist.phases]
    assert names == ["new layers", "backbone.g0", "backbone.g1", "backbone.g2", "all"]
    assert [p["groups"] for p in hist.phases] == [
        ["head"], ["backbone.g0"], ["backbone.g1"], ["backbone.g2"],
        ["backbone.g0", "backbone.g1", "backbone.g2", "head"]]
    # DeepMoji's rates: new layers at the run's lr, every later phase at a tenth of it
    assert [set(p["lrs"].values()) for p in hist.phases] == [{1e-2}] + [{1e-3}] * 4
    i = 0
    for e in hist.epochs:
        phase = next(p for p in hist.phases if p["name"] == e.phase)
        for changed, rates in seen[i:i + e.steps]:
            assert changed and changed <= set(phase["groups"])
        i += e.steps
    assert i == len(seen)


def test_chain_thaw_rolls_back_a_phase_that_does_not_beat_the_best_so_far(tiny_splits):
    """DeepMoji's one checkpoint (val_loss, best only) across phases: with a rate so high
    for the later phases that they make the model worse, each such phase is discarded and
    the model ends on the best weights of any phase."""
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=3, patience=1)
    hist = ChainThaw(new_lr=1e-2, lr=30.0, clip_norm=0).fit(model, tiny_splits, ctx)
    first = hist.phases[0]
    assert first["improved_best_so_far"] and not first["rolled_back"]
    worse = [p for p in hist.phases[1:] if p["best_val_loss"] >= first["best_val_loss"]]
    assert worse, [p["best_val_loss"] for p in hist.phases]  # the test's premise
    losses = [(e.phase, e.val_loss) for e in hist.epochs]
    for i, p in enumerate(hist.phases[1:], 1):
        before = min(v for ph, v in losses if ph in {q["name"] for q in hist.phases[:i]})
        own = min(v for ph, v in losses if ph == p["name"])
        assert p["rolled_back"] == (own >= before - 1e-7) == (not p["improved_best_so_far"])
    for p in worse:
        assert p["rolled_back"]
        assert all(e.rolled_back for e in hist.epochs if e.phase == p["name"])
    best = min(e.val_loss for e in hist.epochs)
    assert evaluate(model, tiny_splits.val, ctx)[0] == pytest.approx(best, rel=1e-5)
    assert hist.phases[-1]["best_so_far_val_loss"] == pytest.approx(best)


def test_chain_thaw_takes_patience_like_the_paper():
    """-s chain_thaw,patience=1 is a real parameter (DeepMoji's early-stopping patience)."""
    from harness.run.config import AxisItem
    item = AxisItem.parse("chain_thaw,patience=1")
    strat = ChainThaw(**item.kwargs)
    model, task = make_model()
    from harness.testkit import make_tiny_splits
    splits = make_tiny_splits()
    phases = strat.phases(model, make_ctx(task, splits, patience=4))
    assert {p.patience for p in phases} == {1}
    with pytest.raises(ValueError, match="patience must be an integer >= 1"):
        ChainThaw(patience=0)


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


def test_gradual_unfreezing_patience_and_best_only_once_all_groups_train(tiny_splits):
    """ULMFiT's model is the fully unfrozen one: epochs with frozen groups neither count
    towards patience nor can be restored, even when their validation loss is lower."""
    from harness.train.loop import run_phase
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=2, patience=1, lr=0.5)  # a rate that hurts
    strat = GradualUnfreezing()
    hist = History()
    phase = strat.phases(model, ctx)[0]
    assert phase.track_from == 3  # 4 groups: epoch index 3 is the first with all trainable
    run_phase(model, phase, tiny_splits.train, tiny_splits.val, ctx, hist,
              on_epoch_start=lambda e, p: strat.on_epoch_start(model, p, e))
    rec = hist.phases[0]
    full = [e for e in hist.epochs if len(e.trainable_groups) == 4]
    # patience 1 counts from the first fully unfrozen epoch: at most 2 of them
    assert len(hist.epochs) == 3 + len(full) and 1 <= len(full) <= 2
    assert rec["best_epoch"] >= 3
    assert rec["best_val_loss"] == pytest.approx(min(e.val_loss for e in full))
    assert evaluate(model, tiny_splits.val, ctx)[0] == pytest.approx(rec["best_val_loss"],
                                                                     rel=1e-5)


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
def _ctx_with_scratch(task, splits, seed=0, **kw):
    ctx = make_ctx(task, splits, seed=seed, **kw)

    def scratch():  # as the cell runner builds a scratch backbone: this function, this seed
        torch.manual_seed(seed)
        return TinyBackbone()
    ctx.scratch_backbone = scratch
    return ctx


@pytest.mark.parametrize("fine_tune", [False, True])
def test_layer_transfer_copies_n_groups_and_reinitialises_the_rest(fine_tune, tiny_splits):
    model, task = make_model(seed=0)
    with torch.no_grad():  # a "source network" unlike any fresh build
        for p in model.backbone.parameters():
            p.add_(1.0)
        model.backbone.b2.running_mean.fill_(3.0)
    source = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    ctx = _ctx_with_scratch(task, tiny_splits, seed=7, epochs=2)
    strat = LayerTransfer(n=1, fine_tune=fine_tune)
    strat._fresh = ctx.scratch_backbone
    rng = torch.get_rng_state()
    strat.freeze_before_training(model)
    assert torch.equal(torch.get_rng_state(), rng), "re-initialising leaves the RNG alone"
    bb = model.backbone.state_dict()
    torch.manual_seed(7)
    scratch = TinyBackbone().state_dict()  # a fresh scratch build, same seed
    for k in bb:
        if k.startswith(("c1.", "b1.")):  # group g0: copied from the source
            assert torch.equal(bb[k], source[k]), k
        else:  # g1, g2: exactly the scratch build's tensors, BN statistics included
            assert torch.equal(bb[k], scratch[k]), k
    model, task = make_model(seed=0)
    source = {k: v.clone() for k, v in model.backbone.state_dict().items()}
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


def test_layer_transfer_without_a_scratch_build_says_why(tiny_splits):
    model, task = make_model()
    with pytest.raises(RuntimeError, match="scratch-build function"):
        LayerTransfer(n=1).fit(model, tiny_splits, make_ctx(task, tiny_splits))


def test_layer_transfer_n_out_of_range_names_the_groups(tiny_splits):
    model, task = make_model()
    with pytest.raises(ValueError, match="3 layer groups.*n=0..3"):
        LayerTransfer(n=4).fit(model, tiny_splits, _ctx_with_scratch(task, tiny_splits))


# -- the three benefits (Torrey & Shavlik) ----------------------------------------------------
def _rec(strategy, curve, key, seed=0, status="ok", rolled_back=(), losses=None,
         chance=False):
    """A cell record whose curve[0] is the metric before training; the validation loss of
    each epoch is ``losses`` (default: 1 - metric, so the lowest loss has the best metric);
    ``chance``: the cell put a new head on its backbone (as every built-in cell does)."""
    losses = losses or [1 - v for v in curve[1:]]
    return {"key": key, "status": status, "higher_is_better": True, "metric_name": "accuracy",
            "start_is_chance": chance,
            "transfer": strategy != "scratch",  # what run_cell records from Strategy.pretrained
            "config": {"backbone": "b", "task": "t", "dataset": "d", "seed": seed,
                       "strategy": strategy},
            "history": {"start": {"val_metric": curve[0], "val_loss": 1.0},
                        "epochs": [{"val_metric": v, "val_loss": loss,
                                    "rolled_back": i + 1 in rolled_back}
                                   for i, (v, loss) in enumerate(zip(curve[1:], losses))]}}


def test_transfer_benefits_against_scratch():
    from harness.report.benefits import slope, transfer_benefits
    cells = [_rec("scratch", [0.1, 0.2, 0.4, 0.6, 0.7], "s"),
             _rec("finetune,lr=0.01", [0.5, 0.6, 0.8], "f"),
             _rec("frozen", [0.1, 0.2, 0.3, 0.4], "z", seed=1)]
    out = {e["key"]: e for e in transfer_benefits(cells)}
    f = out["f"]
    assert f["baseline_key"] == "s"
    # start: before any training step (epoch 0), not after the first epoch
    assert f["start"] == {"value": 0.5, "baseline": 0.1, "gain": pytest.approx(0.4),
                          "better": True}
    assert f["asymptote"]["gain"] == pytest.approx(0.1)
    # finetune has epochs 0..2: slope and area over the epochs both curves have, no padding
    assert f["slope_epochs"] == f["auc_epochs"] == 2
    assert f["slope"]["value"] == pytest.approx(0.15) and f["slope"]["baseline"] == pytest.approx(0.15)
    assert f["auc"]["value"] == pytest.approx((0.55 + 0.7) / 2)
    assert f["auc"]["baseline"] == pytest.approx((0.15 + 0.3) / 2)
    assert out["z"]["baseline_key"] is None and "no ok from-scratch" in out["z"]["missing"]
    named = {e["key"]: e for e in transfer_benefits(cells, baseline="frozen")}
    assert named["s"]["baseline_key"] is None and "no ok 'frozen' cell" in named["s"]["missing"]
    assert slope([0.1, 0.3]) == pytest.approx(0.2)


def test_a_new_heads_start_is_chance_not_a_benefit():
    """With a new random head the metric before training is chance by construction: the
    start is reported as chance, with the reason, and no gain or verdict; the HTML benefits
    chart draws no start bar for it and says why."""
    from harness.report.benefits import transfer_benefits
    from harness.report.report_html import benefits_spec
    from harness.run.cell import curve_summary
    cells = [_rec("scratch", [0.1, 0.5, 0.6], "s", chance=True),
             _rec("finetune", [0.12, 0.8, 0.9], "f", chance=True)]
    start = transfer_benefits(cells)[0]["start"]
    assert start["chance"] and start["gain"] is None and start["better"] is None
    assert "new, randomly initialised head" in start["note"]
    cs = curve_summary(cells[1])
    assert cs["start_is_chance"] and "chance by construction" in cs["start_note"]
    spec = benefits_spec(cells)
    assert {v["benefit"] for v in spec["data"]["values"]} == {"higher slope (rate)",
                                                               "higher asymptote"}
    assert "chance by construction" in spec["title"][1]
    del cells[1]["start_is_chance"]  # a record that predates the flag: every head was new
    assert transfer_benefits(cells)[0]["start"]["chance"]


def test_slope_is_a_rate_a_shifted_curve_has_the_same_slope():
    from harness.report.benefits import normalized_auc, slope, transfer_benefits
    curve = [0.2, 0.35, 0.5, 0.55, 0.6]
    shifted = [v + 0.1 for v in curve]
    assert slope(shifted) == pytest.approx(slope(curve))
    assert normalized_auc(shifted) == pytest.approx(normalized_auc(curve) + 0.1)
    out = transfer_benefits([_rec("scratch", curve, "s"), _rec("finetune", shifted, "f")])[0]
    assert out["slope"]["gain"] == pytest.approx(0.0, abs=1e-12)
    assert not out["slope"]["better"]  # the same rate is no higher slope
    assert out["start"]["gain"] == pytest.approx(0.1) and out["auc"]["gain"] == pytest.approx(0.1)


def test_benefits_do_not_pad_early_stoppers_and_skip_rolled_back_epochs():
    from harness.report.benefits import normalized_auc, slope, transfer_benefits
    with pytest.raises(ValueError, match="past the curve's last epoch"):
        normalized_auc([0.1, 0.5], horizon=3)
    base = _rec("scratch", [0.1, 0.3, 0.5, 0.7, 0.9], "s")
    stopper = _rec("chain_thaw", [0.1, 0.6, 0.95, 0.6, 0.65], "c", rolled_back=(2,),
                   losses=[0.5, 0.1, 0.45, 0.4])
    out = transfer_benefits([base, stopper])[0]
    # 0.95 came from a rolled-back phase: shown in the curve, counted nowhere
    kept = [0.1, 0.6, 0.6, 0.65]
    assert out["auc_epochs"] == 3 and out["slope_epochs"] == 3
    assert out["auc"]["value"] == pytest.approx(normalized_auc(kept))
    assert out["auc"]["baseline"] == pytest.approx(normalized_auc([0.1, 0.3, 0.5, 0.7]))
    assert out["slope"]["value"] == pytest.approx(slope(kept))
    assert out["asymptote"]["value"] == pytest.approx(0.65)  # lowest kept loss, 0.4
    assert out["asymptote"]["baseline"] == pytest.approx(0.9)


def test_asymptote_is_the_kept_models_metric_by_the_one_criterion():
    """Selection is by validation loss everywhere: the asymptote is the metric of the
    lowest-loss (kept) epoch, not the highest metric; the cell's re-measured kept model
    wins over both, and the curve summary says the same."""
    from harness.report.benefits import kept_value, transfer_benefits
    from harness.run.cell import curve_summary
    base = _rec("scratch", [0.1, 0.5, 0.6], "s")
    c = _rec("finetune", [0.1, 0.8, 0.7], "f", losses=[0.6, 0.5])  # loss keeps epoch 2
    assert kept_value(c) == pytest.approx(0.7)
    assert transfer_benefits([base, c])[0]["asymptote"]["value"] == pytest.approx(0.7)
    c["history"]["kept_epoch"] = 0  # what the fit recorded wins over the records' search
    assert kept_value(c) == pytest.approx(0.8)
    c["kept_model"] = {"val_metric": 0.75}  # the delivered model, measured again
    assert kept_value(c) == pytest.approx(0.75)
    cs = curve_summary(c)
    assert cs["best"] == pytest.approx(0.75) and cs["selection"] == "val_loss"
    rb = _rec("chain_thaw", [0.1, 0.9, 0.5], "r", rolled_back=(1,), losses=[0.2, 0.3])
    cs = curve_summary(rb)
    assert cs["best"] == pytest.approx(0.5)  # the rolled-back epoch's lower loss is gone
    assert cs["mean"] == pytest.approx(0.3) and (cs["kept_epochs"], cs["rolled_back_epochs"]) == (1, 1)


def test_every_strategy_records_the_metric_before_training(tiny_splits):
    """Epoch 0 is evaluated for every strategy, frozen and offtheshelf included, and it is
    the untrained model's metric."""
    for strat in (Frozen(), Frozen(cache_features=False), OffTheShelf(), ChainThaw(),
                  GradualUnfreezing()):
        model, task = make_model()
        ctx = make_ctx(task, tiny_splits, epochs=1)
        loss0, metrics0 = evaluate(model, tiny_splits.val, ctx)
        hist = strat.fit(model, tiny_splits, ctx)
        assert hist.start["val_loss"] == pytest.approx(loss0, rel=1e-5), strat
        assert hist.start["val_metric"] == pytest.approx(metrics0["accuracy"]), strat


# -- budgets --------------------------------------------------------------------------------
@pytest.mark.parametrize("unit", ["epochs", "steps", "images"])
def test_equal_budgets_give_equal_step_counts(unit, tiny_splits):
    """Under a total budget, one-phase and many-phase strategies spend the same: 5 epochs'
    worth of steps/images (early stopping off via a patience longer than the budget), and
    the many-phase ones run every phase: each changes the groups it trains."""
    from plugins.strategies import Scratch
    spent = {}
    for strat in (Scratch(), ChainThaw(), GradualUnfreezing(), ULMFiT(), Frozen(),
                  LayerTransfer(n=1)):
        model, task = make_model()
        ctx = _ctx_with_scratch(task, tiny_splits, epochs=5, patience=50, budget=unit)
        hist = strat.fit(model, tiny_splits, ctx)
        u = hist.usage
        assert (u.unit, u.limit) == (unit, {"epochs": 5, "steps": 5 * 5, "images": 5 * 160}[unit])
        spent[type(strat).__name__] = (u.steps, u.images)
        assert u.steps == sum(e.steps for e in hist.epochs)
        assert u.images == sum(e.images for e in hist.epochs)
        if unit == "epochs":
            assert u.epochs == 5
        for p in hist.phases:
            assert p["steps"] >= 1 and set(p["changed_groups"]) == set(p["groups"]), p
        if isinstance(strat, GradualUnfreezing):  # the fully unfrozen model trained
            assert len(hist.epochs[-1].trainable_groups) == 4
    assert set(spent.values()) == {(25, 800)}, spent


@pytest.mark.parametrize("unit", ["epochs", "steps", "images"])
def test_too_small_a_budget_fails_before_training_naming_the_minimum(unit, tiny_splits,
                                                                     monkeypatch):
    """Chain-thaw's 5 phases need a unit each (a 48-image batch under an images budget),
    gradual unfreezing 3 full epochs while its 4 groups unfreeze and one unit of the full
    model: too small a budget is refused before any step, naming the epochs that would do."""
    def no_step(*a, **k):
        raise AssertionError("trained although the budget was refused")
    monkeypatch.setattr(torch.optim.AdamW, "step", no_step)
    from harness.train.loop import BudgetTooSmall
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=1, batch_size=48, budget=unit)
    least = {"epochs": 5, "steps": 2, "images": 2}[unit]  # 4 steps, 160 images an epoch
    with pytest.raises(BudgetTooSmall, match=rf"ChainThaw runs 5 phase\(s\) .*"
                                             rf"Set epochs to at least {least} "):
        ChainThaw().fit(model, tiny_splits, ctx)
    ctx = make_ctx(task, tiny_splits, epochs=3, budget=unit)
    with pytest.raises(BudgetTooSmall, match=r"'gradual unfreezing': 3 full epoch\(s\) while "
                                             r"its groups unfreeze.*Set epochs to at least 4 "):
        GradualUnfreezing().fit(model, tiny_splits, ctx)


def test_images_budget_cuts_the_last_batch(tiny_splits):
    """Chain-thaw's 5 phases share 2 epochs' worth of images (320): 64 each, which batches
    of 48 do not divide, so each phase's second batch is cut to 16 and the total is exact."""
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=2, patience=50, budget="images", batch_size=48)
    hist = ChainThaw().fit(model, tiny_splits, ctx)
    assert hist.usage.images == 320 and hist.usage.limit == 320
    assert [(p["images"], p["steps"]) for p in hist.phases] == [(64, 2)] * 5


def test_per_phase_budget_lets_many_phases_train_longer(tiny_splits):
    from plugins.strategies import FineTune
    steps = {}
    for strat in (FineTune(), ChainThaw()):
        model, task = make_model()
        hist = strat.fit(model, tiny_splits, make_ctx(task, tiny_splits, epochs=2, patience=50))
        steps[type(strat).__name__] = hist.usage.steps
    assert steps == {"FineTune": 2 * 5, "ChainThaw": 5 * 2 * 5}


def test_training_flops_are_counted_per_step(tiny_splits):
    """FLOPs of every optimizer step, forward and backward, by PyTorch's counter: twice the
    epochs cost twice the FLOPs, and training the head alone costs less than everything."""
    from torch.utils.flop_counter import FlopCounterMode
    from plugins.strategies import FineTune
    flops = {}
    for name, strat, epochs in (("ft1", FineTune(), 1), ("ft2", FineTune(), 2),
                                ("frozen-naive", Frozen(cache_features=False), 1)):
        model, task = make_model()
        hist = strat.fit(model, tiny_splits, make_ctx(task, tiny_splits, epochs=epochs,
                                                      patience=50))
        flops[name] = hist.usage.train_flops
    assert flops["ft2"] == pytest.approx(2 * flops["ft1"])
    assert 0 < flops["frozen-naive"] < flops["ft1"]
    model, task = make_model()
    x = tiny_splits.train.images[:32].float() / 255
    with FlopCounterMode(display=False) as c:
        task.loss(model(x), tiny_splits.train.targets[:32]).backward()
    assert flops["ft1"] == pytest.approx(c.get_total_flops() / 32 * len(tiny_splits.train))


@pytest.mark.parametrize("exact_modes", [False, True])
def test_count_flops_matches_pytorchs_counter(tiny_splits, exact_modes):
    """The plain dispatch-mode count and FlopCounterMode agree on a training step."""
    from torch.utils.flop_counter import FlopCounterMode
    from harness.train.loop import count_flops
    model, task = make_model()
    x = tiny_splits.train.images[:8].float() / 255
    y = tiny_splits.train.targets[:8]
    _, flops = count_flops(lambda: task.loss(model(x), y).backward(), exact_modes=exact_modes)
    with FlopCounterMode(display=False) as c:
        task.loss(model(x), y).backward()
    assert flops == c.get_total_flops() > 0


def test_flops_budget_gives_every_strategy_the_same_training_compute(tiny_splits):
    """budget = "flops": the limit is epochs x images x the FLOPs of one image's training
    step with every layer trainable; full fine-tuning spends exactly that in `epochs`
    epochs, cheaper strategies (a head on cached features, chain-thaw's one-group phases)
    train more epochs on the same compute, and none spends more than the limit."""
    from harness.train.loop import training_flops_per_image
    from plugins.strategies import FineTune
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=4, patience=50, budget="flops")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    per_image = training_flops_per_image(model, tiny_splits.train, ctx)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    limit = 4 * 160 * per_image
    runs = {}
    for strat in (FineTune(), Frozen(), ChainThaw(), GradualUnfreezing()):
        model, task = make_model()
        ctx = make_ctx(task, tiny_splits, epochs=4, patience=50, budget="flops")
        hist = strat.fit(model, tiny_splits, ctx)
        u = hist.usage
        assert u.unit == "flops" and u.limit == pytest.approx(limit)
        assert 0 < u.train_flops <= limit * (1 + 1e-9), type(strat).__name__
        runs[type(strat).__name__] = hist
    ft = runs["FineTune"]
    assert ft.usage.train_flops == pytest.approx(limit) and ft.usage.epochs == 4
    assert ft.phases[0]["stopped"] == "budget"
    # the head alone costs a fraction of the whole model: many more epochs, same compute
    assert runs["Frozen"].usage.epochs > 4 and runs["ChainThaw"].usage.epochs > 5
    for p in runs["ChainThaw"].phases:  # every phase still ran
        assert p["steps"] >= 1 and set(p["changed_groups"]) == set(p["groups"])


def test_flops_budget_refuses_a_schedule_it_cannot_pay_for(tiny_splits):
    from harness.train.loop import BudgetTooSmall
    model, task = make_model()
    ctx = make_ctx(task, tiny_splits, epochs=3, budget="flops")
    with pytest.raises(BudgetTooSmall, match=r"training FLOPs.*Set epochs to at least 4 "):
        GradualUnfreezing().fit(model, tiny_splits, ctx)


def test_chain_thaw_with_a_rate_too_large_reports_the_kept_models_figures(register_plugin,
                                                                          tiny_splits):
    """Later phases at a rate that wrecks the model are rolled back; the cell's reported
    best is the delivered model's validation metric (measured again on it), the epoch the
    one criterion (validation loss) kept, and the rolled-back epochs count nowhere."""
    from harness.report.benefits import kept_curve
    from harness.run.cell import run_cell
    plugins = register_plugin(TinyPlugin(tiny_splits))
    cfg = CellConfig(backbone=AxisItem("tinynet"), task=AxisItem("classification"),
                     dataset=AxisItem("quadrants"),
                     strategy=AxisItem("chain_thaw", (("new_lr", 1e-2), ("lr", 30.0),
                                                      ("clip_norm", 0))),
                     weights="random", seed=0, image_size=16,
                     train={**vars(TrainSettings(epochs=10, batch_size=32, lr=1e-2,
                                                 patience=1, budget="epochs"))},
                     runtimes=(), profiles=(), latency={})
    rec = run_cell(plugins, cfg, "k")
    assert rec["status"] == "ok", rec.get("traceback")
    hist = rec["history"]
    back = [e for e in hist["epochs"] if e["rolled_back"]]
    assert back, "the test's premise: a phase was rolled back"
    kept = [e for e in hist["epochs"] if not e["rolled_back"]]
    chosen = min(kept, key=lambda e: e["val_loss"])
    assert hist["epochs"][hist["kept_epoch"]] == chosen
    assert rec["kept_model"]["val_loss"] == pytest.approx(chosen["val_loss"], rel=1e-4)
    cs = rec["curve_summary"]
    assert cs["best"] == rec["kept_model"]["val_metric"] == pytest.approx(chosen["val_metric"])
    assert cs["rolled_back_epochs"] == len(back) and cs["kept_epochs"] == len(kept)
    assert cs["mean"] == pytest.approx(sum(kept_curve(rec)) / (len(kept) + 1))
    assert cs["start_is_chance"]
