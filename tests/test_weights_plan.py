"""Each backbone's weights in the run's plan, and no source pretraining on the target's own
images unless the weights string asks for it (issue 25)."""
from __future__ import annotations

import pytest

from harness.api.errors import ConfigError, WeightsUnavailable
from harness.run.options import matrix_from_options
from harness.run.runner import validate
from harness.run.weights_plan import plan_lines, weights_plan
from plugins.weights_source import shares_images, source_pretraining


def _matrix(plugins, **opts):
    return matrix_from_options(plugins, opts)


def test_default_preset_on_digits_refuses_before_anything_runs(plugin_system):
    m = _matrix(plugin_system, backbones=("resnet18",), datasets=("digits",))
    with pytest.raises(ConfigError) as err:
        validate(plugin_system, m)
    text = str(err.value)
    assert "resnet18 on digits" in text and "from preset 'default'" in text
    assert "source:digits,epochs=5,image_size=32" in text and "not transfer" in text
    # the ways out, each a thing the user can type
    assert "on_target=allow" in text and "--weights resnet18=random" in text
    # a concrete other source that installs offline, with the same pretraining settings
    assert "e.g. source:fashion_mnist,epochs=5,image_size=32" in text


def test_default_preset_on_fashion_mnist_plans_resnet18s_digits_pretraining(plugin_system):
    m = _matrix(plugin_system)
    cells, _ = validate(plugin_system, m)  # the default run is not refused
    assert {c.dataset.name for c in cells} == {"fashion_mnist"}
    plan = {p.backbone: p for p in weights_plan(plugin_system, m)}
    r18 = plan["resnet18"]
    assert (r18.weights, r18.origin) == ("source:digits,epochs=5,image_size=32",
                                         "preset 'default'")
    assert r18.pretraining == {"dataset": "digits", "dataset_params": {}, "epochs": 5,
                               "image_size": 32, "on_target": False}
    mb = plan["mobilenetv2_100"]
    assert mb.origin == "backbone default" and mb.pretraining is None and mb.pretrained
    lines = plan_lines(plugin_system, m, any_pretrained=True)
    assert any("resnet18: source:digits" in ln and "pretrains here on digits for up to 5 "
               "epochs at 32 px" in ln for ln in lines)


def test_user_weights_are_marked_user_and_another_source_is_accepted(plugin_system):
    m = _matrix(plugin_system, backbones=("resnet18",), datasets=("digits",),
                weights=("resnet18=source:fashion_mnist,epochs=2,n_train=300",))
    validate(plugin_system, m)
    (p,) = weights_plan(plugin_system, m)
    assert p.origin == "user" and p.pretraining["dataset"] == "fashion_mnist"
    assert p.pretraining["dataset_params"] == {"n_train": 300}


def test_pretraining_on_the_target_runs_only_when_asked_for_explicitly(plugin_system):
    w = "resnet18=source:digits,epochs=1,on_target=allow"
    m = _matrix(plugin_system, backbones=("resnet18",), datasets=("digits",), weights=(w,))
    validate(plugin_system, m)
    (p,) = weights_plan(plugin_system, m)
    assert p.origin == "user" and p.pretraining["on_target"] is True
    assert "on the target's own images, as asked" in p.line()
    # a user's source on the same images without the key is refused like a preset's
    m = _matrix(plugin_system, backbones=("resnet18",), datasets=("digits",),
                weights=("resnet18=source:digits,epochs=1",))
    with pytest.raises(ConfigError, match="from user"):
        validate(plugin_system, m)


def test_bench_run_refuses_with_exit_2_and_nothing_written(plugin_system, tmp_path):
    from click.testing import CliRunner
    from harness.cli import cli
    res = CliRunner().invoke(cli, ["run", "-b", "resnet18", "-d", "digits", "--out",
                                   str(tmp_path / "runs")])
    assert res.exit_code == 2, res.output  # a configuration error, like a bad option
    assert "refused: source pretraining on the target dataset's own images" in res.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


def test_scratch_only_matrix_on_digits_needs_no_refusal(plugin_system):
    m = _matrix(plugin_system, backbones=("resnet18",), datasets=("digits",),
                strategies=("scratch",))
    validate(plugin_system, m)
    assert plan_lines(plugin_system, m, any_pretrained=False)[0].startswith(
        "weights: random init for every cell")


@pytest.mark.parametrize("arg, dataset, params, shares", [
    ("digits", "digits", {}, True),
    ("digits,epochs=3", "digits", {"val_frac": 0.3}, True),      # a split variant
    ("fashion_mnist,n_train=500", "fashion_mnist", {}, True),    # a subset of one pool
    ("fashion_mnist,classes=0-4", "fashion_mnist", {"classes": "5-9"}, False),  # Yosinski A/B
    ("fashion_mnist,classes=0-4", "fashion_mnist", {"classes": "3-6"}, True),   # class 3, 4
    ("fashion_mnist,classes=0-4", "fashion_mnist", {}, True),    # every class: a superset
    ("digits", "fashion_mnist", {}, False),
])
def test_which_sources_share_images_with_the_target(arg, dataset, params, shares):
    assert (shares_images(arg, dataset, params) is not None) is shares


