"""Verdicts: a fresh measurement against its baseline, latency and metric."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Optional

from .settings import CheckSettings


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


def base_series(lat: dict, calibrate: bool) -> list[float]:
    """A stored latency series as the check compares it before the fresh rounds exist:
    instructions per call where counted, else the (probe-normalized) time per call."""
    if len(lat.get("instructions") or []) >= 3:
        return list(lat["instructions"])
    return _samples(lat, calibrate and bool(lat.get("probe_ms")))


def compare_latency(cell: str, key: str, base: dict, fresh: dict, cs: CheckSettings,
                    calibrate: bool) -> Verdict:
    """One test at ``cs.alpha`` against the stored samples
    (:func:`harness.regression.stored.stored_decision`: Mann-Whitney on the fresh samples
    shifted by the tolerance), with the power predicted for the noise both samples show.

    The samples are instructions per call where both sides counted them (hardware counters:
    the least noisy statistic), else (probe-normalized) time per call; the note says which.
    """
    from .stored import mwu_power, noise_of, stored_decision

    name = f"latency {key}"
    limit = f"MWU shifted x{1 + cs.latency_tolerance:.2f}, alpha {cs.alpha:g}"
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
    status, p_slow, p_fast = stored_decision(b, f, cs.latency_tolerance, cs.alpha)
    # the noise both samples show (each about its own mean), and the power it predicts
    lb, lf = [math.log(v) for v in b], [math.log(v) for v in f]
    sigma = math.sqrt((noise_of(lb) ** 2 * (len(lb) - 1) + noise_of(lf) ** 2 * (len(lf) - 1))
                      / (len(lb) + len(lf) - 2))
    delta = math.log(cs.effect) - math.log1p(cs.latency_tolerance)
    power = mwu_power(len(b), len(f), delta, sigma, cs.alpha)
    bms, fms = statistics.median(base["round_ms"]), statistics.median(fresh["round_ms"])
    stat = {"cpu": "CPU ms/call", "min": "fastest call", "median": "median call"}.get(
        base.get("statistic", "median"), "median call")
    note = ("instructions/call (hardware counters)" if counted else
            stat + (", probe-normalized" if use_probe else ", not calibrated"))
    note += (f"; {len(b)} stored + {len(f)} fresh rounds, noise sd {sigma:.3f}: predicted "
             f"power {power:.3f} at x{cs.effect:g}")
    if power < cs.power:
        note += f" (below the {cs.power:g} goal)"
    if status == "pass" and ratio > 1 + cs.latency_tolerance:
        note += f"; slower but not significantly beyond the tolerance (p={p_slow:.3g})"
    return Verdict(cell, name, status, baseline=bms, fresh=fms, change=f"x{ratio:.3f}",
                   p_value=p_fast if status == "improved" else p_slow, limit=limit, note=note,
                   detail={"ratio": ratio, "p_slower": p_slow, "p_faster": p_fast,
                           "rounds": [len(b), len(f)], "noise_sd": sigma,
                           "predicted_power": power, "min_effect": cs.effect})


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
