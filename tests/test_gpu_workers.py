"""One GPU per worker, the device resolved where the cell runs, and the numerics recorded in
every cell: checked on the CPU with the device layer's surface (GPU counts, a fake Ray)."""
from __future__ import annotations

import types

import pytest
import torch
from click.testing import CliRunner

from harness import ExecutorSpec, hookimpl
from harness.api.errors import ConfigError
from harness.cli import cli
from harness.run.config import AxisItem, CellConfig
from harness.run.executor import CellJob, GpuSlots, InProcessExecutor
from harness.run.runner import with_hardware
from harness.train.device import Hardware, declared_hardware


def _job(device: str, needs_gpu: bool = False, key: str = "k") -> CellJob:
    cell = CellConfig(backbone=AxisItem("b"), task=AxisItem("t"), dataset=AxisItem("d"),
                      strategy=AxisItem("s"), weights=None, seed=0, image_size=32,
                      train={"device": "cpu"}, runtimes=(), profiles=(), latency={})
    cfg = with_hardware(cell, Hardware(device, "G", "off"))
    return CellJob(cfg, key, "/nowhere", needs_gpu=needs_gpu)


def test_gpu_cells_never_outnumber_the_gpus_and_cuda_n_waits_for_gpu_n():
    slots = GpuSlots(2, visible="")
    cuda, pinned, cpu = _job("cuda"), _job("cuda:1"), _job("cpu")
    gpu_profile = _job("cpu", needs_gpu=True)
    assert slots.needs(cuda) and slots.needs(pinned) and slots.needs(gpu_profile)
    assert not slots.needs(cpu)
    assert slots.take(pinned) == 1
    assert slots.take(cuda) == 0
    assert slots.take(gpu_profile) is None, "a third GPU cell waits: 2 GPUs, 2 GPU cells"
    slots.give_back(0)
    assert slots.take(pinned) is None, "cuda:1 waits for GPU 1, not any free GPU"
    assert slots.take(gpu_profile) == 0
    assert not GpuSlots(0).needs(cuda), "no GPU here: nothing to hand out"


def test_each_worker_is_shown_its_physical_gpu():
    assert [GpuSlots(2, visible="").env_value(i) for i in (0, 1)] == ["0", "1"]
    # the driver itself sees physical GPUs 5 and 7 as its cuda:0 and cuda:1
    assert [GpuSlots(2, visible="5,7").env_value(i) for i in (0, 1)] == ["5", "7"]


