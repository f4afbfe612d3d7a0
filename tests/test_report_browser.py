"""The HTML report opened in a real headless browser (Debian's chromium, driven by Playwright
with the system browser: nothing is downloaded).

It skips, with the reason, only where no chromium is installed (``make install`` installs
Debian's ``chromium``). The screenshot is saved under ``$TEST_ARTIFACTS_DIR`` (CI uploads it),
else in the test's temporary folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.report.recommend import candidates
from harness.report.report_html import write_html
from harness.run.results import RunStore
from test_report import make_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str | None:
    return os.environ.get("TRANSFER_BENCH_BROWSER") or next(
        (p for p in map(shutil.which, BROWSERS) if p), None)


@pytest.fixture(scope="module")
def page_of_report(tmp_path_factory):
    exe = _browser()
    if exe is None:
        pytest.skip(f"no browser: none of {', '.join(BROWSERS)} is on PATH "
                    "(make install installs Debian's chromium; or set TRANSFER_BENCH_BROWSER)")
    from playwright.sync_api import sync_playwright  # the dev extra; a missing one fails

    root = tmp_path_factory.mktemp("browser")
    store = make_run(root / "run")
    html = write_html(store, root / "report")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
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
        yield {"page": page, "problems": problems, "outside": outside, "store": store,
               "html": html}
        browser.close()


def test_every_plot_renders_offline_without_console_errors(page_of_report):
    page = page_of_report["page"]
    plots = page.query_selector_all(".plot")
    assert len(plots) == 3  # pareto (one profile), learning curves, benefits
    assert [p.get_attribute("data-rendered") for p in plots] == ["true"] * 3
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
    text = page_of_report["page"].inner_text("table.env")
    assert "versions.torch" in text and store.environment()["versions"]["torch"] in text
