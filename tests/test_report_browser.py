"""The HTML report opened in a real headless browser (Debian's chromium, driven by Playwright
with the system browser: nothing is downloaded).

It skips, with the reason, only where no chromium is installed (``make install`` installs
Debian's ``chromium``). The screenshot is saved under ``$TEST_ARTIFACTS_DIR`` (CI uploads it),
else in the test's temporary folder.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from harness.report.recommend import candidates
from harness.report.report_html import write_html
from harness.run.results import RunStore, atomic_write_json
from test_report import make_run

TEST_IMAGES = 200
T0 = 1_796_300_000.0  # 2026-12-03 12:13 UTC: when the fake cells ran
#: (runtime, precision) measured per profile in the mixed run, and the int8 metric's offset
VARIANTS = (("pytorch", "fp32", 1.0), ("onnxruntime", "fp32", 0.5), ("onnxruntime", "int8", 0.3),
            ("onnxruntime", "int8-dynamic", 0.8))


def _lat(runtime, precision, profile, p50, acc_after=None, evaluated_on=TEST_IMAGES,
         noisy=False):
    row = {"runtime": runtime, "precision": precision, "profile": profile, "device": "cpu",
           "outputs_check": {"ok": True},
           "stats": {"p50_ms": p50, "p90_ms": p50 * 1.25,
                     "noise": {"noisy": noisy, "reasons": ["IQR is 31% of p50 (stable: <= 10%)"]
                               if noisy else []}}}
    if acc_after is not None:
        row |= {"accuracy_after": acc_after, "evaluated_on": evaluated_on}
    return row


def make_mixed_run(path):
    """A stored run with what the page must tell apart: 2 backbones x scratch/finetune x 2
    seeds, each measured with PyTorch fp32 and ONNX Runtime fp32/int8/int8-dynamic under
    the mobile and server profiles; int8's metric after conversion on the same test images
    (one cell's int8-dynamic scored on a subset, as records from before issue 25 were:
    never compared); one noisy figure; an environment with allocator internals."""
    store = RunStore(path)
    recs = []
    for bb, dclass, base in (("small", "mobile", 2.0), ("big", "server", 9.0)):
        for strategy, acc in (("scratch", 0.5), ("finetune", 0.8 if bb == "small" else 0.9)):
            for seed in (0, 1):
                metric = acc + 0.01 * seed
                lats = []
                for profile, scale in (("mobile", 1.0), ("server", 6.0)):
                    for runtime, prec, f in VARIANTS:
                        after = None
                        if prec == "int8":
                            after = metric - 0.02
                        elif prec == "int8-dynamic":
                            after = metric - 0.05
                        subset = (bb, strategy, seed, prec) == ("big", "scratch", 1,
                                                                "int8-dynamic")
                        lats.append(_lat(runtime, prec, profile, base * f * scale, after,
                                         TEST_IMAGES // 2 if subset else TEST_IMAGES,
                                         noisy=(bb, runtime, profile) == (
                                             "small", "pytorch", "server")))
                n = len(recs)
                recs.append({
                    "key": f"{bb}-{strategy}-{seed}", "status": "ok",
                    "started": T0 + 60 * n, "finished": T0 + 60 * n + 50,
                    "config": {"backbone": bb, "strategy": strategy, "dataset": "d",
                               "task": "classification", "seed": seed, "weights": None,
                               "image_size": 16},
                    "data": {"sizes": {"train": 100, "val": 50, "test": TEST_IMAGES}},
                    "backbone_facts": {"device_class": dclass, "params_total": 1000},
                    "weights": {"description": "random", "pretrained": strategy != "scratch"},
                    "metric_name": "accuracy", "higher_is_better": True,
                    "test_metrics": {"accuracy": metric}, "train_seconds": 1.0,
                    "history": {"start": {"val_metric": 0.3},
                                "epochs": [{"val_metric": metric - 0.1},
                                           {"val_metric": metric}]},
                    "latency": lats})
    atomic_write_json(path / "config.json", {"matrix": {"name": "mixed", "seeds": 2},
                                              "cell_keys": [r["key"] for r in recs]})
    atomic_write_json(path / "environment.json", {
        "versions": {"transfer-bench": "0.1.0", "python": "3.11.2", "torch": "2.14.1",
                     "torchvision": "0.29.1", "onnxruntime": "1.32.0"},
        "cpu": "AMD EPYC 9R45", "cpu_count": 2, "affinity": 2, "machine": "x86_64",
        "cpu_flags": ["avx2", "fma", "avx512f"], "torch_threads": 2,
        "gpu": {"cuda": False, "reason": "torch.cuda.is_available() is False"},
        "allocator": {"applied": True, "malloc": "jemalloc", "MALLOC_CONF":
                      "background_thread:true,metadata_thp:auto,dirty_decay_ms:30000"},
        "argv": ["bench", "run"], "training": {"device": "cpu", "precision": "fp32"},
        "load_average": {"usable_cpus": 2, "at_start": [1.5, 1.0, 0.5],
                         "at_end": [3.0, 2.0, 1.0]}})
    for r in recs:
        store.write_cell(r)
    store.aggregate()
    return store

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str | None:
    return os.environ.get("TRANSFER_BENCH_BROWSER") or next(
        (p for p in map(shutil.which, BROWSERS) if p), None)


@pytest.fixture(scope="module")
def browser():
    exe = _browser()
    if exe is None:
        pytest.skip(f"no browser: none of {', '.join(BROWSERS)} is on PATH "
                    "(make install installs Debian's chromium; or set TRANSFER_BENCH_BROWSER)")
    from playwright.sync_api import sync_playwright  # the dev extra; a missing one fails

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield browser
        browser.close()


def _open(browser, html: Path, width: int) -> dict:
    """The page of ``html`` at a ``width`` px wide viewport, offline, every plot rendered;
    what the console said and what it tried to fetch are collected."""
    page = browser.new_page(viewport={"width": width, "height": 1000})
    problems, outside = [], []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

    def offline(route):  # the page must need nothing but itself
        if not route.request.url.startswith(("file:", "data:", "blob:")):
            outside.append(route.request.url)
            return route.abort()
        return route.continue_()

    page.route("**/*", offline)
    page.goto(html.as_uri())
    page.wait_for_function("[...document.querySelectorAll('.plot')]"
                           ".every(e => e.dataset.rendered)", timeout=60_000)
    return {"page": page, "problems": problems, "outside": outside, "html": html}


@pytest.fixture(scope="module")
def plain_report(tmp_path_factory):
    """test_report's run (one runtime, fp32, one profile) and its written page."""
    root = tmp_path_factory.mktemp("browser")
    store = make_run(root / "run")
    return store, write_html(store, root / "report")


