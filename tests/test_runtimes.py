"""Runtimes: each says whether it runs here and why not; the CPU ones measure in their own
worker process with statistics, memory, file size; int8 carries its accuracy after
quantization; profiles (built-in and from a matrix file) set batch, threads, precisions.

This module is also a plugin (a tiny backbone and a synthetic dataset): the worker
processes import it by name, as they would a third-party plugin.
"""
from __future__ import annotations

import os
import sys

import pytest
from torch import nn

from harness import BackboneSpec, DatasetSpec, RuntimeSpec, hookimpl
from harness.run.cell import run_cell
from harness.run.config import MatrixConfig, matrix_kwargs
from harness.train.model import Backbone, LayerGroup
from harness.testkit import make_tiny_splits

pytestmark = pytest.mark.slow  # trains models, starts workers or exports ONNX

FAST = {"warmup_count": 2, "warmup_s": 0.0, "min_count": 5, "min_s": 0.0}


class LatNet(Backbone):
    num_features = feature_channels = 8

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward_spatial(self, x):
        return self.stem(x)

    def forward(self, x):
        return self.pool(self.stem(x)).flatten(1)

    def layer_groups(self):
        return [LayerGroup("stem", [f"stem.{n}" for n, _ in self.stem.named_parameters()])]


def load_quadrants(task, image_size, seed, cache_dir):
    """The test kit's learnable 4-class problem (a bright quadrant gives the class)."""
    return make_tiny_splits(image_size, n_train=96, seed=seed)


def broken_measure(art, profile, settings):
    raise RuntimeError("the runtime blew up on purpose")


@hookimpl
def register_backbones():
    return [BackboneSpec("latnet", build=LatNet, device_class="mobile", default_weights="random")]


@hookimpl
def register_datasets():
    return [DatasetSpec("latquad", load=load_quadrants, synthetic=True)]


@hookimpl
def register_runtimes():
    return [RuntimeSpec("broken-rt", available=lambda: (True, ""), measure=broken_measure)]


@pytest.fixture
def plugins(register_plugin):
    return register_plugin(sys.modules[__name__], name="test-runtimes")


def cell(runtimes, profiles=("mobile",), latency=None, data=None):
    kw = matrix_kwargs({"backbones": ["latnet"], "datasets": ["latquad"],
                        "strategies": ["scratch"], "runtimes": list(runtimes),
                        "profiles": list(profiles), "image_size": 16,
                        "train": {"epochs": 1, "batch_size": 32},
                        "latency": {**FAST, **(latency or {})}, **(data or {})})
    m = MatrixConfig(**kw)
    return m.cells()[0], m.custom_profiles


def rows_of(rec):
    assert rec["status"] == "ok", rec.get("traceback") or rec.get("error")
    return {(r["runtime"], r["precision"]): r for r in rec["latency"]}


# -- every registered runtime -----------------------------------------------------------------
def _runtime_names():
    from harness.api.manager import PluginSystem
    return PluginSystem(entry_points=False).runtimes.names()


@pytest.mark.parametrize("name", _runtime_names())
def test_runtime_says_whether_it_runs_here_and_why_not(plugin_system, name):
    spec = plugin_system.runtimes.get(name)
    ok, reason = spec.available()
    assert isinstance(ok, bool) and isinstance(reason, str)
    if not ok:
        assert len(reason) > 15  # a reason a user can act on
        pytest.skip(f"{name} unavailable here: {reason}")
    assert spec.description


def test_unavailable_runtimes_show_their_reason_instead_of_a_number(plugins):
    gpu = [n for n in plugins.runtimes.names() if not plugins.runtimes.get(n).available()[0]]
    if not gpu:
        pytest.skip("every runtime is available on this machine")
    cfg, custom = cell(gpu)
    rows = rows_of(run_cell(plugins, cfg, "k", custom_profiles=custom))
    for name in gpu:
        row = rows[(name, "-")]
        assert "stats" not in row
        assert row["unavailable"] == plugins.runtimes.get(name).available()[1]