def test_on_target_takes_only_allow_and_does_not_change_the_weights():
    from plugins.weights_source import parse_source
    assert parse_source("digits,epochs=2,on_target=allow") == parse_source("digits,epochs=2")
    assert source_pretraining("digits,on_target=allow")["on_target"] is True
    with pytest.raises(WeightsUnavailable, match="on_target=allow"):
        parse_source("digits,on_target=yes")


def test_loading_refuses_target_images_too(plugin_system, tmp_path):
    """A cell or a ranking that reaches the weight source directly is refused there, before
    any pretraining (no backbone is even touched)."""
    load = plugin_system.weights.get("source").load
    spec = plugin_system.backbones.get("resnet18")
    with pytest.raises(WeightsUnavailable, match="not transfer"):
        load(spec, None, "digits,epochs=1", {"plugins": plugin_system, "cache_dir": tmp_path,
                                             "dataset": "digits", "dataset_params": {}})
    assert not (tmp_path / "source-weights").exists() or not any(
        (tmp_path / "source-weights").glob("*.safetensors"))


def test_yosinski_base_b_asks_for_its_selffer_control_and_base_a_need_not(plugin_system):
    m = _matrix(plugin_system, preset="yosinski")
    validate(plugin_system, m)
    a, b = weights_plan(plugin_system, m)
    assert a.pretraining["dataset_params"]["classes"] == "0-4" and not a.pretraining["on_target"]
    assert b.pretraining["dataset_params"]["classes"] == "5-9" and b.pretraining["on_target"]


def test_the_plan_times_each_pretraining_the_cells_need(plugin_system, tmp_path, monkeypatch):
    """One pretraining per seed: the header counts them and says what it knows of their time
    (here nothing was pretrained under this cache, so it says so and where the time shows)."""
    monkeypatch.setenv("TRANSFER_BENCH_CACHE", str(tmp_path))
    m = _matrix(plugin_system, seeds=3)
    cells, _ = validate(plugin_system, m)
    r18 = {p.backbone: p for p in weights_plan(plugin_system, m, cells)}["resnet18"]
    assert r18.timing == {"runs": 3, "cached": 0, "seconds": None, "unknown": 3,
                          "basis": "never pretrained with these settings here",
                          "unknown_basis": "never pretrained with these settings here"}
    line = r18.line()
    assert "time: unknown: never pretrained" in line and "after its first epoch" in line
    mb = {p.backbone: p for p in weights_plan(plugin_system, m, cells)}["mobilenetv2_100"]
    assert mb.timing is None and "time:" not in mb.line()  # packaged weights train nothing


def test_the_plan_line_adds_up_estimated_and_cached_pretrainings():
    from harness.run.weights_plan import WeightsPlan
    pre = {"dataset": "digits", "dataset_params": {}, "epochs": 5, "image_size": 32,
           "on_target": False}
    p = WeightsPlan("resnet18", "source:digits", "preset 'default'", True, pre,
                    {"runs": 3, "cached": 1, "seconds": 90.0, "unknown": 0,
                     "basis": "5 epochs at the 9 s per epoch measured in 1 earlier pretraining(s) here"})
    assert ("time: about 1 min 30 s for 2 pretraining(s) (5 epochs at the 9 s per epoch"
            in p.line()) and "1 of 3 cached here" in p.line()
    done = WeightsPlan("resnet18", "source:digits", "user", True, pre,
                       {"runs": 1, "cached": 1, "seconds": 0.0, "unknown": 0,
                        "basis": "cached here (it took 28 s to make)"})
    assert done.line().endswith("time: none, cached here (it took 28 s to make)")


def test_the_plan_keeps_each_pretrainings_basis_apart(plugin_system):
    """Seed 0 cached, seed 1 estimated, seed 2 unknown: the line says each once, the
    estimate's basis with the estimate (not the cache's words)."""
    from types import SimpleNamespace
    from harness.run.weights_plan import _timing
    m = _matrix(plugin_system, seeds=3)
    cells, _ = validate(plugin_system, m)
    answers = {0: {"cached": True, "seconds": 0.0, "basis": "cached here (it took 24 s to make)"},
               1: {"cached": False, "seconds": 25.0, "basis": "5 epochs at the 5 s per epoch"},
               2: {"cached": False, "seconds": None, "basis": "never pretrained here"}}
    ws = SimpleNamespace(pretraining_time=lambda arg, ctx: answers[ctx["seed"] - cells[0].seed])
    r18 = [c for c in cells if c.backbone.label() == "resnet18"]
    t = _timing(plugin_system, ws, "digits", "resnet18", r18[0].weights
                or plugin_system.backbones.get("resnet18").default_weights, cells)
    assert (t["runs"], t["cached"], t["unknown"], t["seconds"]) == (3, 1, 1, 25.0)
    assert t["basis"] == "5 epochs at the 5 s per epoch"
    from harness.run.weights_plan import WeightsPlan
    line = WeightsPlan("resnet18", "source:digits", "preset 'default'", True,
                       {"dataset": "digits", "epochs": 5}, t).time_text()
    assert line == ("time: about 25 s for 1 pretraining(s) (5 epochs at the 5 s per epoch); "
                    "1 unknown: never pretrained here; its progress line gives the time left "
                    "after its first epoch; 1 of 3 cached here")