@pytest.mark.slow
def test_process_workers_start_with_only_their_gpu_visible(monkeypatch, tmp_path):
    """Real spawned workers (CUDA is never initialised: the run folder is missing, so
    execute_job returns at once) report the CUDA_VISIBLE_DEVICES they started with."""
    import plugins.executors_processes as ep
    monkeypatch.setattr(ep, "gpu_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    jobs = [_job("cuda", key=f"k{i}") for i in range(3)] + [_job("cpu", key="c")]
    for j in jobs:
        j.run_dir = str(tmp_path / "not-a-run")
    done = []
    ep.ProcessExecutor(jobs=4, threads=1).run(iter(jobs), None, done.append)
    seen = {r["key"]: r["worker"] for r in done}
    assert set(seen) == {"k0", "k1", "k2", "c"}
    assert {seen[k]["cuda_visible_devices"] for k in ("k0", "k1", "k2")} <= {"5", "7"}
    assert all(seen[k]["gpu"] in (0, 1) for k in ("k0", "k1", "k2"))
    assert "cuda_visible_devices" not in seen["c"]
    import os
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7", "the driver's own value is restored"


class _Ref:
    def __init__(self, job, args):
        self.job, self.args = job, args


class _FakeRay:
    """The parts of ``ray`` the executor calls; records each task's options."""

    def __init__(self, gpus: float):
        self.gpus, self.options = gpus, []
        self.exceptions = types.SimpleNamespace(OutOfMemoryError=MemoryError,
                                                RayError=RuntimeError)

    def is_initialized(self):
        return True

    def cluster_resources(self):
        return {"CPU": 8.0, "GPU": self.gpus} if self.gpus else {"CPU": 8.0}

    def remote(self, **decorated):
        ray = self

        def wrap(fn):
            class Task:
                def options(self, **opts):
                    assert "max_calls" not in opts, "Ray drops max_calls given to .options()"
                    ray.options.append({**opts, "decorated": decorated})
                    return types.SimpleNamespace(remote=lambda job, *a: _Ref(job, a))
            return Task()
        return wrap

    def wait(self, refs, num_returns=1):
        return refs[:1], refs[1:]

    def get(self, ref):
        return {"key": ref.job.key, "args": ref.args}

    def cancel(self, ref, force=False):
        pass


@pytest.mark.parametrize("gpus", [0, 2])
def test_ray_gpu_tasks_get_a_fresh_process_and_auto_uses_the_clusters_gpus(gpus):
    pytest.importorskip("ray")
    from plugins.executors_ray import RayExecutor
    ex = RayExecutor()
    ex.ray = _FakeRay(gpus)
    jobs = [_job("cuda", needs_gpu=True, key="g"), _job("auto", key="a"), _job("cpu", key="c")]
    done = []
    ex.run(iter(jobs), None, done.append)
    opts = {o["name"]: o for o in ex.ray.options}
    fresh = {"max_retries": 0, "num_gpus": 1, "max_calls": 1}  # one call per GPU process
    assert opts["cell-g"]["num_gpus"] == 1 and opts["cell-g"]["decorated"] == fresh
    assert opts["cell-a"]["num_gpus"] == (1 if gpus else 0)
    assert (opts["cell-a"]["decorated"] == fresh) == bool(gpus)
    assert opts["cell-c"]["num_gpus"] == 0
    assert opts["cell-c"]["decorated"] == {"max_retries": 0}
    one_gpu = {r["key"]: r["args"][-1] for r in done}
    assert one_gpu == {"g": True, "a": bool(gpus), "c": False}


def test_a_driver_without_a_gpu_leaves_the_device_to_cluster_workers():
    hw = declared_hardware("cuda", "auto")
    assert (hw.device, hw.amp, hw.device_name) == ("cuda", "auto", "")
    assert "each worker" in hw.header()
    with pytest.raises(ConfigError, match="unknown device"):
        declared_hardware("gpu0")
    with pytest.raises(ConfigError, match="choose one of"):
        declared_hardware("cuda", "fp8")


class _RemoteInProcess(InProcessExecutor):
    """Stands for a cluster executor (remote) while running the cells here."""

    remote = True


class _RemotePlugin:
    @hookimpl
    def register_executors(self):
        return [ExecutorSpec("remote-here", factory=_RemoteInProcess)]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a driver without a GPU")
def test_device_cuda_is_not_refused_by_a_remote_executors_driver(register_plugin, tmp_path):
    """The driver (no GPU here) accepts --device cuda for a remote executor; the cell is
    resolved where it runs, here a worker without a GPU either, and says so in its record."""
    import json
    register_plugin(_RemotePlugin(), name="remote-executor")
    res = CliRunner().invoke(cli, ["run", "-b", "resnet18", "-s", "scratch", "-d", "digits",
                                   "-r", "pytorch", "--epochs", "1", "--image-size", "32",
                                   "--device", "cuda", "--executor", "remote-here", "-q",
                                   "--out", str(tmp_path / "r")])
    assert "resolved by each worker" in res.output, res.output
    cells = list((tmp_path / "r").glob("*/cells/*.json"))
    assert cells, res.output
    rec = json.loads(cells[0].read_text())
    assert rec["status"] == "failed" and "sees no CUDA device" in rec["error"]


def test_every_cell_records_tf32_and_determinism(tiny_splits):
    from harness.run.cell import hardware_record
    from harness.train.loop import TrainContext, TrainSettings
    from plugins.tasks import Classification

    task = Classification(hidden=(8,))
    cfg = types.SimpleNamespace(device_name="")
    try:
        ctx = TrainContext(task, tiny_splits.info, TrainSettings(device="cpu", tf32=False,
                                                                  deterministic=True))
        rec = hardware_record(ctx, cfg)
        assert rec["tf32"] is False and rec["deterministic"] is True
        b = rec["backends"]
        assert (b["tf32_matmul"], b["tf32_cudnn"]) == (False, False)
        assert b["cudnn_deterministic"] and b["deterministic_algorithms"]
        assert not b["cudnn_benchmark"] and b["cublas_workspace_config"]
        ctx = TrainContext(task, tiny_splits.info, TrainSettings(device="cpu"))
        b = hardware_record(ctx, cfg)["backends"]
        assert (b["tf32_matmul"], b["tf32_cudnn"]) == (True, True)
        assert not b["deterministic_algorithms"] and not b["cudnn_deterministic"]
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    with pytest.raises(ValueError, match="exclude each other"):
        TrainSettings(deterministic=True, cudnn_benchmark=True)


def test_cuda_out_of_memory_is_recorded_as_oom(monkeypatch, plugin_system):
    import harness.run.cell as cell_mod
    from harness.run.config import MatrixConfig

    def boom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cell_mod, "_run", boom)
    cfg = MatrixConfig(backbones=["resnet18"], strategies=["scratch"],
                       datasets=["digits"]).cells()[0]
    rec = cell_mod.run_cell(plugin_system, cfg, "k")
    assert rec["status"] == "oom" and "out of memory" in rec["error"]


def test_bf16_auto_ignores_emulated_bf16(monkeypatch):
    from harness.train import device as dev_mod
    calls = []

    def is_bf16_supported(including_emulation=True):
        calls.append(including_emulation)
        return including_emulation  # a T4/V100: bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert dev_mod.default_amp(torch.device("cuda")) == "fp16"
    assert calls == [False]


