"""The CPU's model name: the device name of a CPU cell and part of the environment
(:mod:`harness.measure.env` re-exports it). No torch here: it is read from the OS."""
from __future__ import annotations

import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