# -- every CPU runtime of the registry on a tiny model -----------------------------------------
@pytest.mark.parametrize("name", _runtime_names())
def test_every_runtime_measures_a_tiny_model_with_parity_and_accuracy_after(plugins, name):
    """The same conformance for each runtime: fp32 statistics in its own worker, fp32
    parity with PyTorch (in the row, or the ONNX export's), a lower precision either
    measured and scored on the test images or refused with a reason."""
    spec = plugins.runtimes.get(name)
    ok, reason = spec.available()
    if not ok:
        pytest.skip(f"{name} unavailable here: {reason}")
    # batch 3 does not divide the 64 test images: runtimes compiled for one static shape pad
    cfg, custom = cell([name], profiles=["tiny"], data={"profile": {"tiny": {
        "batch_size": 3, "threads": 1, "precisions": ["fp32", "int8", "bf16"]}}})
    rec = run_cell(plugins, cfg, "k", custom_profiles=custom)
    rows = rows_of(rec)
    fp32 = rows[(name, "fp32")]
    assert "error" not in fp32, fp32.get("error")
    assert fp32["stats"]["count"] >= 5 and fp32["stats"]["p50_ms"] > 0
    assert (fp32["isolation"], fp32["batch_size"], fp32["threads"]) == ("process", 3, 1)
    assert fp32["memory"]["pid"] != os.getpid()
    if name != "pytorch":  # PyTorch is the reference the others are compared with
        parity = fp32.get("parity") or rec["onnx"]["parity"]
        assert parity["ok"] and parity["max_abs_diff"] <= 1e-3
    # the cell compares every measured precision's outputs on the test images with PyTorch's
    for row in rows.values():
        if "stats" in row:
            check = row["outputs_check"]
            print(name, row["precision"], check)
            assert check["ok"] and check["images"] == 64, check
            assert check["rel_rms"] <= check["tolerance"] and "disagrees" not in row
    for prec in ("int8", "bf16"):
        row = rows[(name, prec)]
        if "unavailable" in row:
            assert "stats" not in row and len(row["unavailable"]) > 15
            continue
        assert "error" not in row, row.get("error")
        assert row["stats"]["p50_ms"] > 0
        assert 0.0 <= row["accuracy_after"] <= 1.0 and row["evaluated_on"] == 64
        assert row["metrics_after"]


def test_new_cpu_runtimes_are_registered_and_measure_int8():
    """OpenVINO and ExecuTorch + XNNPACK are built in; where installed they measure int8
    (calibrated on the training images, like ONNX Runtime's static int8)."""
    from harness.api.manager import PluginSystem
    reg = PluginSystem(entry_points=False).runtimes
    for name, extra in (("openvino", "openvino"), ("executorch", "mobile")):
        spec = reg.get(name)
        assert "int8" in spec.description
        ok, reason = spec.available()
        assert ok or f"transfer-bench[{extra}]" in reason


def test_int8_files_that_fit_every_profile_are_made_once_per_cell(plugins):
    """ONNX Runtime's and OpenVINO's int8 files have a dynamic batch: the second profile's
    worker reuses the first one's and says so; both are scored on the test images."""
    names = [n for n in ("onnxruntime", "openvino") if plugins.runtimes.get(n).available()[0]]
    cfg, custom = cell(names, profiles=["one", "two"], data={"profile": {
        "one": {"batch_size": 1, "precisions": ["int8"]},
        "two": {"batch_size": 2, "precisions": ["int8"]}}})
    rec = run_cell(plugins, cfg, "k", custom_profiles=custom)
    assert rec["status"] == "ok", rec.get("traceback")
    for name in names:
        one, two = [r for r in rec["latency"] if r["runtime"] == name]
        assert (one["profile"], two["profile"]) == ("one", "two")
        assert "reused" not in one and two["reused"] is True
        assert one["method"] == two["method"] and one["quantize_s"] == two["quantize_s"]
        assert two["stats"]["p50_ms"] > 0 and 0.0 <= two["accuracy_after"] <= 1.0


def test_fixed_batch_outputs_pad_the_last_chunk_and_drop_its_padding():
    import numpy as np
    from plugins.runtimes._common import fixed_batch_outputs
    seen = []

    def run(chunk):
        seen.append(len(chunk))
        return chunk.reshape(len(chunk), -1).sum(axis=1, keepdims=True)

    images = np.arange(7 * 3 * 2 * 2, dtype=np.float32).reshape(7, 3, 2, 2)
    out = fixed_batch_outputs(run, images, 3)
    assert seen == [3, 3, 3] and out.shape == (7, 1)
    assert np.allclose(out[:, 0], images.reshape(7, -1).sum(axis=1))


def test_runtime_parity_against_pytorch_fails_an_fp32_row_and_keeps_the_comparison():
    import numpy as np
    import torch
    from harness.api.errors import ParityError
    from plugins.runtimes._common import failed, parity_vs_pytorch

    class Art:
        model = torch.nn.Flatten()

    x = np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32)
    good = parity_vs_pytorch(Art, x, x.reshape(2, -1), strict=True)
    assert good["ok"] and good["max_abs_diff"] == 0.0
    loose = parity_vs_pytorch(Art, x, x.reshape(2, -1) + 0.5, strict=False)
    assert not loose["ok"] and loose["max_abs_diff"] == pytest.approx(0.5)
    with pytest.raises(ParityError, match="disagrees with PyTorch") as err:
        parity_vs_pytorch(Art, x, x.reshape(2, -1) + 0.5, strict=True)
    row = failed("fp32", err.value)
    assert row["error"].startswith("ParityError") and row["parity"]["max_abs_diff"] > 0.4


