"""A run's environment in a few lines a person reads first (issue 30): the machine, its CPU
and the instruction-set features that decide the kernels, the GPU or "none" with the reason,
the versions of torch and of the runtimes, the load while it ran and when it ran. The full
``environment.json`` (allocator internals, argv...) stays available below it.
"""
from __future__ import annotations

import time
from typing import Optional

from ..measure.env import CORE_PACKAGES

NOT_RECORDED = "not recorded"


def _load(values, cpus) -> Optional[str]:
    if not values:
        return None
    text = " / ".join(f"{v:.2f}" for v in values[:3])
    if cpus:
        text += f" ({values[0] / cpus:.2f} per usable CPU)"
    return text


def _when(records: list[dict]) -> str:
    starts = [r["started"] for r in records if isinstance(r.get("started"), (int, float))]
    ends = [r["finished"] for r in records if isinstance(r.get("finished"), (int, float))]
    if not starts and not ends:
        return f"{NOT_RECORDED} (the cells carry no start or finish time)"

    def fmt(t):
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))
    first, last = min(starts or ends), max(ends or starts)
    return fmt(first) if fmt(first) == fmt(last) else f"{fmt(first)} to {fmt(last)}"


def environment_summary(env: dict, records: list[dict]) -> list[tuple[str, str]]:
    """``[(label, text), ...]``: machine, CPU features, GPU, training device, versions,
    runtimes' packages, threads, load average and date; what the environment does not
    record reads "not recorded"."""
    env = env or {}
    cpus = env.get("cpu_count")
    usable = env.get("affinity") or (env.get("load_average") or {}).get("usable_cpus")
    machine = env.get("cpu") or NOT_RECORDED
    if cpus:
        machine += f", {cpus} CPUs" + (f" ({usable} usable)" if usable and usable != cpus
                                       else "")
    if env.get("machine"):
        machine += f", {env['machine']}"
    if env.get("platform"):
        machine += f"; {env['platform']}"
    flags = env.get("cpu_flags")
    features = (", ".join(flags) if flags else "none of AVX2, AVX-512, VNNI, BF16, AMX"
                ) if flags is not None else NOT_RECORDED
    gpu = env.get("gpu")
    if not gpu:
        gpu_text = NOT_RECORDED
    elif gpu.get("cuda"):
        gpu_text = (f"{gpu.get('name')}" + (f" x {gpu['count']}" if gpu.get("count", 1) > 1
                                            else "")
                    + (f", CUDA {gpu['cuda_version']}" if gpu.get("cuda_version") else ""))
    else:
        gpu_text = "none" + (f" ({gpu['reason']})" if gpu.get("reason") else "")
    training = env.get("training") or {}
    train_text = (" ".join(str(training[k]) for k in ("device", "precision") if training.get(k))
                  or NOT_RECORDED)
    versions = env.get("versions") or {}
    core = ["transfer-bench", "python", *CORE_PACKAGES]
    core_text = ", ".join(f"{k} {versions[k]}" for k in core if k in versions) or NOT_RECORDED
    others = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if k not in core)
    load = env.get("load_average") or {}
    lcpus = load.get("usable_cpus") or usable
    loads = [f"{when} {text}" for when, key in (("at start", "at_start"), ("at end", "at_end"))
             for text in [_load(load.get(key), lcpus)] if text]
    rows = [("machine", machine), ("CPU features", features), ("GPU", gpu_text),
            ("trained on", train_text), ("versions", core_text)]
    if others:
        rows.append(("runtimes and plugins", others))
    rows += [("torch threads", str(env.get("torch_threads") or NOT_RECORDED)),
             ("load average (1, 5, 15 min)", "; ".join(loads) or NOT_RECORDED),
             ("date", _when(records))]
    return rows
