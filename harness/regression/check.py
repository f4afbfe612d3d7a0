"""Orchestration of the regression check: baseline entries from a run or a matrix, a check's
verdicts against a stored baseline (metric; latency with its fresh rounds sized from the
stored noise, one test per series)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from ..api.errors import BenchError
from ..api.manager import PluginSystem
from .baseline import make_entry, resolved_profiles
from .rounds import measure_latency
from .rebuild import cell_config, cell_identity
from .settings import CheckSettings, RoundSettings
from .verdict import Verdict, compare_latency, compare_metric


def _data_info(rec: dict) -> dict:
    d = rec.get("data") or {}
    return {k: d[k] for k in ("name", "num_classes", "class_names", "num_keypoints") if k in d}


def _train_cell(plugins: PluginSystem, config: dict,
                progress: Callable[[str], None] = lambda m: None) -> dict:
    """Train and test one cell (no latency: the check measures latency its own way)."""
    from ..run.cell import run_cell
    from ..measure.env import package_versions

    cfg = cell_config({**config, "runtimes": []})
    return run_cell(plugins, cfg, cfg.key(package_versions(plugins)), progress=progress)


def entries_from_run(plugins: PluginSystem, run: Path) -> list[dict]:
    """Baseline entries (configuration, data facts, metric) of a run folder's ok cells."""
    from ..run.results import RunStore

    store = RunStore(Path(run))
    try:
        matrix = store.config().get("matrix", {})
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"{run} is not a run folder (config.json: {exc}); give the folder "
                         "that `bench run` printed after 'results:'") from None
    custom = matrix.get("custom_profiles", {})
    entries = []
    for rec in store.records():
        if rec.get("status") != "ok":
            continue
        cfg = rec["config"]
        metric = (rec.get("test_metrics") or {}).get(rec.get("metric_name", ""))
        entries.append(make_entry(cfg, resolved_profiles(plugins, cfg.get("profiles", []), custom),
                                  _data_info(rec), rec.get("metric_name"),
                                  rec.get("higher_is_better", True), metric))
    if not entries:
        raise BenchError(f"run {run} has no finished (ok) cell to take a baseline from")
    return entries


