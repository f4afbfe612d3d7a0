"""Work, not time: instructions retired per call, from the CPU's hardware counters.

Counted through ``perf_event_open`` by the ``py-perf-event`` library (Rust ``perf-event2``
underneath); the count is what CodSpeed and iai-callgrind compare instead of time where time
is too noisy: it does not change when another process takes the CPU. Where the kernel does not
expose the counter (a VM without a virtual PMU, ``perf_event_paranoid`` too high, no library),
:func:`instruction_counter` says why and the check compares time only.

Caveat: the counter follows the calling thread; work on other intra-op threads is not counted,
so counts are exact for one-thread profiles and a lower bound otherwise.
"""
from __future__ import annotations

import errno
from typing import Callable, Optional

_REASONS = {
    errno.ENOENT: "the CPU exposes no hardware instruction counter here (a VM without a "
                  "virtual PMU; `perf stat -e instructions true` says <not supported>)",
    errno.EOPNOTSUPP: "the kernel does not support the hardware instruction counter here",
    errno.EACCES: "perf_event_open is not allowed (kernel.perf_event_paranoid is {paranoid}; "
                  "2 or less lets a process count its own instructions)",
    errno.EPERM: "perf_event_open is not allowed (kernel.perf_event_paranoid is {paranoid}; "
                 "2 or less lets a process count its own instructions)",
}


def _paranoid() -> str:
    try:
        with open("/proc/sys/kernel/perf_event_paranoid") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def instruction_counter() -> tuple[Optional[Callable[[Callable[[], object]], int]], str]:
    """``(count, "")`` where ``count(fn)`` runs ``fn`` and returns the instructions it retired,
    or ``(None, reason)`` saying why instructions cannot be counted here."""
    try:
        import py_perf_event as ppe
    except ImportError:
        return None, "py-perf-event is not installed (pip install py-perf-event)"
    events = [ppe.Hardware.INSTRUCTIONS]

    def count(fn: Callable[[], object]) -> int:
        return int(ppe.measure_until_full_read(events, fn)[0])
    try:
        count(lambda: None)
    except OSError as exc:
        code = exc.errno or {FileNotFoundError: errno.ENOENT, PermissionError: errno.EACCES}.get(
            type(exc))
        reason = _REASONS.get(code, f"perf_event_open failed: {exc}")
        return None, "instruction counts not available here: " + reason.format(
            paranoid=_paranoid())
    except Exception as exc:  # PartialRead 10 times: the counter is multiplexed away
        return None, f"instruction counts not available here: {type(exc).__name__}: {exc}"
    return count, ""


__all__ = ["instruction_counter"]
