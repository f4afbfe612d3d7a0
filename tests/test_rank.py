"""Ranking backbones before training: the estimator kind, the source classifiers the
weights keep, ``bench rank`` and ``bench run --rank-first``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from harness import EstimatorSpec, hookimpl
from harness.api.specs import DatasetSpec, EstimatorInput
from harness.report.ranking import rank_table
from harness.run.config import MatrixConfig
from harness.run.rank import (frozen_inputs, rank_matrix, rank_units, resolve_estimators,
                              score, top_backbones)
from harness.testkit import make_tiny_splits, tiny_backbone_spec


class _Plugin:
    def __init__(self, hook, fn):
        setattr(self, hook, hookimpl(fn))


def _tiny_inputs(**kw) -> EstimatorInput:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    f = np.eye(3)[y] * 2 + rng.normal(size=(30, 3))
    return EstimatorInput(features=f, labels=y, val_features=f, val_labels=y, num_classes=3,
                          **kw)


def test_hook_register_estimators(register_plugin):
    def mean_gap(inputs, scale: float = 1.0):
        return scale * float(np.ptp([inputs.features[inputs.labels == c].mean()
                                     for c in range(inputs.num_classes)]))

    system = register_plugin(_Plugin("register_estimators", lambda: [
        EstimatorSpec("mean_gap", score=mean_gap, description="spread of class means")]))
    assert "mean_gap" in system.estimators.names()
    (item, spec), = resolve_estimators(system, ["mean_gap,scale=2"])
    out = score(_tiny_inputs(), item, spec)
    assert out["score"] == pytest.approx(2 * mean_gap(_tiny_inputs())) and out["seconds"] >= 0


def test_builtin_estimators_score_or_say_why_not(plugin_system):
    expected = {"logme", "leep", "nce", "hscore", "gbc", "knn", "linear_probe"}
    assert expected <= set(plugin_system.estimators.names())
    inputs = _tiny_inputs(source_missing="the weights 'random' keep no source classifier")
    for item, spec in resolve_estimators(plugin_system, sorted(expected)):
        out = score(inputs, item, spec)
        if spec.needs_source_classifier:
            assert out["score"] is None
            assert "needs the classifier the weights were trained with" in out["unavailable"]
            assert "'random' keep no source classifier" in out["unavailable"]
        else:
            assert np.isfinite(out["score"]), item.name
    probs = np.full((30, 4), 0.25)
    probs[np.arange(30), np.repeat(np.arange(3), 10)] = 0.7  # source class z = label
    with_source = _tiny_inputs(source_probs=probs / probs.sum(1, keepdims=True))
    (li, ls), (ni, ns) = resolve_estimators(plugin_system, ["leep", "nce"])
    assert score(with_source, ni, ns)["score"] == pytest.approx(0.0)  # labels = argmax
    assert score(with_source, li, ls)["score"] < 0


def test_unknown_estimator_lists_the_choices(plugin_system):
    from harness.api.errors import UnknownName
    with pytest.raises(UnknownName, match="Registered: .*logme"):
        resolve_estimators(plugin_system, ["logmee"])


def test_packaged_mobilenetv2_keeps_its_imagenet_classifier(plugin_system):
    """The kept head with our backbone gives torchvision's own MobileNetV2 logits."""
    import torchvision

    from plugins.weights import packaged_path

    spec = plugin_system.backbones.get("mobilenetv2_100")
    bb = spec.build()
    plugin_system.weights.get("packaged").load(spec, bb, None, {})
    assert bb.source_classifier is not None and bb.source_classifier.weight.shape == (1000, 1280)
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(torch.load(packaged_path("mobilenetv2_100"), weights_only=True))
    x = torch.rand(2, 3, 64, 64)
    mean = torch.tensor(bb.mean).view(1, 3, 1, 1)
    std = torch.tensor(bb.std).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = bb.source_classifier.logits(bb.eval()((x - mean) / std))
        theirs = tv.eval()((x - mean) / std)
    assert torch.allclose(ours, theirs, atol=1e-4)


