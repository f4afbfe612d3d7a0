"""The summary table printed after ``bench run`` and by ``bench report``."""
from __future__ import annotations

from tabulate import tabulate

from . import noise
from .scoring import subset_notes, subset_text


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _latency_key(lat: dict) -> tuple:
    return (lat.get("runtime"), lat.get("profile"), lat.get("precision"))


def _measured_keys(records: list[dict]) -> set:
    return {_latency_key(lat) for rec in records for lat in rec.get("latency", [])
            if lat.get("stats")}


def latency_columns(records: list[dict]) -> list[tuple]:
    """Distinct (runtime, profile, precision) with a measurement in at least one cell, in
    first-seen order. Those never measured are listed by :func:`unmeasured_notes` instead of
    a column of identical "n/a" cells."""
    seen = []
    for rec in records:
        for lat in rec.get("latency", []):
            k = _latency_key(lat)
            if k not in seen:
                seen.append(k)
    measured = _measured_keys(records)
    return [k for k in seen if k in measured]


def unmeasured_notes(records: list[dict]) -> list[str]:
    """One line per (runtime, profile, precision) that no cell measured, with every distinct
    reason the runtime gave (never dropped silently: the reason is the result)."""
    measured = _measured_keys(records)
    reasons: dict[tuple, list[str]] = {}
    for rec in records:
        for lat in rec.get("latency", []):
            k = _latency_key(lat)
            if k in measured:
                continue
            why = str(lat.get("unavailable") or lat.get("error") or "no reason recorded")
            reasons.setdefault(k, [])
            if why not in reasons[k]:
                reasons[k].append(why)
    return [f"{rt} {prec} ({prof} profile): not measured: " + "; ".join(whys)
            for (rt, prof, prec), whys in reasons.items()] + output_check_notes(records)


def output_check_notes(records: list[dict]) -> list[str]:
    """One line per latency row whose outputs disagree with PyTorch's (marked
    ``DISAGREES`` in the table, left out of the recommendation) and per runtime whose
    outputs were not compared (marked ``unverified``)."""
    notes: list[str] = []
    for rec in records:
        for lat in rec.get("latency", []):
            check = lat.get("outputs_check") or {}
            if lat.get("disagrees"):
                line = f"{lat.get('profile')} profile: {lat['disagrees']}"
            elif check.get("ok") is None and check.get("problem"):
                line = (f"{lat.get('runtime')} {lat.get('precision')} ({lat.get('profile')} "
                        f"profile) unverified: {check['problem']}")
            else:
                continue
            if line not in notes:
                notes.append(line)
    return notes


def _latency_cell(rec: dict, key: tuple) -> str:
    for lat in rec.get("latency", []):
        if (lat.get("runtime"), lat.get("profile"), lat.get("precision")) == key:
            st = lat.get("stats")
            if st:
                s = f"{noise.mark(lat)}{st['p50_ms']:.2f} / {st['p90_ms']:.2f}"
                if lat.get("accuracy_after") is not None:  # the task's primary metric
                    s += (f" ({rec.get('metric_name') or 'metric'} "
                          f"{lat['accuracy_after']:.3f}{subset_text(rec, lat)})")
                check = (lat.get("outputs_check") or {}).get("ok")
                if check is False:
                    s += " DISAGREES with PyTorch"
                elif check is None and lat.get("outputs_check"):
                    s += " unverified"
                return s
            return "n/a: " + str(lat.get("unavailable") or lat.get("error") or "?")[:60]
    return "-"


def _weights_label(w: dict) -> str:
    if not w:
        return "-"
    label = w.get("short") or w.get("source") or "-"
    return label if w.get("pretrained") else f"{label} (not pretrained)"


def trained_on(rec: dict) -> str:
    """``cpu fp32``, ``cuda bf16 channels-last compiled``...: device and precision trained."""
    hw = rec.get("hardware") or {}
    if not hw:
        return "-"
    parts = [str(hw.get("device", "?")).split(":")[0], str(hw.get("precision", "?"))]
    parts += [w for k, w in (("channels_last", "channels-last"), ("compile", "compiled"))
              if hw.get(k)]
    return " ".join(parts)


def budget_cell(rec: dict) -> str:
    """``epochs / steps`` the cell trained (from its recorded usage), with the phases a
    shared checkpoint rolled back (chain-thaw) after them: ``9 / 144, 2 of 7 rolled back``;
    a cell successive halving stopped: its partial curve's ``1 / 4 (stopped)``."""
    use = rec.get("budget") or (rec.get("history") or {}).get("usage")
    partial = (rec.get("history") or {}).get("partial") and rec["history"].get("epochs")
    if not use and partial:  # a cell halving stopped: how far its fit got
        return f"{len(partial)} / {sum(int(e.get('steps') or 0) for e in partial)} (stopped)"
    if not use:
        return "-"
    text = f"{use.get('epochs', 0)} / {use.get('steps', 0)}"
    phases = (rec.get("history") or {}).get("phases", [])
    back = sum(1 for p in phases if p.get("rolled_back"))
    if back:
        text += f", {back} of {len(phases)} phases rolled back"
    return text


