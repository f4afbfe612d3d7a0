"""bench report (every reporter, HTML with plots) and bench compare, on a stored run."""
from __future__ import annotations

import csv
import io
import json
import re

import pytest
from click.testing import CliRunner

from harness.cli import cli
from harness.report.benefits import transfer_benefits
from harness.run.results import RunStore, atomic_write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rec(backbone, strategy, seed, acc, lat, curve, dclass="mobile"):
    return {"key": f"{backbone}-{strategy}-{seed}", "status": "ok",
            "config": {"backbone": backbone, "strategy": strategy, "dataset": "d",
                       "task": "classification", "seed": seed, "weights": None,
                       "image_size": 16},
            "backbone_facts": {"device_class": dclass, "params_total": 1000},
            "weights": {"description": "random", "pretrained": strategy != "scratch"},
            "metric_name": "accuracy", "higher_is_better": True,
            "test_metrics": {"accuracy": acc}, "train_seconds": 1.0,
            "start_is_chance": False,  # as if each cell reused a source head: start counts
            "history": {"start": {"val_metric": curve[0]},  # before training: epoch 0
                        "epochs": [{"val_metric": v} for v in curve[1:]]},
            "latency": [{"runtime": "onnxruntime", "profile": "mobile", "precision": "fp32",
                         "stats": {"p50_ms": lat, "p90_ms": lat * 1.3}}]}


def make_run(path, scale=1.0, accs=(0.5, 0.8, 0.9)):
    """A stored run: 2 backbones x scratch/finetune x 3 seeds."""
    store = RunStore(path)
    recs = []
    for bb, dclass, lat in (("small", "mobile", 1.0), ("big", "server", 4.0)):
        for s in range(3):
            recs.append(_rec(bb, "scratch", s, accs[0] + 0.01 * s, lat * scale,
                             [0.2, 0.4, 0.5], dclass))
            recs.append(_rec(bb, "finetune", s, accs[1 if bb == "small" else 2] + 0.01 * s,
                             lat * scale * 1.1, [0.6, 0.8, 0.85], dclass))
    atomic_write_json(path / "config.json", {"matrix": {"name": "t", "seeds": 3},
                                              "cell_keys": [r["key"] for r in recs]})
    atomic_write_json(path / "environment.json", {"versions": {"torch": "x"}})
    for r in recs:
        store.write_cell(r)
    store.aggregate()
    return store


@pytest.fixture
def run_dir(tmp_path):
    make_run(tmp_path / "run")
    return tmp_path / "run"


def test_table_report_shows_intervals_and_recommendation(run_dir):
    res = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert "Repeats over seeds" in res.output
    assert re.search(r"0\.\d{3} ± 0\.\d{3}", res.output)  # --seeds 3 shows intervals
    assert "big + finetune (onnxruntime)" in res.output
    tight = CliRunner().invoke(cli, ["report", str(run_dir), "--budget-ms", "2"]).output
    assert "no server-class candidate is within 2 ms" in tight
    assert "small + finetune (onnxruntime)" in tight


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json", "html"])
def test_every_reporter_writes_a_file(run_dir, tmp_path, fmt):
    out = tmp_path / f"out.{ 'html' if fmt == 'html' else fmt}"
    res = CliRunner().invoke(cli, ["report", str(run_dir), "--format", fmt, "--out", str(out)])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == 12 and rows[0]["p50_ms"]
    elif fmt == "json":
        assert len(json.loads(text)) == 12
    elif fmt == "markdown":
        assert "| backbone" in text and "Recommendation" in text
    elif fmt == "table":
        assert "big" in text


