"""Where and in which precision a cell trains: device choice, mixed precision, layouts.

``bench run --device auto|cpu|cuda|cuda:N`` (``[train] device``) and ``--amp
auto|off|bf16|fp16|tune`` (``[train] amp``) are resolved once, in the driver, by
:func:`resolve_hardware`: ``auto`` becomes the device PyTorch sees (CUDA when it sees a GPU)
and the precision that device trains best in. The resolved device, its name and the
precision are part of every cell's configuration, hence of its key, so a cell trained on a
GPU never resumes one trained on the CPU, or the reverse. ``tune`` stays ``tune``: each
cell's probe (:mod:`harness.train.autotune`) picks fp32 or a mixed precision the device
computes natively, and the cell records which.

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
AMPS = ("auto", "off", "bf16", "fp16", "tune")
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
    """The GPU's name (``NVIDIA H200``) or the CPU model. ``cuda`` without an index names
    the current device: the one this worker was given, not GPU 0 of the machine."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev.index if dev.index is not None
                                          else torch.cuda.current_device())
    from .cpu import cpu_model
    return cpu_model()


def visible_id(dev: torch.device) -> Optional[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value that shows a child process ``dev`` alone (the
    physical id behind this process's numbering), or None for a CPU device."""
    if dev.type != "cuda":
        return None
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",")] if visible else []
    return ids[idx] if idx < len(ids) else str(idx)


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
        return "bf16" if cuda_bf16_native() else "fp16"
    return "off"


def cuda_bf16_native() -> bool:
    """Whether the current GPU computes bf16 in hardware (compute capability 8.0+).
    ``torch.cuda.is_bf16_supported()`` alone also counts emulation, which T4 and V100 offer
    at a fraction of fp16's speed: ``auto`` must pick fp16 there."""
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def parse_amp(amp: str, dev: torch.device) -> str:
    """``auto|off|bf16|fp16|tune`` -> ``off``, ``bf16``, ``fp16`` or ``tune`` (mixed
    precision allowed: the cell's probe chooses, :mod:`harness.train.autotune`) for ``dev``.

    Raises:
        ConfigError: an unknown value (lists the choices), or bf16 asked on a GPU without it.
    """
    text = str(amp).strip().lower()
    if text == "auto":
        return default_amp(dev)
    if text in ("fp32", "none"):
        text = "off"
    if text == "tune":
        return text
    if text not in PRECISION_NAMES:
        raise ConfigError(f"--amp {amp!r}: choose one of {', '.join(AMPS)}")
    if text == "bf16" and dev.type == "cuda" and not cuda_bf16_native():
        raise ConfigError(f"--amp bf16: {device_name(dev)} has no native bf16 (PyTorch would "
                          f"emulate it, far slower than fp16); use --amp fp16")
    return text


@dataclass(frozen=True)
class Hardware:
    """A resolved ``(device, amp)`` pair: what a cell's key records."""

    device: str        # "cpu", "cuda" or "cuda:N"
    device_name: str   # the GPU or CPU model
    amp: str           # "off", "bf16", "fp16" or "tune" (each cell's probe chooses)
    note: str = ""     # how auto decided (for the run header)

    @property
    def precision(self) -> str:
        if self.amp == "tune":
            return "fp32 or mixed precision, probed per model"
        return PRECISION_NAMES.get(self.amp, f"amp {self.amp}")

    def header(self) -> str:
        name = f" ({self.device_name})" if self.device_name else ""
        return (f"training on {self.device}{name} in {self.precision}"
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


def declared_hardware(device: str = "auto", amp: str = "auto") -> Hardware:
    """The user's ``device`` and ``amp`` checked for spelling only, for executors whose
    cells run on other machines (Ray): the driver may have no GPU at all, so each worker
    resolves them where the cell runs and records what it found
    (:func:`harness.run.executor.execute_job`).

    Raises:
        ConfigError: an unknown spelling (lists the choices).
    """
    dev = str(device).strip().lower()
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"--device {device!r}: unknown device; choose one of "
                          f"{', '.join(DEVICES)}")
    text = str(amp).strip().lower()
    text = "off" if text in ("fp32", "none") else text
    if text not in AMPS:
        raise ConfigError(f"--amp {amp!r}: choose one of {', '.join(AMPS)}")
    return Hardware(device=dev, device_name="", amp=text,
                    note="resolved by each worker where its cell runs (the cell's "
                         "hardware record says what it found)")


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
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(opt)
        clip()
        self.scaler.step(opt)
        # the overflow flags stay on the device: reading them (or get_scale()) every step
        # would stall the GPU twice per step; StepTaken reads them only when asked
        found = [t for t in self.scaler._found_inf_per_device(opt).values()]
        self.scaler.update()
        return StepTaken(found)


