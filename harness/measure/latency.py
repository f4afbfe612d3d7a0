"""Latency measurement shared by every runtime plugin.

The rule follows MLPerf LoadGen and trtexec: warm up by count *and* by time, then time
single calls until both a minimum count and a minimum duration are met. Statistics are
those trusted tools report: mean, p50, p90, p95, p99, standard deviation, coefficient of
variation, IQR, throughput; the raw timings are kept for later tests.

Stability (issue 25; /work/shared/MEASUREMENT.md). Beside MLPerf's minimum duration and
count, a measurement must be *stable* to count as clean (:func:`stability`): its spread
over the timed calls (IQR / p50 at most ``max_iqr_rel``, 10% as in
``torch.utils.benchmark.Timer.adaptive_autorange``, and p90 / p50 at most ``max_p90_p50``),
the drift of a fixed calibration probe (a single-threaded numpy workload timed right
before and right after the calls: the slower over the faster at most ``max_probe_drift``, the 1.5x of
MEASUREMENT.md) and the machine's 1-minute load average (at most ``max_load_per_cpu``
runnable tasks per usable core before and after, the measurement's own included). A
measurement whose spread or probe fails is taken again, up to ``noisy_retries`` more times
(asv re-runs until it can decide; a high load average alone is not retried: it is a
1-minute average); the first stable attempt is kept, else the least spread one, marked
``noise["noisy"] = True`` with the reasons in words. Every attempt's summary is kept in
``attempts``.

:class:`PeakMemory` gives the peak resident memory of a block of code (model load, session
creation and the timed runs), read from Linux's ``VmHWM`` after resetting it.
"""
from __future__ import annotations

