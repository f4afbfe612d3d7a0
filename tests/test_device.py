"""Device selection, mixed precision and device plumbing (CPU-testable parts; GPU-only
checks skip with the reason).

The plumbing tests run the training loop on a *recorded* device: :class:`FakeDevice` makes
``torch.device("cpu", 1)`` behave as a device of its own. A tensor is "on" it when it was
moved there (``Tensor.to``, ``Module.to``), created there (``device=``) or computed from
tensors that are; an operation that mixes such a tensor with a non-scalar tensor left on
the host is recorded, as CUDA would refuse it ("Expected all tensors to be on the same
device"). The computation itself runs on the CPU, in bf16 autocast.
"""
from __future__ import annotations

import traceback

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from harness.run.config import AxisItem, CellConfig, MatrixConfig
from harness.train.device import (Hardware, Precision, cpu_bf16_support, parse_amp, parse_device,
                            resolve_hardware, what_torch_sees)
from harness.api.errors import ConfigError
from harness.train.loop import TrainContext, TrainSettings, evaluate

FAKE = torch.device("cpu", 1)
_TAG = "_tb_on_fake_device"
# ops that may take a host index or produce host data on a real GPU too
_HOST_OK = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.copy_,
            torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.numpy, torch.Tensor.__repr__,
            torch.Tensor.__format__, torch.Tensor.__len__, torch.Tensor.dim,
            torch.Tensor.size, torch.Tensor.__bool__, torch.Tensor.__float__}
_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not _CUDA, reason=f"needs a CUDA GPU: {what_torch_sees()}")


def _on(t) -> bool:
    return isinstance(t, torch.Tensor) and t.__dict__.get(_TAG, False)


def _tag(t, value=True):
    if isinstance(t, torch.Tensor):
        t.__dict__[_TAG] = value
    return t


class FakeDevice(TorchFunctionMode):
    """Records which tensors are on :data:`FAKE` and every operation that mixes devices."""

    def __init__(self):
        super().__init__()
        self.violations: list[str] = []
        self.ops_on_device = 0
        self._moving = 0
        self._orig_module_to = nn.Module.to

    # nn.Module.to moves parameters by replacing ``param.data``: tag the Parameter objects
    def __enter__(self):
        fake = self

        def module_to(module, *args, **kwargs):
            fake._moving += 1  # Module._apply's own bookkeeping is not a computation
            try:
                out = fake._orig_module_to(module, *args, **kwargs)
            finally:
                fake._moving -= 1
            dev = _device_arg((module,) + args, kwargs)
            if dev is not None:
                for t in list(module.parameters()) + list(module.buffers()):
                    _tag(t, dev == FAKE)
                    if isinstance(t, nn.Parameter) and dev == FAKE and t.requires_grad \
                            and not t.__dict__.get("_tb_hooked"):
                        t.register_post_accumulate_grad_hook(_tag_grad)
                        t.__dict__["_tb_hooked"] = True
            return out

        nn.Module.to = module_to
        return super().__enter__()

    def __exit__(self, *exc):
        nn.Module.to = self._orig_module_to
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == torch.Tensor.device.__get__:
            return FAKE if _on(args[0]) else func(*args)
        out = func(*args, **kwargs)
        if self._moving:
            return out
        leaves = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        dev = _device_arg(args, kwargs)
        if func in (torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda) and (
                dev is not None or func is torch.Tensor.cpu):
            if out is args[0]:  # a no-op move on the host: a fresh alias carries the tag
                out = args[0].view_as(args[0])
            return _tag(out, dev == FAKE)
        if dev is not None and not leaves or (dev == FAKE):
            return _tag_all(out, dev == FAKE)  # a factory: torch.zeros(..., device=...)
        on = [t for t in leaves if _on(t)]
        if not on:
            return out
        self.ops_on_device += 1
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            if not _on(args[0]):  # a host tensor indexed with a device index: CUDA refuses
                self._record(func, leaves)
            return _tag_all(out, _on(args[0]))
        if func not in _HOST_OK:
            host = [t for t in leaves if not _on(t) and t.dim() > 0]
            if host:
                self._record(func, leaves)
        return _tag_all(out, True)

    def _record(self, func, leaves):
        where = "".join(traceback.format_list(
            [f for f in traceback.extract_stack()[:-3] if "site-packages" not in f.filename
             and "test_device.py" not in f.filename][-3:]))
        what = ", ".join(f"{'device' if _on(t) else 'HOST'} {tuple(t.shape)}" for t in leaves)
        self.violations.append(f"{getattr(func, '__name__', func)}({what}) at\n{where}")


