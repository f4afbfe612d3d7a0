"""The recommendation: the most accurate backbone + strategy within a latency budget.

For every dataset/task and latency profile, each deployable variant of a configuration (a
runtime and precision it was measured with) is one *candidate*: its accuracy (the mean test
metric over seeds, or the accuracy measured after conversion for lower precisions) and its
latency (the median over seeds of the p50). Both metrics are scored on the same test
images (:mod:`harness.report.scoring`): a row scored on a subset is no candidate, and a
lower precision without a metric of its own never borrows the fp32 one. Candidates compete
separately by the device class of their backbone (``mobile`` / ``server``, from
``BackboneSpec.device_class``) and by the hardware their latency was measured on (``cpu`` /
``gpu``: a row whose ``device`` is a GPU): a GPU's end-to-end latency and a CPU's answer
different deployment questions, so they share a pool only when asked
(``recommend(..., mix_devices=True)``).

The pick is the candidate with the best metric whose p50 is within the budget (ties go to
the faster one). With one seed such a pick always lies on the Pareto front (no other candidate is both
faster and more accurate; with several seeds the tie rule below may trade a point of mean
metric for speed), which is printed with it as the justification.

Uncertainty. With two or more seeds every candidate has a 95% Student-t interval of its
metric (:func:`harness.report.stats.mean_ci`). Candidates whose interval overlaps the most
accurate one's are a *tie*: the data cannot rank them, so the pick among them is the
fastest (lowest p50), then the cheaper to train (fewer training FLOPs, or training seconds
where FLOPs were not recorded), and the verdict says ``tie (p = ...)`` with the paired t
p-value against the most accurate (:func:`harness.report.stats.compare_configs`). With one
seed the verdict says "uncertain" (:data:`ONE_SEED`): no interval exists.

Noisy latency. A candidate whose latency failed the stability criterion after its
re-measurements (:mod:`harness.report.noise`) is marked ``~``; a pick with such a latency
is called "unreliable" in its verdict, and a noisy latency on its Pareto front is named
(:func:`latency_caveat`). (Overlapping 95% intervals are a
conservative test: two means can differ significantly while their intervals overlap;
the printed p says how close it was.)
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional

from tabulate import tabulate

from . import noise
from .scoring import row_metric
from .stats import compare_configs, configuration, mean_ci

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
    per_seed: tuple = ()  # ((seed, metric), ...)
    ci_half: Optional[float] = None  # 95% t half-width (None with one seed)
    train_flops: Optional[float] = None  # mean over seeds; None when not recorded
    train_seconds: Optional[float] = None
    hardware: str = "cpu"  # where the latency was measured: "cpu" or "gpu"
    noisy: tuple = ()
    """Why its latency was noisy (:mod:`harness.report.noise`), over its seeds; () if clean."""

    def label(self) -> str:
        prec = "" if self.precision == "fp32" else f" {self.precision}"
        return f"{self.backbone} + {self.strategy} ({self.runtime}{prec})"

    def score(self) -> float:
        """Larger is better, whatever the metric's direction."""
        return self.metric if self.higher_is_better else -self.metric

    def overlaps(self, other: "Candidate") -> bool:
        """Whether the two 95% intervals overlap (False when either has none)."""
        if self.ci_half is None or other.ci_half is None:
            return False
        return (self.metric - self.ci_half <= other.metric + other.ci_half
                and other.metric - other.ci_half <= self.metric + self.ci_half)

    def train_cost(self) -> tuple:
        """Sort key of training cost: FLOPs where recorded, else seconds, unknown last."""
        if self.train_flops is not None:
            return (0, self.train_flops)
        return (1, self.train_seconds if self.train_seconds is not None else float("inf"))


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
    verdict: str = ""  # how sure: tie (p = ...), clear, uncertain (one seed); unreliable
    ties: list = field(default_factory=list)  # candidates the pick is tied with
    hardware: str = "cpu"  # the pool's hardware: "cpu", "gpu" or "cpu+gpu" (mix_devices)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["pick"] = asdict(self.pick) if self.pick else None
        d["front"] = [asdict(c) for c in self.front]
        d["ties"] = [asdict(c) for c in self.ties]
        return d