def _si(v: float) -> str:
    for suffix, f in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= f:
            return f"{v / f:.3g}{suffix}"
    return f"{v:.0f}"


def flops_cell(rec: dict) -> str:
    """The cell's training FLOPs (``52.6G``); ``n/c`` where part of the training was not
    counted (the record's ``flops_note`` says which); ``-`` without a record."""
    use = rec.get("budget") or (rec.get("history") or {}).get("usage")
    if not use or "train_flops" not in use:
        return "-"
    return "n/c" if use["train_flops"] is None else _si(float(use["train_flops"]))


#: the line under the table that says what the FLOPs column counts
FLOPS_NOTE = ("train FLOPs: forward and backward of every training step, plus one backbone "
              "pass over the training images for features cached or fed to a solver; "
              "validation not counted; n/c: part of the training not counted")


def budget_note(records: list[dict]) -> str:
    """Which budget the cells ran under (one line), or '' when none recorded one."""
    units = sorted({(r.get("budget") or {}).get("unit") for r in records
                    if (r.get("budget") or {}).get("unit")})
    if not units:
        return ""
    if units == ["phase"]:
        return ("budget: per phase (each phase up to the run's epochs), so strategies with "
                "more phases may train longer; [train] budget = \"epochs\"|\"steps\"|"
                "\"images\"|\"flops\" gives every strategy the same cap")
    return "budget: " + ", ".join(
        "per phase" if u == "phase" else
        "flops (the same training FLOPs for every strategy: epochs of fine-tuning every layer)"
        if u == "flops" else f"{u} (the same total cap for every strategy)" for u in units)


def tuned_label(rec: dict) -> str:
    """A cell's tuning budget for the table's "tuned" column: ``8 trials`` (``--tune 8``,
    the same for every cell), ``default`` (the strategy's defaults), or ``default (...)``
    for a strategy with nothing to search."""
    tuning = rec.get("tuning")
    if not tuning:
        return "default"
    if tuning.get("skipped"):
        return "default (no search space)"
    n = len(tuning.get("trials") or [])
    return f"{n} trial{'s' if n != 1 else ''}"


def tuning_note(records: list[dict]) -> str:
    """One line on the tuning budget of a run whose cells were tuned, else ''."""
    tuned = [r["tuning"] for r in records if (r.get("tuning") or {}).get("trials")]
    if not tuned:
        return ""
    budgets = sorted({len(t["trials"]) for t in tuned})
    pruned = sum(t.get("counts", {}).get("pruned", 0) for t in tuned)
    same = "the same for every tuned cell" if len(budgets) == 1 else "UNEQUAL across cells"
    return (f"tuning: {', '.join(map(str, budgets))} Optuna trials per cell ({same}), TPE on "
            f"the validation split, {pruned} pruned; the best configuration retrained "
            f"and scored once on the test split (docs/tuning.md)")


def halving_note(records: list[dict]) -> str:
    """One line on a run halved over its cells (``--halving``), else ''."""
    halved = [r for r in records if r.get("halving")]
    if not halved:
        return ""
    h = halved[0]["halving"]
    stopped = sum(r.get("status") == "stopped (halving)" for r in halved)
    return (f"halving: {stopped} of {len(halved)} cells stopped early by successive halving "
            f"(min_resource {h.get('min_resource')} epochs, reduction factor "
            f"{h.get('reduction_factor')}; asynchronous, so judged against the cells before "
            f"them); their partial curves are in their records (docs/tuning.md)")


