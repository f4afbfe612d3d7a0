"""Torrey & Shavlik's three benefits of transfer, measured against training from scratch.

Torrey & Shavlik 2009, "Transfer Learning", Handbook of Research on Machine Learning
Applications, section 2 (quoted in the lecture): a transferred model may show

1. a **higher start**: better skill before refinement; here the validation metric after
   the first epoch;
2. a **higher slope**: faster improvement; here the normalized area under the validation
   learning curve (see :func:`normalized_auc`);
3. a **higher asymptote**: better converged skill; here the best validation metric.

Each is compared with the *baseline* cell of the same backbone, task, dataset and seed
(by default a cell whose strategy does not transfer, ``Strategy.pretrained = False``: the
built-in ``scratch``, the lecture's model 1).

Signature, for the reports::

    transfer_benefits(cells: list[dict], baseline: Optional[str] = None) -> list[dict]

``cells`` are cell records as :func:`harness.run.cell.run_cell` writes them (keys used:
``key``, ``status``, ``config`` with ``backbone``/``task``/``dataset``/``strategy``/``seed``,
``history.epochs[*].val_metric``, ``higher_is_better``, ``metric_name``). The result has
one entry per ``ok`` cell that is not a baseline and has an ``ok`` baseline::

    {"key": ..., "baseline_key": ..., "strategy": ..., "backbone": ..., "task": ...,
     "dataset": ..., "seed": ..., "metric": "accuracy",
     "start":     {"value": v, "baseline": b, "gain": g, "better": bool},
     "slope":     {...}, "asymptote": {...}}

``gain`` is ``value - baseline`` for metrics where higher is better and ``baseline -
value`` otherwise, so a positive gain is always a benefit. Cells without a baseline are
listed with ``"baseline_key": None`` and ``"missing": "<reason>"`` instead of numbers.
"""
from __future__ import annotations

from typing import Optional

BENEFITS = ("start", "slope", "asymptote")


def _strategy_name(label: str) -> str:
    return label.split(",", 1)[0]


def normalized_auc(curve: list, horizon: Optional[int] = None, higher_is_better: bool = True
                   ) -> float:
    """Area under a per-epoch curve by the trapezoid rule, divided by its length in epochs.

    Curves of different lengths (early stopping) are compared over a common ``horizon``:
    a curve that stopped earlier is extended with its best value, since a phase ends by
    restoring its best weights and that is the model it delivers. A one-point curve's
    area is its value. The result is in the metric's units (a mean level of skill).
    """
    if not curve:
        raise ValueError("empty learning curve")
    pts = [float(v) for v in curve]
    horizon = max(horizon or len(pts), len(pts))
    best = max(pts) if higher_is_better else min(pts)
    pts += [best] * (horizon - len(pts))
    if len(pts) == 1:
        return pts[0]
    area = sum((a + b) / 2 for a, b in zip(pts, pts[1:]))
    return area / (len(pts) - 1)


def _group_key(rec: dict) -> tuple:
    c = rec["config"]
    return (c["backbone"], c["task"], c["dataset"], c["seed"])


def _compare(value: float, base: float, higher: bool) -> dict:
    gain = value - base if higher else base - value
    return {"value": value, "baseline": base, "gain": gain, "better": gain > 0}


def _is_baseline(rec: dict, baseline: Optional[str]) -> bool:
    if baseline is not None:
        return _strategy_name(rec["config"]["strategy"]) == baseline
    # trained without transfer: a strategy with ``pretrained = False`` (records written
    # before cells said so: weights that are not pretrained)
    return rec.get("transfer", (rec.get("weights") or {}).get("pretrained", True)) is False


def transfer_benefits(cells: list, baseline: Optional[str] = None) -> list:
    """The three benefits of every ok cell against its baseline cell (see module doc).

    Args:
        cells: cell records.
        baseline: strategy name of the baseline cells; default: the cells whose strategy
            does not transfer (``Strategy.pretrained`` is False, e.g. ``scratch``).
    """
    ok = [c for c in cells if c.get("status") == "ok" and c.get("history", {}).get("epochs")]
    bases = {}
    for c in ok:
        if _is_baseline(c, baseline):
            bases.setdefault(_group_key(c), c)
    out = []
    what = repr(baseline) if baseline else "from-scratch (not transferring)"
    for c in ok:
        if _is_baseline(c, baseline):
            continue
        cfg = c["config"]
        entry = {"key": c.get("key"), "strategy": cfg["strategy"], "backbone": cfg["backbone"],
                 "task": cfg["task"], "dataset": cfg["dataset"], "seed": cfg["seed"],
                 "metric": c.get("metric_name")}
        base = bases.get(_group_key(c))
        if base is None:
            entry.update(baseline_key=None,
                         missing=f"no ok {what} cell with the same backbone, task, "
                                 f"dataset and seed")
            out.append(entry)
            continue
        higher = bool(c.get("higher_is_better", True))
        cur = [e["val_metric"] for e in c["history"]["epochs"]]
        ref = [e["val_metric"] for e in base["history"]["epochs"]]
        horizon = max(len(cur), len(ref))
        pick = max if higher else min
        entry["baseline_key"] = base.get("key")
        entry["start"] = _compare(cur[0], ref[0], higher)
        entry["slope"] = _compare(normalized_auc(cur, horizon, higher),
                                  normalized_auc(ref, horizon, higher), higher)
        entry["asymptote"] = _compare(pick(cur), pick(ref), higher)
        out.append(entry)
    return out
