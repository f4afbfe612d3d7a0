"""Tables of a ranking: ``bench rank``'s scores and times, and ``--rank-first``'s ranking
next to the accuracy the trained cells then measured."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..run.rank import pair_scores


def rank_table(rows: list[dict], estimators: list[str], sort_by: Optional[str] = None,
               fmt: str = "simple") -> str:
    """The table ``bench rank`` prints: per dataset, pairs best first by ``sort_by``; one
    column per estimator with its score and the seconds it took, then the notes."""
    from tabulate import tabulate

    sort_by = sort_by or (estimators[0] if estimators else None)
    notes: list[str] = []

    def cell(est: Optional[dict]) -> str:
        if not est:
            return "-"
        if est.get("score") is None:
            why = est.get("unavailable") or est.get("error") or "?"
            if why not in notes:
                notes.append(why)
            return f"n/a [{notes.index(why) + 1}]"
        flag = "" if est.get("converged", True) else " (not converged)"
        return f"{est['score']:.4g} ({est['seconds']:.3g} s){flag}"

    def key(r):
        s = (r.get("estimates", {}).get(sort_by) or {}).get("score")
        return (r["dataset"], s is None, -(s if s is not None else 0.0), r["backbone"], r["seed"])

    headers = ["dataset", "backbone", "weights", "seed", "features s"] + \
        [f"{e} (time)" for e in estimators]
    table = []
    for r in sorted(rows, key=key):
        if r.get("error"):
            notes.append(r["error"])
            table.append([r["dataset"], r["backbone"], r.get("weights") or "-", r["seed"],
                          f"failed [{len(notes)}]"] + ["-"] * len(estimators))
            continue
        table.append([r["dataset"], r["backbone"], r.get("weights_label") or r["weights"],
                      r["seed"], f"{r['feature_seconds']:.3g}"]
                     + [cell(r["estimates"].get(e)) for e in estimators])
    text = tabulate(table, headers=headers, tablefmt=fmt, disable_numparse=True)
    if notes:
        text += "\n\n" + "\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1))
    return text


def ranking_text(ranking: dict, records: list[dict], fmt: str = "simple") -> str:
    """The ranking ``--rank-first`` used, next to the accuracy each pair then measured
    (mean test metric over seeds per strategy), or why it was not trained."""
    from tabulate import tabulate

    est = ranking["estimator"]
    measured: dict = {}
    for rec in records:
        c = rec.get("config") or {}
        if rec.get("status") == "ok" and rec.get("test_metrics"):
            val = rec["test_metrics"].get(rec.get("metric_name") or "accuracy")
            measured.setdefault((c.get("dataset"), c.get("backbone"), c.get("strategy")),
                                []).append(val)
    strategies = sorted({k[2] for k in measured})
    scores = pair_scores(ranking["rows"], est)
    by_ds: dict = {}
    for (ds, bb, w), s in scores.items():
        by_ds.setdefault(ds, []).append((s, bb, w))
    table = []
    for ds, items in sorted(by_ds.items()):
        items.sort(key=lambda t: t[0], reverse=ranking.get("higher_is_better", True))
        kept = ranking["kept"].get(ds, [])
        for pos, (s, bb, w) in enumerate(items, 1):
            vals = []
            for st in strategies:
                v = measured.get((ds, bb, st))
                vals.append(f"{np.mean(v):.3f}" if v else
                            ("-" if bb in kept else "not trained (below top K)"))
            table.append([ds, pos, bb, w, f"{s:.4g}"] + vals)
    head = (f"Ranking by {est} before training (top {ranking['k']} per dataset trained; "
            f"estimates took {ranking['seconds']:.1f} s):")
    return head + "\n" + tabulate(table, headers=["dataset", "rank", "backbone", "weights",
                                                  est] + [f"{s} test" for s in strategies],
                                  tablefmt=fmt, disable_numparse=True)