def summary_rows(records: list[dict]) -> tuple[list[str], list[list]]:
    cols = latency_columns(records)
    profiles = {c[1] for c in cols}
    seeds = {(r.get("config") or {}).get("seed") for r in records}
    show_seed = len(seeds) > 1  # repeats: otherwise their rows would look like duplicates
    show_tuned = any("tuning" in r for r in records)
    headers = ["backbone", "class", "weights", "strategy"] + (["tuned"] if show_tuned else []) + (
        ["seed"] if show_seed else []) + [
        "dataset", "metric", "test", "epochs / steps", "train FLOPs", "train s", "trained on", "params M",
        "trained M"]
    for rt, prof, prec in cols:
        label = rt if len(profiles) == 1 else f"{rt} {prof}"
        if prec not in ("fp32", "-"):
            label += f" {prec}"
        headers.append(f"{label} p50/p90 ms")
    headers.append("status")
    rows = []
    for rec in records:
        cfg = rec.get("config", {})
        facts = rec.get("backbone_facts", {})
        metric = rec.get("metric_name")
        data = rec.get("data", {})
        ds = cfg.get("dataset", "")
        if data.get("synthetic"):
            ds += " (synthetic)"
        row = [cfg.get("backbone"), facts.get("device_class", "-"),
               _weights_label(rec.get("weights") or {}), cfg.get("strategy")]
        if show_tuned:
            row.append(tuned_label(rec))
        if show_seed:
            row.append(cfg.get("seed"))
        row += [ds, metric or "-", _fmt((rec.get("test_metrics") or {}).get(metric)),
                budget_cell(rec), flops_cell(rec), _fmt(rec.get("train_seconds"), 1),
                trained_on(rec),
                _fmt(facts["params_total"] / 1e6, 2) if facts.get("params_total") else "-",
                _fmt(rec["trainable_params"] / 1e6, 2) if rec.get("trainable_params") is not None
                else "-"]
        row += [_latency_cell(rec, c) for c in cols]
        status = rec.get("status", "?")
        if rec.get("error"):
            status += ": " + str(rec["error"])[:80]
        row.append(status)
        rows.append(row)
    return headers, rows


def autotune_note(records: list[dict]) -> str:
    """One line naming the layout probes that reached their time cap, else ''."""
    capped = {}
    for r in records:
        a = r.get("autotune") or {}
        if a.get("capped"):
            c = r.get("config") or {}
            capped.setdefault(c.get("backbone", "?"), (a["capped"], a.get("chosen_name")))
    if not capped:
        return ""
    return "layout probe stopped at its time cap ([train] autotune_max_s): " + "; ".join(
        f"{b} ({c.get('complete_rounds', 0)} complete rounds in {c.get('elapsed_s', 0):.1f} s "
        f"of {c.get('max_s', 0):g} s; trained {chosen})"
        for b, (c, chosen) in sorted(capped.items()))


def table_notes(records: list[dict]) -> list[str]:
    """The lines under the cells table (text and HTML): the budget, the legend of noisy
    latency figures (:mod:`harness.report.noise`), what was not measured, metrics after
    conversion scored on a subset (:mod:`harness.report.scoring`)."""
    bnote, nnote = budget_note(records), noise.legend(records)
    tnotes = [n for n in (tuning_note(records), halving_note(records), autotune_note(records))
              if n]
    fnote = any(flops_cell(r) != "-" for r in records)
    return (([bnote] if bnote else []) + tnotes
            + ([FLOPS_NOTE] if fnote else [])
            + ([nnote] if nnote else []) + unmeasured_notes(records) + subset_notes(records))


def summary_table(records: list[dict], fmt: str = "simple") -> str:
    headers, rows = summary_rows(records)
    text = tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
    notes = table_notes(records)
    if notes:
        bullet = "- " if fmt in ("github", "pipe") else ""
        text += "\n\n" + "\n".join(bullet + n for n in notes)
    return text


# -- repeats: mean and 95% interval per configuration, paired tests between strategies -------
def repeat_rows(records: list[dict], alpha: float = 0.05) -> tuple[list[str], list[list]]:
    """One row per configuration: mean test metric ± 95% t half-width over seeds, and how it
    compares with the best strategy of the same backbone, dataset, task and weights.

    The comparison is a paired t-test over the seeds both ran (see :mod:`harness.report.stats`);
    "n.s." marks a difference from the best that is not significant at ``alpha``.
    """
    from .stats import by_seed, compare_configs, configuration, mean_ci

    seeds = by_seed(records)
    first: dict = {}
    for rec in records:
        first.setdefault(configuration(rec), rec)
    groups: dict = {}
    for conf in first:
        b, t, d, _, w, size = conf
        groups.setdefault((b, t, d, w, size), []).append(conf)
    headers = ["backbone", "strategy", "dataset", "metric", "n", "mean ± 95% CI",
               "vs best strategy (paired t)"]
    rows = []
    for confs in groups.values():
        hib = first[confs[0]].get("higher_is_better", True)
        ivals = {c: mean_ci(seeds.get(c, {}).values()) for c in confs}
        ranked = [c for c in confs if ivals[c] is not None]
        best = (max(ranked, key=lambda c: ivals[c].mean if hib else -ivals[c].mean)
                if ranked else None)
        for c in confs:
            iv = ivals[c]
            if iv is None:
                cmp = "no finished seed"
            elif c == best:
                cmp = "best"
            else:
                res = compare_configs(seeds[c], seeds[best], alpha)
                if not res.testable:
                    cmp = f"{res.mean_diff:+.3f} (untested: {res.n} shared seed)"
                else:
                    mark = "" if res.significant else " n.s."
                    cmp = f"{res.mean_diff:+.3f} (p={res.p:.3f}){mark}"
            rec = first[c]
            rows.append([c[0], c[3], c[2], rec.get("metric_name") or "-",
                         str(iv.n) if iv else "0", iv.fmt() if iv else "-", cmp])
    return headers, rows


