"""Settings of the regression check: tolerances, how rounds are measured, the baseline format."""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional

from ..api.errors import BenchError
from .sequential import SignSPRT, size_rule

FORMAT = "transfer-bench-baseline"
VERSION = 3  # 2: a round's statistic times calls only (no per-round set-up); 3: measured
# in workers whose OpenMP threads do not spin (harness.regression.worker.WAIT_POLICY)


class BaselineError(BenchError):
    """A baseline file that is missing or broken; the message names the file and the problem."""


# -- settings ---------------------------------------------------------------------------------
@dataclass
class CheckSettings:
    """Tolerances of a check and the promise of its latency rule (the baseline's ``check``
    table; options override it).

    Attributes:
        latency_tolerance: a candidate may be up to ``1 + this`` times as slow (H0's
            boundary in both latency rules).
        accuracy_drop: a metric may get worse by at most this much (absolute, e.g. 0.01 =
            one point of accuracy); the direction follows the task's ``higher_is_better``.
        alpha: the false-alarm rate of the one latency test per target, at most, at a
            slowdown of exactly ``1 + latency_tolerance`` (less below it).
        min_effect: the smallest slowdown the gate promises to catch; None (the default):
            ``(1 + latency_tolerance) x 1.25 / 1.10``, i.e. x1.25 at the default tolerance
            and as far above any other tolerance (:attr:`effect` resolves it).
        power: the promised chance of catching ``min_effect`` (0.95: 19 checks in 20).
        noise: the sd of the paired per-round log ratios the paired rule is sized for
            (:func:`harness.regression.sequential.size_rule`); the check prints the noise it
            measured and the power predicted for it. 0.30 covers what every built-in
            runtime read idle on a 2-core EPYC, sub-millisecond ONNX Runtime calls on 2
            threads included (0.22-0.30; PyTorch and int8 targets 0.09-0.15; docs/ci-check.md).
            A stored baseline's rule is sized from the noise of its own stored samples instead.
        max_rounds: the cap on rounds: paired rounds of ``--against`` (the rule sized within
            it) and fresh rounds against a stored baseline.
        processes: worker processes per side of a paired check; its rounds rotate over every
            pairing of a base and a candidate process
            (:func:`harness.regression.paired.pairing`). One process can run a few % to
            x1.45 slower or faster than its twin for the whole check (its memory layout, its
            threads' placement: idle A/A medians of single process pairs read x0.80-x1.10
            with OpenVINO and x0.88-x1.45 with ONNX Runtime, docs/ci-check.md), which a
            sign test over rounds of that one pair reads as a real change; with ``k`` a side
            it moves 1/k of the rounds. Each process loads every target (start-up x k).
            3 by default: with one process a side the idle sweeps missed the issue's goal on
            ONNX Runtime, OpenVINO and ExecuTorch; with 3, docs/ci-check.md.
    """

    latency_tolerance: float = 0.10
    accuracy_drop: float = 0.01
    alpha: float = 0.01
    min_effect: Optional[float] = None
    power: float = 0.95
    noise: float = 0.30
    max_rounds: int = 200
    processes: int = 3

    def __post_init__(self) -> None:
        if not self.latency_tolerance >= 0 or not self.accuracy_drop >= 0:
            raise ValueError("latency_tolerance and accuracy_drop must be >= 0")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be between 0 and 1, got {self.alpha}")
        if self.max_rounds < 3:
            raise ValueError(f"max_rounds must be >= 3, got {self.max_rounds}")
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")
        self.sequential()  # validates min_effect, power and noise with the sizing's message

    def sequential(self) -> SignSPRT:
        """The paired check's decision rule, sized for these settings."""
        return size_rule(self.latency_tolerance, self.alpha, self.power, self.effect,
                         self.noise, self.max_rounds)

    @property
    def effect(self) -> float:
        """The minimum effect the rules are sized for (``min_effect`` or its default)."""
        if self.min_effect is not None:
            return self.min_effect
        return round((1 + self.latency_tolerance) * 1.25 / 1.10, 6)


# keys that older baseline files carry in their check table, and why they are dropped
LEGACY_CHECK_KEYS = {
    "confirm": "re-measurements that had to confirm a regression (a chain of tests; one test "
               "at alpha decides now)",
    "p1": "the paired test's alternative (now sized from min_effect, power and noise)",
}


@dataclass
class RoundSettings:
    """How latency samples are taken (stored in the baseline so a check repeats it).

    Attributes:
        rounds: interleaved blocks per runtime x profile of each cell that a baseline
            stores (20: the fewer, the less power any check against it can have; `bench
            baseline create` says how many a series' noise needs). A check against a stored
            baseline sizes its fresh rounds from the stored noise unless ``--rounds`` is given.
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

    rounds: int = 20
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
