"""GPU code paths checked on the CPU: trtexec-style timing (with stand-in CUDA events), ONNX
Runtime's node placement read from a real profile, the ONNX Runtime build diagnosis, and
output parity of GPU rows against PyTorch."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from harness.api.errors import ParityError
from harness.measure.gpu import measure_gpu
from harness.measure.latency import MeasureSettings
from plugins.runtimes import onnxruntime as ort_rt
from plugins.runtimes._common import gpu_parity


class _Clock:
    """A stand-in GPU: every operation advances a virtual clock by a fixed amount."""

    def __init__(self):
        self.now = 0.0

    def event(self):
        clock = self

        class Event:
            def record(self, stream):
                self.t = clock.now

            def synchronize(self):
                pass

            def elapsed_time(self, other):
                return (other.t - self.t) * 1000.0  # ms, like torch.cuda.Event

        return Event()


def test_gpu_rows_report_end_to_end_latency_and_gpu_compute_time_named():
    gpu = _Clock()
    calls = []

    def advance(seconds, what):
        def op():
            calls.append(what)
            gpu.now += seconds
        return op

    settings = MeasureSettings(warmup_count=2, warmup_s=0, min_count=5, min_s=0)
    res = measure_gpu(advance(0.001, "h2d"), advance(0.004, "compute"), advance(0.0005, "d2h"),
                      stream="s", batch_size=2, settings=settings, event=gpu.event,
                      on_stream=lambda s: __import__("contextlib").nullcontext())
    assert calls[:3] == ["h2d", "compute", "d2h"]
    assert res["stats"]["p50_ms"] == pytest.approx(5.5)  # H2D + compute + D2H
    assert res["gpu_compute"]["p50_ms"] == pytest.approx(4.0)
    assert res["h2d"]["p50_ms"] == pytest.approx(1.0)
    assert res["d2h"]["p50_ms"] == pytest.approx(0.5)
    assert res["stats"]["count"] == 5 and len(res["gpu_compute"]["raw_ms"]) == 5
    assert "GPU Compute Time" in res["timing"] and "Latency" in res["timing"]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    from harness.measure.export import export_onnx
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.LazyLinear(3))
    model(torch.rand(1, 3, 8, 8))
    return export_onnx(model.eval(), 8, tmp_path_factory.mktemp("ort") / "m.onnx")


def test_node_placement_is_read_from_a_real_profile_and_cpu_fallback_refused(onnx_file,
                                                                             tmp_path):
    sess = ort_rt.ort_session(onnx_file, 1, profile_prefix=tmp_path / "prof")
    sess.run(None, {sess.get_inputs()[0].name: np.random.rand(2, 3, 8, 8).astype(np.float32)})
    placement = ort_rt.node_placement(sess.end_profiling())
    assert set(placement["nodes_by_provider"]) == {"CPUExecutionProvider"}
    assert {"Conv", "Gemm"} <= {n["op"] for n in placement["cpu_nodes"]}
    # the CPU provider's session stands for a GPU session whose every node fell back
    with pytest.raises(ort_rt.CpuFallbackError, match="compute node.*CUDAExecutionProvider") \
            as err:
        ort_rt.refuse_cpu_fallback(placement, "CUDAExecutionProvider")
    assert err.value.result["cpu_nodes"]  # the row keeps what ran where


def test_shape_only_cpu_nodes_are_allowed_and_recorded():
    placement = {"nodes_by_provider": {"CUDAExecutionProvider": 40, "CPUExecutionProvider": 2},
                 "cpu_nodes": [{"node": "Shape_1", "op": "Shape", "outputs": ["int64"]},
                               {"node": "Concat_2", "op": "Concat", "outputs": ["int64"]}]}
    assert ort_rt.refuse_cpu_fallback(placement, "CUDAExecutionProvider") is placement


@pytest.mark.parametrize("builds,expect,never", [
    ({"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.32.0"}, "2 ONNX Runtime builds", None),
    ({"onnxruntime": "1.32.0"}, "no GPU providers", None),
    ({"onnxruntime-gpu": "1.32.0"}, "failed to load", "pip install"),
])
def test_missing_gpu_provider_names_the_cause_and_never_the_command_that_caused_it(
        builds, expect, never):
    why = ort_rt.missing_provider_reason("CUDAExecutionProvider", ["CPUExecutionProvider"],
                                         builds)
    assert expect in why
    assert "transfer-bench[gpu]" not in why  # installing [gpu] beside [cpu] is the cause
    if "pip uninstall" in why:  # the fix removes every build before installing one
        assert why.index("pip uninstall") < why.index("pip install onnxruntime-gpu")
    if never:
        assert never not in why


def _art(model):
    return types.SimpleNamespace(model=model)


def test_gpu_parity_enforces_fp32_and_fp16_and_records_int8():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    x = np.random.default_rng(0).random((4, 3, 2, 2), dtype=np.float32)
    ref = model(torch.from_numpy(x)).detach().numpy()
    ok = gpu_parity(_art(model), x, ref + 1e-4, "fp32", tf32=False)
    assert ok["ok"] and ok["enforced"] and ok["top1_agreement"] == 1.0
    scale = max(1.0, np.abs(ref).max())
    with pytest.raises(ParityError):  # TF32-sized error is too much for strict fp32
        gpu_parity(_art(model), x, ref + 5e-3 * scale, "fp32", tf32=False)
    assert gpu_parity(_art(model), x, ref + 5e-3 * scale, "fp32", tf32=True)["ok"]
    with pytest.raises(ParityError):  # garbage fp16 output fails its row
        gpu_parity(_art(model), x, ref + 0.5 * scale, "fp16", tf32=None)
    loose = gpu_parity(_art(model), x, ref + 0.5 * scale, "int8", tf32=None)
    assert not loose["ok"] and loose["enforced"] is False


def test_gpu_and_cpu_rows_are_recommended_in_separate_pools_unless_asked():
    from harness.report.recommend import format_recommendations, recommend

    def rec(backbone, acc, rows):
        return {"key": backbone, "status": "ok",
                "config": {"backbone": backbone, "strategy": "finetune", "dataset": "d",
                           "task": "classification", "seed": 0, "weights": None},
                "backbone_facts": {"device_class": "server"}, "metric_name": "accuracy",
                "higher_is_better": True, "test_metrics": {"accuracy": acc}, "latency": rows}

    cpu = {"runtime": "onnxruntime", "profile": "server", "precision": "fp32",
           "device": "cpu", "stats": {"p50_ms": 9.0, "p90_ms": 9.5}}
    gpu = {"runtime": "tensorrt", "profile": "server", "precision": "fp32",
           "device": "NVIDIA H200", "stats": {"p50_ms": 0.8, "p90_ms": 0.9},
           "gpu_compute": {"p50_ms": 0.5}}
    records = [rec("big", 0.9, [cpu, gpu]), rec("small", 0.7, [{**cpu, "stats": {
        "p50_ms": 2.0, "p90_ms": 2.2}}])]
    recs = recommend(records, budget_ms=3.0)
    by_hw = {r.hardware: r for r in recs}
    assert set(by_hw) == {"cpu", "gpu"}
    assert by_hw["cpu"].pick.backbone == "small", "the GPU's 0.8 ms never counts for the CPU"
    assert by_hw["gpu"].pick.runtime == "tensorrt"
    assert all(c.hardware == "cpu" for c in by_hw["cpu"].front)
    assert "server (GPU)" in format_recommendations(recs)
    (mixed,) = recommend(records, budget_ms=3.0, mix_devices=True)
    assert mixed.hardware == "cpu+gpu" and mixed.pick.runtime == "tensorrt"
    # the table reporter pools them only when asked (bench report --mix-devices)
    from plugins.reporters import write_table
    store = types.SimpleNamespace(records=lambda: records, path="/nonexistent-run")
    assert "server (GPU)" in write_table(store, budget_ms=3.0)
    assert "server (CPU+GPU)" in write_table(store, budget_ms=3.0, mix_devices=True)


def _gpu_check():
    from script_module import load_script
    return load_script("gpu_check")


def test_gpu_check_fails_when_any_gpu_row_fails_and_says_what_it_verified(capsys):
    mod = _gpu_check()
    good = {"precision": "fp32", "device": "NVIDIA H200", "tf32": True,
            "stats": {"p50_ms": 1.2}, "gpu_compute": {"p50_ms": 0.9}, "h2d": {"p50_ms": 0.2},
            "d2h": {"p50_ms": 0.1}, "parity": {"ok": True, "enforced": True,
                                               "max_abs_diff": 1e-3, "tolerance_key": "tf32",
                                               "top1_agreement": 1.0}}
    checks = mod.Checks()
    for check, ok, detail in mod.verify_row(good, "NVIDIA H200"):
        checks.add(check, ok, detail)
    assert checks.exit_code() == 0
    out = capsys.readouterr().out
    for said in ("outputs agree with PyTorch fp32", "GPU compute time <= end-to-end latency",
                 "TF32 stated", "measured on this GPU"):
        assert f"PASS    {said}" in out
    bad = [{"precision": "fp16", "error": "RuntimeError: TensorRT failed to build"},
           {**good, "gpu_compute": {"p50_ms": 2.0}},  # compute longer than end to end
           {**good, "device": "NVIDIA A10"}]  # another GPU than the one checked
    for row in bad:
        checks = mod.Checks()
        for check, ok, detail in mod.verify_row(row, "NVIDIA H200"):
            checks.add(check, ok, detail)
        assert checks.exit_code() == 1, row
    empty = mod.Checks()
    empty.not_run("resnet18 latency", "past the budget")
    assert empty.exit_code() == 1 and "1 not run" in empty.summary()


def test_a_tf32_fp32_row_is_held_to_tf32s_tolerance_by_the_cells_output_check():
    """The cell's general output check (harness.run.contracts) reads a GPU row's tf32: 0.5%
    relative error is TF32-sized (allowed) but beyond plain fp32 (refused)."""
    from harness.api.manager import PluginSystem
    from harness.run.contracts import check_runtime_row
    plugins = PluginSystem(entry_points=False)
    ref = np.random.default_rng(0).normal(size=(16, 5)).astype(np.float32)
    got = ref * 1.005
    for tf32, ok in ((True, True), (False, False), (None, False)):
        row = {"precision": "fp32", "stats": {"p50_ms": 1.0}, "tf32": tf32}
        check_runtime_row(plugins, "tensorrt", row, got, lambda: ref)
        assert row["outputs_check"]["ok"] is ok, tf32
        assert ("disagrees" in row) is (not ok)


def test_a_runtime_row_that_ran_out_of_gpu_memory_says_oom():
    from plugins.runtimes._common import failed
    assert failed("fp16", torch.OutOfMemoryError("CUDA out of memory"))["status"] == "oom"
    assert failed("fp32", RuntimeError("CUDA failure 2: out of memory"))["status"] == "oom"
    assert "status" not in failed("fp32", RuntimeError("TensorRT rejected input shape"))