@pytest.fixture(scope="module")
def page_of_report(plain_report, browser):
    store, html = plain_report
    opened = _open(browser, html, 1400)
    yield {**opened, "store": store}
    opened["page"].close()


@pytest.fixture(scope="module")
def mixed_report(tmp_path_factory):
    """The mixed run (several runtimes, precisions and profiles) and its written page."""
    root = tmp_path_factory.mktemp("mixed")
    store = make_mixed_run(root / "run")
    html = write_html(store, root / "report")
    return {"store": store, "html": html, "text": html.read_text(encoding="utf-8")}


@pytest.fixture(scope="module")
def mixed_page(mixed_report, browser):
    """The mixed run's page in the browser at a 1280 px wide viewport (issue 30)."""
    opened = _open(browser, mixed_report["html"], 1280)
    yield {**mixed_report, **opened}
    opened["page"].close()


def test_every_plot_renders_offline_without_console_errors(page_of_report):
    page = page_of_report["page"]
    plots = page.query_selector_all(".plot")
    # pareto and latency (one profile each), learning curves, benefits; no int8 measured
    assert len(plots) == 4
    assert [p.get_attribute("data-rendered") for p in plots] == ["true"] * 4
    for p in plots:
        box = p.query_selector("svg").bounding_box()
        assert box["width"] > 200 and box["height"] > 100
        assert len(p.query_selector_all("svg .role-mark path")) > 0
    assert page_of_report["problems"] == []
    assert page_of_report["outside"] == []


