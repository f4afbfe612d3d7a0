"""Torrey & Shavlik's three benefits of transfer, measured against training from scratch.

Torrey & Shavlik 2009, "Transfer Learning", Handbook of Research on Machine Learning
Applications, Fig. 1, in the lecture's words: a transferred model may show

1. a **higher start**: "the initial skill (before refining the model) ... is higher";
   here the validation metric of the model before its first training step
   (``History.start``, the learning curve's epoch 0, recorded by every strategy). It means
   something only where the cell reuses a source model's head; a cell that puts a new,
   randomly initialised head on the backbone (every built-in strategy does) starts at
   chance by construction, whatever the backbone's weights, so its start is reported as
   chance (``"chance": True``, no gain and no verdict; :func:`start_is_chance`);
2. a **higher slope**: "the rate of improvement of skill during training ... is
   steeper"; here the least-squares slope of the validation metric against the epoch
   over epochs 0..k of the kept curve (:func:`kept_curve`), k = ``SLOPE_EPOCHS`` or fewer
   when either curve is shorter (:func:`slope`). It is a rate (metric per epoch): a curve
   shifted up by a constant has the same slope;
3. a **higher asymptote**: "the converged skill of the trained model is better"; here
   the validation metric of the model the strategy delivers (:func:`kept_value`).

The kept model. Every selection in training (early stopping, the restored best epoch,
chain-thaw's rollback) is made on the validation *loss*
(:data:`harness.train.loop.SELECTION`), so the asymptote is not the highest validation
metric of any epoch but the metric of the epoch that selection kept: the one whose
weights the cell delivers (``rec["kept_model"]``, measured again on the delivered model by
the cell runner). Epochs of a chain-thaw phase that was rolled back are shown in the
learning curve but counted nowhere: :func:`kept_curve` drops them (the epochs after them
move up), so slope and area describe the training that produced the delivered weights.

The area under the learning curve, which mixes level and rate, is kept as a fourth,
separately named figure, ``auc``: the trapezoid area over epochs 0..H of the kept curves
divided by H, where H is the last epoch *both* kept curves have (Taylor & Stone 2009,
"Transfer Learning for Reinforcement Learning Domains: A Survey", JMLR 10, list it as
"total reward"). No curve is extended past its end, so an early stopper is neither
rewarded nor punished for epochs it did not train.

Each is compared with the *baseline* cell of the same backbone, task, dataset and seed
(by default a cell whose strategy does not transfer, ``Strategy.pretrained = False``: the
built-in ``scratch``, the lecture's model 1).

Signature, for the reports::

    transfer_benefits(cells: list[dict], baseline: Optional[str] = None) -> list[dict]

``cells`` are cell records as :func:`harness.run.cell.run_cell` writes them (keys used:
``key``, ``status``, ``config`` with ``backbone``/``task``/``dataset``/``strategy``/``seed``,
``history.start``, ``history.epochs[*].val_metric``/``rolled_back``, ``higher_is_better``,
``metric_name``). The result has one entry per ``ok`` cell that is not a baseline::

    {"key": ..., "baseline_key": ..., "strategy": ..., "backbone": ..., "task": ...,
     "dataset": ..., "seed": ..., "metric": "accuracy",
     "start":     {"value": v, "baseline": b, "gain": g, "better": bool},
                  # or, with a new head: {"value", "baseline", "gain": None,
                  #                       "better": None, "chance": True, "note": ...}
     "slope":     {...}, "asymptote": {...}, "auc": {...},
     "slope_epochs": k, "auc_epochs": H}

``gain`` is ``value - baseline`` for metrics where higher is better and ``baseline -
value`` otherwise, so a positive gain is always a benefit (for ``slope``: faster
improvement). Cells without a baseline are listed with ``"baseline_key": None`` and
``"missing": "<reason>"``; cells recorded before epoch 0 was evaluated have no ``start``,
``slope`` or ``auc`` (``"missing"`` says so) but keep ``asymptote``.
"""
from __future__ import annotations

from typing import Optional

# reading a record's curve is the run layer's (the engine summarises its own cells too)
from ..run.records import (CHANCE_NOTE, kept_curve, kept_value,  # noqa: F401
                           learning_curve, start_is_chance)

BENEFITS = ("start", "slope", "asymptote")
SLOPE_EPOCHS = 3


def _strategy_name(label: str) -> str:
    return label.split(",", 1)[0]


def slope(curve: list, k: int = SLOPE_EPOCHS) -> float:
    """Least-squares slope of ``curve[0..k]`` against the epoch (metric per epoch).

    Raises:
        ValueError: fewer than two points to fit.
    """
    pts = [float(v) for v in curve[:k + 1]]
    if len(pts) < 2:
        raise ValueError("a slope needs at least two points of the learning curve")
    n = len(pts)
    mx, my = (n - 1) / 2, sum(pts) / n
    num = sum((x - mx) * (y - my) for x, y in enumerate(pts))
    den = sum((x - mx) ** 2 for x in range(n))
    return num / den


def normalized_auc(curve: list, horizon: Optional[int] = None) -> float:
    """Trapezoid area under ``curve[0..horizon]`` divided by ``horizon`` (in epochs).

    The result is in the metric's units (a mean level of skill). A one-point curve's area
    is its value. Never extends a curve: ``horizon`` beyond its end is an error.
    """
    if not curve:
        raise ValueError("empty learning curve")
    pts = [float(v) for v in curve]
    horizon = len(pts) - 1 if horizon is None else horizon
    if horizon > len(pts) - 1:
        raise ValueError(f"horizon {horizon} is past the curve's last epoch {len(pts) - 1}")
    pts = pts[:horizon + 1]
    if len(pts) == 1:
        return pts[0]
    return sum((a + b) / 2 for a, b in zip(pts, pts[1:])) / (len(pts) - 1)


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


def _has_start(rec: dict) -> bool:
    return ((rec.get("history") or {}).get("start") or {}).get("val_metric") is not None


def transfer_benefits(cells: list, baseline: Optional[str] = None) -> list:
    """The benefits of every ok cell against its baseline cell (see module doc).

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
        entry["baseline_key"] = base.get("key")
        entry["asymptote"] = _compare(kept_value(c), kept_value(base), higher)
        if not (_has_start(c) and _has_start(base)):
            entry["missing"] = ("start, slope and auc need the metric before training "
                                "(history.start), which this record predates")
            out.append(entry)
            continue
        cur, ref = kept_curve(c), kept_curve(base)
        k = min(SLOPE_EPOCHS, len(cur) - 1, len(ref) - 1)
        horizon = min(len(cur), len(ref)) - 1
        entry["start"] = (_compare(cur[0], ref[0], higher) if not start_is_chance(c) else
                          {"value": cur[0], "baseline": ref[0], "gain": None, "better": None,
                           "chance": True, "note": CHANCE_NOTE})
        entry["slope"] = _compare(slope(cur, k), slope(ref, k), higher)
        entry["auc"] = _compare(normalized_auc(cur, horizon), normalized_auc(ref, horizon),
                                higher)
        entry["slope_epochs"], entry["auc_epochs"] = k, horizon
        out.append(entry)
    return out