# -- CPU runtimes in worker processes ---------------------------------------------------------
def test_cpu_runtimes_measure_in_their_own_processes_with_stats_memory_size(plugins):
    cfg, custom = cell(["pytorch", "onnxruntime"])
    rec = run_cell(plugins, cfg, "k", custom_profiles=custom)
    rows = rows_of(rec)
    pids = set()
    for rt in ("pytorch", "onnxruntime"):
        row = rows[(rt, "fp32")]
        st = row["stats"]
        for k in ("mean_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "std_ms", "cv",
                  "throughput_per_s"):
            assert st[k] >= 0, k
        assert st["count"] >= 5 and 0 < st["p50_ms"] <= st["p99_ms"]
        assert row["isolation"] == "process" and row["batch_size"] == 1 and row["threads"] == 2
        assert row["file_mb"] > 0 and row["memory"]["peak_rss_mb"] > 0
        assert row["memory"]["pid"] != os.getpid()
        pids.add(row["memory"]["pid"])
    assert len(pids) == 2                          # one worker per runtime
    assert rows[("onnxruntime", "fp32")]["spinning"] == "off"
    # the mobile profile allows int8: ONNX Runtime measures it and scores it on the test set
    int8 = rows[("onnxruntime", "int8")]
    assert int8["stats"]["p50_ms"] > 0 and "quantize_static" in int8["method"]
    assert 0.0 <= int8["accuracy_after"] <= 1.0 and int8["evaluated_on"] == 64  # the test kit split's test images
    assert int8["file_mb"] < rows[("onnxruntime", "fp32")]["file_mb"] * 2
    assert "int8" in rows[("pytorch", "int8")]["unavailable"]
    assert rec["onnx"]["parity"]["ok"] and rec["onnx"]["file_mb"] > 0


def test_user_profile_from_matrix_sets_batch_threads_precisions(plugins):
    cfg, custom = cell(["onnxruntime"], profiles=["edge"], data={"profile": {"edge": {
        "batch_size": 4, "threads": 1, "precisions": ["fp32", "int8-dynamic", "fp16"]}}})
    rows = rows_of(run_cell(plugins, cfg, "k", custom_profiles=custom))
    fp32 = rows[("onnxruntime", "fp32")]
    assert fp32["profile"] == "edge" and fp32["batch_size"] == 4 and fp32["threads"] == 1
    assert fp32["stats"]["throughput_per_s"] == pytest.approx(4000 / fp32["stats"]["p50_ms"])
    assert 0.0 <= rows[("onnxruntime", "int8-dynamic")]["accuracy_after"] <= 1.0
    assert "fp16 is not" in rows[("onnxruntime", "fp16")]["unavailable"]


def test_cpu_runtimes_refuse_a_gpu_profile_with_a_reason(plugins):
    from harness.measure.latency import MeasureSettings
    from harness.api.specs import ProfileSpec
    prof = ProfileSpec("g", batch_size=2, device="gpu", precisions=("fp32", "int8"))
    for name, hint in (("pytorch", "pytorch-cuda"), ("onnxruntime", "onnxruntime-cuda"),
                       ("openvino", "CPU plugin"), ("executorch", "runs on the CPU")):
        rows = plugins.runtimes.get(name).measure(None, prof, MeasureSettings())
        assert [r["precision"] for r in rows] == ["fp32", "int8"]
        assert all(hint in r["unavailable"] and "stats" not in r for r in rows)


def test_worker_error_comes_back_into_the_record(plugins):
    cfg, custom = cell(["broken-rt", "onnxruntime"], profiles=["one"],
                       data={"profile": {"one": {"precisions": ["fp32"]}}})
    rows = rows_of(run_cell(plugins, cfg, "k", custom_profiles=custom))
    err = rows[("broken-rt", "-")]["error"]
    assert "WorkerError" in err and "blew up on purpose" in err
    assert rows[("onnxruntime", "fp32")]["stats"]["p50_ms"] > 0   # the others go on


def test_isolation_can_be_turned_off_and_says_so(plugins):
    cfg, custom = cell(["pytorch"], latency={"isolate": False})
    row = rows_of(run_cell(plugins, cfg, "k", custom_profiles=custom))[("pytorch", "fp32")]
    assert row["isolation"].startswith("in-process") and row["memory"]["pid"] == os.getpid()


def test_builtin_profiles_mobile_and_server(plugin_system):
    mobile, server = plugin_system.profiles.get("mobile"), plugin_system.profiles.get("server")
    assert (mobile.batch_size, mobile.threads) == (1, 2) and "int8" in mobile.precisions
    assert server.batch_size >= 16 and server.threads == 0


def test_gpu_check_script_reports_gpu_runtimes_unavailable_with_reasons(tmp_path):
    import subprocess
    from harness.api.manager import PluginSystem
    reg = PluginSystem(entry_points=False).runtimes
    if reg.get("tensorrt").available()[0] or reg.get("onnxruntime-cuda").available()[0]:
        pytest.skip("a GPU runtime is available here; the script would measure")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, os.path.join(root, "scripts", "gpu_check.py"),
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "nothing was measured" in res.stderr
    assert f"UNAVAILABLE: {reg.get('tensorrt').available()[1]}" in res.stdout
    assert not list(tmp_path.iterdir())
