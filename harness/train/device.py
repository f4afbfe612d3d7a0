"""Where and in which precision a cell trains: device choice, mixed precision, layouts.

``bench run --device auto|cpu|cuda|cuda:N`` (``[train] device``) and ``--amp
auto|off|bf16|fp16`` (``[train] amp``) are resolved once, in the driver, by
:func:`resolve_hardware`: ``auto`` becomes the device PyTorch sees (CUDA when it sees a GPU)
and the precision that device trains best in. The resolved device, its name and the
precision are part of every cell's configuration, hence of its key, so a cell trained on a
GPU never resumes one trained on the CPU, or the reverse.

In the training loop, :class:`Precision` wraps the forward pass in ``torch.autocast`` and,
for fp16, scales the loss with a ``GradScaler`` (Micikevicius et al. 2018, "Mixed Precision
Training": fp16 gradients underflow unless the loss is scaled; a step whose gradients
overflow is skipped and the scale lowered). bf16 has fp32's exponent range and needs no
scaler. :func:`to_device` copies batches to CUDA from pinned memory without blocking.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import torch

from ..api.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
AMPS = ("auto", "off", "bf16", "fp16")
#: what each ``amp`` value trains in (the name results and the table show)
PRECISION_NAMES = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def what_torch_sees() -> str:
    """One sentence: the CUDA devices PyTorch sees here, or why it sees none."""
    built = torch.version.cuda
    if not built:
        return "PyTorch sees no CUDA device: this PyTorch build has no CUDA support (CPU-only)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    vis = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    try:
        count = torch.cuda.device_count()
    except Exception as exc:  # a broken driver install
        return f"PyTorch (CUDA {built}) cannot count CUDA devices: {exc}{vis}"
    if not torch.cuda.is_available() or count == 0:
        return (f"PyTorch (built with CUDA {built}) sees no CUDA device: "
                f"torch.cuda.is_available() is False{vis} (no NVIDIA GPU or driver here)")
    names = ", ".join(f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(count))
    return f"PyTorch (CUDA {built}) sees {count} CUDA device(s): {names}{vis}"


def parse_device(spec: str) -> torch.device:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a device that exists here.

    Raises:
        ConfigError: an unknown spelling (lists the choices), or CUDA asked where PyTorch
            sees none, or an index beyond the devices it sees (says what it sees).
    """
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: {what_torch_sees()}; use --device cpu (or "
                              f"auto) on this machine")
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: no such device; {what_torch_sees()}")
        return dev
    raise ConfigError(f"--device {spec!r}: unknown device; choose one of {', '.join(DEVICES)}")


def runtime_device(spec: str) -> torch.device:
    """The device a cell trains on in this process: ``"cuda"`` means the current CUDA
    device (the one an executor gave this worker, :func:`harness.executor.execute_job`)."""
    dev = parse_device(spec)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def device_name(dev: torch.device) -> str:
    """The GPU's name (``NVIDIA H200``) or the CPU model."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev.index if dev.index is not None else 0)
    from ..measure.env import cpu_model
    return cpu_model()


def cpu_flags() -> set:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_bf16_support() -> dict:
    """Whether this CPU computes bf16 natively: AVX512-BF16 (``avx512_bf16``, dot products)
    and AMX (``amx_bf16``, tile matrix multiplies), as ``/proc/cpuinfo`` lists them."""
    flags = cpu_flags()
    return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "avx512f": "avx512f" in flags}


def default_amp(dev: torch.device) -> str:
    """On CUDA: bf16 where the GPU supports it, else fp16. On the CPU: off (fp32); bf16 is
    opt-in (``benchmarks/bench_train_loop.py`` measures when it pays)."""
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "off"


def parse_amp(amp: str, dev: torch.device) -> str:
    """``auto|off|bf16|fp16`` -> ``off``, ``bf16`` or ``fp16`` for ``dev``.

    Raises:
        ConfigError: an unknown value (lists the choices), or bf16 asked on a GPU without it.
    """
    text = str(amp).strip().lower()
    if text == "auto":
        return default_amp(dev)
    if text in ("fp32", "none"):
        text = "off"
    if text not in PRECISION_NAMES:
        raise ConfigError(f"--amp {amp!r}: choose one of {', '.join(AMPS)}")
    if text == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--amp bf16: {device_name(dev)} has no bf16 support; use --amp fp16")
    return text


@dataclass(frozen=True)
class Hardware:
    """A resolved ``(device, amp)`` pair: what a cell's key records."""

    device: str        # "cpu", "cuda" or "cuda:N"
    device_name: str   # the GPU or CPU model
    amp: str           # "off", "bf16" or "fp16"
    note: str = ""     # how auto decided (for the run header)

    @property
    def precision(self) -> str:
        return PRECISION_NAMES[self.amp]

    def header(self) -> str:
        return (f"training on {self.device} ({self.device_name}) in {self.precision}"
                + (f"; {self.note}" if self.note else ""))


