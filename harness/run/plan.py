"""What a run will do, before it does it: ``bench run --dry-run``, and the header of a run.

The plan names the cells, the weights every backbone starts from, who chose them and the
pretraining they imply (:mod:`harness.run.weights_plan`), the runtimes and profiles it
measures (with the reason for a runtime that cannot run here), and an estimated time.

The estimate uses measured speeds only: the wall time of the same cell (same backbone,
strategy, dataset, task, image size, training settings, runtimes, profiles and device) in
an earlier run folder under the same ``--out`` on this machine (the median when there are
several). A cell never measured has no estimate, and the plan says how many such cells
there are instead of guessing.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..api.manager import PluginSystem
from .config import MatrixConfig
from .timefmt import format_seconds
from .weights_plan import plan_lines


@dataclass
class Plan:
    """A matrix's run before it starts; :meth:`lines` prints it."""

    name: str
    run_dir: Path
    cells: list
    finished: int
    hardware: str
    notes: list
    weights: list = field(default_factory=list)        # lines of weights_plan.plan_lines
    runtimes: list = field(default_factory=list)       # [(name, available, why)]
    profiles: list = field(default_factory=list)       # [(name, text)]
    estimate_s: float = 0.0
    estimated: int = 0       # cells with a measured time
    unestimated: int = 0     # cells never measured here
    ranking: Optional[str] = None

    def lines(self) -> list[str]:
        todo = len(self.cells) - self.finished
        axes = {plural: list(dict.fromkeys(getattr(c, k).label() for c in self.cells))
                for k, plural in (("backbone", "backbones"), ("strategy", "strategies"),
                                  ("dataset", "datasets"), ("task", "tasks"))}
        seeds = sorted({c.seed for c in self.cells})
        out = [f"plan: {len(self.cells)} cell(s) of matrix {self.name!r} = "
               + " x ".join(f"{len(v)} {k if len(v) != 1 else _SINGULAR[k]}"
                            for k, v in axes.items())
               + (f" x {len(seeds)} seeds" if len(seeds) > 1 else "")
               + (" (weights axis included)" if len(self.cells) > _product(axes, seeds) else ""),
               f"  run folder: {self.run_dir}"
               + (f" ({self.finished} cell(s) already finished there, {todo} to run)"
                  if self.finished else "")]
        for k, v in axes.items():
            out.append(f"  {k}: {', '.join(v)}")
        out.append(f"  {self.hardware}")
        out += [f"  {line}" for line in self.weights]  # per backbone; pretrainings too
        if self.runtimes:
            out.append("  latency: " + "; ".join(f"profile {n} ({t})" for n, t in self.profiles))
            for name, ok, why in self.runtimes:
                out.append(f"    {name}: " + ("available" if ok else f"unavailable here: {why}"))
        else:
            out.append("  latency: not measured (no runtime in the matrix)")
        if self.ranking:
            out.append(f"  {self.ranking}")
        out.append("  " + self.estimate_line())
        out += [f"note: {n}" for n in self.notes]
        return out

    def estimate_line(self) -> str:
        todo = len(self.cells) - self.finished
        if todo == 0:
            return "estimated time: nothing to run (every cell finished)"
        known = (f"about {format_seconds(self.estimate_s)} for {self.estimated} cell(s), "
                 "from their measured times in earlier runs here" if self.estimated else "")
        unknown = (f"{self.unestimated} cell(s) never measured on this machine, so no "
                   "estimate for them" if self.unestimated else "")
        return "estimated time: " + "; ".join(p for p in (known, unknown) if p)


_SINGULAR = {"backbones": "backbone", "strategies": "strategy", "datasets": "dataset",
             "tasks": "task"}


def _product(axes: dict, seeds: list) -> int:
    n = len(seeds)
    for v in axes.values():
        n *= len(v)
    return n


def plan_run(plugins: PluginSystem, matrix: MatrixConfig, cells: list, notes: list,
             run_dir: Path, hardware_header: str, finished: int = 0,
             ranking: Optional[str] = None) -> Plan:
    """The plan of ``cells`` (validated, with their hardware) of ``matrix``."""
    plan = Plan(name=matrix.name, run_dir=run_dir, cells=cells, finished=finished,
                hardware=hardware_header, notes=list(notes), ranking=ranking)
    any_pretrained = any(plugins.strategies.get(c.strategy.name).cls.pretrained for c in cells)
    plan.weights = plan_lines(plugins, matrix, any_pretrained, cells)
    if any_pretrained and any(not plugins.strategies.get(c.strategy.name).cls.pretrained
                              for c in cells):
        plan.weights.append("weights of the cells that do not transfer (scratch): random init")
    for name in matrix.runtimes:
        try:
            ok, why = plugins.runtimes.get(name).available()
        except Exception as exc:  # an availability check that raises says why
            ok, why = False, f"{type(exc).__name__}: {exc}"
        plan.runtimes.append((name, bool(ok), why))
    from .cell import resolve_profile
    for p in matrix.profiles:
        prof = resolve_profile(plugins, p, matrix.custom_profiles)
        plan.profiles.append((p, f"batch {prof.batch_size}, threads {prof.threads or 'all'}, "
                                 f"{'/'.join(prof.precisions)}"))
    return plan


def cell_shape(cfg: dict) -> str:
    """What decides a cell's wall time: its configuration less the seed (JSON text)."""
    keep = {k: v for k, v in cfg.items() if k not in ("seed",)}
    return json.dumps(keep, sort_keys=True, default=str)


def measured_times(out_root: Path) -> dict:
    """``{cell shape: [seconds]}`` of the ``ok`` cells of every run folder under
    ``out_root`` (their ``finished - started``)."""
    times: dict = {}
    for f in Path(out_root).glob("*/cells/*.json"):
        try:
            rec = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("status") != "ok" or not rec.get("finished") or not rec.get("started"):
            continue
        times.setdefault(cell_shape(rec.get("config") or {}), []).append(
            float(rec["finished"]) - float(rec["started"]))
    return times


def estimate(plan: Plan, todo: list, out_root: Path) -> None:
    """Fill ``plan``'s estimate for the cells ``todo`` (CellConfig) from measured times."""
    times = measured_times(out_root)
    plan.estimate_s, plan.estimated, plan.unestimated = 0.0, 0, 0
    for c in todo:
        seen = times.get(cell_shape(c.to_dict()))
        if seen:
            plan.estimate_s += statistics.median(seen)
            plan.estimated += 1
        else:
            plan.unestimated += 1


__all__ = ["Plan", "plan_run", "estimate", "measured_times", "format_seconds"]