class StepTaken:
    """Whether an fp16 optimizer step was taken (no inf/NaN gradient), read lazily: the flag
    stays a device tensor until ``bool()`` is asked, which then waits for the device once.
    The training loop never asks, so fp16 steps run without host-device syncs."""

    def __init__(self, found_inf: list):
        self._found = found_inf

    def __bool__(self) -> bool:
        return not any(bool(t.item()) for t in self._found)


def gather_to(t: torch.Tensor, idx: torch.Tensor, dev: Optional[torch.device],
              pin: bool = True) -> torch.Tensor:
    """``t[idx]`` on ``dev`` with one host copy: to CUDA from a host tensor, the rows are
    gathered straight into a page-locked buffer (``index_select(out=...)``) and sent without
    blocking (``t[idx].pin_memory()`` would copy the batch twice on the host). PyTorch's
    pinned-memory cache does not hand the buffer out again before its copy has finished."""
    if dev is None or dev.type != "cuda" or t.device.type != "cpu":
        out = t[idx.to(t.device)]
        return out if dev is None else to_device(out, dev)
    buf = torch.empty((len(idx), *t.shape[1:]), dtype=t.dtype, pin_memory=pin)
    torch.index_select(t, 0, idx.to(t.device), out=buf)
    return buf.to(dev, non_blocking=True)


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


def configure_backends(cudnn_benchmark: bool, tf32: bool, deterministic: bool) -> dict:
    """Apply a run's numerics settings to this process and return :func:`backend_state`.

    * ``tf32``: fp32 matmuls and convolutions on CUDA may use TF32 tensor cores (Ampere and
      newer; 10-bit mantissa): ``torch.backends.cuda.matmul.allow_tf32`` and
      ``torch.backends.cudnn.allow_tf32``. PyTorch's own defaults differ (off for matmuls,
      on for convolutions), so both are set either way and recorded.
    * ``deterministic``: ``torch.backends.cudnn.deterministic``, cuDNN benchmarking off,
      ``torch.use_deterministic_algorithms(True, warn_only=True)`` and
      ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS's requirement) unless already set. An
      operation with no deterministic implementation (the backward of
      ``AdaptiveAvgPool2d`` on CUDA, in most CNNs) then runs anyway and is named by
      :func:`watch_nondeterminism`, which the cell records: with any named, the run is not
      fully repeatable. Seeds alone do not make GPU training repeatable: atomics in
      cuDNN/cuBLAS kernels and benchmark-chosen algorithms vary from run to run. Results
      still differ across PyTorch/CUDA releases and GPUs.
    """
    det = bool(deterministic)
    if det:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(det, warn_only=det)
    torch.backends.cudnn.deterministic = det
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark) and not det
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    return backend_state()


def backend_state() -> dict:
    """The numerics settings in force in this process (recorded in every cell)."""
    return {"tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
            "deterministic_warn_only": bool(
                torch.is_deterministic_algorithms_warn_only_enabled()),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}


_NONDETERMINISTIC = "does not have a deterministic implementation"


@contextlib.contextmanager
def watch_nondeterminism(found: list):
    """Append to ``found`` each operation PyTorch reports, while the block runs, as having
    no deterministic implementation (deterministic mode warns for those,
    :func:`configure_backends`); every other warning is shown as it would have been."""
    import warnings
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield found
    finally:  # outside the recording block: shown warnings go where they would have gone
        for w in list(caught):
            text = str(w.message)
            if _NONDETERMINISTIC in text:
                op = text.split(_NONDETERMINISTIC)[0].strip()
                if op not in found:
                    found.append(op)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def release_cuda_memory() -> None:
    """Hand PyTorch's cached CUDA memory back to the driver (between cells, and before a
    latency worker starts on the same GPU); nothing where CUDA was never initialised."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        import gc
        gc.collect()
        torch.cuda.empty_cache()


def is_cuda_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is CUDA running out of memory (``torch.OutOfMemoryError``)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError",
                                                               None)
    return bool(oom and isinstance(exc, oom))


__all__ = ["DEVICES", "AMPS", "Hardware", "Precision", "resolve_hardware", "parse_device",
           "declared_hardware",
           "runtime_device", "parse_amp", "default_amp", "device_name", "what_torch_sees",
           "cpu_bf16_support", "to_device", "place_module", "set_cudnn_benchmark",
           "gather_to", "configure_backends", "backend_state", "release_cuda_memory",
           "is_cuda_oom", "cuda_bf16_native", "StepTaken", "visible_id",
           "watch_nondeterminism"]