def resolve_hardware(device: str = "auto", amp: str = "auto") -> Hardware:
    """Resolve the user's ``device`` and ``amp`` settings on this machine (the driver).

    ``auto`` keeps no index (``cuda``): each worker trains on the CUDA device its executor
    gave it, so a cell's key does not depend on which GPU ran it.
    """
    dev = parse_device(device)
    resolved_amp = parse_amp(amp, dev)
    note = ""
    if str(device).strip().lower() == "auto":
        note = ("auto: " + what_torch_sees()) if dev.type == "cpu" else "auto: CUDA is available"
    name = str(dev) if dev.index is not None else dev.type
    return Hardware(device=name, device_name=device_name(dev), amp=resolved_amp, note=note)


class Precision:
    """Autocast and loss scaling for one training run.

    Args:
        dev: the device trained on.
        amp: ``off``, ``bf16`` or ``fp16`` (see :func:`parse_amp`).
    """

    def __init__(self, dev: torch.device, amp: str):
        if amp not in PRECISION_NAMES:
            raise ValueError(f"amp must be one of {', '.join(PRECISION_NAMES)}, not {amp!r}")
        self.device, self.amp = dev, amp
        self.dtype: Optional[torch.dtype] = _DTYPES.get(amp)
        self.scaler = torch.amp.GradScaler(dev.type) if amp == "fp16" else None

    @property
    def name(self) -> str:
        return PRECISION_NAMES[self.amp]

    def autocast(self):
        """Context of a forward pass (and its loss) in the training precision."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def step(self, loss: torch.Tensor, opt: torch.optim.Optimizer,
             clip_norm: Optional[float] = None) -> bool:
        """Backward and optimizer step; with fp16 through the scaler. ``clip_norm`` clips
        the global norm of the (unscaled) gradients first. Returns False when the scaler
        skipped the step (inf/NaN gradients: the scale is lowered instead)."""
        def clip():
            if clip_norm:
                params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, clip_norm)
        if self.scaler is None:
            loss.backward()
            clip()
            opt.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        clip()
        self.scaler.step(opt)
        self.scaler.update()
        return self.scaler.get_scale() >= before


def to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """``t`` on ``dev``; to CUDA as a non-blocking copy from pinned (page-locked) memory."""
    if t.device == dev:
        return t
    if dev.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def place_module(module: torch.nn.Module, dev: torch.device,
                 channels_last: bool = False) -> torch.nn.Module:
    """Move ``module`` (parameters and buffers) to ``dev``, optionally channels-last."""
    module.to(dev)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def set_cudnn_benchmark(on: bool) -> None:
    """``torch.backends.cudnn.benchmark``: let cuDNN time its algorithms per input shape."""
    torch.backends.cudnn.benchmark = bool(on)


__all__ = ["DEVICES", "AMPS", "Hardware", "Precision", "resolve_hardware", "parse_device",
           "runtime_device", "parse_amp", "default_amp", "device_name", "what_torch_sees",
           "cpu_bf16_support", "to_device", "place_module", "set_cudnn_benchmark"]