def test_pareto_plot_draws_every_candidate_and_hover_names_it(page_of_report):
    page = page_of_report["page"]
    recs = page_of_report["store"].records()
    n_cands = len([c for c in candidates(recs) if c.profile == "mobile"])
    pareto = page.query_selector_all(".plot")[0]
    # the layers' symbols: one ring per pick (one per device class) under one per candidate
    symbols = pareto.query_selector_all("svg g.mark-symbol.role-mark")
    rings, points = (g.query_selector_all("path") for g in symbols)
    assert (len(rings), len(points)) == (2, n_cands)
    picked = [p for p in points if "backbone: small;" in p.get_attribute("aria-label")
              and "strategy: finetune;" in p.get_attribute("aria-label")]
    assert len(picked) == 1
    picked[0].hover()  # the mobile pick: its ring lies under it
    tip = page.wait_for_selector("#vg-tooltip-element.visible", timeout=10_000)
    text = tip.inner_text()
    for field in ("backbone", "strategy", "weights", "runtime", "precision", "p50 ms",
                  "p90 ms", "test accuracy"):
        assert field in text
    assert "±" in text and "95% t interval, 3 seeds" in text


def test_cells_table_sorts_and_filters(page_of_report):
    page = page_of_report["page"]
    table = page.query_selector("#cells-table")
    headers = [th.inner_text() for th in table.query_selector_all("thead th")]
    col = headers.index("test")

    def column():
        return [float(r.query_selector_all("td")[col].inner_text())
                for r in table.query_selector_all("tbody tr") if r.is_visible()]

    before = column()
    assert before != sorted(before)  # the stored order is not already sorted
    th = table.query_selector_all("thead th")[col]
    th.click()
    assert column() == sorted(before) and th.get_attribute("aria-sort") == "ascending"
    th.click()
    assert column() == sorted(before, reverse=True)
    page.fill("input.filter", "big finetune")
    assert len(column()) == 3
    assert page.inner_text("#cells-table-count") == "3 of 12 rows"
    page.fill("input.filter", "")
    assert len(column()) == 12


