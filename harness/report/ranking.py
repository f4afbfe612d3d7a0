"""Tables of a ranking: ``bench rank``'s scores and times, and ``--rank-first``'s ranking
next to the accuracy the trained cells then measured."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..run.rank import pair_scores


def _ranks(rows: list[dict], est: str, higher: bool) -> dict:
    """Rank (1 = best) of each row (by index) among the rows of its dataset and seed that
    ``est`` scored, in the estimator's direction; ties share the better rank."""
    groups: dict = {}
    for i, r in enumerate(rows):
        s = (r.get("estimates", {}).get(est) or {}).get("score")
        if not r.get("error") and s is not None:
            groups.setdefault((r["dataset"], r["seed"]), []).append((s, i))
    out = {}
    for pairs in groups.values():
        scores = sorted({s for s, _ in pairs}, reverse=higher)
        for s, i in pairs:
            out[i] = scores.index(s) + 1
    return out


def rank_table(rows: list[dict], estimators: list[str], sort_by: Optional[str] = None,
               fmt: str = "simple", higher_is_better: Optional[dict] = None) -> str:
    """The table ``bench rank`` prints: per dataset, pairs best first by ``sort_by``; per
    estimator the pair's rank among its dataset's pairs (1 = best, in that estimator's
    direction), its score and the seconds it took; the mean rank over the estimators; then
    each dataset's consensus order, which direction each estimator reads, and the notes.

    Args:
        higher_is_better: estimator label -> its direction (default: higher for all).
    """
    from tabulate import tabulate

    sort_by = sort_by or (estimators[0] if estimators else None)
    higher = {e: (higher_is_better or {}).get(e, True) for e in estimators}
    ranks = {e: _ranks(rows, e, higher[e]) for e in estimators}
    notes: list[str] = []

    def cell(i: int, e: str) -> str:
        est = rows[i].get("estimates", {}).get(e)
        if not est:
            return "-"
        if est.get("score") is None:
            why = est.get("unavailable") or est.get("error") or "?"
            if why not in notes:
                notes.append(why)
            return f"n/a [{notes.index(why) + 1}]"
        flag = "" if est.get("converged", True) else " (not converged)"
        return f"{ranks[e][i]}: {est['score']:.4g} ({est['seconds']:.3g} s){flag}"

    def mean_rank(i: int) -> Optional[float]:
        got = [ranks[e][i] for e in estimators if i in ranks[e]]
        return sum(got) / len(got) if got else None

    def key(i: int):
        r = rows[i]
        rk = ranks.get(sort_by, {}).get(i)
        return (r["dataset"], r["seed"], rk is None, rk or 0, r["backbone"])

    headers = ["dataset", "backbone", "weights", "seed", "features s"] + \
        [f"{e}: rank, score (time)" for e in estimators] + ["mean rank"]
    table = []
    for i in sorted(range(len(rows)), key=key):
        r = rows[i]
        if r.get("error"):
            notes.append(r["error"])
            table.append([r["dataset"], r["backbone"], r.get("weights") or "-", r["seed"],
                          f"failed [{len(notes)}]"] + ["-"] * (len(estimators) + 1))
            continue
        m = mean_rank(i)
        table.append([r["dataset"], r["backbone"], r.get("weights_label") or r["weights"],
                      r["seed"], f"{r['feature_seconds']:.3g}"]
                     + [cell(i, e) for e in estimators] + [f"{m:.2f}" if m else "-"])
    text = tabulate(table, headers=headers, tablefmt=fmt, disable_numparse=True)
    text += "\n\nsorted by " + f"{sort_by}'s rank; " + "; ".join(
        f"{e}: {'higher' if higher[e] else 'lower'} score is better" for e in estimators)
    for line in consensus_lines(rows, estimators, ranks):
        text += "\n" + line
    if notes:
        text += "\n\n" + "\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1))
    return text


def consensus_lines(rows: list[dict], estimators: list[str], ranks: dict) -> list[str]:
    """Per dataset, the pairs by their mean rank over every estimator and seed that scored
    them (a Borda count; 1 = best): the order the estimators agree on."""
    per: dict = {}
    for i, r in enumerate(rows):
        label = f"{r['backbone']} ({r.get('weights_label') or r.get('weights')})"
        for e in estimators:
            if i in ranks[e]:
                per.setdefault(r["dataset"], {}).setdefault(label, []).append(ranks[e][i])
    out = []
    for ds, pairs in sorted(per.items()):
        order = sorted(pairs.items(), key=lambda kv: (sum(kv[1]) / len(kv[1]), kv[0]))
        out.append(f"consensus on {ds} (mean rank over {len(estimators)} estimator(s), "
                   "1 = best): " + " > ".join(f"{lbl} {sum(v) / len(v):.2f}"
                                              for lbl, v in order))
    return out


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
