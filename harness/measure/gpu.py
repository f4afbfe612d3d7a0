"""GPU latency as trtexec reports it: GPU compute time and end-to-end latency, both named.

trtexec (TensorRT's benchmark tool) times each inference with CUDA events on the inference
stream and reports "H2D Latency" (the input copied from host to device), "GPU Compute Time"
(the inference's kernels) and "D2H Latency" (the output copied back), and "Latency", their
sum from the start of the input copy to the end of the output copy. A CPU runtime's figure
starts and ends in host memory too, so only the end-to-end latency is comparable with it.

:func:`measure_gpu` does the same for every GPU runtime: per call, four events on the
runtime's stream around ``h2d()`` (a non-blocking copy from a pinned host buffer),
``compute()`` (the inference, enqueued on the stream) and ``d2h()`` (a non-blocking copy to a
pinned host buffer), then one synchronize. The row's ``stats`` is the end-to-end latency
(what recommendations compare), ``gpu_compute`` the GPU compute time, ``h2d`` and ``d2h`` the
copies; the warm-up and stopping rule are :func:`harness.measure.latency.measure`'s.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

from .latency import MeasureSettings, measure_many

TIMING = ("trtexec's definitions, CUDA events on the inference stream: stats = Latency "
          "(H2D copy from pinned memory + GPU compute + D2H copy, end to end); gpu_compute = "
          "GPU Compute Time (the inference's kernels only); h2d / d2h = the copies")


def _cuda_event():  # pragma: no cover - needs a GPU
    import torch
    return torch.cuda.Event(enable_timing=True)


def _cuda_stream_context(stream):  # pragma: no cover - needs a GPU
    import torch
    return torch.cuda.stream(stream)


def timed_call(h2d: Callable[[], object], compute: Callable[[], object],
               d2h: Callable[[], object], stream, event: Callable = _cuda_event,
               on_stream: Callable = _cuda_stream_context) -> Callable[[], dict]:
    """A step for :func:`harness.measure.latency.measure_many`: one inference, returning
    ``{"latency", "gpu_compute", "h2d", "d2h"}`` in seconds from events recorded on
    ``stream`` (``event()`` makes one; ``on_stream(stream)`` is the context that makes the
    copies and kernels go to ``stream``)."""
    def step() -> dict:
        e0, e1, e2, e3 = event(), event(), event(), event()
        with on_stream(stream) if on_stream is not None else contextlib.nullcontext():
            e0.record(stream)
            h2d()
            e1.record(stream)
            compute()
            e2.record(stream)
            d2h()
            e3.record(stream)
        e3.synchronize()
        ms = {"latency": e0.elapsed_time(e3), "gpu_compute": e1.elapsed_time(e2),
              "h2d": e0.elapsed_time(e1), "d2h": e2.elapsed_time(e3)}
        return {k: v / 1000.0 for k, v in ms.items()}
    return step


def measure_gpu(h2d: Callable[[], object], compute: Callable[[], object],
                d2h: Callable[[], object], stream, batch_size: int,
                settings: MeasureSettings = MeasureSettings(),
                event: Optional[Callable] = None, on_stream: Optional[Callable] = None) -> dict:
    """The timing fields of a GPU row: ``stats`` (end-to-end latency), ``gpu_compute``,
    ``h2d``, ``d2h`` (each :func:`harness.measure.latency.summarize` statistics) and
    ``timing`` (what they are). ``event`` and ``on_stream`` default to CUDA's (tests pass
    stand-ins)."""
    step = timed_call(h2d, compute, d2h, stream, event or _cuda_event,
                      on_stream or _cuda_stream_context)
    # the end-to-end latency decides re-measuring (latency.measure_many); microsecond
    # copies spread widely and would make every GPU row look noisy
    res = measure_many(step, batch_size, settings, judge=("latency",))
    for name in ("h2d", "d2h"):
        res[name].pop("raw_ms", None)  # the copies' medians suffice; raw values stay for the rest
    return {"stats": res["latency"], "gpu_compute": res["gpu_compute"], "h2d": res["h2d"],
            "d2h": res["d2h"], "timing": TIMING}


__all__ = ["measure_gpu", "timed_call", "TIMING"]