def entries_from_matrix(plugins: PluginSystem, matrix, train: bool = True,
                        progress: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Baseline entries of a matrix: trained for the metric unless ``train`` is False."""
    from ..run.cell import load_data
    from ..run.runner import validate

    cells, _notes = validate(plugins, matrix)
    entries = []
    for cfg in cells:
        conf = cfg.to_dict()
        profiles = resolved_profiles(plugins, cfg.profiles, matrix.custom_profiles)
        if train:
            progress(f"training {cfg.label()}")
            rec = _train_cell(plugins, conf, progress)
            if rec["status"] != "ok":
                raise BenchError(f"cell {cfg.label()} failed while creating the baseline: "
                                 f"{rec.get('error')}")
            metric = rec["test_metrics"].get(rec["metric_name"])
            entries.append(make_entry(conf, profiles, _data_info(rec), rec["metric_name"],
                                      rec["higher_is_better"], metric))
        else:
            info = load_data(plugins, cfg).info
            entries.append(make_entry(conf, profiles, {"name": info.name,
                                                       "num_classes": info.num_classes,
                                                       "num_keypoints": info.num_keypoints}))
    return entries


def attach_latency(plugins: PluginSystem, entries: list[dict], rs: RoundSettings,
                   progress: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Measure and store every entry's latency samples (errors are stored, not hidden)."""
    measured = measure_latency(plugins, entries, rs, progress=progress)
    for e in entries:
        e["latency"] = measured.get(e["id"], {})
    return entries


def fresh_metrics_from_run(run: Path) -> dict:
    """``{cell id: (metric or None, why missing)}`` from a run folder."""
    from ..run.results import RunStore

    store = RunStore(Path(run))
    if not store.cells_dir.is_dir():
        raise BenchError(f"{run} is not a run folder (no cells/ inside); give the folder that "
                         "`bench run` printed after 'results:'")
    out = {}
    for rec in store.records():
        if "config" not in rec:
            continue
        cid = cell_identity(rec["config"])
        if rec.get("status") == "ok":
            out[cid] = ((rec.get("test_metrics") or {}).get(rec.get("metric_name", "")), "")
        else:
            out[cid] = (None, f"the run's cell {rec.get('status')}: {rec.get('error')}")
    return out


def fresh_round_plan(entries: list[dict], cs: CheckSettings, calibrate: bool) -> dict:
    """``{(cell id, latency key): (fresh rounds, predicted power, stored noise sd, stored
    rounds)}``: each
    stored series' fresh rounds sized from its own noise
    (:func:`harness.regression.stored.fresh_rounds`)."""
    import math

    from .stored import fresh_rounds, noise_of
    from .verdict import base_series

    plan = {}
    for e in entries:
        for key, lat in e["latency"].items():
            if "round_ms" not in lat:
                continue
            series = base_series(lat, calibrate)
            if len(series) < 3 or min(series) <= 0:
                continue
            sigma = noise_of([math.log(v) for v in series])
            n, power = fresh_rounds(len(series), sigma, cs)
            plan[(e["id"], key)] = (n, power, sigma, len(series))
    return plan


def _refused(entries: list[dict], reasons: list[str]) -> list[Verdict]:
    why = ("refused: " + "; ".join(reasons) + ". A stored baseline's alpha holds only when "
           "nothing but the code changed between the two measurements: re-create it here "
           "(`bench baseline update --out FILE`) or compare with the base revision measured "
           "beside this code (`bench check --against REV`)")
    return [Verdict(e["label"], f"latency {key}", "error", note=why)
            for e in entries for key in sorted(e["latency"])]


def run_check(plugins: PluginSystem, baseline: dict, cs: CheckSettings,
              rs: Optional[RoundSettings] = None, run: Optional[Path] = None,
              retrain: bool = False, latency: bool = True,
              progress: Callable[[str], None] = lambda m: None,
              fresh_rounds: Optional[int] = None) -> list[Verdict]:
    """Compare fresh measurements with a baseline; one :class:`Verdict` per cell x check.

    Latency: refused (error verdicts) when :func:`~.baseline.drift_reasons` finds another
    kind of machine or other package versions; else ``fresh_rounds`` fresh rounds (default:
    the most any stored series needs, :func:`fresh_round_plan`) and one test per series
    (:func:`~.verdict.compare_latency`).
    """
    from .baseline import drift_reasons

    rs = rs or RoundSettings(**baseline["measure"])
    entries = baseline["cells"]
    verdicts: list[Verdict] = []
    fresh_metric: dict = {}
    if run is not None:
        fresh_metric = fresh_metrics_from_run(run)
    elif retrain:
        for e in entries:
            if e.get("metric") is None:
                continue
            progress(f"retraining {e['label']}")
            rec = _train_cell(plugins, e["config"], progress)
            fresh_metric[e["id"]] = (
                (rec.get("test_metrics") or {}).get(rec.get("metric_name", "")),
                "" if rec["status"] == "ok" else f"retraining failed: {rec.get('error')}")
    for e in entries:
        if run is None and not retrain:
            verdicts.append(compare_metric(e, None, cs))
            continue
        value, why = fresh_metric.get(e["id"], (None, f"cell not in run {run}"))
        v = compare_metric(e, value, cs, why)
        if why and e.get("metric") is not None:
            v.status = "error"  # asked for a fresh metric and could not get one
        verdicts.append(v)
    if not latency:
        return verdicts
    reasons = drift_reasons(baseline, plugins)
    if reasons:
        return verdicts + _refused(entries, reasons)
    plan = fresh_round_plan(entries, cs, rs.calibrate)
    n = fresh_rounds or max([v[0] for v in plan.values()] or [rs.rounds])
    progress(f"{n} fresh rounds (sized from the stored noise for power {cs.power:g} at "
             f"x{cs.effect:g})" if not fresh_rounds else f"{n} fresh rounds (--rounds)")
    reps = {(e["id"], lat["runtime"], lat["profile"]): lat["probe_reps"]
            for e in entries for lat in e["latency"].values()
            if lat.get("probe_reps") and "runtime" in lat}
    fresh = measure_latency(plugins, entries, replace(rs, rounds=max(n, 3)), probe_reps=reps,
                            progress=progress)
    for e in entries:
        got = fresh.get(e["id"], {})
        for key, base in sorted(e["latency"].items()):
            verdicts.append(compare_latency(
                e["label"], key, base, got.get(key) or got.get("*") or
                {"error": "not measured in this check (runtime or profile gone?)"},
                cs, rs.calibrate))
    return verdicts
