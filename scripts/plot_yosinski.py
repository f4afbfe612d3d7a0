"""Draw a finished ``bench run --preset yosinski`` like Yosinski et al. 2014, Fig. 2.

Yosinski, Clune, Bengio & Lipson 2014, "How transferable are features in deep neural
networks?", NeurIPS, Fig. 2: test accuracy on task B against n, the number of layers
copied from a base network: baseB at n = 0, then the selffer networks BnB (copied layers
frozen) and BnB+ (fine-tuned) and the transfer networks AnB and AnB+, one dot per run and a
line through the means. Here n counts the backbone's layer groups.

Which series a cell belongs to is read from its record, not from its name: ``scratch`` is
baseB; a ``layer_transfer`` cell is AnB when its weights were pretrained on other classes
than its own dataset's, BnB when on the same ones; ``fine_tune=true`` adds the ``+``.

    python scripts/plot_yosinski.py runs/yosinski-<hash> --out results/

writes ``<name>.png`` and ``<name>.md`` (means with 95% Student-t intervals per series and
n; ``--name`` picks the file stem, default ``yosinski-fig2``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

SERIES = ("baseB", "BnB", "BnB+", "AnB", "AnB+")
_STYLE = {"baseB": ("white", "o"), "BnB": ("tab:blue", "o"), "BnB+": ("lightskyblue", "P"),
          "AnB": ("tab:red", "D"), "AnB+": ("lightcoral", "P")}


def classify(rec: dict):
    """``(series, n)`` of a finished cell of the experiment, or None for other cells."""
    from harness.run.config import AxisItem

    if rec.get("status") != "ok":
        return None
    cfg = rec["config"]
    strat = AxisItem.parse(cfg["strategy"])
    if strat.name == "scratch":
        return "baseB", 0
    if strat.name != "layer_transfer":
        return None
    target = AxisItem.parse(cfg["dataset"])
    w = rec.get("weights") or {}
    if w.get("source_dataset") is None:
        return None
    same = (w["source_dataset"] == target.name
            and str(w.get("source_dataset_params", {}).get("classes"))
            == str(target.kwargs.get("classes")))
    kw = strat.kwargs
    return ("BnB" if same else "AnB") + ("+" if kw.get("fine_tune") else ""), int(kw["n"])


def collect(records: list) -> dict:
    """``{(series, n): [test accuracy of each seed]}``."""
    out: dict = {}
    for rec in records:
        where = classify(rec)
        if where is not None:
            metric = rec["test_metrics"][rec["metric_name"]]
            out.setdefault(where, []).append(float(metric))
    return out


def table(points: dict) -> str:
    """Markdown: one row per n, one column per series, mean ± 95% half-width (seeds)."""
    from harness.report.stats import mean_ci

    ns = sorted({n for _, n in points})
    lines = ["| n | " + " | ".join(SERIES) + " |", "|---" * (len(SERIES) + 1) + "|"]
    for n in ns:
        cells = []
        for s in SERIES:
            iv = mean_ci(points.get((s, n), []))
            cells.append("-" if iv is None else f"{iv.fmt()} ({iv.n})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(points: dict, title: str):
    """The paper's Fig. 2 layout: every run as a dot, the means joined by lines."""
    from matplotlib.figure import Figure
    import statistics

    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    offsets = {s: (i - 2) * 0.06 for i, s in enumerate(SERIES)}
    for s in SERIES:
        ns = sorted(n for t, n in points if t == s)
        if not ns:
            continue
        color, marker = _STYLE[s]
        for n in ns:
            ys = points[(s, n)]
            ax.scatter([n + offsets[s]] * len(ys), ys, color=color, marker=marker, s=36,
                       edgecolors="black", linewidths=0.6, zorder=3)
        means = [statistics.fmean(points[(s, n)]) for n in ns]
        if s == "baseB":
            ax.axhline(means[0], color="gray", ls=":", lw=1)
        else:
            ax.plot(ns, means, color=color if s != "BnB+" else "tab:cyan", lw=1.5)
        ax.scatter([], [], color=color, marker=marker, edgecolors="black", linewidths=0.6,
                   label=s)
    ax.set_xlabel("layer groups n copied from the base network (0 = baseB)")
    ax.set_ylabel("test accuracy on B")
    ax.set_title(title)
    ax.set_xticks(sorted({n for _, n in points}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the run folder of bench run --preset yosinski")
    ap.add_argument("--out", type=Path, default=Path("results"))
    ap.add_argument("--name", default="yosinski-fig2")
    args = ap.parse_args(argv)
    if not (args.run / "cells").is_dir():
        print(f"error: {args.run} is not a run folder (no cells/ in it)", file=sys.stderr)
        return 2
    from harness.run.results import RunStore

    points = collect(RunStore(args.run).records())
    if not points:
        print(f"error: {args.run} has no finished scratch or layer_transfer cell",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    png, md = args.out / f"{args.name}.png", args.out / f"{args.name}.md"
    figure(points, "Yosinski et al. 2014, Fig. 2, on Fashion-MNIST A = 0-4, B = 5-9").savefig(
        png, dpi=110, bbox_inches="tight")
    md.write_text(f"# {args.name}\n\nRun folder `{args.run.name}`; test accuracy on B, mean ± "
                  f"95% Student-t half-width (number of seeds).\n\n{table(points)}\n")
    print(f"wrote {png} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