def test_html_is_self_contained_with_its_plots_as_pngs(run_dir, tmp_path):
    res = CliRunner().invoke(cli, ["report", str(run_dir), "--format", "html",
                                   "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "rep" / "report.html").read_text()
    # nothing to fetch: no external script, style or image
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", html)
    assert "window.vegaEmbed=" in html  # the libraries are in the page
    specs = json.loads(re.search(r"<script type='application/json' id='tb-specs'>(.*?)</script>",
                                 html, re.S).group(1))
    assert len(specs) == 4 and all(s["$schema"].endswith("vega-lite/v6.json")
                                   for s in specs.values())
    pngs = {p.name: p.read_bytes() for p in (tmp_path / "rep").glob("*.png")}
    assert set(pngs) == {"pareto-mobile.png", "latency-mobile.png", "learning-curves.png",
                         "transfer-benefits.png"}
    assert all(b.startswith(PNG_MAGIC) and len(b) > 10_000 for b in pngs.values())
    assert "Recommendation" in html and "±" in html


def test_pareto_plot_data_carries_what_hover_shows(run_dir):
    from harness.report.report_html import pareto_spec

    recs = RunStore(run_dir).records()
    spec = pareto_spec(recs, "mobile", budget_ms=2.0)
    points = next(layer["data"]["values"] for layer in spec["layer"]
                  if layer["mark"].get("filled"))
    assert len(points) == 4
    small_ft = next(p for p in points if (p["backbone"], p["strategy"]) == ("small", "finetune"))
    # 3 seeds of 0.80, 0.81, 0.82: mean 0.81, t(0.975, 2) * 0.01 / sqrt(3) = 0.0248
    assert small_ft["metric"] == pytest.approx(0.81)
    assert small_ft["metric_high"] - small_ft["metric"] == pytest.approx(0.02484, abs=1e-4)
    assert small_ft["p50_ms"] == pytest.approx(1.1) and small_ft["p90_ms"] == pytest.approx(1.43)
    assert small_ft["pick"] and small_ft["pareto"]
    big_ft = next(p for p in points if (p["backbone"], p["strategy"]) == ("big", "finetune"))
    assert not big_ft["pick"]  # 4.4 ms is over the 2 ms budget
    budget = spec["layer"][-1]
    assert budget["data"]["values"] == [{"budget": 2.0}]
    # no text marks in the plot: labels cannot overlap, tooltips and legends name the points
    assert not any(layer["mark"] == "text" or (isinstance(layer["mark"], dict)
                   and layer["mark"].get("type") == "text") for layer in spec["layer"])


def test_transfer_benefits_against_scratch_of_same_seed(run_dir):
    rows = transfer_benefits(RunStore(run_dir).records())
    assert len(rows) == 6 and {r["strategy"] for r in rows} == {"finetune"}
    r = rows[0]
    assert r["start"]["gain"] == pytest.approx(0.4)
    assert r["asymptote"]["gain"] == pytest.approx(0.35)
    # slope is a rate: least squares over epochs 0..2, (0.85 - 0.6) / 2 against (0.5 - 0.2) / 2
    assert r["slope"]["gain"] == pytest.approx(0.125 - 0.15)
    # the area is its own figure: (0.7 + 0.825) / 2 against (0.3 + 0.45) / 2
    assert r["auc"]["gain"] == pytest.approx((0.7 + 0.825 - 0.3 - 0.45) / 2)


def test_compare_matches_by_configuration_not_key(tmp_path):
    make_run(tmp_path / "a")
    make_run(tmp_path / "b", scale=2.0, accs=(0.5, 0.7, 0.9))
    # a different key (e.g. other versions) must not prevent the match
    for p in (tmp_path / "b" / "cells").glob("*.json"):
        rec = json.loads(p.read_text())
        rec["key"] = "other-" + rec["key"]
        p.write_text(json.dumps(rec))
    res = CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("small")]
    fin = next(line for line in lines if "finetune" in line)
    assert "-0.100" in fin and "2.00x" in fin
    assert all("2.00x" in line for line in lines)


def test_compare_format_is_an_output_format_as_in_report(tmp_path):
    """--format means the output format in every command (issue 30): table, markdown,
    csv, json; a tabulate style (the old meaning) still works with a warning, and
    --table-style takes it now."""
    make_run(tmp_path / "a")
    make_run(tmp_path / "b", scale=2.0, accs=(0.5, 0.7, 0.9))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    runner = CliRunner()
    js = runner.invoke(cli, ["compare", a, b, "--format", "json"])
    assert js.exit_code == 0, js.output
    data = json.loads(js.stdout)
    fin = next(r for r in data["rows"] if r["strategy"] == "finetune")
    assert fin["B - A"] == "-0.100" and data["a"].endswith("a")
    rows = list(csv.reader(io.StringIO(runner.invoke(cli, ["compare", a, b, "--format",
                                                           "csv"]).stdout)))
    assert rows[0][:3] == ["backbone", "strategy", "dataset"] and len(rows) == 1 + len(
        data["rows"])
    md = runner.invoke(cli, ["compare", a, b, "--format", "markdown"])
    assert md.exit_code == 0 and "| backbone" in md.stdout and "warning" not in md.output
    old = runner.invoke(cli, ["compare", a, b, "--format", "grid"])
    new = runner.invoke(cli, ["compare", a, b, "--table-style", "grid"])
    assert old.exit_code == new.exit_code == 0 and old.stdout == new.stdout
    assert "+=====" in new.stdout and "--table-style grid" in old.stderr
    bad = runner.invoke(cli, ["compare", a, b, "--format", "nope"])
    assert bad.exit_code == 2 and "table, markdown, csv, json" in bad.output


def test_compare_reports_unmatched_and_bad_folders(tmp_path):
    make_run(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["compare", str(tmp_path / "a"), str(tmp_path / "empty")])
    assert res.exit_code == 2 and "not a run folder" in res.output
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "a"), "--format", "nope"])
    assert res.exit_code == 2 and "html" in res.output  # lists the choices


def test_learning_curves_mark_rolled_back_epochs_and_start_at_epoch_0():
    """Chain-thaw's discarded phases are visible in the plot, not only in the table."""
    from harness.report.report_html import curves_spec
    epochs = [{"phase": "new layers", "val_metric": 0.6, "train_metric": 0.5},
              {"phase": "layer1", "val_metric": 0.55, "train_metric": 0.6, "rolled_back": True},
              {"phase": "all", "val_metric": 0.7, "train_metric": 0.7}]
    rec = {"status": "ok", "metric_name": "accuracy",
           "config": {"backbone": "b", "strategy": "chain_thaw", "dataset": "d"},
           "history": {"start": {"val_metric": 0.25}, "epochs": epochs}}
    spec = curves_spec([rec])
    rows = spec["data"]["values"]
    assert (rows[0]["epoch"], rows[0]["value"]) == (0, 0.25)
    assert [(r["epoch"], r["series"]) for r in rows if r["rolled_back"]] == [
        (2, "validation"), (2, "train")]
    marker = spec["spec"]["layer"][1]
    assert marker["mark"]["shape"] == "cross" and "rolled" in spec["title"]
    import vl_convert
    assert vl_convert.vegalite_to_png(spec)[:8] == b"\x89PNG\r\n\x1a\n"  # it renders
    rec["history"]["epochs"][1]["rolled_back"] = False
    assert len(curves_spec([rec])["spec"]["layer"]) == 1  # no marker layer without one