def _tag_grad(p) -> None:
    _tag(p.grad)


def _tag_all(out, value):
    for t in pytree.tree_leaves(out):
        _tag(t, value)
    return out


def _device_arg(args, kwargs):
    for a in list(args[1:]) + [kwargs.get("device")]:
        if isinstance(a, torch.device):
            return a
        if isinstance(a, str) and a.split(":")[0] in ("cpu", "cuda"):
            return torch.device(a)
    return None


def _fake_ctx(task, splits, monkeypatch, **kw):
    import harness.train.loop as train_mod
    monkeypatch.setattr(train_mod, "runtime_device", lambda spec: FAKE)
    settings = TrainSettings(**{"epochs": 2, "batch_size": 32, "lr": 1e-2, "patience": 5,
                                "amp": "bf16", **kw})
    return TrainContext(task, splits.info, settings)


# -- plumbing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["finetune", "frozen", "offtheshelf"])
def test_every_tensor_follows_the_device(strategy, monkeypatch, tiny_splits):
    """Model, head, batches (augmented), feature cache, loss and metrics all live on the
    training device through a whole fit and test evaluation, in bf16 autocast."""
    from harness.api.manager import PluginSystem
    from harness.train.model import TransferModel
    from harness.testkit import TinyBackbone
    from plugins.tasks import Classification

    task = Classification(hidden=(16,), dropout=0.1)
    torch.manual_seed(0)
    bb = TinyBackbone()
    model = TransferModel(bb, task.build_head(bb, tiny_splits.info))
    cls = PluginSystem(entry_points=False).strategies.get(strategy).cls
    with FakeDevice() as fake:
        ctx = _fake_ctx(task, tiny_splits, monkeypatch, augment=True)
        assert ctx.device == FAKE and ctx.precision.name == "bf16"
        ctx.place(model)
        history = cls().fit(model, tiny_splits, ctx)
        loss, metrics = evaluate(model.eval(), tiny_splits.test, ctx)
    assert fake.violations == [], "\n".join(fake.violations[:5])
    assert fake.ops_on_device > 100, "the loop did not run on the recorded device"
    assert all(_on(p) for p in model.parameters()), "a parameter stayed on the host"
    assert history.epochs and 0.0 <= metrics["accuracy"] <= 1.0 and loss == loss


def test_a_whole_cell_with_source_pretraining_follows_the_device(monkeypatch, tmp_path,
                                                                 register_plugin, tiny_splits):
    """``run_cell``: ``source:`` pretraining, training and the test evaluation on the device;
    the model comes back to the host for export and latency; the record says how it trained."""
    from harness import DatasetSpec, hookimpl
    from harness.run.cell import run_cell
    from harness.testkit import tiny_backbone_spec

    class Plugin:
        @hookimpl
        def register_backbones(self):
            return [tiny_backbone_spec()]

        @hookimpl
        def register_datasets(self):
            return [DatasetSpec("quads", load=lambda **kw: tiny_splits, synthetic=True,
                                offline=True)]

    monkeypatch.setenv("TRANSFER_BENCH_CACHE", str(tmp_path))
    plugins = register_plugin(Plugin())
    cfg = CellConfig(backbone=AxisItem("testkit_tiny"), task=AxisItem("classification"),
                     dataset=AxisItem("quads"), strategy=AxisItem("finetune"),
                     weights="source:quads,epochs=1,on_target=allow", seed=0, image_size=16,
                     # contiguous: the fake cannot follow buffers that a channels-last
                     # conversion replaces (a real device keeps them where they are)
                     train=vars(TrainSettings(epochs=1, batch_size=32, amp="bf16",
                                              layout="contiguous")),
                     runtimes=(), profiles=(), latency={})
    import harness.train.loop as train_mod
    monkeypatch.setattr(train_mod, "runtime_device", lambda spec: FAKE)
    with FakeDevice() as fake:
        rec = run_cell(plugins, cfg, "k")
    assert rec["status"] == "ok", rec.get("traceback")
    assert fake.violations == [], "\n".join(fake.violations[:5])
    assert rec["weights"]["source_epochs_run"] == 1
    assert rec["hardware"]["device"] == str(FAKE) and rec["hardware"]["precision"] == "bf16"


