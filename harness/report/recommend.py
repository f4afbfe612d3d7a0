"""The recommendation: the most accurate backbone + strategy within a latency budget.

For every dataset/task and latency profile, each deployable variant of a configuration (a
runtime and precision it was measured with) is one *candidate*: its accuracy (the mean test
metric over seeds, or the accuracy measured after conversion for lower precisions) and its
latency (the median over seeds of the p50). Candidates compete separately by the device
class of their backbone (``mobile`` / ``server``, from ``BackboneSpec.device_class``).

The pick is the candidate with the best metric whose p50 is within the budget (ties go to
the faster one). Such a pick always lies on the Pareto front (no other candidate is both
faster and more accurate), which is printed with it as the justification.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

from tabulate import tabulate

from .stats import configuration, mean_ci

DEVICE_CLASSES = ("mobile", "server")


@dataclass(frozen=True)
class Candidate:
    """One deployable variant of a configuration under one profile."""

    backbone: str
    strategy: str
    dataset: str
    task: str
    weights: str
    device_class: str
    profile: str
    runtime: str
    precision: str
    latency_ms: float
    metric: float
    metric_name: str
    higher_is_better: bool
    n: int
    p90_ms: Optional[float] = None
    """Median over seeds of the p90 latency."""
    metric_ci: Optional[float] = None
    """Half-width of the 95% Student-t interval of ``metric`` over seeds; None for one seed."""

    def label(self) -> str:
        prec = "" if self.precision == "fp32" else f" {self.precision}"
        return f"{self.backbone} + {self.strategy} ({self.runtime}{prec})"

    def score(self) -> float:
        """Larger is better, whatever the metric's direction."""
        return self.metric if self.higher_is_better else -self.metric


@dataclass
class Recommendation:
    """The pick for one dataset/task, profile and device class, with its Pareto front."""

    dataset: str
    task: str
    profile: str
    device_class: str
    budget_ms: Optional[float]
    pick: Optional[Candidate]
    front: list = field(default_factory=list)
    reason: str = ""

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pick"] = asdict(self.pick) if self.pick else None
        d["front"] = [asdict(c) for c in self.front]
        return d


def candidates(records: Iterable[dict]) -> list[Candidate]:
    """Every (configuration, profile, runtime, precision) measured in finished cells."""
    groups: dict = {}
    for rec in records:
        if rec.get("status") != "ok" or not rec.get("metric_name"):
            continue
        base = (rec.get("test_metrics") or {}).get(rec["metric_name"])
        dclass = (rec.get("backbone_facts") or {}).get("device_class", "server")
        for lat in rec.get("latency", []):
            st = lat.get("stats")
            if not st or st.get("p50_ms") is None:
                continue
            metric = lat.get("accuracy_after", base) if lat.get("precision") != "fp32" else base
            if metric is None:
                continue
            k = (configuration(rec), lat.get("profile"), lat.get("runtime"),
                 lat.get("precision"))
            g = groups.setdefault(k, {"rec": rec, "class": dclass, "lat": [], "p90": [],
                                      "metric": []})
            g["lat"].append(st["p50_ms"])
            if st.get("p90_ms") is not None:
                g["p90"].append(st["p90_ms"])
            g["metric"].append(metric)
    out = []
    for (_, profile, runtime, precision), g in groups.items():
        cfg, rec = g["rec"]["config"], g["rec"]
        interval = mean_ci(g["metric"])
        out.append(Candidate(
            backbone=cfg.get("backbone"), strategy=cfg.get("strategy"),
            dataset=cfg.get("dataset"), task=cfg.get("task"),
            weights=(rec.get("weights") or {}).get("description") or str(cfg.get("weights")),
            device_class=g["class"], profile=profile, runtime=runtime, precision=precision,
            latency_ms=statistics.median(g["lat"]), metric=interval.mean,
            metric_name=rec["metric_name"], higher_is_better=rec.get("higher_is_better", True),
            n=len(g["metric"]), p90_ms=statistics.median(g["p90"]) if g["p90"] else None,
            metric_ci=interval.half))
    return out


def pareto_front(cands: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no other one beats on both latency and metric, fastest first."""
    ordered = sorted(cands, key=lambda c: (c.latency_ms, -c.score()))
    front, best = [], float("-inf")
    for c in ordered:
        if c.score() > best:
            front.append(c)
            best = c.score()
    return front


def recommend(records: Iterable[dict], budget_ms: Optional[float] = None) -> list[Recommendation]:
    """One :class:`Recommendation` per dataset/task x profile x device class.

    Args:
        records: cell records of a run.
        budget_ms: the largest acceptable p50 latency; None for no limit.
    """
    if budget_ms is not None and budget_ms <= 0:
        raise ValueError(f"--budget-ms must be > 0, got {budget_ms}")
    cands = candidates(records)
    out = []
    keys = sorted({(c.dataset, c.task, c.profile) for c in cands})
    for dataset, task, profile in keys:
        for dclass in DEVICE_CLASSES:
            pool = [c for c in cands if (c.dataset, c.task, c.profile, c.device_class)
                    == (dataset, task, profile, dclass)]
            if not pool:
                continue
            front = pareto_front(pool)
            within = [c for c in pool if budget_ms is None or c.latency_ms <= budget_ms]
            pick = max(within, key=lambda c: (c.score(), -c.latency_ms)) if within else None
            reason = "" if pick else (
                f"no {dclass}-class candidate is within {budget_ms:g} ms; the fastest takes "
                f"{front[0].latency_ms:.3g} ms ({front[0].label()})")
            out.append(Recommendation(dataset, task, profile, dclass, budget_ms, pick, front,
                                      reason))
    return out


def format_recommendations(recs: list[Recommendation], fmt: str = "simple") -> str:
    """A table per dataset/task: the pick per profile and device class, and its front."""
    if not recs:
        return "recommendation: no finished cell has both a test metric and a latency"
    budget = recs[0].budget_ms
    lines = [f"Recommendation (most accurate within a p50 budget of "
             f"{'no limit' if budget is None else f'{budget:g} ms'}):"]
    rows = []
    for r in recs:
        front = "; ".join(f"{c.label()} {c.latency_ms:.3g} ms {c.metric:.3f}" for c in r.front)
        if r.pick:
            p = r.pick
            rows.append([f"{r.dataset}/{r.task}", r.profile, r.device_class, p.label(),
                         f"{p.metric_name} {p.metric:.3f}" + (f" (n={p.n})" if p.n > 1 else ""),
                         f"{p.latency_ms:.3g}", front])
        else:
            rows.append([f"{r.dataset}/{r.task}", r.profile, r.device_class, "none",
                         r.reason, "-", front])
    lines.append(tabulate(rows, headers=["data/task", "profile", "class", "pick", "metric",
                                         "p50 ms", "Pareto front (latency, metric)"],
                          tablefmt=fmt, disable_numparse=True,
                          maxcolwidths=[None, None, None, 40, 45, None, 70]
                          if fmt == "simple" else None))
    return "\n".join(lines)
