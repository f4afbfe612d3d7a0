"""Baseline files: entries, creation, validation on load, machine fingerprints."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

from ..api.manager import PluginSystem
from ..measure.env import environment, machine_fingerprint
from ..run.results import atomic_write_json
from .rebuild import cell_config, cell_identity
from .settings import (FORMAT, LEGACY_CHECK_KEYS, VERSION, BaselineError, CheckSettings,
                       RoundSettings)


def resolved_profiles(plugins: PluginSystem, names, custom: dict) -> dict:
    from ..run.cell import resolve_profile
    out = {}
    for n in names:
        p = resolve_profile(plugins, n, custom)
        out[n] = {"batch_size": p.batch_size, "threads": p.threads,
                  "precisions": list(p.precisions), "device": p.device}
    return out


def make_entry(config: dict, profiles: dict, data_info: dict, metric_name: Optional[str] = None,
               higher_is_better: bool = True, metric: Optional[float] = None) -> dict:
    """A baseline cell entry (latency is added by :func:`measure_latency`)."""
    cfg = cell_config(config)
    return {"id": cell_identity(config), "label": cfg.label(), "config": config,
            "profiles": profiles, "data_info": data_info, "metric_name": metric_name,
            "higher_is_better": higher_is_better, "metric": metric, "latency": {}}


def new_baseline(entries: list[dict], rs: RoundSettings, check: CheckSettings,
                 source: str) -> dict:
    env = environment()
    return {"format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "source": source, "environment": env, "fingerprint": machine_fingerprint(env),
            "check": asdict(check), "measure": asdict(rs), "cells": entries}


def write_baseline(path: Path, baseline: dict) -> None:
    atomic_write_json(Path(path), baseline)


def load_baseline(path: Path) -> dict:
    """Read and validate a baseline file.

    Raises:
        BaselineError: the file is missing, not JSON, or lacks what a check needs; the
            message names the file and what is wrong.
    """
    path = Path(path)
    fix = "; create one with `bench baseline create --out FILE`"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BaselineError(f"baseline file {path} does not exist{fix}") from None
    except OSError as exc:
        raise BaselineError(f"cannot read baseline file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BaselineError(f"baseline file {path} is not valid JSON (line {exc.lineno}, "
                            f"column {exc.colno}: {exc.msg}){fix}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BaselineError(f"{path} is not a transfer-bench baseline (no \"format\": "
                            f"\"{FORMAT}\"){fix}")
    if data.get("version") != VERSION:
        raise BaselineError(f"{path}: baseline version {data.get('version')!r} is not supported "
                            f"(this transfer-bench reads version {VERSION}){fix}")
    for key, typ in (("cells", list), ("check", dict), ("measure", dict)):
        if not isinstance(data.get(key), typ):
            raise BaselineError(f"{path}: key {key!r} is missing or not a "
                                f"{'list' if typ is list else 'table'}{fix}")
    legacy = sorted(set(data["check"]) & set(LEGACY_CHECK_KEYS))
    data["legacy_notes"] = [f"{path}: [check] {k} ({LEGACY_CHECK_KEYS[k]}) is no longer used "
                            "and was dropped" for k in legacy]
    for k in legacy:
        del data["check"][k]
    for sec, cls in (("check", CheckSettings), ("measure", RoundSettings)):
        allowed = {f.name for f in fields(cls)}
        bad = set(data[sec]) - allowed
        if bad:
            raise BaselineError(f"{path}: unknown key(s) {sorted(bad)} in [{sec}]; allowed: "
                                f"{', '.join(sorted(allowed))}")
        try:
            cls(**data[sec])
        except (TypeError, ValueError) as exc:
            raise BaselineError(f"{path}: [{sec}] {exc}") from None
    if not data["cells"]:
        raise BaselineError(f"{path}: the baseline has no cells{fix}")
    for i, c in enumerate(data["cells"]):
        missing = [k for k in ("id", "label", "config", "profiles", "latency")
                   if not isinstance(c, dict) or k not in c]
        if missing:
            raise BaselineError(f"{path}: cell {i} lacks {', '.join(missing)}{fix}")
        for key, lat in c["latency"].items():
            if "round_ms" in lat and (not isinstance(lat["round_ms"], list) or
                                      not all(isinstance(v, (int, float)) for v in lat["round_ms"])):
                raise BaselineError(f"{path}: cell {c['label']!r} latency {key!r}: round_ms "
                                    f"must be a list of numbers")
    return data


def drift_reasons(baseline: dict, plugins: Optional[PluginSystem] = None) -> list[str]:
    """Why this machine's latency cannot be compared with the baseline's at the stated alpha:
    another kind of machine (CPU model, cores, architecture, GPU) or other versions of the
    measured packages (Python, torch, every runtime's packages). Empty when none.

    transfer-bench's own version and third-party plugins' are not compared: they are the code
    under test.
    """
    from ..measure.env import package_versions

    out = []
    here = machine_fingerprint(environment(plugins))
    there = baseline.get("fingerprint") or {}
    diffs = [f"{k}: baseline {there.get(k)!r}, here {here.get(k)!r}" for k in sorted(here)
             if there.get(k) != here.get(k)]
    if diffs:
        out.append("the baseline was measured on another kind of machine (" + "; ".join(diffs) +
                   ")")
    old = (baseline.get("environment") or {}).get("versions") or {}
    now = package_versions(plugins)
    vdiffs = [f"{k} {old[k]} -> {now[k]}" for k in sorted(set(old) & set(now))
              if k != "transfer-bench" and not k.startswith("plugin ") and old[k] != now[k]]
    if vdiffs:
        out.append("the baseline was measured with other package versions (" +
                   ", ".join(vdiffs) + ")")
    return out
