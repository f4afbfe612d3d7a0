"""Third-party plugins: entry points, faults, one test per hook, and the documented snippet.

Fake distributions are real ones as far as ``importlib.metadata`` is concerned: a
``NAME-VERSION.dist-info`` folder with ``entry_points.txt`` on ``sys.path``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from harness import (BackboneSpec, DatasetSpec, ExecutorSpec, PresetSpec, ProfileSpec,
                     ReporterSpec, RuntimeSpec, StrategySpec, TaskSpec, WeightSourceSpec, hookimpl)
from harness.api.manager import ONLY_ENV, PluginSystem
from harness.testkit import (TinyBackbone, check_backbone, check_runtime, check_strategy,
                             check_task, make_tiny_splits)

ROOT = Path(__file__).resolve().parents[1]


def make_dist(site: Path, dist: str, version: str, modules: dict[str, str],
              entry_points: dict[str, str]) -> None:
    """Write an installed distribution (dist-info + modules) into ``site``."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[transfer_bench]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for mod, src in modules.items():
        (site / f"{mod}.py").write_text(textwrap.dedent(src))
    # the suite loads only the plugins under test (tests/conftest.py): these are
    only = [n for n in os.environ.get(ONLY_ENV, "").split(",") if n]
    os.environ[ONLY_ENV] = ",".join(only + [n for n in entry_points if n not in only])


GOOD = """
from harness import BackboneSpec, hookimpl
from harness.testkit import TinyBackbone

@hookimpl
def register_backbones():
    return [BackboneSpec("good_net", build=TinyBackbone, default_weights="random")]
"""

# fault -> (plugin module source, words the error must contain)
FAULTS = {
    "import": ("import not_a_module_anywhere_xyz\n", ["failed to import",
                                                      "not_a_module_anywhere_xyz"]),
    "unknown_hook": ("""
        from harness import hookimpl

        @hookimpl
        def register_backbone():
            return []
        """, ["do not exist", "register_backbone", "register_backbones"]),
    "wrong_args": ("""
        from harness import hookimpl

        @hookimpl
        def register_backbones(size):
            return []
        """, ["wrong arguments", "size", "register_backbones()"]),
    "raises": ("""
        from harness import BackboneSpec, TaskSpec, hookimpl
        from harness.testkit import TinyBackbone

        @hookimpl
        def register_backbones():
            return [BackboneSpec("half_net", build=TinyBackbone)]

        @hookimpl
        def register_tasks():
            raise RuntimeError("no licence file")
        """, ["register_tasks raised RuntimeError", "no licence file"]),
    "duplicate": ("""
        from harness import BackboneSpec, hookimpl
        from harness.testkit import TinyBackbone

        @hookimpl
        def register_backbones():
            return [BackboneSpec("resnet18", build=TinyBackbone)]
        """, ["'resnet18' is registered twice", "plugins.backbones", "built-in"]),
}


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("TRANSFER_BENCH_DISABLE_PLUGINS", raising=False)
    monkeypatch.setenv(ONLY_ENV, os.environ.get(ONLY_ENV, ""))  # make_dist extends it; restored
    yield site
    for mod in [m for m, v in sys.modules.items()
                if str(site) in str(getattr(v, "__file__", "") or "")]:
        del sys.modules[mod]


def install_faults(site: Path, faults=FAULTS) -> None:
    make_dist(site, "good-dist", "1.0", {"good_plugin": GOOD}, {"good": "good_plugin"})
    for fault, (src, _) in faults.items():
        make_dist(site, f"bad-{fault}", "2.3", {f"bad_{fault}": src},
                  {f"bad_{fault}": f"bad_{fault}"})


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_faulty_plugin_is_named_with_its_distribution_and_others_keep_working(site, fault):
    install_faults(site, {fault: FAULTS[fault]})
    system = PluginSystem()
    bad = system.infos[f"bad_{fault}"]
    assert bad.status == "broken"
    for words in FAULTS[fault][1]:
        assert words in bad.error
    assert f"plugin 'bad_{fault}' (bad-{fault} 2.3)" in bad.message
    assert "--disable-plugin" in bad.message
    assert bad.registers == {}
    # every other plugin still works, built-ins keep their names
    assert system.infos["good"].status == "ok"
    assert system.infos["good"].origin == "good-dist 1.0"
    assert "good_net" in system.backbones
    assert [i.name for i in system.broken()] == [f"bad_{fault}"]
    assert system.backbones.provider("resnet18").startswith("plugins.backbones")
    assert "half_net" not in system.backbones  # a broken plugin contributes nothing


def test_duplicate_message_names_both_plugins_and_distributions(site):
    make_dist(site, "first-dist", "1.0", {"first_p": GOOD}, {"first": "first_p"})
    make_dist(site, "second-dist", "0.5", {"second_p": GOOD}, {"second": "second_p"})
    system = PluginSystem()
    infos = {system.infos["first"].status, system.infos["second"].status}
    assert infos == {"ok", "broken"}
    (bad,) = system.broken()
    holder = "first" if bad.name == "second" else "second"
    holder_dist = {"first": "first-dist 1.0", "second": "second-dist 0.5"}
    assert f"plugin {holder!r} ({holder_dist[holder]})" in bad.error
    assert f"plugin {bad.name!r} ({holder_dist[bad.name]})" in bad.error
    assert system.backbones.provider("good_net").startswith(holder)


