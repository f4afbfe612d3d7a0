"""Verdicts: a fresh measurement against its baseline, latency and metric."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Optional

from .settings import CheckSettings
from .statistics import mann_whitney_greater


def latency_status(ratio: float, p_slow: float, p_fast: float,
                   cs: CheckSettings) -> tuple[str, float]:
    """``(status, p)`` of a latency comparison against a stored baseline: a regression needs
    the ratio past the tolerance AND a significant one-sided test (asv's rule); "improved"
    the same the other way; else "pass" with the slow side's p. (The paired check decides
    with one sequential test instead: :mod:`harness.regression.sequential`.)"""
    if ratio > 1 + cs.latency_tolerance and p_slow < cs.alpha:
        return "regression", p_slow
    if ratio < 1 / (1 + cs.latency_tolerance) and p_fast < cs.alpha:
        return "improved", p_fast
    return "pass", p_slow


@dataclass
class Verdict:
    """One line of the verdict table."""

    cell: str
    check: str  # "latency pytorch/mobile/fp32" or "accuracy"
    status: str  # pass | regression | improved | skipped | error | undecided
    baseline: Optional[float] = None
    fresh: Optional[float] = None
    change: Optional[str] = None
    p_value: Optional[float] = None
    limit: str = ""
    note: str = ""
    detail: dict = field(default_factory=dict)


def _samples(lat: dict, calibrate: bool) -> list[float]:
    if calibrate and lat.get("probe_ms") and len(lat["probe_ms"]) == len(lat["round_ms"]):
        return [m / p for m, p in zip(lat["round_ms"], lat["probe_ms"]) if p > 0]
    return list(lat["round_ms"])


def compare_latency(cell: str, key: str, base: dict, fresh: dict, cs: CheckSettings,
                    calibrate: bool) -> Verdict:
    """Ratio of medians of the block samples, and a Mann-Whitney test.

    The samples are instructions per call where both sides counted them (hardware counters:
    the least noisy statistic), else (probe-normalized) time per call; the note says which.
    """
    name = f"latency {key}"
    limit = f"ratio <= {1 + cs.latency_tolerance:.2f} or p >= {cs.alpha:g}"
    for src, lat in (("baseline", base), ("fresh", fresh)):
        if lat.get("error") or lat.get("unavailable"):
            return Verdict(cell, name, "error" if lat.get("error") else "skipped", limit=limit,
                           note=f"{src}: {lat.get('error') or lat.get('unavailable')}")
    if base.get("statistic", "cpu") != fresh.get("statistic", "cpu"):
        return Verdict(cell, name, "error", limit=limit,
                       note=f"the baseline's samples are '{base.get('statistic')}', this check's "
                            f"'{fresh.get('statistic')}'; check with --statistic "
                            f"{base.get('statistic')} or update the baseline")
    use_probe = calibrate and bool(base.get("probe_ms")) and bool(fresh.get("probe_ms"))
    counted = len(base.get("instructions") or []) >= 3 and len(fresh.get("instructions") or []) >= 3
    if counted:
        b, f = list(base["instructions"]), list(fresh["instructions"])
    else:
        b, f = _samples(base, use_probe), _samples(fresh, use_probe)
    if len(b) < 3 or len(f) < 3:
        return Verdict(cell, name, "error", limit=limit,
                       note=f"too few samples (baseline {len(b)}, fresh {len(f)}; need 3)")
    ratio = statistics.median(f) / statistics.median(b)
    p_slow = mann_whitney_greater(f, b)
    p_fast = mann_whitney_greater(b, f)
    bms, fms = statistics.median(base["round_ms"]), statistics.median(fresh["round_ms"])
    status, p = latency_status(ratio, p_slow, p_fast, cs)
    stat = {"cpu": "CPU ms/call", "min": "fastest call", "median": "median call"}.get(
        base.get("statistic", "median"), "median call")
    note = ("instructions/call (hardware counters)" if counted else
            stat + (", probe-normalized" if use_probe else ", not calibrated"))
    if status == "pass" and ratio > 1 + cs.latency_tolerance:
        note += f"; slower but not significant (p={p_slow:.3g})"
    return Verdict(cell, name, status, baseline=bms, fresh=fms, change=f"x{ratio:.3f}",
                   p_value=p, limit=limit, note=note,
                   detail={"ratio": ratio, "p_slower": p_slow, "p_faster": p_fast,
                           "rounds": [len(b), len(f)]})


def compare_metric(entry: dict, fresh: Optional[float], cs: CheckSettings,
                   why_missing: str = "") -> Verdict:
    name = f"accuracy ({entry.get('metric_name') or 'metric'})"
    base = entry.get("metric")
    higher = entry.get("higher_is_better", True)
    limit = f"drop <= {cs.accuracy_drop:g}"
    if base is None:
        return Verdict(entry["label"], name, "skipped", limit=limit,
                       note="the baseline has no metric (latency-only baseline)")
    if fresh is None:
        return Verdict(entry["label"], name, "skipped", baseline=base, limit=limit,
                       note=why_missing or "no fresh metric: pass --run RUN or --retrain")
    drop = (base - fresh) if higher else (fresh - base)
    status = "regression" if drop > cs.accuracy_drop + 1e-12 else (
        "improved" if drop < -cs.accuracy_drop else "pass")
    return Verdict(entry["label"], name, status, baseline=base, fresh=fresh,
                   change=f"{-drop if higher else drop:+.4f}", limit=limit)


def exit_code(verdicts: list[Verdict]) -> int:
    """0 when every check holds, 1 on a regression, 2 when a check could not be done (an
    error, or a sequential test still undecided after its last round)."""
    if any(v.status in ("error", "undecided") for v in verdicts):
        return 2
    return 1 if any(v.status == "regression" for v in verdicts) else 0


def confirm_regression(first: "Verdict", second: "Verdict", attempt: int) -> None:
    """Fold re-measurement ``attempt``'s verdict ``second`` into the suspected regression
    ``first`` (both modes, stored baseline and paired): kept in its detail; a regression
    not seen again becomes a pass, with the reason in the note."""
    first.detail.setdefault("confirmations", []).append(second.detail)
    if second.status != "regression":
        first.status = "pass"
        p = f"{second.p_value:.2g}" if second.p_value is not None else "n/a"
        first.note += f"; not confirmed on re-measurement {attempt + 1} ({second.change}, p={p})"
    else:
        first.note += f"; confirmed ({second.change}, p={second.p_value:.2g})"
