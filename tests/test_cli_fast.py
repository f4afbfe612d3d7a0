"""``bench --help``, shell completion and ``bench list`` load no heavy library:
every plugin (built-in, and the repository's example) imports torch, timm, numpy, ONNX
Runtime, OpenVINO, MLflow... inside its hooks or functions, never at the top, and the
registries are built only when a command needs them. The time it buys is printed by
benchmarks/bench_cli_startup.py; this test keeps the cause away (calm under load: it
checks what was imported, not how long it took)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "numpy", "onnx", "onnxruntime", "openvino", "nncf",
         "executorch", "mlflow", "sklearn", "scipy", "PIL", "tabulate", "tqdm")
#: what ``bench list`` must not import: it calls every registration hook (so a plugin names
#: its torch-needing functions and classes by import path, harness.LazyCallable, or keeps
#: their modules torch-free) and describes every spec without building anything. tabulate
#: prints the listing; numpy (0.2 s) is still imported by the runtimes' modules; looking
#: up ExecuTorch's submodules (find_spec) imports its top package only, in under 1 ms.
HEAVY_FOR_LIST = tuple(m for m in HEAVY if m not in ("numpy", "tabulate", "executorch")) + (
    "optuna", "ray", "executorch.exir")

PROBE = """
import json, os, sys
from harness.cli import cli
try:
    cli(prog_name="bench", args=json.loads(sys.argv[1]), complete_var="_BENCH_COMPLETE")
except SystemExit:
    pass
heavy = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print("HEAVY=" + json.dumps(heavy))
"""


def _run(args: list, env_extra: dict | None = None, heavy: tuple = HEAVY,
         stderr: list | None = None) -> tuple[str, list]:
    env = {**os.environ, **(env_extra or {}),
           # this checkout's code and its example plugin before any installed copy
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "examples" /
                                                          "transfer-bench-efficientnet")])}
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), json.dumps(heavy)],
                         capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    if stderr is not None:
        stderr.append(res.stderr)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("HEAVY=")]
    assert line, res.stdout + res.stderr
    return res.stdout, json.loads(line[-1][len("HEAVY="):])


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["list", "--help"],
                                  ["check", "--help"], ["--version"]])
def test_help_loads_no_heavy_library(args):
    out, heavy = _run(args)
    assert not heavy, f"bench {' '.join(args)} imported {heavy}"
    assert "Usage: bench" in out or "transfer-bench" in out


@pytest.mark.parametrize("words,expect", [("bench ru", "run"), ("bench run --ep", "--epochs"),
                                          ("bench base", "baseline"),
                                          ("bench run -b res", "resnet18"),
                                          ("bench run --preset qu", "quickstart"),
                                          ("bench report RUN --format ht", "html")])
def test_completion_of_commands_and_options_loads_no_heavy_library(words, expect):
    env = {"_BENCH_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - 1)}
    out, heavy = _run([], env)
    assert expect in out, out
    assert not heavy, f"completing {words!r} imported {heavy}"


def _kinds() -> list:
    from harness.api.manager import KINDS
    return sorted(KINDS)


@pytest.mark.parametrize("kind", [None] + _kinds())
def test_list_loads_no_heavy_library(kind):
    """``bench list`` and ``bench list KIND`` for every kind (the example plugin loaded
    too): every registration hook runs and every row is described, torch-free."""
    args = ["list"] + ([kind] if kind else [])
    err: list = []
    out, heavy = _run(args, heavy=HEAVY_FOR_LIST, stderr=err)
    assert not heavy, f"bench {' '.join(args)} imported {heavy}"
    for k in ([kind] if kind else _kinds()):
        assert f"\n{k} (" in "\n" + out, out[:2000]  # every kind was listed
    assert "efficientnet" in out or kind not in (None, "backbones", "strategies", "runtimes")
    assert "warning" not in err[0], err[0]  # no plugin broke on the way


def test_list_backbones_says_what_it_does_not_build(plugin_system):
    """The timm row explains itself (no exception text), and a plugin backbone without
    facts is measured only when asked (``--measure`` builds it; plain ``bench list`` must
    stay torch-free)."""
    from click.testing import CliRunner

    from harness import BackboneSpec, hookimpl
    from harness.cli import cli
    from harness.train.model import Backbone

    class Tiny(Backbone):
        def __init__(self):
            import torch
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.num_features = 4

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    class Plugin:
        @hookimpl
        def register_backbones(self):
            return [BackboneSpec("tiny_nofacts", build=Tiny, description="no facts given")]

    plugin_system.register(Plugin(), name="nofacts", origin="test")
    plugin_system.rebuild()
    plain = CliRunner().invoke(cli, ["list", "backbone"])
    assert plain.exit_code == 0, plain.output
    rows = {ln.split()[0]: ln for ln in plain.output.splitlines() if ln.strip()}
    assert "raised" not in rows["timm"] and "facts depend on the architecture" in rows["timm"]
    assert "facts not given by its plugin (bench list backbones --measure)" in rows[
        "tiny_nofacts"]
    measured = CliRunner().invoke(cli, ["list", "backbones", "--measure"])
    row = next(ln for ln in measured.output.splitlines() if ln.startswith("tiny_nofacts"))
    assert "0.1K params" in row, row  # 3*4*3*3 + 4 = 112 parameters


def test_list_takes_a_kind_singular_or_plural_and_suggests_for_a_typo(plugin_system):
    from click.testing import CliRunner

    from harness.cli import cli

    plural = CliRunner().invoke(cli, ["list", "presets"])
    for spelling in ("preset", "Presets"[0].lower() + "resets"):
        res = CliRunner().invoke(cli, ["list", spelling])
        assert res.exit_code == 0 and res.output == plural.output, res.output
    ws = CliRunner().invoke(cli, ["list", "weight-source"])
    assert ws.exit_code == 0 and ws.output.startswith("weights (")
    bad = CliRunner().invoke(cli, ["list", "backbonez"])
    assert bad.exit_code == 2
    assert "'backbonez' is not a kind; did you mean 'backbone'?" in bad.output
    assert bad.output.count("Kinds: ") == 1
