"""Settings of the regression check: tolerances, how rounds are measured, the baseline format."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..api.errors import BenchError

FORMAT = "transfer-bench-baseline"
VERSION = 1


class BaselineError(BenchError):
    """A baseline file that is missing or broken; the message names the file and the problem."""


# -- settings ---------------------------------------------------------------------------------
@dataclass
class CheckSettings:
    """Tolerances of a check (the baseline's ``check`` table; options override it).

    Attributes:
        latency_tolerance: a latency regression needs ``fresh / baseline > 1 + this``.
        accuracy_drop: a metric may get worse by at most this much (absolute, e.g. 0.01 =
            one point of accuracy); the direction follows the task's ``higher_is_better``.
        alpha: significance level of the one-sided Mann-Whitney test.
        confirm: how many re-measurements must also show a suspected latency regression.
    """

    latency_tolerance: float = 0.10
    accuracy_drop: float = 0.01
    alpha: float = 0.01
    confirm: int = 2

    def __post_init__(self) -> None:
        if not self.latency_tolerance >= 0 or not self.accuracy_drop >= 0:
            raise ValueError("latency_tolerance and accuracy_drop must be >= 0")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        if self.confirm < 0:
            raise ValueError("confirm must be >= 0")


@dataclass
class RoundSettings:
    """How latency samples are taken (stored in the baseline so a check repeats it).

    Attributes:
        rounds: interleaved blocks per runtime x profile of each cell.
        calls: timed calls per block (its median is one sample).
        warmup_calls: untimed calls before each block.
        calibrate: time the probe before each block and normalize by it.
        statistic: what one block contributes: ``"cpu"`` (process CPU time per call of
            the block, default), ``"min"`` (its fastest call, wall clock) or ``"median"``
            (wall clock). CPU time is the default because on a shared CPU most of the wall
            time a call loses is preemption by other processes, which CPU time does not
            count while any extra work (a slower kernel, a busy-wait) it does. Measured
            here with 8 engineers on 2 cores: a 4 ms call's fastest-of-15 wall time jumped
            between 3.2 and 9 ms from block to block, its CPU time stayed within a few %.
            Caveat: the block's CPU time includes the runtime's per-measurement setup (a
            new ONNX Runtime session), which dilutes a regression of that runtime.
    """

    rounds: int = 10
    calls: int = 15
    warmup_calls: int = 3
    calibrate: bool = True
    statistic: str = "cpu"

    def __post_init__(self) -> None:
        if self.rounds < 3 or self.calls < 1 or self.warmup_calls < 0:
            raise ValueError("rounds must be >= 3, calls >= 1 and warmup_calls >= 0")
        if self.statistic not in BLOCK_STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(BLOCK_STATISTICS)}, "
                             f"not {self.statistic!r}")

    def block(self, values: list[float]) -> float:
        return BLOCK_STATISTICS[self.statistic](values)


BLOCK_STATISTICS: dict = {"min": min, "median": statistics.median, "cpu": None}