def test_the_fake_catches_a_batch_left_on_the_host(monkeypatch, tiny_splits):
    """Negative control: batches that skip the copy to the device are caught."""
    import harness.train.device as device_mod
    from harness.train.model import TransferModel
    from harness.testkit import TinyBackbone
    from plugins.strategies import FineTune
    from plugins.tasks import Classification

    monkeypatch.setattr(device_mod, "to_device", lambda t, dev: t)  # the planted bug
    task = Classification(hidden=(16,))
    bb = TinyBackbone()
    model = TransferModel(bb, task.build_head(bb, tiny_splits.info))
    with FakeDevice() as fake:
        ctx = _fake_ctx(task, tiny_splits, monkeypatch, epochs=1)
        ctx.place(model)
        FineTune().fit(model, tiny_splits, ctx)
    assert fake.violations and "HOST" in fake.violations[0]


def test_a_metric_built_on_the_host_is_caught(monkeypatch):
    """Negative control: ``torch.zeros(n, n)`` without ``device=`` inside a metric."""
    out = torch.randn(8, 3)
    y = torch.randint(0, 3, (8,))
    with FakeDevice() as fake:
        out, y = out.to(FAKE), y.to(FAKE)
        cm = torch.zeros(3, 3, dtype=torch.long)
        cm.index_put_((y, out.argmax(1)), torch.ones_like(y), accumulate=True)
        good = torch.zeros(3, 3, dtype=torch.long, device=out.device)
        good.index_put_((y, out.argmax(1)), torch.ones_like(y), accumulate=True)
    assert len(fake.violations) == 1 and "index_put_" in fake.violations[0]


# -- choosing the device and the precision -----------------------------------------------------
@pytest.mark.skipif(_CUDA, reason="checks the message for a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error_saying_what_torch_sees():
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=r"--device cuda.*sees no CUDA device|no CUDA"):
            parse_device(spec)
    hw = resolve_hardware("auto", "auto")
    assert (hw.device, hw.amp, hw.precision) == ("cpu", "off", "fp32")
    assert "auto" in hw.header() and "is_available() is False" in hw.header() \
        or "CPU-only" in hw.header()


@pytest.mark.skipif(_CUDA, reason="checks the exit status on a machine without CUDA")
def test_cli_device_cuda_exits_2(tmp_path):
    from click.testing import CliRunner
    from harness.cli import cli
    res = CliRunner().invoke(cli, ["run", "--device", "cuda", "--out", str(tmp_path), "-q"])
    assert res.exit_code == 2, res.output
    assert "--device cuda" in res.output and "CUDA" in res.output
    assert not list(tmp_path.iterdir()), "nothing may run or be written"


def test_unknown_device_and_amp_list_the_choices():
    with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:N"):
        parse_device("tpu")
    with pytest.raises(ConfigError, match="auto, off, bf16, fp16"):
        parse_amp("int4", torch.device("cpu"))
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainSettings(amp="fp8")


def test_cpu_precision_defaults_and_opt_in():
    cpu = torch.device("cpu")
    assert parse_amp("auto", cpu) == "off"
    assert parse_amp("bf16", cpu) == "bf16" and parse_amp("fp32", cpu) == "off"
    flags = cpu_bf16_support()
    assert set(flags) == {"avx512_bf16", "amx_bf16", "avx512f"}


def _cell(**train) -> CellConfig:
    return MatrixConfig(backbones=["b"], datasets=["d"], strategies=["s"],
                        train=TrainSettings(**train)).cells()[0]


