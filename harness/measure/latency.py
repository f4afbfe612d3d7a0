"""Latency measurement shared by every runtime plugin.

The rule follows MLPerf LoadGen and trtexec: warm up by count *and* by time, then time
single calls until both a minimum count and a minimum duration are met. Statistics are
those trusted tools report: mean, p50, p90, p95, p99, standard deviation, coefficient of
variation, IQR, throughput; the raw timings are kept for later tests.

:class:`PeakMemory` gives the peak resident memory of a block of code (model load, session
creation and the timed runs), read from Linux's ``VmHWM`` after resetting it.
"""
from __future__ import annotations

import os
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass
class MeasureSettings:
    """How long to warm up and to measure.

    Attributes:
        warmup_count: at least this many untimed calls...
        warmup_s: ...and at least this many seconds of them.
        min_count: at least this many timed calls...
        min_s: ...and at least this many seconds of them.
        max_s: stop measuring after this long even if ``min_count`` is not reached
            (recorded as ``truncated``), so a very slow model cannot stall a run.
        isolate: measure each runtime in its own worker process (see
            :mod:`harness.measure.isolate`); ONNX Runtime's spinning threads can slow PyTorch in
            the same process up to 50x (onnxruntime issue 13808).
        worker_timeout_s: a worker that has not answered after this long is stopped and
            its runtime recorded as failed with ``timeout``.
        tf32: let the GPU runtimes' fp32 rows use TF32 tensor cores (Ampere and newer:
            fp32 range, 10-bit mantissa) where the runtime offers it: PyTorch's
            ``torch.backends.cuda.matmul.allow_tf32`` and ``cudnn.allow_tf32``, TensorRT's
            ``BuilderFlag.TF32``, ONNX Runtime CUDA's ``use_tf32``. False keeps fp32 math
            fp32. Each GPU row records what was in force (``tf32``); fp32 parity against
            PyTorch is checked with TF32's looser tolerance when it is on.
    """

    warmup_count: int = 10
    warmup_s: float = 0.2
    min_count: int = 30
    min_s: float = 1.0
    max_s: float = 60.0
    isolate: bool = True
    worker_timeout_s: float = 900.0
    tf32: bool = True

    def __post_init__(self) -> None:
        if self.min_count < 1 or self.min_s < 0 or self.max_s <= 0:
            raise ValueError("min_count must be >= 1, min_s >= 0 and max_s > 0")
        if self.warmup_count < 0 or self.warmup_s < 0:
            raise ValueError("warmup_count and warmup_s must be >= 0")
        if self.worker_timeout_s <= 0:
            raise ValueError("worker_timeout_s must be > 0")


def summarize(times_s: list[float], batch_size: int) -> dict:
    """Statistics (milliseconds) of per-call timings in seconds."""
    ms = sorted(t * 1000.0 for t in times_s)
    mean = statistics.fmean(ms)
    std = statistics.stdev(ms) if len(ms) > 1 else 0.0
    p25, p50, p75, p90, p95, p99 = (float(v) for v in np.percentile(ms, [25, 50, 75, 90, 95, 99]))
    return {
        "count": len(ms),
        "mean_ms": mean,
        "p50_ms": p50,
        "p90_ms": p90,
        "p95_ms": p95,
        "p99_ms": p99,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "std_ms": std,
        "cv": std / mean if mean > 0 else 0.0,
        "iqr_ms": p75 - p25,
        "throughput_per_s": batch_size * 1000.0 / p50 if p50 > 0 else 0.0,
    }


def measure(fn: Callable[[], object], batch_size: int,
            settings: MeasureSettings = MeasureSettings()) -> dict:
    """Time ``fn`` (one inference call) and return :func:`summarize` plus the raw timings."""
    clock = time.perf_counter

    def step() -> dict:
        t0 = clock()
        fn()
        return {"wall": clock() - t0}

    return measure_many(step, batch_size, settings)["wall"]


def measure_many(step: Callable[[], dict], batch_size: int,
                 settings: MeasureSettings = MeasureSettings()) -> dict:
    """Like :func:`measure` for a ``step`` that times itself and returns several durations
    per call, ``{name: seconds}`` (a GPU call: its end-to-end latency and its GPU compute
    time, read from CUDA events, :mod:`harness.measure.gpu`). The warm-up and stopping rule
    are :func:`measure`'s, counted in calls and in this process's wall-clock time; the
    result is ``{name: summarize(...) + raw timings}``, one entry per name."""
    clock = time.perf_counter
    start = clock()
    n = 0
    while n < settings.warmup_count or clock() - start < settings.warmup_s:
        step()
        n += 1
        if clock() - start > settings.max_s:
            break
    times: dict = {}
    begin = clock()
    truncated = False
    count = 0
    while count < settings.min_count or clock() - begin < settings.min_s:
        for name, secs in step().items():
            times.setdefault(name, []).append(secs)
        count += 1
        if clock() - begin > settings.max_s:
            truncated = count < settings.min_count
            break
    measured_s = clock() - begin
    out = {}
    for name, values in times.items():
        stats = summarize(values, batch_size)
        stats.update(warmup_calls=n, measured_s=measured_s, truncated=truncated,
                     settings=asdict(settings), raw_ms=[t * 1000.0 for t in values])
        out[name] = stats
    return out


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak resident memory (RSS) of this process while a block runs.

    On Linux the kernel's high-water mark ``VmHWM`` is reset by writing ``5`` to
    ``/proc/self/clear_refs`` on entry and read on exit, so the peak belongs to the block
    only. Where that is not possible the process-lifetime peak ``ru_maxrss`` is used and
    the method says so (it can then include earlier work in the same process).

    Example::

        with PeakMemory() as mem:
            sess = make_session(); run_many(sess)
        mem.as_dict()  # {"peak_rss_mb": ..., "baseline_rss_mb": ..., "delta_mb": ..., ...}
    """

    def __enter__(self) -> "PeakMemory":
        self.method = "ru_maxrss (process-lifetime peak; not reset)"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            if _proc_status_kb("VmHWM") is not None:
                self.method = "VmHWM after reset via /proc/self/clear_refs"
        except OSError:
            pass
        rss = _proc_status_kb("VmRSS")
        self.baseline_kb = rss if rss is not None else self._maxrss_kb()
        self.peak_kb = self.baseline_kb
        return self

    @staticmethod
    def _maxrss_kb() -> int:
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux

    def __exit__(self, *exc) -> None:
        hwm = _proc_status_kb("VmHWM") if self.method.startswith("VmHWM") else None
        self.peak_kb = hwm if hwm is not None else self._maxrss_kb()

    def as_dict(self) -> dict:
        """``peak_rss_mb`` (the process), ``baseline_rss_mb`` (before the block) and
        ``delta_mb`` (what the block added at its peak), with the ``method``."""
        return {"peak_rss_mb": self.peak_kb / 1024, "baseline_rss_mb": self.baseline_kb / 1024,
                "delta_mb": max(0, self.peak_kb - self.baseline_kb) / 1024,
                "method": self.method, "pid": os.getpid()}