def _tiny_system(register_plugin, with_head: bool):
    """A plugin with the test kit's tiny backbone and tiny data; its weights keep a
    (random) source classifier when ``with_head``."""
    from harness.train.model import SourceClassifier
    from harness.api.specs import WeightSourceSpec

    def load(spec, backbone, arg, context):
        # a "pretrained" source must change the weights (the run's contract checks hold it
        # to that): a fixed, seeded perturbation stands for loaded weights
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in backbone.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        if with_head:
            backbone.source_classifier = SourceClassifier(
                torch.randn(5, backbone.num_features, generator=g), torch.zeros(5), "five")
        return {"short": "tiny-src", "pretrained": True}

    class P:
        @hookimpl
        def register_backbones(self):
            return [tiny_backbone_spec()]

        @hookimpl
        def register_datasets(self):
            return [DatasetSpec("tiny_quadrants", load=lambda **kw: make_tiny_splits(
                kw["image_size"], 80, kw["seed"]), offline=True, synthetic=True)]

        @hookimpl
        def register_weight_sources(self):
            return [WeightSourceSpec("tinysrc", load=load)]

    return register_plugin(P())


def _tiny_matrix(**kw):
    bb = tiny_backbone_spec().name
    return MatrixConfig(backbones=[bb], datasets=["tiny_quadrants"], strategies=["frozen"],
                        weights={"*": "tinysrc"}, image_size=16, **kw)


def test_features_are_computed_once_and_shared_with_source_probabilities(register_plugin):
    system = _tiny_system(register_plugin, with_head=True)
    (cfg,) = rank_units(_tiny_matrix())
    inputs, facts = frozen_inputs(system, cfg)
    assert inputs.features.shape == (80, facts["feature_dim"]) and inputs.num_classes == 4
    assert inputs.source_probs.shape == (80, 5)
    assert np.allclose(inputs.source_probs.sum(1), 1.0)
    assert facts["source_classes"] == "five" and facts["feature_seconds"] > 0
    rows = rank_matrix(system, _tiny_matrix(seeds=2), resolve_estimators(system, []))
    assert [r["seed"] for r in rows] == [0, 1]
    for r in rows:
        assert set(r["estimates"]) == set(system.estimators.names())
        assert all(e["score"] is not None and e["seconds"] >= 0 for e in r["estimates"].values())
    table = rank_table(rows, ["logme", "leep"])
    assert "tiny-src" in table and "logme: rank, score (time)" in table and " s)" in table
    assert "logme: higher score is better" in table and "consensus on " in table


def test_leep_says_it_cannot_without_a_source_classifier(register_plugin):
    system = _tiny_system(register_plugin, with_head=False)
    rows = rank_matrix(system, _tiny_matrix(), resolve_estimators(system, ["leep", "logme"]))
    est = rows[0]["estimates"]
    assert est["leep"]["score"] is None
    assert "'tiny-src' keep no source classifier" in est["leep"]["unavailable"]
    assert est["logme"]["score"] is not None
    table = rank_table(rows, ["leep", "logme"])
    assert "n/a [1]" in table and "[1] LEEP needs the classifier" in table


def test_top_backbones_orders_by_score():
    rows = [{"dataset": "d", "backbone": b, "weights": "w", "seed": s,
             "estimates": {"logme": {"score": v}}}
            for b, s, v in [("a", 0, 1.0), ("b", 0, 3.0), ("c", 0, 2.0), ("b", 1, -9.0)]]
    assert top_backbones(rows, "logme", 2) == {"d": ["c", "a"]}  # b's mean is -3
    assert top_backbones(rows, "logme", 1, higher_is_better=False) == {"d": ["b"]}


