"""What makes two latency measurements interchangeable: the same architecture, machine and code.

A CNN's work per image does not depend on its weights: the frozen, fine-tuned and scratch
cells of one backbone run the same operators on tensors of the same shapes, so one latency
measurement serves them all (:mod:`harness.run.timing`). These helpers say when two
measurements are of the same thing:

* :func:`~harness.train.architecture.architecture_fingerprint`: the model's structure
  (every module's class and settings, every parameter's and buffer's name, shape and
  dtype), never its values;
* :func:`machine_identity`: the CPU model and its instruction-set extensions, the cores
  this process may use, the GPU;
* :func:`code_fingerprint`: the source of the runtime's measure function's module and of
  the shared latency core, so an edited runtime plugin is measured again.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Callable

from ..train.architecture import architecture_fingerprint
from .env import cpu_flags, cpu_model, gpu_info


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def machine_identity() -> dict:
    """The facts of this machine that a latency figure depends on."""
    gpu = gpu_info()
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "gpu": gpu.get("name") if gpu.get("cuda") else None}


def code_fingerprint(fn: Callable) -> str:
    """A SHA-256 of the source of ``fn``'s module (with its sibling modules when it sits in
    a package: the built-in runtimes share ``_common.py``) and of the latency core
    (:mod:`harness.measure.latency`): editing a runtime plugin invalidates what it measured."""
    from . import latency
    parts = []
    for obj in (fn, latency):
        mod = inspect.getmodule(obj) or obj
        try:
            path = Path(inspect.getsourcefile(mod))
        except (TypeError, OSError):  # built-in or source-less: its qualified name only
            parts.append(f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}")
            continue
        in_package = "." in getattr(mod, "__name__", "")
        for f in sorted(path.parent.glob("*.py")) if in_package else [path]:
            parts.append((f.name, hashlib.sha256(f.read_bytes()).hexdigest()))
    return _sha(parts)


__all__ = ["architecture_fingerprint", "machine_identity", "code_fingerprint"]