def test_cell_key_includes_device_amp_compile_and_device_name():
    from harness.run.runner import with_hardware
    v = {"torch": "x"}
    cpu = Hardware("cpu", "Some CPU", "off")
    base = with_hardware(_cell(), cpu)
    assert base.train["device"] == "cpu" and base.train["amp"] == "off"
    keys = {base.key(v),
            with_hardware(_cell(), Hardware("cuda", "NVIDIA H200", "bf16")).key(v),
            with_hardware(_cell(), Hardware("cuda", "NVIDIA A100", "bf16")).key(v),
            with_hardware(_cell(), Hardware("cpu", "Some CPU", "bf16")).key(v),
            with_hardware(_cell(compile=True), cpu).key(v),
            with_hardware(_cell(channels_last=True), cpu).key(v),
            with_hardware(_cell(eval_batch_size=16), cpu).key(v)}
    assert len(keys) == 7, "each of device, GPU model, amp, compile, layout changes the key"
    assert with_hardware(_cell(), cpu).key(v) == base.key(v)


def test_needs_gpu_follows_the_resolved_device():
    from harness.run.executor import cell_needs_gpu
    from harness.run.runner import with_hardware
    assert cell_needs_gpu(with_hardware(_cell(), Hardware("cuda", "G", "bf16")), [])
    assert not cell_needs_gpu(with_hardware(_cell(), Hardware("cpu", "C", "off")), [])


def test_gpu_slots_give_each_running_worker_its_own_device():
    from harness.run.executor import CellJob, GpuSlots
    from harness.run.runner import with_hardware
    cuda = CellJob(with_hardware(_cell(), Hardware("cuda", "G", "bf16")), "k", "/r")
    pinned = CellJob(with_hardware(_cell(), Hardware("cuda:1", "G", "bf16")), "k", "/r")
    cpu = CellJob(with_hardware(_cell(), Hardware("cpu", "C", "off")), "k", "/r")
    slots = GpuSlots(3)
    got = [slots.take(cuda) for _ in range(3)]
    assert sorted(got) == [0, 1, 2]
    slots.give_back(got[1])
    assert slots.take(cuda) == got[1], "a freed GPU goes to the next worker"
    assert not slots.needs(cpu) and slots.needs(pinned)
    assert slots.take(pinned) is None, "GPU 1 is busy: cuda:1 waits for it"
    assert not GpuSlots(0).needs(cuda)


