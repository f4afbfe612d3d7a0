"""Reports of a check: the terminal table, a Markdown pull-request comment, JUnit XML."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

from ..api.files import atomic_write_text
from .verdict import Verdict, exit_code

_HEAD = ["cell", "check", "verdict", "baseline", "fresh", "change", "p", "limit", "note"]


def _row(v: Verdict) -> list:
    fmt = (lambda x: "" if x is None else (f"{x:.4g}"))
    unit = " ms" if v.check.startswith("latency") else ""
    loud = v.status in ("regression", "error", "undecided")
    return [v.cell, v.check, v.status.upper() if loud else v.status,
            fmt(v.baseline) + (unit if v.baseline is not None else ""),
            fmt(v.fresh) + (unit if v.fresh is not None else ""), v.change or "",
            "" if v.p_value is None else f"{v.p_value:.2g}", v.limit, v.note]


def verdict_table(verdicts: list[Verdict]) -> str:
    from tabulate import tabulate
    return tabulate([_row(v) for v in verdicts], headers=_HEAD, tablefmt="simple")


def summary_line(verdicts: list[Verdict]) -> str:
    counts = {s: sum(v.status == s for v in verdicts)
              for s in ("regression", "error", "undecided", "improved", "pass", "skipped")}
    code = exit_code(verdicts)
    head = {0: "all checks hold", 1: "REGRESSION", 2: "ERROR: some checks could not be done"}[code]
    return head + " (" + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ")"


def power_lines(verdicts: list[Verdict]) -> list[str]:
    """Per latency target: the rounds it used, the noise it read and the power the rule's own
    calculation predicts for that noise at the stated minimum effect; then the check's time
    and its worst case (paired checks)."""
    out = []
    for v in verdicts:
        d = v.detail
        if d.get("predicted_power") is None:
            continue
        rounds = d["rounds"] if isinstance(d["rounds"], int) else "+".join(map(str, d["rounds"]))
        cap = f" of at most {d['max_rounds']}" if d.get("max_rounds") else ""
        bursts = f" + {d['bursts']:.0%} burst rounds" if d.get("bursts") else ""
        out.append(f"power: {v.cell} {v.check}: {rounds} rounds{cap}, noise sd "
                   f"{d['noise_sd']:.3f}{bursts} -> predicted power {d['predicted_power']:.3f}"
                   f" at x{d['min_effect']:g}")
    timing = next((v.detail["timing"] for v in verdicts if "timing" in v.detail), None)
    if timing:
        out.append(f"time: {timing['total_s']:.0f} s (workers' start-up {timing['startup_s']:.0f}"
                   f" s); worst case, every target undecided until round "
                   f"{timing['max_rounds']}: about {timing['worst_case_s']:.0f} s")
    return out


def markdown_summary(verdicts: list[Verdict], warnings: list[str], baseline_path: str) -> str:
    """A pull-request comment: overall status, warnings, the verdict table."""
    icon = {0: ":white_check_mark:", 1: ":x:", 2: ":warning:"}[exit_code(verdicts)]
    lines = [f"### {icon} transfer-bench check: {summary_line(verdicts)}", "",
             f"Baseline: `{baseline_path}`", ""]
    lines += [f"> **warning:** {w}" for w in warnings]
    if warnings:
        lines.append("")
    lines.append("| " + " | ".join(_HEAD) + " |")
    lines.append("|" + "---|" * len(_HEAD))
    for v in verdicts:
        cells = [str(c).replace("|", "\\|") for c in _row(v)]
        if v.status in ("regression", "error", "undecided"):
            cells[2] = f"**{cells[2]}**"
        lines.append("| " + " | ".join(cells) + " |")
    power = power_lines(verdicts)
    if power:
        lines += [""] + [f"- {line}" for line in power]
    lines += ["", "Against a stored baseline one Mann-Whitney test at alpha decides, on the fresh "
              "rounds shifted by the tolerance, in as many rounds as the stored noise needs. "
              "With --against, paired rounds are added until one sequential test (Wald's SPRT "
              "on the signs of the per-round log ratios beyond the tolerance) decides at "
              "alpha; p is its always-valid p-value. See docs/ci-check.md."]
    return "\n".join(lines) + "\n"


def junit_xml(verdicts: list[Verdict], warnings: list[str]) -> str:
    """JUnit XML: one testcase per verdict; regressions are failures, errors are errors."""
    suite = ET.Element("testsuite", name="transfer-bench check", tests=str(len(verdicts)),
                       failures=str(sum(v.status == "regression" for v in verdicts)),
                       errors=str(sum(v.status in ("error", "undecided") for v in verdicts)),
                       skipped=str(sum(v.status == "skipped" for v in verdicts)))
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname=v.cell, name=v.check)
        msg = " ".join(f"{h}={c}" for h, c in zip(_HEAD[2:], _row(v)[2:]) if c)
        if v.status == "regression":
            ET.SubElement(case, "failure", message=msg).text = msg
        elif v.status in ("error", "undecided"):
            ET.SubElement(case, "error", message=v.note).text = msg
        elif v.status == "skipped":
            ET.SubElement(case, "skipped", message=v.note)
        else:
            ET.SubElement(case, "system-out").text = msg
    if warnings:
        ET.SubElement(suite, "system-err").text = "\n".join(warnings)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def write_reports(verdicts: list[Verdict], warnings: list[str], baseline_path: str,
                  markdown: Optional[Path], junit: Optional[Path]) -> None:
    if markdown:
        atomic_write_text(Path(markdown), markdown_summary(verdicts, warnings, baseline_path))
    if junit:
        atomic_write_text(Path(junit), junit_xml(verdicts, warnings))
