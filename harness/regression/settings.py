"""Settings of the regression check: tolerances, how rounds are measured, the baseline format."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..api.errors import BenchError
from .sequential import SignSPRT

FORMAT = "transfer-bench-baseline"
VERSION = 2  # 2: a round's statistic times calls only (no per-round set-up)


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
        alpha: the false-alarm rate: of the one-sided Mann-Whitney test (stored baseline);
            of the sequential test of the paired check (at a slowdown of exactly
            ``1 + latency_tolerance``; less below it).
        confirm: how many re-measurements must also show a suspected latency regression
            (stored baseline only; the paired check is one sequential test).
        power: the paired check's chance of catching a slowdown at which a share ``p1`` of
            the paired rounds reads above the tolerance (Wald's ``1 - beta``).
        p1: that share (:class:`harness.regression.sequential.SignSPRT`): 0.8 is a 1.25x
            slowdown under a paired log-ratio noise of 0.15.
        max_rounds: paired rounds after which a still undecided target stops, "undecided".
    """

    latency_tolerance: float = 0.10
    accuracy_drop: float = 0.01
    alpha: float = 0.01
    confirm: int = 2
    power: float = 1 - SignSPRT.beta
    p1: float = SignSPRT.p1
    max_rounds: int = SignSPRT.max_rounds

    def __post_init__(self) -> None:
        if not self.latency_tolerance >= 0 or not self.accuracy_drop >= 0:
            raise ValueError("latency_tolerance and accuracy_drop must be >= 0")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        if self.confirm < 0:
            raise ValueError("confirm must be >= 0")
        self.sequential()  # validates power, p1 and max_rounds with the test's own message

    def sequential(self):
        """The paired check's decision rule with these settings."""
        if not 0 < self.power < 1:
            raise ValueError(f"power must be between 0 and 1, got {self.power}")
        return SignSPRT(tolerance=self.latency_tolerance, alpha=self.alpha,
                        beta=1 - self.power, p1=self.p1, max_rounds=self.max_rounds)


@dataclass
class RoundSettings:
    """How latency samples are taken (stored in the baseline so a check repeats it).

    Attributes:
        rounds: interleaved blocks per runtime x profile of each cell.
        calls: timed calls per block (its median is one sample).
        warmup_calls: untimed calls before each block.
        calibrate: time the probe before each block and normalize by it.
        statistic: what one block contributes, from its ``calls`` timed one by one on the
            session or compiled model the runtime created once (no set-up in any round):
            ``"cpu"`` (the median call's process CPU time, default), ``"min"`` (the fastest
            call's wall time) or ``"median"`` (the median call's wall time). CPU time is the
            default because on a shared CPU most of the wall time a call loses is preemption
            by other processes, which CPU time does not count while any extra work (a slower
            kernel, a busy-wait) it does. Measured here with 8 engineers on 2 cores: a 4 ms
            call's fastest-of-15 wall time jumped between 3.2 and 9 ms from block to block,
            its CPU time stayed within a few %. Multi-threaded profiles count the CPU time
            of every thread of the worker (spinning included).
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

    def block(self, wall: list[float], cpu: list[float]) -> float:
        """The block's sample from its per-call wall and CPU times (ms)."""
        if self.statistic == "cpu":
            return statistics.median(cpu)
        return BLOCK_STATISTICS[self.statistic](wall)


BLOCK_STATISTICS: dict = {"min": min, "median": statistics.median, "cpu": statistics.median}