def has_repeats(records: list[dict]) -> bool:
    from .stats import configuration
    confs = [configuration(r) for r in records]
    return len(set(confs)) < len(confs)


def report_text(records: list[dict], budget_ms=None, fmt: str = "simple",
                mix_devices: bool = False) -> str:
    """Per-cell table, the repeats table (when seeds > 1) and the recommendation."""
    from .recommend import format_recommendations, recommend

    parts = [summary_table(records, fmt)]
    if has_repeats(records):
        headers, rows = repeat_rows(records)
        parts.append("Repeats over seeds (mean ± 95% t interval; n.s. = not significantly "
                     "different from the best strategy, paired t, alpha 0.05):\n"
                     + tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True))
    parts.append(format_recommendations(recommend(records, budget_ms, mix_devices), fmt))
    return "\n\n".join(parts)


# -- bench compare --------------------------------------------------------------------------
def _by_configuration(records: list[dict]) -> dict:
    """``{configuration: {"metric": [...], "lat": {(rt, prof, prec): [p50...]}, "rec": rec}}``."""
    from .stats import configuration, primary_metric

    out: dict = {}
    for rec in records:
        if rec.get("status") != "ok":
            continue
        g = out.setdefault(configuration(rec), {"metric": [], "lat": {}, "rec": rec})
        v = primary_metric(rec)
        if v is not None:
            g["metric"].append(v)
        for lat in rec.get("latency", []):
            st = lat.get("stats")
            if st and st.get("p50_ms") is not None:
                k = (lat.get("runtime"), lat.get("profile"), lat.get("precision"))
                g["lat"].setdefault(k, []).append(st["p50_ms"])
    return out


def compare_rows(records_a: list[dict], records_b: list[dict]) -> tuple[list, list, list]:
    """Match the finished cells of two runs by configuration (not by key, which also hashes
    versions and settings) and give metric deltas and latency ratios.

    Returns:
        headers, rows (one per configuration x runtime/profile/precision measured in both,
        or one per configuration without a common latency), and notes on the
        configurations found in only one run.
    """
    import statistics

    a, b = _by_configuration(records_a), _by_configuration(records_b)
    headers = ["backbone", "strategy", "dataset", "metric", "A", "B", "B - A",
               "runtime/profile", "A p50 ms", "B p50 ms", "B / A"]
    rows = []
    for conf in [c for c in a if c in b]:
        ga, gb = a[conf], b[conf]
        ma = statistics.fmean(ga["metric"]) if ga["metric"] else None
        mb = statistics.fmean(gb["metric"]) if gb["metric"] else None
        base = [conf[0], conf[3], conf[2], ga["rec"].get("metric_name") or "-", _fmt(ma),
                _fmt(mb), f"{mb - ma:+.3f}" if None not in (ma, mb) else "-"]
        common = [k for k in ga["lat"] if k in gb["lat"]]
        for k in common or [None]:
            if k is None:
                rows.append(base + ["-", "-", "-", "-"])
                continue
            la, lb = statistics.median(ga["lat"][k]), statistics.median(gb["lat"][k])
            label = f"{k[0]}/{k[1]}" + ("" if k[2] == "fp32" else f" {k[2]}")
            rows.append(base + [label, f"{la:.3g}", f"{lb:.3g}",
                                f"{lb / la:.2f}x" if la > 0 else "-"])
    notes = [f"only in A: {c[0]} / {c[3]} / {c[2]}" for c in a if c not in b]
    notes += [f"only in B: {c[0]} / {c[3]} / {c[2]}" for c in b if c not in a]
    return headers, rows, notes


def flatten(d, prefix=""):
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}`` (nested mappings to dotted keys)."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def setting_differences(a: dict, b: dict, skip=("cell_keys",)) -> list[str]:
    """``key: A -> B`` for every flattened setting that differs between two mappings."""
    fa, fb = flatten(a), flatten(b)
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(set(fa) | set(fb))
            if fa.get(k) != fb.get(k) and not any(k.startswith(s) for s in skip)]