def test_screenshot_artifact(page_of_report, tmp_path):
    out = Path(os.environ.get("TEST_ARTIFACTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "report-screenshot.png"
    page = page_of_report["page"]
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 50_000
    print(f"screenshot: {shot}")


def test_recommendation_is_a_table_per_profile_with_the_front(page_of_report):
    page = page_of_report["page"]
    tables = page.query_selector_all("table.recommendation")
    assert len(tables) == 1  # one profile
    rows = [[td.inner_text() for td in tr.query_selector_all("td")]
            for tr in tables[0].query_selector_all("tbody tr")]
    picks = [r for r in rows if r[2] == "★ pick"]
    assert [(r[1], r[3]) for r in picks] == [("mobile", "small + finetune"),
                                            ("server", "big + finetune")]
    assert all(r[2] in ("★ pick", "front") for r in rows)


def test_environment_is_shown(page_of_report):
    store: RunStore = page_of_report["store"]
    page = page_of_report["page"]
    summary = page.inner_text("dl.env-summary")
    assert f"torch {store.environment()['versions']['torch']}" in summary
    assert "not recorded" in summary  # make_run's environment holds versions only
    assert not page.is_visible("table.env")  # every setting: collapsed until asked
    page.click("details.env-details summary")
    assert page.is_visible("table.env") and "versions.torch" in page.inner_text("table.env")


# -- the mixed run: runtimes, precisions and profiles told apart (issue 30) -----------------
# The structural tests read the written page (no browser needed); the browser tests after
# them look at it in chromium at a 1280 px wide viewport.
def _specs(text: str) -> dict:
    found = re.search(r"<script type='application/json' id='tb-specs'>(.*?)</script>", text,
                      re.S)
    return json.loads(found.group(1))


def _views(text: str) -> dict:
    """``{view name: Vega-Lite spec}`` of the page (the PNG name without ``.png``)."""
    specs = _specs(text)
    return {m.group(2): specs[m.group(1)] for m in re.finditer(
        r"<div class='plot' id='(plot-\d+)' data-view='([^']+)'", text)}


def _layer(spec: dict, **mark) -> dict:
    (layer,) = [ly for ly in spec["layer"] if all(ly["mark"].get(k) == v
                                                   for k, v in mark.items())]
    return layer


RUNTIMES, PRECISIONS = ["onnxruntime", "pytorch"], ["fp32", "int8", "int8-dynamic"]


def test_the_page_has_every_view_and_loads_nothing(mixed_report):
    text = mixed_report["text"]
    assert list(_views(text)) == ["pareto-mobile", "pareto-server", "latency-mobile",
                                  "latency-server", "accuracy-drop", "learning-curves",
                                  "transfer-benefits"]
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", text)
    assert not re.search(r"""@import|url\(\s*['"]?https?:""", text)
    pngs = sorted(p.name for p in mixed_report["html"].parent.glob("*.png"))
    assert pngs == sorted(f"{v}.png" for v in _views(text))


def test_every_point_plot_colours_runtimes_and_marks_precisions_with_legends(mixed_report):
    views = _views(mixed_report["text"])
    colours, shapes = {}, {}
    for name in ("pareto-mobile", "pareto-server", "latency-mobile", "latency-server",
                 "accuracy-drop"):
        enc = _layer(views[name], type="point", filled=True)["encoding"]
        colour, shape = enc["color"], enc["shape"]
        assert colour["field"] == "runtime" and shape["field"] == "precision", name
        assert colour["legend"]["title"] == "runtime (colour)"
        assert shape["legend"]["title"] == "precision (marker)"
        # a legend lists what its plot shows: int8 is measured by ONNX Runtime only
        want = (["onnxruntime"], ["int8", "int8-dynamic"]) if name == "accuracy-drop" else (
            RUNTIMES, PRECISIONS)
        assert (colour["scale"]["domain"], shape["scale"]["domain"]) == want, name
        # ... and a runtime keeps its colour, a precision its marker, in every plot
        for seen, scale in ((colours, colour["scale"]), (shapes, shape["scale"])):
            for value, look in zip(scale["domain"], scale["range"]):
                assert seen.setdefault(value, look) == look, (name, value)
    assert len(set(colours.values())) == 2
    assert shapes == {"fp32": "circle", "int8": "triangle-up", "int8-dynamic": "triangle-down"}


def test_latency_view_has_a_point_per_backbone_runtime_and_precision(mixed_report):
    views = _views(mixed_report["text"])
    for profile, scale in (("mobile", 1.0), ("server", 6.0)):
        spec = views[f"latency-{profile}"]
        points = _layer(spec, type="point")["data"]["values"]
        # 2 backbones x (pytorch fp32, onnxruntime fp32/int8/int8-dynamic)
        assert len(points) == 8
        got = {(p["backbone"], p["runtime"], p["precision"]): p for p in points}
        for bb, base in (("small", 2.0), ("big", 9.0)):
            for runtime, prec, f in VARIANTS:
                p = got[(bb, runtime, prec)]
                assert p["p50_ms"] == pytest.approx(base * f * scale)
                assert p["p90_ms"] == pytest.approx(base * f * scale * 1.25)
                assert p["cells"] == 4  # scratch/finetune x 2 seeds share the architecture
        noisy = [(p["backbone"], p["runtime"]) for p in points if p["noisy"]]
        marks = [ly for ly in spec["layer"] if ly["mark"]["type"] == "text"]
        if profile == "server":
            assert noisy == [("small", "pytorch")]
            assert [m["backbone"] for m in marks[0]["data"]["values"]] == ["small"]
            assert marks[0]["mark"]["text"] == "~" and "unreliable" in str(spec["title"])
            assert got[("small", "pytorch", "fp32")]["latency_note"].startswith(
                "noisy, unreliable: IQR is 31%")
        else:
            assert noisy == [] and marks == []


def test_accuracy_drop_view_pairs_fp32_and_int8_on_the_same_images(mixed_report):
    spec = _views(mixed_report["text"])["accuracy-drop"]
    rows = _layer(spec, type="point", filled=True)["data"]["values"]
    rings = _layer(spec, type="point", filled=False)["data"]["values"]
    assert len(rings) == 8  # one fp32 metric per cell
    # 8 cells x (int8, int8-dynamic), each once although measured under two profiles,
    # less big/scratch/seed 1's int8-dynamic: scored on 100 of 200 test images, not compared
    assert len(rows) == 15
    assert not any(r["cell"] == "big / scratch / d / seed 1" and r["precision"] == "int8-dynamic"
                   for r in rows)
    for r in rows:
        assert r["drop"] == pytest.approx(0.02 if r["precision"] == "int8" else 0.05)
        assert r["drop"] == pytest.approx(r["fp32"] - r["after"])
        assert r["images"] == TEST_IMAGES
    assert len(_layer(spec, type="rule")["data"]["values"]) == 15


def test_no_accuracy_drop_view_says_why(plain_report):
    text = plain_report[1].read_text(encoding="utf-8")
    assert "accuracy-drop" not in _views(text)
    assert "No accuracy-drop view: no lower precision (int8, fp16...) was measured" in text


def test_cells_table_sits_in_a_scroll_box_with_detail_columns_hidden(mixed_report):
    text = mixed_report["text"]
    assert re.search(r"<div class='table-wrap' id='cells-wrap'><table "
                     r"id='cells-table' class='sortable cells compact'>", text)
    assert ".table-wrap{overflow:auto;max-width:100%" in text
    assert "table.compact .extra,table.cells .off-profile{display:none}" in text
    head = re.search(r"<table id='cells-table'.*?<thead><tr>(.*?)</tr>", text).group(1)
    cols = re.findall(r"<th(?: class='([^']*)')?>([^<]*)</th>", head)
    shown = [h for c, h in cols if "extra" not in c and "off-profile" not in c]
    assert shown == ["backbone", "weights", "strategy", "seed", "dataset", "test",
                     "pytorch mobile p50/p90 ms", "onnxruntime mobile p50/p90 ms",
                     "onnxruntime mobile int8 p50/p90 ms",
                     "onnxruntime mobile int8-dynamic p50/p90 ms", "status"]
    assert {h for c, h in cols if "extra" in c} == {
        "class", "metric", "epochs / steps", "train FLOPs", "train s", "trained on",
        "params M", "trained M"}
    assert len([h for c, h in cols if "off-profile" in c]) == 4  # the server profile's
    assert "class='columns-toggle'" in text and "class='profile-pick'" in text


def test_environment_summary_comes_before_the_collapsed_details(mixed_report):
    text = mixed_report["text"]
    env = text[text.index("<h2 id='environment'>"):]
    summary = env[:env.index("<details")]
    for words in ("AMD EPYC 9R45, 2 CPUs, x86_64", "avx2, fma, avx512f",
                  "none (torch.cuda.is_available() is False)", "torch 2.14.1",
                  "onnxruntime 1.32.0", "at start 1.50 / 1.00 / 0.50 (0.75 per usable CPU)",
                  "2026-12-03 12:13 UTC to 2026-12-03 12:21 UTC"):
        assert words in summary, words
    assert "allocator" not in summary and "jemalloc" not in summary
    assert "<details class='env-details'>" in env and "allocator.MALLOC_CONF" in env
    assert "<details class='env-details' open" not in env


def test_mixed_page_renders_offline_and_fits_1280_px(mixed_page):
    page = mixed_page["page"]
    assert mixed_page["problems"] == [] and mixed_page["outside"] == []
    plots = page.query_selector_all(".plot")
    assert [p.get_attribute("data-rendered") for p in plots] == ["true"] * 7
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 1280  # nothing runs off the page
    box = page.evaluate("(() => { const w = document.getElementById('cells-wrap'); "
                        "return [w.clientWidth, w.scrollWidth]; })()")
    assert box[1] <= box[0]  # the default columns fit without scrolling
    page.check("input.columns-toggle")  # every column: the box scrolls, not the page
    try:
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        wrap = page.query_selector("#cells-wrap")
        assert page.evaluate("w => w.scrollWidth > w.clientWidth", wrap)
        first = page.query_selector("#cells-table tbody tr td")
        x0 = first.bounding_box()["x"]
        page.evaluate("w => { w.scrollLeft = 400; }", wrap)
        assert first.bounding_box()["x"] == pytest.approx(x0, abs=1)  # sticky first column
        assert first.is_visible()
    finally:
        page.uncheck("input.columns-toggle")


def test_mixed_page_legends_name_each_runtime_and_precision(mixed_page):
    page = mixed_page["page"]
    for plot in page.query_selector_all(".plot")[:4]:  # pareto x2, latency x2
        labels = [t.text_content() for t in plot.query_selector_all("svg g.role-legend text")]
        assert "runtime (colour)" in labels and "precision (marker)" in labels
        assert set(RUNTIMES + PRECISIONS) <= set(labels), labels
    drop = page.query_selector(".plot[data-view='accuracy-drop']")
    labels = [t.text_content() for t in drop.query_selector_all("svg g.role-legend text")]
    assert {"onnxruntime", "int8", "int8-dynamic"} <= set(labels)
    assert "pytorch" not in labels and "fp32" not in labels  # never lowered: not in this plot


def test_mixed_page_latency_points_and_profile_menu(mixed_page):
    page = mixed_page["page"]
    latency = page.query_selector(".plot[data-view='latency-server']")
    symbols = latency.query_selector_all("svg g.mark-symbol.role-mark")
    assert [len(g.query_selector_all("path")) for g in symbols] == [8]
    header = page.query_selector_all("#cells-table thead th")
    server = [th for th in header if th.inner_text().startswith("pytorch server")][0]
    assert not server.is_visible()
    page.select_option("select.profile-pick", label="server")
    assert server.is_visible()
    page.select_option("select.profile-pick", label="mobile")
    assert not server.is_visible()


def test_mixed_page_screenshot(mixed_page, tmp_path):
    out = Path(os.environ.get("TEST_ARTIFACTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "report-mixed-1280px.png"
    mixed_page["page"].screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")
    print(f"screenshot: {shot}")


def test_mixed_page_hover_and_highlight_menus(mixed_page):
    page = mixed_page["page"]
    latency = page.query_selector(".plot[data-view='latency-server']")
    (points,) = latency.query_selector_all("svg g.mark-symbol.role-mark")
    noisy = [p for p in points.query_selector_all("path")
             if "backbone: small;" in p.get_attribute("aria-label")
             and "runtime: pytorch;" in p.get_attribute("aria-label")]
    assert len(noisy) == 1
    noisy[0].hover()
    tip = page.wait_for_selector("#vg-tooltip-element.visible", timeout=10_000).inner_text()
    assert "noisy, unreliable: IQR is 31%" in tip and "cells measured" in tip
    page.mouse.move(0, 0)
    # the accuracy-vs-latency plot: the backbone menu dims every other backbone's points
    pareto = page.query_selector(".plot[data-view='pareto-mobile']")
    menu = pareto.query_selector(".vega-bindings select[name^='backbone_pick']")
    menu.select_option(label="big")
    (_, dots) = pareto.query_selector_all("svg g.mark-symbol.role-mark")
    opacity = [(p.get_attribute("aria-label"), float(p.evaluate(
        "e => getComputedStyle(e).opacity"))) for p in dots.query_selector_all("path")]
    big = [o for label, o in opacity if "backbone: big;" in label]
    small = [o for label, o in opacity if "backbone: small;" in label]
    assert len(big) == len(small) == 8 and min(big) > 0.8 > 0.2 > max(small)
    menu.select_option(label="all")
    # a click on a legend entry highlights that precision (or runtime)
    (label,) = [t for t in pareto.query_selector_all("svg g.role-legend-label text")
                if t.text_content() == "int8"]
    label.click()
    (_, dots) = pareto.query_selector_all("svg g.mark-symbol.role-mark")
    seen = {}
    for p in dots.query_selector_all("path"):
        precision = p.get_attribute("aria-label").split("precision: ")[1].split(";")[0]
        seen.setdefault(precision, set()).add(float(p.evaluate(
            "e => getComputedStyle(e).opacity")))
    assert seen == {"int8": {0.9}, "fp32": {0.12}, "int8-dynamic": {0.12}}


def _cell(key, lats, status="ok", metric=0.8, hib=True):
    return {"key": key, "status": status, "metric_name": "mae" if not hib else "accuracy",
            "higher_is_better": hib, "test_metrics": {"mae" if not hib else "accuracy": metric},
            "data": {"sizes": {"test": TEST_IMAGES}},
            "config": {"backbone": "b", "strategy": "s", "dataset": "d", "seed": 0},
            "latency": lats}


def test_views_edge_cases():
    from harness.report.html_views import (accuracy_drop_rows, accuracy_drop_unavailable,
                                           latency_spec, variant_scales)
    gpu = _lat("tensorrt", "fp16", "mobile", 0.0, 0.7) | {"device": "cuda:0"}
    recs = [_cell("a", [_lat("pytorch", "fp32", "mobile", 0.0), gpu,
                        _lat("onnxruntime", "fp32", "mobile", 2.0)]),
            _cell("f", [_lat("pytorch", "fp32", "mobile", 99.0)], status="failed")]
    spec = latency_spec(recs, "mobile")
    points = [ly for ly in spec["layer"] if ly["mark"]["type"] == "point"][0]["data"]["values"]
    assert sorted(p["variant"] for p in points) == [  # the failed cell is not drawn
        "onnxruntime fp32 (cpu)", "pytorch fp32 (cpu)", "tensorrt fp16 (gpu)"]
    assert [p["p50_ms"] for p in points if p["runtime"] == "pytorch"] == [0.0]
    assert "log" not in str(spec["layer"][0]["encoding"]["x"]["scale"])  # a 0 ms p50
    assert latency_spec(recs, "server") is None
    # a metric where lower is better: the drop is how much worse, so after - fp32
    (row,) = accuracy_drop_rows([_cell("m", [gpu | {"accuracy_after": 0.5}], metric=0.3,
                                       hib=False)])
    assert row["drop"] == pytest.approx(0.2) and row["images"] == TEST_IMAGES
    assert accuracy_drop_rows(recs[1:]) == []
    assert "no lower precision" in accuracy_drop_unavailable(recs[1:])
    subset = _lat("onnxruntime", "int8", "mobile", 1.0, 0.7, evaluated_on=TEST_IMAGES // 2)
    assert "none of the lower-precision rows" in accuracy_drop_unavailable(
        [_cell("x", [subset])])
    _, shapes = variant_scales([_cell("q", [_lat("r", p, "mobile", 1.0) for p in
                                            ("fp32", "int4", "int8", "fp8")])])
    assert shapes["domain"][:2] == ["fp32", "int8"] and len(set(shapes["range"])) == 4
