"""Keep freed memory in the process instead of handing it back to the OS on every batch.

glibc's ``malloc`` serves blocks above its mmap threshold (128 KiB, adjusted upwards only
after frees) with fresh ``mmap`` pages and unmaps them on ``free``. A CNN's activations are
such blocks, so every forward and backward pass maps, zero-fills (one page fault per 4 KiB)
and unmaps tens of megabytes. On our 2-core machines a MobileNetV2 training and inference
loop at 64 px spent 1.2-2.0 s of system time per 40 batches in those page faults
(290,000-880,000 minor faults); with the settings below it spent 0.05 s (almost no
faults) and the same loop took 6.11 s instead of 7.14 s, 1.17x faster
(``benchmarks/bench_allocator.py`` measures it side by side). This is what tcmalloc and jemalloc, commonly preloaded under PyTorch servers, do by
design.

:func:`tune` calls ``mallopt`` at run time (so no re-exec and no ``LD_PRELOAD``): mmap
threshold 32 MiB (glibc's maximum on 64-bit), trim threshold 1 GiB, top pad 64 MiB. The
cost is that a process keeps up to about 1 GiB of freed heap instead of returning it.
It applies only to glibc on Linux; anywhere else it reports why it did nothing. Set
``TRANSFER_BENCH_MALLOC=system`` to leave the allocator as it is. What was done is stored
in every run's ``environment.json`` (``allocator``), since it affects latency figures.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {"mmap_threshold": (M_MMAP_THRESHOLD, 32 << 20),
            "trim_threshold": (M_TRIM_THRESHOLD, 1 << 30),
            "top_pad": (M_TOP_PAD, 64 << 20)}

_STATE: dict = {}


def tune() -> dict:
    """Apply the settings once per process; returns what was done (also :func:`state`)."""
    if _STATE:
        return _STATE
    if os.environ.get("TRANSFER_BENCH_MALLOC", "").lower() == "system":
        _STATE.update(applied=False, reason="TRANSFER_BENCH_MALLOC=system")
        return _STATE
    if not sys.platform.startswith("linux"):
        _STATE.update(applied=False, reason=f"not Linux ({sys.platform})")
        return _STATE
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError) as exc:
        _STATE.update(applied=False, reason=f"not glibc: {exc}")
        return _STATE
    done = {name: bool(libc.mallopt(param, value)) for name, (param, value) in SETTINGS.items()}
    _STATE.update(applied=all(done.values()), glibc=version,
                  settings={k: v for k, (_, v) in SETTINGS.items()}, accepted=done)
    if not _STATE["applied"]:
        _STATE["reason"] = "mallopt refused " + ", ".join(k for k, ok in done.items() if not ok)
    return _STATE


def state() -> dict:
    """What :func:`tune` did in this process (``{"applied": False, ...}`` if not called)."""
    return dict(_STATE) if _STATE else {"applied": False, "reason": "not tuned in this process"}