def test_two_distributions_with_the_same_plugin_name(site):
    make_dist(site, "one-dist", "1.0", {"one_p": GOOD}, {"same": "one_p"})
    make_dist(site, "two-dist", "1.0", {"two_p": GOOD.replace("good_net", "other_net")},
              {"same": "two_p"})
    system = PluginSystem()
    (bad,) = system.broken()
    assert "the plugin name 'same' is already used by plugin 'same'" in bad.error
    assert bad.origin in ("one-dist 1.0", "two-dist 1.0")
    assert system.infos["same"].status == "ok"


def _bench(args, site, env_extra=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    env.pop("TRANSFER_BENCH_DISABLE_PLUGINS", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_bench_plugins_marks_broken_ones_warns_and_exits_0(site):
    install_faults(site)
    proc = _bench(["plugins", "--json"], site)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    for fault in FAULTS:
        assert rows[f"bad_{fault}"]["status"] == "broken"
        assert rows[f"bad_{fault}"]["origin"] == f"bad-{fault} 2.3"
        assert re.search(rf"warning: plugin 'bad_{fault}' \(bad-{fault} 2\.3\) is broken",
                         proc.stderr)
    assert rows["good"]["status"] == "ok"
    assert all(r["status"] == "ok" for n, r in rows.items() if n.startswith("plugins."))
    # commands a plugin adds (register_commands) are listed like the other kinds
    assert rows["plugins.regression"]["registers"] == {"commands": ["baseline", "check"]}
    table = _bench(["plugins"], site)
    assert table.returncode == 0
    assert re.search(r"bad_import\s+bad-import 2\.3\s+broken\s+failed to import", table.stdout)
    listing = _bench(["list", "backbones"], site)
    assert listing.returncode == 0 and "good_net" in listing.stdout


@pytest.mark.slow
def test_disable_by_flag_and_by_environment(site):
    install_faults(site, {"import": FAULTS["import"]})
    by_flag = _bench(["--disable-plugin", "bad_import", "plugins", "--json"], site)
    by_env = _bench(["plugins", "--json"], site, {"TRANSFER_BENCH_DISABLE_PLUGINS": "bad_import,good"})
    for proc in (by_flag, by_env):
        assert proc.returncode == 0
        assert "is broken" not in proc.stderr
        assert {r["name"]: r["status"] for r in json.loads(proc.stdout)}["bad_import"] == "disabled"
    assert {r["name"]: r["status"] for r in json.loads(by_env.stdout)}["good"] == "disabled"
    typo = _bench(["--disable-plugin", "bad_imprt", "list", "presets"], site)
    assert "cannot disable 'bad_imprt': no such plugin" in typo.stderr


# -- one test per hook (tests/test_hooks_documented.py fails when a hook has none) -----------
class _Plugin:
    """Builds a throwaway plugin with one hook implementation."""

    def __init__(self, hook, fn):
        setattr(self, hook, hookimpl(fn))


def _list(kind) -> str:
    from harness.cli import cli
    result = CliRunner().invoke(cli, ["list", kind])
    assert result.exit_code == 0, result.output
    return result.output


def test_hook_register_backbones(register_plugin):
    system = register_plugin(_Plugin("register_backbones", lambda: [
        BackboneSpec("kit_net", build=TinyBackbone, default_weights="random",
                     description="a tiny test net")]), name="bb-plugin")
    assert system.backbones.provider("kit_net") == "bb-plugin (test)"
    assert check_backbone(system.backbones.get("kit_net"), onnx=False)["num_features"] == 32
    assert "a tiny test net" in _list("backbones")


def test_hook_register_tasks(register_plugin):
    from harness.train.task import Task
    import torch.nn.functional as F
    from torch import nn

    class Linear(Task):
        name = "linear_cls"

        def build_head(self, backbone, info):
            return nn.Linear(backbone.num_features, info.num_classes)

        def loss(self, outputs, targets):
            return F.cross_entropy(outputs, targets)

        def metrics(self, outputs, targets, info):
            return {"accuracy": float((outputs.argmax(1) == targets).float().mean())}

    system = register_plugin(_Plugin("register_tasks", lambda: [
        TaskSpec("linear_cls", factory=Linear, description="linear head")]))
    assert check_task(system.tasks.get("linear_cls"))["primary_metric"] == "accuracy"
    assert "linear head" in _list("tasks")


def test_hook_register_strategies(register_plugin):
    from harness.train.strategy import Strategy

    class HeadFirst(Strategy):
        def __init__(self, lr: float = 0.01):
            self.lr = lr

    system = register_plugin(_Plugin("register_strategies", lambda: [
        StrategySpec("head_first", cls=HeadFirst, description="everything at once")]))
    assert check_strategy(system.strategies.get("head_first"), epochs=3)["accuracy"] > 0.4
    assert "everything at once (lr=0.01)" in _list("strategies")


def test_hook_register_datasets(register_plugin):
    def load(task, image_size, seed, cache_dir, **params):
        return make_tiny_splits(image_size=image_size)

    system = register_plugin(_Plugin("register_datasets", lambda: [
        DatasetSpec("quads", load=load, synthetic=True, description="quadrants")]))
    splits = system.datasets.get("quads").load(task="classification", image_size=8, seed=0,
                                               cache_dir=Path("."))
    assert tuple(splits.train.images.shape[1:]) == (3, 8, 8)
    assert "synthetic] quadrants" in _list("datasets")


def test_hook_register_weight_sources(register_plugin):
    def zeros(spec, backbone, arg, context):
        for p in backbone.parameters():
            p.data.zero_()
        return {"description": f"zeros ({arg})"}

    system = register_plugin(_Plugin("register_weight_sources", lambda: [
        WeightSourceSpec("zeros", load=zeros, pretrained=False)]))
    spec, arg = system.weights.resolve("zeros:please")
    bb = TinyBackbone()
    assert spec.load(None, bb, arg, {})["description"] == "zeros (please)"
    assert all(float(p.detach().abs().sum()) == 0 for p in bb.parameters())


def test_hook_register_runtimes(register_plugin):
    def measure(art, profile, settings):
        return [{"precision": "fp32", "unavailable": "this test runtime never runs"}]

    system = register_plugin(_Plugin("register_runtimes", lambda: [
        RuntimeSpec("never", available=lambda: (False, "no such accelerator"), measure=measure)]))
    report = check_runtime(system.runtimes.get("never"))
    assert report == {"available": False, "reason": "no such accelerator", "results": []}
    assert "unavailable here: no such accelerator" in _list("runtimes")


def test_hook_register_profiles(register_plugin):
    register_plugin(_Plugin("register_profiles", lambda: [
        ProfileSpec("edge", batch_size=4, threads=2, precisions=("fp32", "int8"))]))
    assert "batch 4, threads 2, fp32/int8, cpu" in _list("profiles")


def test_hook_register_reporters(register_plugin):
    system = register_plugin(_Plugin("register_reporters", lambda: [
        ReporterSpec("count", write=lambda run, out: "1 run", description="counts")]))
    assert system.reporters.get("count").write(None, None) == "1 run"
    assert "counts" in _list("reporters")


def test_hook_register_executors(register_plugin):
    system = register_plugin(_Plugin("register_executors", lambda: [
        ExecutorSpec("noop", factory=dict, description="does nothing")]))
    assert system.executors.get("noop").factory(a=1) == {"a": 1}
    assert "does nothing" in _list("executors")


def test_hook_register_presets(register_plugin):
    system = register_plugin(_Plugin("register_presets", lambda: [
        PresetSpec("mini", matrix=lambda: {"backbones": ["resnet18"]})]))
    assert system.presets.get("mini").resolve() == {"backbones": ["resnet18"]}


def test_hook_register_commands(register_plugin):
    def register_commands(cli):
        @cli.command()
        def hello():
            """Say hello."""
            click.echo("hello from a plugin")

    system = register_plugin(_Plugin("register_commands", register_commands))
    group = click.Group()
    system.add_commands(group)
    result = CliRunner().invoke(group, ["hello"])
    assert result.exit_code == 0 and result.output == "hello from a plugin\n"


# -- docs/writing-a-plugin.md ---------------------------------------------------------------
def _doc_snippet() -> str:
    text = (ROOT / "docs" / "writing-a-plugin.md").read_text()
    section = text.split("## A complete minimal plugin", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_documented_minimal_plugin_installs_by_entry_point_and_learns(site):
    snippet = _doc_snippet()
    assert 25 <= len(snippet.strip().splitlines()) <= 45  # "about 30 lines"
    make_dist(site, "my-plugin", "0.1.0", {"my_plugin_doc": snippet},
              {"bias_only": "my_plugin_doc"})
    system = PluginSystem()
    info = system.infos["bias_only"]
    assert (info.status, info.origin) == ("ok", "my-plugin 0.1.0"), info.message
    spec = system.strategies.get("bias_only")
    report = check_strategy(spec, epochs=4)
    assert report["accuracy"] > report["chance"]


def test_only_plugins_loads_just_the_named_entry_points(site, monkeypatch):
    install_faults(site, {"import": FAULTS["import"]})
    monkeypatch.setenv(ONLY_ENV, "good")
    system = PluginSystem()
    assert system.infos["good"].status == "ok" and "good_net" in system.backbones
    assert "bad_import" not in system.infos  # not imported at all, so not broken either
    assert system.broken() == []
    monkeypatch.setenv(ONLY_ENV, "")
    assert "good" not in PluginSystem().infos  # empty: built-ins only