import contextvars
import os
import resource
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, NamedTuple, Optional

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
        warm_workers: start each worker by forking a warm process that has imported torch
            and the model's modules once (:mod:`harness.measure.zygote`), instead of a new
            interpreter importing them again (seconds per worker, tens of workers per run).
            Each worker is still a fresh process for one job. Off: a new interpreter each.
        worker_timeout_s: a worker that has not answered after this long is stopped and
            its runtime recorded as failed with ``timeout``.
        tf32: let the GPU runtimes' fp32 rows use TF32 tensor cores (Ampere and newer:
            fp32 range, 10-bit mantissa) where the runtime offers it: PyTorch's
            ``torch.backends.cuda.matmul.allow_tf32`` and ``cudnn.allow_tf32``, TensorRT's
            ``BuilderFlag.TF32``, ONNX Runtime CUDA's ``use_tf32``. False keeps fp32 math
            fp32. Each GPU row records what was in force (``tf32``); fp32 parity against
            PyTorch is checked with TF32's looser tolerance when it is on.
        max_iqr_rel: the stability criterion (module doc): largest IQR / p50 ...
        max_p90_p50: ... largest p90 / p50 ...
        max_probe_drift: ... largest ratio of the probe's times after and before ...
        max_load_per_cpu: ... largest 1-minute load average per usable core.
        noisy_retries: how many more times a measurement that fails the criterion is
            taken (0: never re-measured, only marked).
        reuse_timing: time each architecture x runtime x precision x profile once and share
            the figure with every cell of the same architecture, in this run and later ones
            on the same machine and versions (:mod:`harness.run.timing`; accuracy after
            quantization stays per cell). Off: every cell times its own rows.
    """

    warmup_count: int = 10
    warmup_s: float = 0.2
    min_count: int = 30
    min_s: float = 1.0
    max_s: float = 60.0
    isolate: bool = True
    warm_workers: bool = True
    worker_timeout_s: float = 900.0
    tf32: bool = True
    max_iqr_rel: float = 0.10
    max_p90_p50: float = 1.5
    max_probe_drift: float = 1.5
    max_load_per_cpu: float = 2.0
    noisy_retries: int = 2
    reuse_timing: bool = True

    def __post_init__(self) -> None:
        if self.min_count < 1 or self.min_s < 0 or self.max_s <= 0:
            raise ValueError("min_count must be >= 1, min_s >= 0 and max_s > 0")
        if self.warmup_count < 0 or self.warmup_s < 0:
            raise ValueError("warmup_count and warmup_s must be >= 0")
        if self.worker_timeout_s <= 0:
            raise ValueError("worker_timeout_s must be > 0")
        if min(self.max_iqr_rel, self.max_probe_drift - 1, self.max_p90_p50 - 1,
               self.max_load_per_cpu) <= 0:
            raise ValueError("the stability criterion needs max_iqr_rel > 0, max_p90_p50 > 1, "
                             "max_probe_drift > 1 and max_load_per_cpu > 0")
        if self.noisy_retries < 0:
            raise ValueError("noisy_retries must be >= 0")


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


def usable_cpus() -> int:
    """Cores this process may run on (affinity where the OS has it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def load_average() -> Optional[list]:
    """``os.getloadavg()`` (1, 5 and 15 minutes) or None where the OS has none."""
    try:
        return [float(v) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


_PROBE = {}


def probe_ms(reps: int = 5, inner: int = 32, size: int = 65536) -> float:
    """Median time (ms) of the calibration probe: ``inner`` passes of ``np.sin`` over
    ``size`` float32 values, about 1 ms. Single-threaded on purpose (a multi-threaded BLAS
    probe measured 0.1 ms or 60 ms at random under load, from its own threads waiting on
    each other, and would contend with a runtime's spinning threads), numpy so that an ONNX
    Runtime worker never imports torch, and small (0.5 MB) so that it adds nothing to the
    peak memory measured around it."""
    if size not in _PROBE:
        x = np.random.default_rng(0).random(size, dtype=np.float32)
        _PROBE[size] = (x, np.empty_like(x))
        np.sin(x, out=_PROBE[size][1])  # first touch of the pages: untimed
    x, out = _PROBE[size]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            np.sin(x, out=out)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def stability(stats: dict, probe_before: Optional[float], probe_after: Optional[float],
              load_before: Optional[list], load_after: Optional[list], cpus: int,
              settings: MeasureSettings) -> dict:
    """The noise figure of one measurement and whether it passes the stability criterion
    (module doc). Pure: the tests give it made-up figures.

    Returns:
        ``{"iqr_rel", "p90_p50", "probe_ms": [before, after], "probe_drift",
        "load_before", "load_after", "cpus", "noisy", "reasons": [sentences],
        "criterion": {...}}``.
    """
    p50 = stats.get("p50_ms") or 0.0
    iqr_rel = stats["iqr_ms"] / p50 if p50 > 0 else float("inf")
    p90_p50 = stats["p90_ms"] / p50 if p50 > 0 else float("inf")
    drift = None
    if probe_before and probe_after:
        drift = max(probe_before, probe_after) / min(probe_before, probe_after)
    reasons = []
    if iqr_rel > settings.max_iqr_rel:
        reasons.append(f"IQR is {iqr_rel:.0%} of p50 (stable: <= {settings.max_iqr_rel:.0%})")
    if p90_p50 > settings.max_p90_p50:
        reasons.append(f"p90 is {p90_p50:.2f}x p50 (stable: <= {settings.max_p90_p50:g}x)")
    if drift is not None and drift > settings.max_probe_drift:
        reasons.append(f"the calibration probe drifted {drift:.2f}x during the measurement "
                       f"({probe_before:.3g} -> {probe_after:.3g} ms; stable: <= "
                       f"{settings.max_probe_drift:g}x)")
    retry_helps = bool(reasons)  # a 1-minute load average will not change in a retry
    loads = [lv[0] for lv in (load_before, load_after) if lv]
    if loads and max(loads) > settings.max_load_per_cpu * cpus:
        reasons.append(f"the machine was busy: 1-minute load average {max(loads):.1f} on "
                       f"{cpus} usable cores (stable: <= {settings.max_load_per_cpu:g} per "
                       f"core)")
    return {"iqr_rel": iqr_rel, "p90_p50": p90_p50,
            "probe_ms": [probe_before, probe_after], "probe_drift": drift,
            "load_before": load_before, "load_after": load_after, "cpus": cpus,
            "noisy": bool(reasons), "reasons": reasons, "retry_helps": retry_helps,
            "criterion": {"max_iqr_rel": settings.max_iqr_rel,
                          "max_p90_p50": settings.max_p90_p50,
                          "max_probe_drift": settings.max_probe_drift,
                          "max_load_per_cpu": settings.max_load_per_cpu}}


class TimedCall(NamedTuple):
    """One :func:`measure` seen inside :func:`timed_calls`: the timed function (a call on a
    session or compiled model that already exists), the statistics ``measure`` returned (the
    very dict a runtime puts in its row) and the function's output (for a replay check).
    From :func:`measure_many`: its ``step``, its ``{name: statistics}`` and no output."""

    fn: Callable[[], object]
    stats: dict
    output: object


_SEEN: contextvars.ContextVar = contextvars.ContextVar("transfer_bench_timed_calls",
                                                       default=None)
_WRAP: contextvars.ContextVar = contextvars.ContextVar("transfer_bench_wrap_calls",
                                                       default=None)


@contextmanager
def timed_calls() -> Iterator[list]:
    """Collect a :class:`TimedCall` for every :func:`measure` run inside the block.

    The regression check (:mod:`harness.regression.measure`) lets a runtime plugin load its
    model once (session creation, compilation, lowering), keeps the timed function and
    times only calls of it in every later round. So a runtime's timed function must stay
    valid after ``measure`` returns: bind the session it runs, not a loop variable.
    """
    seen: list = []
    token = _SEEN.set(seen)
    try:
        yield seen
    finally:
        _SEEN.reset(token)


@contextmanager
def wrap_calls(wrapper: Callable[[Callable[[], object]], Callable[[], object]]) -> Iterator[None]:
    """Inside the block, :func:`measure` times ``wrapper(fn)`` instead of ``fn``: a hook for
    instrumentation around every timed call of any runtime (a tracer, or a planted slowdown
    when testing the regression check: ``plugins.regression.BusyWait``)."""
    token = _WRAP.set(wrapper)
    try:
        yield
    finally:
        _WRAP.reset(token)


def measure(fn: Callable[[], object], batch_size: int,
            settings: MeasureSettings = MeasureSettings(),
            clock: Optional[Callable[[], float]] = None,
            probe: Callable[[], float] = probe_ms,
            load: Callable[[], Optional[list]] = load_average) -> dict:
    """Time ``fn`` (one inference call): :func:`summarize` plus the raw timings, the noise
    figure ``noise`` (:func:`stability`) and ``attempts`` (each measurement taken: a
    noisy one is taken again, see the module doc).

    ``clock``, ``probe`` and ``load`` are the timer, the calibration probe and the load
    average; tests replace them with fakes. Inside :func:`wrap_calls` the wrapped function
    is timed; inside :func:`timed_calls` the timed function, the returned statistics and one
    more call's output are recorded."""
    clock = clock or time.perf_counter
    wrap = _WRAP.get()
    if wrap is not None:
        fn = wrap(fn)

    def step() -> dict:
        t0 = clock()
        fn()
        return {"wall": clock() - t0}

    out = measure_many(step, batch_size, settings, clock, probe, load)
    seen = _SEEN.get()
    if seen is not None:  # the timed function is fn itself, not measure_many's step
        seen[-1] = TimedCall(fn, out["wall"], fn())
    return out["wall"]


def measure_many(step: Callable[[], dict], batch_size: int,
                 settings: MeasureSettings = MeasureSettings(),
                 clock: Optional[Callable[[], float]] = None,
                 probe: Callable[[], float] = probe_ms,
                 load: Callable[[], Optional[list]] = load_average,
                 judge: Optional[tuple] = None) -> dict:
    """Like :func:`measure` for a ``step`` that times itself and returns several durations
    per call, ``{name: seconds}`` (a GPU call: its end-to-end latency and its GPU compute
    time, read from CUDA events, :mod:`harness.measure.gpu`). The warm-up and stopping rule
    are :func:`measure`'s, counted in calls and in this process's wall-clock time; the
    result is ``{name: summarize(...) + raw timings + noise + attempts}``, one entry per
    name. Each duration gets its own noise figure; a measurement is taken again while any
    of the ``judge`` names (default: all) fails the criterion for a reason a retry can
    change (module doc), and all names come from the same kept attempt."""
    clock = clock or time.perf_counter
    cpus = usable_cpus()
    tries = []
    for _ in range(1 + settings.noisy_retries):
        load_before, probe_before = load(), probe()
        out = _measure_once(step, batch_size, settings, clock)
        probe_after, load_after = probe(), load()
        for stats in out.values():
            stats["noise"] = stability(stats, probe_before, probe_after, load_before,
                                       load_after, cpus, settings)
        tries.append(out)
        judged = [n for n in out if judge is None or n in judge]
        if not any(out[n]["noise"]["retry_helps"] for n in judged):
            break  # stable, or only the machine's load is high

    def noisy(t: dict) -> bool:
        return any(st["noise"]["noisy"] for n, st in t.items() if judge is None or n in judge)

    def spread(t: dict) -> float:
        return max((st["noise"]["iqr_rel"] for n, st in t.items()
                    if judge is None or n in judge), default=0.0)

    kept = next((t for t in tries if not noisy(t)), min(tries, key=spread))
    for name, stats in kept.items():
        stats["noise"] = {**stats["noise"], "attempts": len(tries)}
        stats["attempts"] = [{"p50_ms": t[name]["p50_ms"], "p90_ms": t[name]["p90_ms"],
                              "iqr_rel": t[name]["noise"]["iqr_rel"],
                              "probe_drift": t[name]["noise"]["probe_drift"],
                              "noisy": t[name]["noise"]["noisy"],
                              "reasons": t[name]["noise"]["reasons"], "kept": t is kept}
                             for t in tries if name in t]
    seen = _SEEN.get()
    if seen is not None:  # a step that times itself: replayed whole, outputs not compared
        seen.append(TimedCall(step, kept, None))
    return kept


def _measure_once(step: Callable[[], dict], batch_size: int, settings: MeasureSettings,
                  clock: Callable[[], float]) -> dict:
    """One measurement: warm-up, then timed calls (MLPerf's minimum count and duration)."""
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
