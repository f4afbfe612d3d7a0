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
         "reporter", "executor", "preset", "command", "estimator"]
KINDS_PAGES = KINDS


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
    n_tests = sum(len(re.findall(r"^def test_", snippets(PAGES / f"{k}.md")[1], re.M))
                  for k in KINDS)
    assert f"{n_tests} passed" in out, out[-3000:]
    assert "broken" not in out, out[-3000:]


# -- every spec field and every test-kit argument is on its kind's page ------------------------
def _page_contract():
    from harness import specs, testkit
    return {
        "backbone": ([specs.BackboneSpec], [testkit.check_backbone]),
        "task": ([specs.TaskSpec], [testkit.check_task]),
        "strategy": ([specs.StrategySpec], [testkit.check_strategy]),
        "dataset": ([specs.DatasetSpec], [testkit.check_dataset]),
        "weight-source": ([specs.WeightSourceSpec], [testkit.check_weight_source]),
        "runtime": ([specs.RuntimeSpec], [testkit.check_runtime]),
        "profile": ([specs.ProfileSpec], [testkit.check_profile]),
        "reporter": ([specs.ReporterSpec], [testkit.check_reporter]),
        "executor": ([specs.ExecutorSpec], [testkit.check_executor]),
        "preset": ([specs.PresetSpec], [testkit.check_preset]),
        "command": ([], [testkit.check_command]),
        "estimator": ([specs.EstimatorSpec, specs.EstimatorInput], [testkit.check_estimator]),
    }


def test_every_spec_field_and_kit_argument_is_on_its_page():
    import dataclasses
    import inspect

    missing = []
    for kind, (spec_types, checks) in _page_contract().items():
        text = (PAGES / f"{kind}.md").read_text()
        for spec in spec_types:
            for f in dataclasses.fields(spec):
                if f"`{f.name}`" not in text and f"{f.name}=" not in text:
                    missing.append(f"{kind}.md: {spec.__name__}.{f.name}")
        for check in checks:
            if f"`{check.__name__}" not in text:
                missing.append(f"{kind}.md: {check.__name__}")
            for p in list(inspect.signature(check).parameters.values())[1:]:
                if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    continue
                if f"`{p.name}`" not in text and f"{p.name}=" not in text:
                    missing.append(f"{kind}.md: {check.__name__}({p.name}=...)")
    assert not missing, "document these on their pages:\n" + "\n".join(missing)


def test_every_kind_of_the_registry_has_a_page():
    from harness.api.hookspecs import KINDS
    nouns = {k.noun.replace(" ", "-") for k in KINDS.values()} | {"command"}
    assert nouns == set(KINDS_PAGES)


def test_dotted_harness_names_in_specs_and_pages_import():
    """Every ``harness.x.y`` a spec docstring or a plugin page names can be imported (a
    module, or an attribute of one)."""
    import importlib

    from harness.api import hookspecs, specs

    texts = [inspect_source(specs), inspect_source(hookspecs)] + \
        [p.read_text() for p in sorted(PAGES.glob("*.md"))]
    names = sorted({m for t in texts for m in re.findall(r"\bharness(?:\.[A-Za-z_]\w*)+", t)})
    broken = []
    for name in names:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                broken.append(name)
            break
        else:
            broken.append(name)
    assert not broken, broken


def inspect_source(module) -> str:
    return Path(module.__file__).read_text()
