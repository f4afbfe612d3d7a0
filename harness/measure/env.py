"""The environment saved beside every result: versions, CPU, threads, GPU."""
from __future__ import annotations

import importlib.metadata as md
import os
import platform
import sys

from .. import __version__
from ..train.cpu import cpu_model  # noqa: F401 (part of the environment's facts)

CORE_PACKAGES = ("torch", "torchvision", "timm", "numpy", "scikit-learn", "pluggy")
"""What training runs on (transfer-bench's own requirements); each runtime adds the
distributions it declares (:attr:`harness.api.specs.RuntimeSpec.packages`)."""
#: the instruction-set extensions that decide which kernels a runtime can use
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")


def package_versions(plugins=None) -> dict:
    """Installed versions of the core packages, of every registered runtime's packages and
    (as ``"plugin NAME": "DIST VERSION"``) of every third-party plugin loaded.

    Args:
        plugins: the :class:`~harness.api.manager.PluginSystem` whose runtimes count;
            default: the process-wide one.
    """
    from ..api.manager import get_plugins

    plugins = plugins if plugins is not None else get_plugins()
    declared = {p for spec in plugins.runtimes for p in spec.packages}
    out = {"transfer-bench": __version__, "python": platform.python_version()}
    for name in CORE_PACKAGES + tuple(sorted(declared - set(CORE_PACKAGES))):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    # third-party plugins by distribution and version: a new version of a plugin measures
    # again (new cell keys) instead of reusing what the old one produced
    for name, info in sorted(getattr(plugins, "infos", {}).items()):
        if info.origin != "built-in" and not info.error and not info.disabled:
            out[f"plugin {name}"] = info.origin
    return out


def cpu_slug(model: str) -> str:
    """A CPU model as a file-name part: ``Intel(R) Xeon(R) Processor`` -> ``intel_xeon``,
    ``AMD EPYC 9R45 96-Core Processor`` -> ``amd_epyc_9r45_96_core`` (trademarks, the word
    "processor"/"CPU" and the clock speed dropped)."""
    import re
    text = re.sub(r"\((r|tm)\)|\b(processor|cpu)\b|@\s*[\d.]+\s*ghz", " ", str(model).lower())
    return "_".join(re.findall(r"[a-z0-9.]+", text)) or "cpu"


def cpu_flags() -> list:
    """Which of :data:`ISA_FLAGS` the CPU reports in ``/proc/cpuinfo`` (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def gpu_info() -> dict:
    try:
        import torch
        if torch.cuda.is_available():
            return {"cuda": True, "name": torch.cuda.get_device_name(0),
                    "count": torch.cuda.device_count(), "cuda_version": torch.version.cuda}
        return {"cuda": False, "reason": "torch.cuda.is_available() is False"}
    except Exception as exc:  # pragma: no cover
        return {"cuda": False, "reason": f"{type(exc).__name__}: {exc}"}


def environment(plugins=None) -> dict:
    import torch

    from .allocator import state as allocator_state
    from .latency import load_average, usable_cpus
    return {
        "versions": package_versions(plugins),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu_info(),
        "allocator": allocator_state(),
        "argv": sys.argv,
        # context for the latency figures (each row has its own in stats.noise);
        # bench run adds "at_end" when the run finishes
        "load_average": {"what": "os.getloadavg(): 1, 5, 15 minutes",
                         "usable_cpus": usable_cpus(), "at_start": load_average()},
    }


def machine_fingerprint(env: dict) -> dict:
    """The facts that make two latency numbers comparable."""
    return {k: env.get(k) for k in ("cpu", "cpu_count", "machine")} | {
        "gpu": (env.get("gpu") or {}).get("name")}