def test_compile_setting_compiles_the_forward(monkeypatch, tiny_splits):
    """``compile=True`` trains and evaluates through ``torch.compile``'s module (recorded
    here by a stand-in that counts calls, so the test does not wait for Inductor)."""
    from harness.train.model import TransferModel
    from harness.testkit import TinyBackbone
    from plugins.strategies import FineTune
    from plugins.tasks import Classification

    calls = {"compile": 0, "forward": 0}

    class Compiled(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            calls["forward"] += 1
            return self.m(x)

    def fake_compile(m):
        calls["compile"] += 1
        return Compiled(m)

    monkeypatch.setattr(torch, "compile", fake_compile)
    task = Classification(hidden=(8,))
    bb = TinyBackbone()
    model = TransferModel(bb, task.build_head(bb, tiny_splits.info))
    ctx = TrainContext(task, tiny_splits.info, TrainSettings(epochs=1, batch_size=64,
                                                             device="cpu", compile=True))
    FineTune().fit(model, tiny_splits, ctx)
    evaluate(model, tiny_splits.test, ctx)
    assert calls["compile"] == 1, "compiled once per module"
    # one epoch of training and of validation, the validation before any training step
    # (every strategy's epoch-0 start), and the test split
    n_batches = -(-len(tiny_splits.train) // 64) + 2 * -(-len(tiny_splits.val) // 64) \
        + -(-len(tiny_splits.test) // 64)
    assert calls["forward"] == n_batches


def test_eval_batch_size_follows_training_or_its_own_setting(tiny_splits):
    from plugins.tasks import Classification
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3 * 16 * 16, 4)

        def forward(self, x):
            seen.append(len(x))
            return self.lin(x.flatten(1))

    task = Classification()
    for settings, want in ((TrainSettings(batch_size=16, device="cpu"), 16),
                           (TrainSettings(batch_size=16, eval_batch_size=40, device="cpu"), 40)):
        seen.clear()
        evaluate(Probe(), tiny_splits.test, TrainContext(task, tiny_splits.info, settings))
        assert max(seen) == want and sum(seen) == len(tiny_splits.test)


# -- fp16 loss scaling (GradScaler works on the CPU too) ----------------------------------------
def test_fp16_scaler_skips_an_overflowing_step_and_lowers_the_scale():
    p = nn.Parameter(torch.ones(4))
    opt = torch.optim.SGD([p], lr=0.1)
    prec = Precision(torch.device("cpu"), "fp16")
    scale0 = prec.scaler.get_scale()
    assert prec.step((p * 2).sum(), opt), "a finite step is taken"
    assert torch.allclose(p.detach(), torch.full((4,), 1 - 0.1 * 2)), \
        "the gradient is unscaled before the step"
    before = p.detach().clone()
    opt.zero_grad()
    assert not prec.step((p * float("inf")).sum(), opt), "an inf gradient skips the step"
    assert torch.equal(p.detach(), before)
    assert prec.scaler.get_scale() == scale0 * 0.5


def test_fp16_autocast_trains_on_the_cpu(tiny_splits):
    from harness.train.model import TransferModel
    from harness.testkit import TinyBackbone
    from plugins.strategies import FineTune
    from plugins.tasks import Classification

    task = Classification(hidden=(16,))
    torch.manual_seed(0)
    bb = TinyBackbone()
    model = TransferModel(bb, task.build_head(bb, tiny_splits.info))
    ctx = TrainContext(task, tiny_splits.info, TrainSettings(epochs=2, batch_size=32, lr=1e-2,
                                                             device="cpu", amp="fp16"))
    assert ctx.precision.scaler is not None
    history = FineTune().fit(model, tiny_splits, ctx)
    assert all(e.train_loss == e.train_loss for e in history.epochs), "losses are finite"
    assert next(model.parameters()).dtype == torch.float32, "master weights stay fp32"


# -- GPU only ------------------------------------------------------------------------------------
@needs_gpu
def test_cuda_cell_trains_on_the_gpu(tiny_splits):
    from harness.train.model import TransferModel
    from harness.testkit import TinyBackbone
    from plugins.strategies import Frozen
    from plugins.tasks import Classification

    task = Classification(hidden=(16,))
    bb = TinyBackbone()
    model = TransferModel(bb, task.build_head(bb, tiny_splits.info))
    ctx = TrainContext(task, tiny_splits.info, TrainSettings(epochs=2, device="cuda"))
    ctx.place(model)
    Frozen().fit(model, tiny_splits, ctx)
    _, metrics = evaluate(model, tiny_splits.test, ctx)
    assert next(model.parameters()).is_cuda and 0 <= metrics["accuracy"] <= 1


@pytest.mark.skipif(_CUDA, reason="checks the refusal on a machine without a GPU")
def test_gpu_check_refuses_without_a_gpu_saying_why(tmp_path):
    """scripts/gpu_check.py exits 2, names what PyTorch and the runtimes see, writes nothing."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    res = subprocess.run([sys.executable, str(root / "scripts" / "gpu_check.py"), "--out",
                          str(tmp_path / "out")], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "training on CUDA" in res.stdout and "sees no CUDA device" in res.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_check_training_variants_cover_fp32_amp_layout_and_cudnn():
    from script_module import load_script
    mod = load_script("gpu_check")
    cpu = mod.train_variants("cpu")
    assert [v["amp"] for v in cpu] == ["off", "bf16"] and cpu[1]["channels_last"]
    rows = [{"model": "m", "variant": "fp32", "images_per_s": 10.0, "error": ""}]
    tables = {"k": [{"model": "m", "runtime": "tensorrt", "precision": "fp16",
                     "batch_size": 1, "p50_ms": 1.5}]}
    assert mod.side_by_side(rows, tables) == ("m: training fp32 10 img/s; inference p50 "
                                              "tensorrt fp16 bs1 1.50 ms")