def candidates(records: Iterable[dict]) -> list[Candidate]:
    """Every (configuration, profile, runtime, precision) measured in finished cells, less
    the rows whose outputs disagree with PyTorch's (``outputs_check.ok`` False)."""
    groups: dict = {}
    for rec in records:
        if rec.get("status") != "ok" or not rec.get("metric_name"):
            continue
        dclass = (rec.get("backbone_facts") or {}).get("device_class", "server")
        for lat in rec.get("latency", []):
            st = lat.get("stats")
            if not st or st.get("p50_ms") is None:
                continue
            if (lat.get("outputs_check") or {}).get("ok") is False:
                continue  # outputs that disagree with PyTorch's: not a deployable variant
            metric = row_metric(rec, lat)  # fp32 metric or accuracy after, same images
            if metric is None:
                continue
            k = (configuration(rec), lat.get("profile"), lat.get("runtime"),
                 lat.get("precision"))
            g = groups.setdefault(k, {"rec": rec, "class": dclass, "hw": row_hardware(lat),
                                      "lat": [], "p90": [],
                                      "metric": [], "seeds": [], "flops": [], "seconds": [],
                                      "noisy": []})
            g["noisy"] += [r for r in noise.reasons(lat) if r not in g["noisy"]]
            g["lat"].append(st["p50_ms"])
            if st.get("p90_ms") is not None:
                g["p90"].append(st["p90_ms"])
            g["metric"].append(metric)
            g["seeds"].append(((rec.get("config") or {}).get("seed"), metric))
            g["flops"].append((rec.get("budget") or {}).get("train_flops"))
            g["seconds"].append(rec.get("train_seconds"))
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
            metric_ci=interval.half, per_seed=tuple(g["seeds"]), ci_half=interval.half,
            train_flops=(statistics.fmean(g["flops"]) if None not in g["flops"] else None),
            train_seconds=(statistics.fmean(g["seconds"]) if None not in g["seconds"]
                           else None), hardware=g["hw"], noisy=tuple(g["noisy"])))
    return out


def row_hardware(lat: dict) -> str:
    """``"gpu"`` for a latency row measured on a GPU (its ``device`` names a GPU, or it has
    a GPU compute time), else ``"cpu"``."""
    if lat.get("gpu_compute") is not None:
        return "gpu"
    device = str(lat.get("device") or "cpu").lower()
    return "cpu" if device == "cpu" or device.startswith("cpu") else "gpu"


def pick_with_ties(pool: list) -> tuple:
    """``(pick, ties, verdict)`` among candidates within the budget (module doc)."""
    best = max(pool, key=lambda c: (c.score(), -c.latency_ms))
    if best.n < 2:
        return best, [], ONE_SEED
    tied = [c for c in pool if c is best or best.overlaps(c)]
    pick = min(tied, key=lambda c: (c.latency_ms, c.train_cost(), -c.score()))
    others = [c for c in tied if c is not pick]
    if not others:
        rest = [c for c in pool if c is not best]
        if not rest:
            return best, [], "the only candidate"
        runner = max(rest, key=lambda c: c.score())
        p = compare_configs(dict(best.per_seed), dict(runner.per_seed)).p
        return best, [], ("clear: no other 95% interval overlaps"
                          + (f" (next best p = {p:.2g})" if p is not None else ""))
    ref = best if pick is not best else max(others, key=lambda c: c.score())
    p = compare_configs(dict(pick.per_seed), dict(ref.per_seed)).p
    ptext = f"p = {p:.2g}" if p is not None else "p untestable: no shared seed"
    same_speed = [c for c in tied if c is not pick and c.latency_ms == pick.latency_ms]
    if pick is best:
        why = "the most accurate is also the fastest"
    elif same_speed:  # one architecture's strategies share one latency measurement
        why = (f"picked the cheaper to train among the {len(same_speed) + 1} equally fast "
               f"(one shared latency measurement)")
    elif pick.latency_ms < best.latency_ms:
        why = "picked the faster"
    else:
        why = "picked the cheaper to train"
    return pick, others, (f"tie ({ptext}) with {ref.label()} {ref.metric:.3f}: {why}"
                          + (f"; {len(others)} tied" if len(others) > 1 else ""))


ONE_SEED = ("uncertain: one seed, so no interval; another seed may rank differently (run "
            "--seeds 3 or more)")
"""The verdict of a pick made from one seed."""


def latency_caveat(pick: Optional[Candidate], front: list) -> str:
    """Words on noisy latencies behind a pick: the pick's own ("unreliable") or those of
    the front it was chosen from; '' when every one was stable."""
    if pick is not None and pick.noisy:
        return (f"unreliable: its latency was noisy even after re-measuring "
                f"({pick.noisy[0]})")
    others = [c for c in front if c.noisy]
    if others:
        return (f"{len(others)} of the {len(front)} Pareto-front latencies were noisy "
                f"({others[0].label()}: {others[0].noisy[0]}): the trade-off may change")
    return ""


