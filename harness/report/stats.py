"""Statistics over repeated cells (``--seeds N``): confidence intervals and paired tests.

A *configuration* is a cell without its seed: the same backbone, task, dataset, strategy,
weights and image size. Repeats of one configuration differ only by seed, so their test
metrics are a small sample from which we give a mean with a Student-t 95% interval, and
two strategies run on the same seeds are compared pairwise (seed ``s`` of one against seed
``s`` of the other), which removes the variation the seeds share (same data split, same
head initialisation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

IDENTITY = ("backbone", "task", "dataset", "strategy", "weights", "image_size")
"""Config fields that name a configuration (everything a user chooses except the seed)."""


def configuration(rec: dict) -> tuple:
    """The configuration a cell record belongs to (its config without the seed)."""
    cfg = rec.get("config", {})
    return tuple(cfg.get(k) for k in IDENTITY)


def primary_metric(rec: dict) -> Optional[float]:
    """The cell's test value of its task's primary metric, or None when it has none."""
    name = rec.get("metric_name")
    if rec.get("status") != "ok" or not name:
        return None
    v = (rec.get("test_metrics") or {}).get(name)
    return float(v) if v is not None else None


@dataclass(frozen=True)
class Interval:
    """A sample mean with its Student-t confidence interval (``half`` is None when n < 2)."""

    mean: float
    n: int
    sd: Optional[float]
    half: Optional[float]
    confidence: float = 0.95

    @property
    def low(self) -> Optional[float]:
        return None if self.half is None else self.mean - self.half

    @property
    def high(self) -> Optional[float]:
        return None if self.half is None else self.mean + self.half

    def fmt(self, digits: int = 3) -> str:
        if self.half is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f}"

    def as_dict(self) -> dict:
        return {"mean": self.mean, "n": self.n, "sd": self.sd, "ci_half": self.half,
                "ci_low": self.low, "ci_high": self.high, "confidence": self.confidence}


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Optional[Interval]:
    """Mean and the t interval ``mean ± t_{(1+c)/2, n-1} * sd / sqrt(n)``.

    Args:
        values: the repeats (None values are dropped).
        confidence: e.g. 0.95.

    Returns:
        None for no values; an interval without half-width for a single value.
    """
    import numpy as np
    from scipy import stats

    xs = np.array([float(v) for v in values if v is not None])
    n = len(xs)
    if n == 0:
        return None
    mean = float(xs.mean())
    if n < 2:
        return Interval(mean, 1, None, None, confidence)
    sd = float(xs.std(ddof=1))
    if sd == 0:  # scipy gives (nan, nan) for a zero scale; every repeat agreed exactly
        return Interval(mean, n, 0.0, 0.0, confidence)
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=stats.sem(xs))
    return Interval(mean, n, sd, float(high - low) / 2, confidence)


@dataclass(frozen=True)
class PairedResult:
    """Outcome of a paired comparison of two configurations over shared seeds."""

    n: int
    mean_diff: Optional[float]
    p: Optional[float]
    alpha: float = 0.05

    @property
    def testable(self) -> bool:
        return self.p is not None

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < self.alpha

    def as_dict(self) -> dict:
        return {"n": self.n, "mean_diff": self.mean_diff, "p": self.p, "alpha": self.alpha,
                "significant": self.significant, "test": "paired t (Student 1908)"}


def paired_t(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> PairedResult:
    """Two-sided paired t-test of ``a - b`` (Student, "The probable error of a mean", 1908).

    ``t = mean(d) / (sd(d) / sqrt(n))`` with ``n - 1`` degrees of freedom, ``d = a - b``.
    With fewer than 2 pairs nothing can be tested (``p`` is None). When every difference is
    the same, the variance is zero: ``p`` is 1 for zero differences, 0 otherwise.
    """
    from scipy.stats import ttest_rel

    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    if n == 0:
        return PairedResult(0, None, None, alpha)
    mean = sum(d) / n
    if n < 2:
        return PairedResult(n, mean, None, alpha)
    if max(d) == min(d):  # zero variance: scipy returns nan; the differences are exact
        return PairedResult(n, mean, 1.0 if mean == 0 else 0.0, alpha)
    return PairedResult(n, mean, float(ttest_rel(a, b).pvalue), alpha)


def by_seed(records: Iterable[dict]) -> dict:
    """``{configuration: {seed: metric}}`` over the finished cells."""
    out: dict = {}
    for rec in records:
        v = primary_metric(rec)
        if v is None:
            continue
        out.setdefault(configuration(rec), {})[rec["config"].get("seed")] = v
    return out


def compare_configs(seeds_a: dict, seeds_b: dict, alpha: float = 0.05) -> PairedResult:
    """Paired t over the seeds both configurations finished."""
    common = sorted(set(seeds_a) & set(seeds_b))
    return paired_t([seeds_a[s] for s in common], [seeds_b[s] for s in common], alpha)