def test_cli_rank_prints_scores_and_times(register_plugin, tmp_path):
    from harness.cli import cli

    _tiny_system(register_plugin, with_head=True)
    out = tmp_path / "rank.json"
    bb = tiny_backbone_spec().name
    res = CliRunner().invoke(cli, ["rank", "-b", bb, "-d", "tiny_quadrants", "-w", "tinysrc",
                                   "--image-size", "16", "-e", "logme", "-e", "knn,k=3",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "logme: rank, score (time)" in res.output
    assert "knn,k=3: rank, score (time)" in res.output
    assert "sorted by logme's rank" in res.output  # --rank-by's default, not the first
    rows = json.loads(out.read_text())
    assert rows[0]["estimates"]["logme"]["converged"] is True
    bad = CliRunner().invoke(cli, ["rank", "-b", bb, "-d", "tiny_quadrants", "-e", "nope"])
    assert bad.exit_code == 2 and "unknown estimator 'nope'" in bad.output


def test_cli_run_rank_first_trains_only_the_top_k(register_plugin, tmp_path):
    from harness.cli import cli

    system = _tiny_system(register_plugin, with_head=True)
    bb = tiny_backbone_spec().name
    # a second tiny backbone whose features carry no information: all zeros
    from harness.testkit import TinyBackbone
    from harness.api.specs import BackboneSpec

    class Blind(TinyBackbone):
        def forward(self, x):
            return super().forward(x) * 0

    class P2:
        @hookimpl
        def register_backbones(self):
            return [BackboneSpec("blind", build=Blind, default_weights="tinysrc")]
    register_plugin(P2(), name="blind-plugin")
    matrix = tmp_path / "m.toml"
    matrix.write_text(f"""name = "rf"\nbackbones = ["{bb}", "blind"]\n"""
                      """datasets = ["tiny_quadrants"]\nstrategies = ["frozen"]\n"""
                      """runtimes = []\nimage_size = 16\n[weights]\n"*" = "tinysrc"\n"""
                      """[train]\nepochs = 1\n""")
    runs = tmp_path / "runs"
    res = CliRunner().invoke(cli, ["run", "--matrix", str(matrix), "--out", str(runs), "-q",
                                   "--rank-first", "1", "--rank-by", "knn"])
    assert res.exit_code == 0, res.output
    assert "Ranking by knn before training (top 1 per dataset trained" in res.output
    assert "not trained (below top K)" in res.output
    run = next(runs.iterdir())
    ranking = json.loads((run / "ranking.json").read_text())
    assert ranking["kept"] == {"tiny_quadrants": [bb]}
    cells = [json.loads(p.read_text()) for p in (run / "cells").glob("*.json")]
    assert [c["config"]["backbone"] for c in cells] == [bb]
    # bench report shows the ranking again, next to the measured accuracy
    rep = CliRunner().invoke(cli, ["report", str(run)])
    assert rep.exit_code == 0 and "Ranking by knn before training" in rep.output
    assert "not trained (below top K)" in rep.output
    assert system is not None


def test_rank_table_ranks_per_estimator_in_its_direction_and_agrees_in_a_consensus():
    rows = [{"dataset": "d", "backbone": b, "weights": "w", "seed": 0, "feature_seconds": 0.1,
             "estimates": {"up": {"score": u, "seconds": 0.01},
                           "down": {"score": dn, "seconds": 0.01}}}
            for b, u, dn in [("a", 1.0, 5.0), ("b", 3.0, 9.0), ("c", 2.0, 1.0)]]
    table = rank_table(rows, ["up", "down"], sort_by="down",
                       higher_is_better={"up": True, "down": False})
    body = [ln.split()[1] for ln in table.splitlines()[2:5]]
    assert body == ["c", "a", "b"]  # sorted by down's rank: lower score is better there
    line_c = next(ln for ln in table.splitlines() if ln.startswith("d ") and " c " in ln)
    assert "2: 2 (" in line_c and "1: 1 (" in line_c and "1.50" in line_c
    assert "up: higher score is better; down: lower score is better" in table
    # mean ranks: a (3 + 2) / 2 = 2.5, b (1 + 3) / 2 = 2, c (2 + 1) / 2 = 1.5
    assert "consensus on d (mean rank over 2 estimator(s), 1 = best): c (w) 1.50 > b (w) " \
           "2.00 > a (w) 2.50" in table