def test_fp16_steps_do_not_read_the_scale_on_the_host(monkeypatch):
    from harness.train.device import Precision
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    prec = Precision(torch.device("cpu"), "fp16")
    monkeypatch.setattr(prec.scaler, "get_scale",
                        lambda: pytest.fail("get_scale() syncs the host on every step"))
    taken = prec.step((p * 2).sum(), opt)
    opt.zero_grad()
    skipped = prec.step((p * float("inf")).sum(), opt)
    assert bool(taken) and not bool(skipped)  # read only here, when asked


def test_batches_are_gathered_with_one_host_copy(monkeypatch):
    """To CUDA, rows go straight into the (pinned) buffer that is sent: index_select with
    out=, no t[idx] followed by pin_memory()."""
    from harness.train import device as dev_mod
    t = torch.arange(20, dtype=torch.uint8).reshape(10, 2)
    idx = torch.tensor([3, 1, 7])
    sent = []
    monkeypatch.setattr(torch.Tensor, "pin_memory",
                        lambda self: pytest.fail("a second host copy (pin_memory)"))
    real_empty = torch.empty

    def empty(*shape, **kw):
        assert kw.pop("pin_memory") is True
        buf = real_empty(*shape, **kw)
        sent.append(buf)
        return buf

    monkeypatch.setattr(dev_mod.torch, "empty", empty)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: self)
    out = dev_mod.gather_to(t, idx, torch.device("cuda"))
    assert out is sent[0] and torch.equal(out, t[idx])


def report_visible_devices(art, profile, settings):
    """A runtime's measure that reports the GPUs its worker process was shown."""
    import os
    return [{"precision": "fp32", "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}]


@pytest.mark.slow
def test_the_latency_worker_sees_only_the_cells_gpu(monkeypatch, tmp_path):
    """A cell that trained on cuda:1 of a process shown GPUs 4,6 hands its latency worker
    CUDA_VISIBLE_DEVICES=6 (the cell passes it through Artifacts.extra)."""
    from harness.api.specs import ProfileSpec
    from harness.measure.isolate import measure_in_worker
    from harness.measure.latency import MeasureSettings
    from harness.run.cell import Artifacts
    from harness.train.device import visible_id

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert visible_id(torch.device("cuda", 1)) == "6" and visible_id(torch.device("cpu")) is None
    art = Artifacts(model=None, image_size=8, workdir=tmp_path,
                    extra={"cuda_visible_devices": "6"})
    rows = measure_in_worker(report_visible_devices, art, ProfileSpec("p", batch_size=1),
                             MeasureSettings(), label="visible")
    assert rows[0]["visible"] == "6" and rows[0]["isolation"] == "process"
    spent = rows[0]["worker"]  # where the worker's time went, for the run's time split
    assert spent["job"] == "visible" and spent["wall_s"] > 0
    assert spent["start_s"] >= 0 and spent["measure_s"] >= 0 and spent["end_s"] >= 0
    assert spent["start_s"] + spent["measure_s"] + spent["end_s"] == pytest.approx(
        spent["wall_s"], abs=0.01)


def test_deterministic_training_repeats_itself(tiny_splits):
    """With deterministic=True the loop's every operation has a deterministic
    implementation (none raises), and two fits from one seed give identical weights."""
    from harness.testkit import TinyBackbone
    from harness.train.loop import TrainContext, TrainSettings
    from harness.train.model import TransferModel
    from plugins.strategies import FineTune
    from plugins.tasks import Classification

    def fit():
        task = Classification(hidden=(8,))
        torch.manual_seed(0)
        bb = TinyBackbone()
        model = TransferModel(bb, task.build_head(bb, tiny_splits.info))
        ctx = TrainContext(task, tiny_splits.info, TrainSettings(
            epochs=2, batch_size=16, device="cpu", deterministic=True, augment=True))
        FineTune().fit(model, tiny_splits, ctx)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    try:
        assert torch.equal(fit(), fit())
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False


def test_operations_without_a_deterministic_implementation_are_named(monkeypatch):
    """Deterministic mode warns (warn_only) for such an operation; the watch names it and
    lets every other warning through."""
    import warnings
    from harness.train.device import configure_backends, watch_nondeterminism
    try:
        assert configure_backends(False, True, True)["deterministic_warn_only"]
        found = []
        with pytest.warns(UserWarning, match="unrelated"):
            with watch_nondeterminism(found):
                warnings.warn("adaptive_avg_pool2d_backward_cuda does not have a "
                              "deterministic implementation, but you set "
                              "'torch.use_deterministic_algorithms(True, warn_only=True)'")
                warnings.warn("an unrelated warning")
        assert found == ["adaptive_avg_pool2d_backward_cuda"]
    finally:
        configure_backends(False, True, False)
