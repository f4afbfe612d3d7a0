"""The results store: atomic files, resume after SIGKILL and Ctrl-C, aggregation."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.run.results import RunStore, atomic_write_json, cell_rows

DRIVER = textwrap.dedent('''
    """bench with a throwaway plugin: two tiny backbones whose build() is counted."""
    import os, sys, time
    from harness import BackboneSpec, DatasetSpec, hookimpl
    from harness.api.manager import PluginSystem, set_plugins
    from harness.testkit import TinyBackbone, make_tiny_splits

    def build(**kw):
        with open(os.environ["TB_COUNTER"], "a") as f:
            f.write("built\\n")
        with open(os.environ["TB_COUNTER"]) as f:
            n = len(f.readlines())
        if n >= int(os.environ.get("TB_SLOW_FROM", "0") or 10**9):
            time.sleep(60)  # the test kills or interrupts us here
        return TinyBackbone()

    class Plugin:
        @hookimpl
        def register_backbones(self):
            return [BackboneSpec("tiny_a", build=build, device_class="mobile",
                                 default_weights="random"),
                    BackboneSpec("tiny_b", build=build, device_class="server",
                                 default_weights="random")]

        @hookimpl
        def register_datasets(self):
            return [DatasetSpec("quads", synthetic=True, offline=True,
                                load=lambda task, image_size, seed, cache_dir, **kw:
                                make_tiny_splits(image_size, 64, seed))]

    system = PluginSystem(entry_points=False)
    system.register(Plugin(), name="resume-test", origin="test")
    system.rebuild()
    set_plugins(system)
    from harness.cli import cli
    cli(sys.argv[1:], prog_name="bench")
''')

MATRIX = textwrap.dedent('''
    name = "resume"
    backbones = ["tiny_a", "tiny_b"]
    datasets = ["quads"]
    strategies = ["scratch", "frozen"]
    runtimes = []
    image_size = 16
    [train]
    epochs = 1
    batch_size = 32
''')


def _bench(tmp_path: Path, slow_from: int = 0) -> subprocess.Popen:
    env = {**os.environ, "TB_COUNTER": str(tmp_path / "builds.txt"),
           "TB_SLOW_FROM": str(slow_from or ""), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), "run", "-m", str(tmp_path / "m.toml"),
         "--out", str(tmp_path / "runs"), "-q"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _builds(tmp_path: Path) -> int:
    p = tmp_path / "builds.txt"
    return len(p.read_text().splitlines()) if p.exists() else 0


def _wait_builds(tmp_path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while _builds(tmp_path) < n:
        if proc.poll() is not None:
            raise AssertionError(f"bench exited early:\n{proc.stdout.read()}")
        if time.time() > end:
            proc.kill()
            raise AssertionError(f"cell {n} never started")
        time.sleep(0.1)
    time.sleep(0.5)  # well inside the 60 s sleep of that cell


def _cells(run: Path) -> dict:
    """Every cell file parsed (a corrupt one fails the test): key -> (status, mtime_ns)."""
    out = {}
    for p in (run / "cells").glob("*.json"):
        out[p.stem] = (json.loads(p.read_text())["status"], p.stat().st_mtime_ns)
    return out


@pytest.mark.slow
def test_resume_after_sigkill_and_ctrl_c(tmp_path):
    """Killed at cell 3, interrupted at cell 3 again, then finished: the two finished cells
    are never recomputed, only the cell in progress is lost, and every file parses."""
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "m.toml").write_text(MATRIX)

    proc = _bench(tmp_path, slow_from=3)
    _wait_builds(tmp_path, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    (run,) = (tmp_path / "runs").iterdir()
    after_kill = _cells(run)
    ok = {k: m for k, (s, m) in after_kill.items() if s == "ok"}
    assert len(ok) == 2, after_kill
    assert sorted(s for s, _ in after_kill.values()) == ["ok", "ok", "running"]
    for name in ("config.json", "environment.json", "results.json"):
        json.loads((run / name).read_text())
    assert not list(run.rglob("*.tmp")), "a temporary file was left behind"

    proc = _bench(tmp_path, slow_from=4)  # Ctrl-C during the first cell it runs
    _wait_builds(tmp_path, 4, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out  # 128 + SIGINT, and a sentence instead of "Aborted!"
    assert "resuming" in out and "2 of 4 cells already finished" in out, out
    assert "Interrupted (Ctrl-C); kept: 2 of 4 cells finished ok" in out, out
    again = shlex.join(["bench", "run", "-m", str(tmp_path / "m.toml"), "--out",
                        str(tmp_path / "runs"), "-q"])
    assert out.rstrip().endswith(f"Resume with:\n  {again}"), out
    after_int = _cells(run)
    assert {k: m for k, (s, m) in after_int.items() if s == "ok"} == ok
    json.loads((run / "results.json").read_text())

    proc = _bench(tmp_path)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 0, out
    assert "recommendation" in out.lower()  # printed at the end of every run
    final = _cells(run)
    assert len(final) == 4 and all(s == "ok" for s, _ in final.values()), final
    for k, m in ok.items():
        assert final[k][1] == m, "a finished cell was rewritten"
    # 4 cells + the one lost to SIGKILL + the one lost to Ctrl-C, nothing else recomputed
    assert _builds(tmp_path) == 6
    recs = json.loads((run / "results.json").read_text())
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    assert len((run / "results.csv").read_text().splitlines()) == 5  # header + 4 cells


def test_atomic_write_keeps_old_file_when_serialising_fails(tmp_path):
    p = tmp_path / "cell.json"
    atomic_write_json(p, {"status": "ok", "value": 1})

    class Unserialisable:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write_json(p, {"status": "ok", "value": Unserialisable()})
    assert json.loads(p.read_text()) == {"status": "ok", "value": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["cell.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_nan_stored_as_null_and_corrupt_cell_reported(tmp_path):
    store = RunStore(tmp_path)
    store.write_cell({"key": "a", "status": "ok", "test_loss": float("nan")})
    assert json.loads(store.cell_path("a").read_text())["test_loss"] is None
    store.cell_path("b").write_text("{half a reco")
    recs = {r["key"]: r for r in store.records()}
    assert recs["b"]["status"] == "corrupt" and "b.json" in recs["b"]["error"]
    assert store.finished("b") is None  # a corrupt cell runs again
    assert store.finished("a")["status"] == "ok"


def test_running_and_failed_cells_are_not_finished(tmp_path):
    store = RunStore(tmp_path)
    for key, status in (("r", "running"), ("f", "failed"), ("o", "ok")):
        store.write_cell({"key": key, "status": status})
    assert [k for k in "rfo" if store.finished(k)] == ["o"]


def test_cell_rows_one_per_latency_measurement():
    rec = {"key": "k", "status": "ok", "config": {"backbone": "b", "strategy": "s"},
           "metric_name": "accuracy", "test_metrics": {"accuracy": 0.5},
           "latency": [{"runtime": "r1", "profile": "mobile", "precision": "fp32",
                        "stats": {"p50_ms": 1.0}},
                       {"runtime": "r2", "profile": "mobile", "precision": "-",
                        "unavailable": "not installed"}]}
    rows = cell_rows(rec)
    assert [(r["runtime"], r["p50_ms"], r["latency_note"]) for r in rows] == [
        ("r1", 1.0, None), ("r2", None, "not installed")]
    assert all(r["test_metric"] == 0.5 for r in rows)


def test_published_names_state_the_conditions(tmp_path):
    from harness.report.publish import publish
    store = RunStore(tmp_path / "run")
    atomic_write_json(store.path / "config.json", {"matrix": {
        "name": "default", "datasets": ["fashion_mnist"], "image_size": 64, "seeds": 1}})
    atomic_write_json(store.path / "environment.json", {
        "cpu": "Intel Xeon", "affinity": 2, "gpu": {"cuda": False},
        "versions": {"torch": "2.14.1", "onnxruntime": "1.32.0"}})
    store.write_cell({"key": "k", "status": "ok", "config": {"backbone": "b"}})
    paths = publish(store, tmp_path / "results")
    assert [p.name for p in paths] == [
        "default-fashion_mnist-64px-cpu2-intel_xeon-torch2.14.1-ort1.32.0.csv",
        "default-fashion_mnist-64px-cpu2-intel_xeon-torch2.14.1-ort1.32.0.md"]
    assert "torch 2.14.1" in paths[1].read_text()


@pytest.mark.parametrize("model, slug", [
    ("Intel(R) Xeon(R) Processor", "intel_xeon"),
    ("Intel(R) Xeon(R) Platinum 8488C CPU @ 2.40GHz", "intel_xeon_platinum_8488c"),
    ("AMD EPYC 9R45 96-Core Processor", "amd_epyc_9r45_96_core"),
    ("", "cpu")])
def test_cpu_names_in_file_names_drop_trademarks_and_clock(model, slug):
    from harness.measure.env import cpu_slug
    assert cpu_slug(model) == slug