def pareto_front(cands: Iterable[Candidate]) -> list[Candidate]:
    """Candidates no other one beats on both latency and metric, fastest first."""
    ordered = sorted(cands, key=lambda c: (c.latency_ms, -c.score()))
    front, best = [], float("-inf")
    for c in ordered:
        if c.score() > best:
            front.append(c)
            best = c.score()
    return front


def recommend(records: Iterable[dict], budget_ms: Optional[float] = None,
              mix_devices: bool = False) -> list[Recommendation]:
    """One :class:`Recommendation` per dataset/task x profile x device class x hardware.

    Args:
        records: cell records of a run.
        budget_ms: the largest acceptable p50 latency; None for no limit.
        mix_devices: rank GPU and CPU rows in one pool (default: a pool each).
    """
    if budget_ms is not None and budget_ms <= 0:
        raise ValueError(f"--budget-ms must be > 0, got {budget_ms}")
    cands = candidates(records)
    out = []
    keys = sorted({(c.dataset, c.task, c.profile) for c in cands})
    hardwares = (("cpu+gpu", ("cpu", "gpu")),) if mix_devices else (
        ("cpu", ("cpu",)), ("gpu", ("gpu",)))
    for dataset, task, profile in keys:
        for dclass, (hw_name, hws) in ((d, h) for d in DEVICE_CLASSES for h in hardwares):
            pool = [c for c in cands if (c.dataset, c.task, c.profile, c.device_class)
                    == (dataset, task, profile, dclass) and c.hardware in hws]
            if not pool:
                continue
            front = pareto_front(pool)
            within = [c for c in pool if budget_ms is None or c.latency_ms <= budget_ms]
            pick, ties, verdict = pick_with_ties(within) if within else (None, [], "")
            caveat = latency_caveat(pick, front)
            verdict = "; ".join(v for v in (verdict, caveat) if v)
            reason = "" if pick else (
                f"no {dclass}-class candidate is within {budget_ms:g} ms; the fastest takes "
                f"{front[0].latency_ms:.3g} ms ({front[0].label()})")
            out.append(Recommendation(dataset, task, profile, dclass, budget_ms, pick, front,
                                      reason, verdict, ties, hw_name))
    return out


def _profile_label(r: Recommendation) -> str:
    """The profile, with the hardware when the pool is not the CPU's."""
    return r.profile if r.hardware == "cpu" else f"{r.profile} ({r.hardware.upper()})"


def format_recommendations(recs: list[Recommendation], fmt: str = "simple") -> str:
    """A table per dataset/task: the pick per profile and device class, and its front."""
    if not recs:
        return "recommendation: no finished cell has both a test metric and a latency"
    budget = recs[0].budget_ms
    lines = [f"Recommendation (most accurate within a p50 budget of "
             f"{'no limit' if budget is None else f'{budget:g} ms'}):"]
    rows = []
    for r in recs:
        front = "; ".join(f"{c.label()} {noise.MARK if c.noisy else ''}{c.latency_ms:.3g} ms "
                          f"{c.metric:.3f}" for c in r.front)
        if r.pick:
            p = r.pick
            ci = f" ± {p.ci_half:.3f}" if p.ci_half is not None else ""
            rows.append([f"{r.dataset}/{r.task}", _profile_label(r), r.device_class, p.label(),
                         f"{p.metric_name} {p.metric:.3f}{ci}"
                         + (f" (n={p.n})" if p.n > 1 else " (1 seed)"),
                         f"{noise.MARK if p.noisy else ''}{p.latency_ms:.3g}", r.verdict,
                         front])
        else:
            rows.append([f"{r.dataset}/{r.task}", _profile_label(r), r.device_class, "none",
                         r.reason, "-", "-", front])
    lines.append(tabulate(rows, headers=["data/task", "profile", "class", "pick", "metric",
                                         "p50 ms", "certainty", "Pareto front (latency, metric)"],
                          tablefmt=fmt, disable_numparse=True,
                          maxcolwidths=[None, None, None, 40, 45, None, 40, 70]
                          if fmt == "simple" else None))
    picks = [r.pick for r in recs if r.pick]
    if any(p.n < 2 for p in picks):
        lines.append("Uncertain: a pick from one seed has no interval; the same run with "
                     "another seed may pick differently (bench run --seeds 3 gives 95% "
                     "intervals and a tie rule).")
    if any(c.noisy for r in recs for c in r.front + ([r.pick] if r.pick else [])):
        lines.append(f"{noise.MARK} = noisy latency: it failed the stability criterion even "
                     f"after re-measuring (the legend under the cells table says how); a pick "
                     f"marked unreliable may change on a quiet machine.")
    return "\n".join(lines)
