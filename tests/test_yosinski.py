"""The Yosinski et al. (2014) experiment done the paper's way: class halves of one dataset,
a weights axis for the A and B base networks, the preset, and the Fig. 2 classification."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from harness.run.config import MatrixConfig
from plugins.datasets.offline import load_fashion_mnist, parse_classes
from script_module import load_script


def _idx(path: Path, arr: torch.Tensor) -> None:
    head = struct.pack(">BBBB", 0, 0, 8, arr.dim()) + struct.pack(">" + "I" * arr.dim(),
                                                                    *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.to(torch.uint8).numpy().tobytes())


@pytest.fixture
def fashion_root(tmp_path):
    """A Fashion-MNIST folder in the real IDX format: 20 images of each of 10 classes,
    each image's pixels equal to its class (so we can see which classes survived)."""
    for split, n in (("train", 20), ("t10k", 10)):
        labels = torch.arange(10).repeat_interleave(n)
        images = labels.view(-1, 1, 1).expand(-1, 28, 28).clone()
        _idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images)
        _idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_classes_keep_one_half_relabelled_in_order(fashion_root):
    d = load_fashion_mnist("classification", 8, 0, None, root=str(fashion_root),
                           classes="5-9", n_train=50, n_val=25, n_test=50)
    assert d.info.num_classes == 5
    assert d.info.class_names == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    for split in (d.train, d.val, d.test):
        assert set(split.targets.tolist()) == set(range(5))
        # every image's grey level is its original class: label k is class 5 + k
        orig = split.images[:, 0, 0, 0].float().div(255).mul(255).round().long()
        assert torch.equal(orig, split.targets + 5)
    assert d.sizes() == {"train": 50, "val": 25, "test": 50}


def test_classes_spec_errors_name_the_input():
    assert parse_classes("0-2+7", 10) == [0, 1, 2, 7]
    assert parse_classes(3, 10) == [3]
    with pytest.raises(ValueError, match="classes='0-12'"):
        parse_classes("0-12", 10)
    with pytest.raises(ValueError, match="classes='a-b'.*classes=0-4"):
        parse_classes("a-b", 10)


def test_weights_list_is_an_axis_and_scratch_runs_once(plugin_system):
    from harness.run.runner import validate
    m = MatrixConfig(backbones=["resnet18"], datasets=["digits"],
                     strategies=["scratch", "layer_transfer,n=1"], seeds=2,
                     weights={"*": ["source:shapes", "source:fashion_mnist"]})
    assert len(m.cells()) == 2 * 2 * 2
    cells, _ = validate(plugin_system, m)
    by = {}
    for c in cells:
        by.setdefault(c.strategy.name, []).append((c.seed, c.weights))
    assert sorted(s for s, _ in by["scratch"]) == [0, 1]  # once per seed, not per source
    assert sorted(by["layer_transfer"]) == [(0, "source:fashion_mnist"), (0, "source:shapes"),
                                           (1, "source:fashion_mnist"), (1, "source:shapes")]


def test_yosinski_preset_is_the_papers_design(plugin_system):
    from harness.run.runner import build_matrix, validate
    m = build_matrix(plugin_system.presets.get("yosinski").resolve(), {})
    assert m.seeds == 3 and m.train.budget == "epochs"
    assert [d.kwargs["classes"] for d in m.datasets] == ["5-9"]  # the target task is B
    sources = m.weights_of("timm:test_resnet")
    assert [s.split(",")[1] for s in sources] == ["classes=0-4", "classes=5-9"]  # A, B
    groups = len(plugin_system.backbones.resolve("timm:test_resnet")[0]
                 .build(arg="test_resnet").layer_groups())
    transfer = {(s.kwargs["n"], s.kwargs["fine_tune"]) for s in m.strategies
                if s.name == "layer_transfer"}
    assert transfer == {(n, ft) for n in range(1, groups + 1) for ft in (False, True)}
    cells, _ = validate(plugin_system, m)
    assert len(cells) == 3 * (1 + 2 * 2 * groups)


def _plot_module():
    return load_script("plot_yosinski")


def _cell(strategy, source_classes, acc, seed=0):
    return {"status": "ok", "metric_name": "accuracy", "test_metrics": {"accuracy": acc},
            "config": {"strategy": strategy, "seed": seed,
                       "dataset": "fashion_mnist,classes=5-9,n_train=500"},
            "weights": ({"source_dataset": "fashion_mnist",
                         "source_dataset_params": {"classes": source_classes}}
                        if source_classes else {"source": "random"})}


def test_fig2_series_come_from_the_records(tmp_path):
    plot = _plot_module()
    recs = [_cell("scratch", None, 0.80),
            _cell("layer_transfer,fine_tune=False,n=2", "5-9", 0.81),
            _cell("layer_transfer,fine_tune=True,n=2", "5-9", 0.82),
            _cell("layer_transfer,fine_tune=False,n=2", "0-4", 0.70),
            _cell("layer_transfer,fine_tune=True,n=2", "0-4", 0.83),
            _cell("layer_transfer,fine_tune=True,n=2", "0-4", 0.85, seed=1),
            _cell("finetune", "0-4", 0.9)]
    points = plot.collect(recs)
    assert points == {("baseB", 0): [0.80], ("BnB", 2): [0.81], ("BnB+", 2): [0.82],
                      ("AnB", 2): [0.70], ("AnB+", 2): [0.83, 0.85]}
    md = plot.table(points)
    assert "| 2 | - | 0.810 (1) | 0.820 (1) | 0.700 (1) | 0.840 ± " in md
    fig = plot.figure(points, "t")
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_plot_script_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert _plot_module().main([str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_chain_thaw_patience_and_budget_options_are_accepted(plugin_system):
    """The docs' `-s chain_thaw,patience=1` and `--patience` / `--budget` are real."""
    from click.testing import CliRunner

    from harness.cli import cli
    from harness.run.runner import build_matrix, validate
    m = build_matrix(plugin_system.presets.get("default").resolve(),
                     {"strategies": ("chain_thaw,patience=1",), "train": {"budget": "steps",
                                                                           "patience": 3}})
    cells, _ = validate(plugin_system, m)
    assert {c.strategy.kwargs["patience"] for c in cells} == {1}
    assert m.train.budget == "steps" and m.train.patience == 3
    res = CliRunner().invoke(cli, ["run", "--budget", "weeks"])
    assert res.exit_code == 2 and "weeks" in res.output and "steps" in res.output
