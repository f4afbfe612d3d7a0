"""Default vs tuned strategies, and successive halving vs the full matrix (issue 31's study).

Reads three finished runs of the same matrix (same backbone, dataset, strategies, seeds and
training settings) made with ``bench run`` as it is, with ``--tune N`` and with
``--halving`` (docs/tuning.md, "The study"), and writes the figures that compare them:

- per strategy: the test metric's mean and 95% Student-t interval over seeds, default and
  tuned, and the gain tuned - default per seed (paired: a seed draws the same training,
  validation and test subsets in both runs), with its mean, interval and paired t;
- the ranking of the strategies by mean, default and tuned, and per seed;
- the tuning budget actually spent per strategy (trials, their states and epochs) and the
  hyperparameters each tuned cell chose;
- halving: which cells it stopped (after how many epochs, with their validation curves),
  its summed training seconds and cell wall time against the full (default) run's, and
  whether the cell the full run ranks first in each seed finished.

    python scripts/tuning_study.py runs/study-default-<h> runs/study-tuned-3-<h> \
        runs/study-halving-<h> [MORE HALVING RUNS] --out results/ --name tuning_study-...

(more halving runs: the same matrix with the strategies in other orders) writes ``<name>.md`` (the tables) and ``<name>.json`` (every per-seed figure); without
``--out`` it prints the Markdown. Nothing here is typed in by hand: every figure comes from
the three runs' cell records.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.run.hparam_search import STOPPED  # noqa: E402  (the status a halved cell gets)


def _fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def cells(records: list) -> dict:
    """``{strategy: {seed: record}}`` of a run (one backbone, dataset and task)."""
    out: dict = {}
    for rec in records:
        cfg = rec.get("config") or {}
        out.setdefault(cfg.get("strategy"), {})[cfg.get("seed")] = rec
    return out


def check_same_matrix(runs: dict) -> None:
    """The runs must differ only by tuning and halving (and the order of the strategies,
    which halving's decisions depend on): same backbones, datasets, tasks, strategies,
    seeds, image size and training settings. Raises ValueError naming what differs."""
    def core(cfg: dict) -> dict:  # the strategies' order may differ: halving depends on it
        m = cfg.get("matrix", cfg)
        keep = ("backbones", "datasets", "tasks", "seeds", "image_size", "train", "weights")
        return {**{k: m.get(k) for k in keep}, "strategies": sorted(m.get("strategies") or [])}

    (first, c0), *rest = [(k, core(r["config"])) for k, r in runs.items()]
    for name, c in rest:
        diff = [k for k in c0 if c0[k] != c[k]]
        if diff:
            raise ValueError(f"runs {first!r} and {name!r} differ in {', '.join(diff)}: the "
                             f"study compares the same matrix with and without tuning/halving")


def test_value(rec) -> float | None:
    from harness.report.stats import primary_metric
    return None if rec is None else primary_metric(rec)


def epochs_trained(rec: dict) -> int:
    return len((rec.get("history") or {}).get("epochs") or [])


def default_vs_tuned(default: dict, tuned: dict, higher_is_better: bool) -> dict:
    """Per strategy: both runs' per-seed test values, intervals and the paired gain."""
    from harness.report.stats import mean_ci, paired_t

    out = {}
    for strat in default:
        d = {s: test_value(r) for s, r in default[strat].items()}
        t = {s: test_value(r) for s, r in (tuned.get(strat) or {}).items()}
        seeds = sorted(s for s in d if d[s] is not None and t.get(s) is not None)
        sign = 1 if higher_is_better else -1
        gains = {s: sign * (t[s] - d[s]) for s in seeds}
        di, ti = mean_ci([v for v in d.values() if v is not None]), mean_ci(
            [v for v in t.values() if v is not None])
        gi = mean_ci(list(gains.values()))
        pt = paired_t([t[s] for s in seeds], [d[s] for s in seeds])
        out[strat] = {"default": d, "tuned": t, "gain": gains,
                      "default_ci": di.as_dict() if di else None,
                      "tuned_ci": ti.as_dict() if ti else None,
                      "gain_ci": gi.as_dict() if gi else None, "paired_t": pt.as_dict(),
                      "default_status": {s: r.get("status") for s, r in default[strat].items()},
                      "tuned_status": {s: r.get("status")
                                       for s, r in (tuned.get(strat) or {}).items()}}
    return out


def ranking(values: dict, higher_is_better: bool) -> list:
    """Strategies best first by value (None last)."""
    have = [k for k, v in values.items() if v is not None]
    return sorted(have, key=lambda k: -values[k] if higher_is_better else values[k])


def tuning_rows(tuned: dict, default: dict) -> list:
    """One row per tuned cell: chosen parameters, trials' states and epochs, values."""
    rows = []
    for strat, by_seed in tuned.items():
        for seed, rec in sorted(by_seed.items()):
            tu = rec.get("tuning") or {}
            trials = tu.get("trials") or []
            d = (default.get(strat) or {}).get(seed) or {}
            rows.append({
                "strategy": strat, "seed": seed, "status": rec.get("status"),
                "skipped": tu.get("skipped"),
                "trials": len(trials), "counts": tu.get("counts"),
                "trial_epochs": [int((t.get("cost") or {}).get("epochs") or 0) for t in trials],
                "trial_seconds": sum(float((t.get("cost") or {}).get("seconds") or 0)
                                     for t in trials),
                "trial_params": [t.get("params") for t in trials],
                "trial_untuned": [bool(t.get("untuned")) for t in trials],
                "best_untuned": bool((tu.get("best") or {}).get("untuned")),
                "trial_values": [t.get("value") for t in trials],
                "trial_states": [t.get("state") for t in trials],
                "best_params": (tu.get("best") or {}).get("params"),
                "best_trial_val": (tu.get("best") or {}).get("value"),
                "retrained_val": (rec.get("curve_summary") or {}).get("best"),
                "test": test_value(rec), "retrain_epochs": epochs_trained(rec),
                "retrain_seconds": rec.get("train_seconds"),
                "default_val": (d.get("curve_summary") or {}).get("best"),
                "default_test": test_value(d)})
    return rows


def halving_rows(full: dict, halved: dict, higher_is_better: bool) -> dict:
    """Per seed: every cell's fate under halving, and whether the full run's best finished."""
    seeds = sorted({s for by in full.values() for s in by})
    out = {}
    for seed in seeds:
        fvals = {st: test_value(by.get(seed)) for st, by in full.items()}
        order = ranking(fvals, higher_is_better)
        top = [st for st in order if fvals[st] == fvals[order[0]]] if order else []
        cells_ = []
        for st, by in halved.items():
            rec = by.get(seed) or {}
            h = rec.get("halving") or {}
            cells_.append({"strategy": st, "status": rec.get("status"),
                           "epochs": epochs_trained(rec),
                           "stopped_after_epochs": h.get("stopped_after_epochs")
                           if rec.get("status") == STOPPED else None,
                           "curve": h.get("curve"), "note": rec.get("note"),
                           "test": test_value(rec), "full_test": fvals.get(st),
                           "full_epochs": epochs_trained(full[st].get(seed) or {}),
                           "full_best_val": ((full[st].get(seed) or {}).get("curve_summary")
                                             or {}).get("best")})
        status = {c["strategy"]: c["status"] for c in cells_}
        hvals = {c["strategy"]: c["test"] for c in cells_}
        horder = ranking(hvals, higher_is_better)
        out[seed] = {"full_ranking": order, "full_best": top,
                     "full_best_finished": all(status.get(st) == "ok" for st in top),
                     "halving_best": horder[0] if horder else None, "cells": cells_}
    return out


def train_seconds(rec: dict):
    """A cell's training seconds; for a cell halving stopped, its partial fit's (records
    made before stopped cells kept ``train_seconds`` have it in ``timers``)."""
    if rec.get("train_seconds") is not None:
        return rec["train_seconds"]
    return (rec.get("timers") or {}).get("train_s") if rec.get("status") == STOPPED else None


def time_totals(records: list) -> dict:
    """Summed training seconds (the fits) and the cells' wall span of a run."""
    train = sum(float(train_seconds(r) or 0) for r in records)
    tuning = sum(float((t.get("cost") or {}).get("seconds") or 0)
                 for r in records for t in (r.get("tuning") or {}).get("trials") or [])
    starts = [r["started"] for r in records if r.get("started")]
    ends = [r["finished"] for r in records if r.get("finished")]
    return {"train_s": train, "tuning_trials_s": tuning,
            "cell_wall_sum_s": sum(r["finished"] - r["started"] for r in records
                                   if r.get("started") and r.get("finished")),
            "span_s": (max(ends) - min(starts)) if starts and ends else None,
            "epochs": sum(epochs_trained(r) for r in records),
            "cells": len(records),
            "status": {s: sum(r.get("status") == s for r in records)
                       for s in sorted({r.get("status") for r in records})}}


def study(paths: dict) -> dict:
    from harness.run.results import RunStore

    runs = {}
    for name, p in paths.items():
        store = RunStore(Path(p))
        runs[name] = {"path": str(p), "config": store.config(),
                      "environment": store.environment(), "records": store.records()}
    check_same_matrix(runs)
    recs = runs["default"]["records"]
    hib = next((r.get("higher_is_better") for r in recs if "higher_is_better" in r), True)
    metric = next((r.get("metric_name") for r in recs if r.get("metric_name")), "?")
    by = {k: cells(r["records"]) for k, r in runs.items()}
    dvt = default_vs_tuned(by["default"], by["tuned"], hib)
    means = {k: {st: (v[f"{k}_ci"] or {}).get("mean") for st, v in dvt.items()}
             for k in ("default", "tuned")}
    seeds = sorted({s for v in dvt.values() for s in v["default"]})
    per_seed_rank = {k: {s: ranking({st: v[k].get(s) for st, v in dvt.items()}, hib)
                         for s in seeds} for k in ("default", "tuned")}
    times = {k: time_totals(r["records"]) for k, r in runs.items()}
    return {
        "metric": metric, "higher_is_better": hib,
        "runs": {k: {"path": r["path"], "argv": r["environment"].get("argv"),
                     "cpu": r["environment"].get("cpu"),
                     "affinity": r["environment"].get("affinity"),
                     "torch_threads": r["environment"].get("torch_threads"),
                     "load_average": r["environment"].get("load_average"),
                     "tune": (r["config"].get("matrix") or {}).get("tune"),
                     "strategies": (r["config"].get("matrix") or {}).get("strategies")}
                 for k, r in runs.items()},
        "default_vs_tuned": dvt,
        "ranking": {k: ranking(means[k], hib) for k in means},
        "ranking_per_seed": per_seed_rank,
        "tuning": tuning_rows(by["tuned"], by["default"]),
        "halving": {k: halving_rows(by["default"], by[k], hib) for k in runs
                    if k.startswith("halving")},
        "times": times,
    }


def _iv(d, sign: bool = False) -> str:
    if not d:
        return "-"
    return (f"{d['mean']:+.3f}" if sign else _fmt(d["mean"])) + ("" if d.get("ci_half") is None else f" ± {d['ci_half']:.3f}")


def _params(p) -> str:
    return "-" if not p else ", ".join(f"{k}={v:.2g}" for k, v in p.items())


def markdown(res: dict) -> str:
    m = res["metric"]
    dvt = res["default_vs_tuned"]
    seeds = sorted({s for v in dvt.values() for s in v["default"]})
    lines = [f"Test {m}, mean ± 95% Student-t half-width over {len(seeds)} seeds; gain = tuned "
             f"- default per seed (same seed, same subsets), paired t over the seeds.", "",
             "| strategy | default | tuned | " + " | ".join(f"gain seed {s}" for s in seeds)
             + " | mean gain ± 95% | paired t p |",
             "|---" * (5 + len(seeds)) + "|"]
    for st, v in dvt.items():
        pt = v["paired_t"]
        lines.append(f"| {st} | {_iv(v['default_ci'])} | {_iv(v['tuned_ci'])} | "
                     + " | ".join(f"{v['gain'][s]:+.3f}" if s in v["gain"] else "-"
                                  for s in seeds)
                     + f" | {_iv(v['gain_ci'], sign=True)} | {_fmt(pt['p'])} |")
    lines += ["", "Ranking by mean (best first):", "",
              f"- default: {' > '.join(res['ranking']['default'])}",
              f"- tuned:   {' > '.join(res['ranking']['tuned'])}", "",
              "Ranking per seed (best first):", "", "| seed | default | tuned |",
              "|---|---|---|"]
    for s in seeds:
        lines.append(f"| {s} | {' > '.join(res['ranking_per_seed']['default'][s])} | "
                     f"{' > '.join(res['ranking_per_seed']['tuned'][s])} |")
    lines += ["", "Tuning: each cell's trials (parameters, state, epochs trained, validation "
              "value) and the configuration retrained and tested:", "",
              "| strategy | seed | trials: params -> val (state, epochs) | chosen | best trial "
              "val | retrained val | test | default val | default test | trials' train s |",
              "|---" * 10 + "|"]
    for r in res["tuning"]:
        if r["skipped"]:
            trials = f"skipped: {r['skipped']}"
        else:
            trials = "; ".join(
                f"{'untuned' if u else _params(p)} -> {_fmt(v)} ({st}, {e})"
                for p, u, v, st, e in zip(r["trial_params"], r["trial_untuned"],
                                          r["trial_values"], r["trial_states"],
                                          r["trial_epochs"]))
        chosen = "untuned" if r["best_untuned"] else _params(r["best_params"])
        lines.append(f"| {r['strategy']} | {r['seed']} | {trials} | {chosen} "
                     f"| {_fmt(r['best_trial_val'])} | {_fmt(r['retrained_val'])} | "
                     f"{_fmt(r['test'])} | {_fmt(r['default_val'])} | "
                     f"{_fmt(r['default_test'])} | {r['trial_seconds']:.1f} |")
    budget = {}
    for r in res["tuning"]:
        b = budget.setdefault(r["strategy"], {"cells": 0, "trials": 0, "epochs": 0,
                                              "complete": 0, "pruned": 0, "failed": 0})
        b["cells"] += 1
        b["trials"] += r["trials"]
        b["epochs"] += sum(r["trial_epochs"])
        for k in ("complete", "pruned", "failed"):
            b[k] += (r["counts"] or {}).get(k, 0)
    lines += ["", "Tuning budget spent per strategy (summed over its cells):", "",
              "| strategy | cells | trials | complete | pruned | failed | epochs trained in "
              "trials |", "|---" * 7 + "|"]
    for st, b in budget.items():
        lines.append(f"| {st} | {b['cells']} | {b['trials']} | {b['complete']} | {b['pruned']}"
                     f" | {b['failed']} | {b['epochs']} |")
    t = res["times"]
    lines += ["", "Time (seconds; train s = the cells' fits, tuning trials included in the "
              "tuned run's cell wall time; span = first cell's start to last cell's end):", "",
              "| run | cells | status | epochs trained | train s | tuning trials s | cells' wall "
              "s | span s |", "|---" * 8 + "|"]
    for k, v in t.items():
        lines.append(f"| {k} | {v['cells']} | "
                     + ", ".join(f"{n} {s}" for s, n in v["status"].items())
                     + f" | {v['epochs']} | {v['train_s']:.1f} | {v['tuning_trials_s']:.1f} | "
                     f"{v['cell_wall_sum_s']:.1f} | {_fmt(v['span_s'], 1)} |")
    for name, per_seed in res["halving"].items():
        lines += halving_markdown(name, per_seed, res)
    return "\n".join(lines)


def halving_markdown(name: str, per_seed: dict, res: dict) -> list:
    """One halving run against the full (default) run: times and, per seed, its cells."""
    d, h = res["times"]["default"], res["times"][name]
    lines = ["", f"Halving run `{name}` ({Path(res['runs'][name]['path']).name}) against the "
             f"full (default) run: train s {h['train_s']:.1f} / "
             f"{d['train_s']:.1f} = {h['train_s'] / d['train_s']:.2f}; epochs {h['epochs']} / "
             f"{d['epochs']} = {h['epochs'] / d['epochs']:.2f}; span {h['span_s']:.1f} / "
             f"{d['span_s']:.1f} s = {h['span_s'] / d['span_s']:.2f}. Its matrix order (each "
             f"cell is judged against those before it): "
             f"{', '.join(res['runs'][name]['strategies'] or [])}.", "",
             "| seed | full run's ranking (test) | its best finished under halving? | cells "
             "stopped (after epochs; validation curve) | halving run's best finished |",
             "|---" * 5 + "|"]
    for seed, v in per_seed.items():
        stopped = "; ".join(f"{c['strategy']} ({c['stopped_after_epochs']}; "
                            + ", ".join(f"{x:.2f}" for x in c["curve"] or []) + ")"
                            for c in v["cells"] if c["status"] == STOPPED) or "none"
        lines.append(f"| {seed} | {' > '.join(v['full_ranking'])} | "
                     f"{'yes' if v['full_best_finished'] else 'NO'} ({', '.join(v['full_best'])})"
                     f" | {stopped} | {v['halving_best']} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("default", type=Path, help="run folder of the untuned, unhalved run")
    ap.add_argument("tuned", type=Path, help="run folder of the same matrix with --tune N")
    ap.add_argument("halving", type=Path, nargs="+",
                    help="run folder(s) of the same matrix with --halving (the strategies may "
                         "be in another order: each gets its own table)")
    ap.add_argument("--out", type=Path, default=None, help="folder for NAME.md and NAME.json")
    ap.add_argument("--name", default="tuning_study")
    args = ap.parse_args(argv)
    for p in (args.default, args.tuned, *args.halving):
        if not (p / "cells").is_dir():
            print(f"error: {p} is not a run folder (no cells/ in it)", file=sys.stderr)
            return 2
    try:
        halved = {("halving" if i == 0 else f"halving-{i + 1}"): p
                  for i, p in enumerate(args.halving)}
        res = study({"default": args.default, "tuned": args.tuned, **halved})
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = markdown(res)
    if args.out is None:
        print(text)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    md, js = args.out / f"{args.name}.md", args.out / f"{args.name}.json"
    md.write_text(f"# {args.name}\n\n`python scripts/tuning_study.py` on run folders "
                  f"{', '.join(Path(r['path']).name for r in res['runs'].values())}.\n\n"
                  + text + "\n")
    js.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
