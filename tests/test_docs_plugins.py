"""docs/plugins/*.md: every kind's example, installed as a plugin by entry point, passes its
own test from the page, exactly as written there (run by pytest in a subprocess, with the
test kit's fixtures, as a plugin author's suite runs)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from test_plugins import make_dist, site  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "plugins"
KINDS = ["backbone", "task", "strategy", "dataset", "weight-source", "runtime", "profile",
         "reporter", "executor", "preset", "command"]


def snippets(page: Path) -> tuple[str, str]:
    """The page's example (first python block under "## Example") and its test (first
    python block under "## Test it")."""
    text = page.read_text()

    def block(heading: str) -> str:
        assert heading in text, f"{page.name} has no {heading!r} section"
        return re.search(r"```python\n(.*?)```", text.split(heading, 1)[1], re.S).group(1)

    return block("## Example\n"), block("## Test it\n")


def test_every_kind_has_a_page_linked_from_the_guide():
    guide = (ROOT / "docs" / "writing-a-plugin.md").read_text()
    assert sorted(p.stem for p in PAGES.glob("*.md")) == sorted(KINDS)
    for kind in KINDS:
        assert f"(plugins/{kind}.md)" in guide


def test_every_documented_example_installs_and_passes_its_documented_test(site, tmp_path):
    tests = tmp_path / "author_tests"
    tests.mkdir()
    for kind in KINDS:
        module = "tb_doc_" + kind.replace("-", "_")
        example, test = snippets(PAGES / f"{kind}.md")
        make_dist(site, f"doc-{kind}", "0.1.0", {module: example}, {f"doc_{kind}": module})
        (tests / f"test_{module}.py").write_text(test)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    env.pop("TRANSFER_BENCH_DISABLE_PLUGINS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tests)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert f"{len(KINDS)} passed" in out, out[-3000:]
    assert "broken" not in out, out[-3000:]
