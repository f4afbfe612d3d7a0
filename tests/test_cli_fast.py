"""``bench --help`` and shell completion of commands and options load no heavy library:
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


def _run(args: list, env_extra: dict | None = None) -> tuple[str, list]:
    env = {**os.environ, **(env_extra or {}),
           # this checkout's code and its example plugin before any installed copy
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "examples" /
                                                          "transfer-bench-efficientnet")])}
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)],
                         capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
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
