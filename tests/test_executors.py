"""Executors: worker processes and Ray give the in-process results, survive killed workers,
resume; cache locks keep concurrent workers from corrupting an entry.

This module is also a plugin (a tiny backbone, a synthetic dataset, a strategy that kills
its own worker): workers import it by name, as they would a third-party plugin module.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from harness import StrategySpec, hookimpl
from harness.run.config import MatrixConfig
from harness.run.executor import CellJob, describe_exit, recipe_for
from harness.api.files import atomic_write_bytes
from harness.run.locks import cache_lock
from harness.run.results import RunStore
from harness.run.runner import run_matrix
from harness.train.strategy import Strategy
from harness.train.loop import TrainSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))
PLUGIN_NAME = "test-executors"
HAVE_RAY = __import__("importlib").util.find_spec("ray") is not None


# -- the plugin side of this module -----------------------------------------------------------
# tinynet and quadrants are tests/robust_plugin.py's (importing the hooks registers them here)
from robust_plugin import register_backbones, register_datasets  # noqa: E402,F401


class Killer(Strategy):
    """Trains the head; SIGKILLs its own worker process while the file ``marker`` exists."""

    pretrained = False

    def __init__(self, marker: str = "", action: str = "kill"):
        self.marker, self.action = marker, action

    def freeze_before_training(self, model):
        if self.marker and os.path.exists(self.marker):
            if self.action == "sleep":
                time.sleep(60)
            else:
                os.kill(os.getpid(), signal.SIGKILL)


@hookimpl
def register_strategies():
    return [StrategySpec("killer", cls=Killer, description="test: kills its worker")]


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def plugins(register_plugin):
    return register_plugin(sys.modules[__name__], name=PLUGIN_NAME)


@pytest.fixture
def one_thread():
    """Workers run torch with 1 thread; the in-process baseline must match to be exact."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ray_cluster():
    if not HAVE_RAY:
        pytest.skip("Ray is not installed (pip install 'transfer-bench[ray]')")
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def matrix(strategies, name="exec", seeds=1) -> MatrixConfig:
    return MatrixConfig(backbones=["tinynet"], datasets=["quadrants"], strategies=strategies,
                        runtimes=[], seeds=seeds, image_size=16, name=name,
                        train=TrainSettings(epochs=2, batch_size=32, patience=5))


def by_config(store: RunStore) -> dict:
    return {(r["config"]["strategy"], r["config"]["seed"]): r for r in store.records()}


def _curves(rec: dict) -> list:
    return [{k: e[k] for k in ("train_loss", "train_metric", "val_loss", "val_metric")}
            for e in rec["history"]["epochs"]]


def _options(executor):
    return {"processes": {"jobs": 2, "threads": 1}, "ray": {"threads": 1}}[executor]


EXECUTORS = ["processes", pytest.param("ray", marks=pytest.mark.skipif(
    not HAVE_RAY, reason="Ray is not installed (pip install 'transfer-bench[ray]')"))]


# -- tests ------------------------------------------------------------------------------------
def test_cell_job_pickles_for_workers(plugins):
    cfg = matrix(["scratch"]).cells()[0]
    job = CellJob(cfg, "k", "/tmp/x", recipe=recipe_for(plugins))
    back = pickle.loads(pickle.dumps(job))
    assert back.cfg == cfg and back.cfg.to_dict() == cfg.to_dict()
    assert (PLUGIN_NAME, "module", __name__) in back.recipe.extras


@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTORS)
def test_same_results_as_in_process(executor, plugins, tmp_path, one_thread, request):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    m = matrix(["scratch", "finetune"])
    base = run_matrix(plugins, m, tmp_path / "a", show_progress=False)
    other = run_matrix(plugins, m, tmp_path / "b", executor=executor,
                       executor_options=_options(executor), show_progress=False)
    a, b = by_config(base), by_config(other)
    assert len(a) == 2 and a.keys() == b.keys()
    for k in a:
        assert a[k]["status"] == b[k]["status"] == "ok", (b[k].get("error"))
        assert b[k]["test_metrics"] == a[k]["test_metrics"]  # exact, not approximate
        assert _curves(b[k]) == _curves(a[k])  # every epoch's losses and metrics, exact
        assert b[k]["worker"]["pid"] != os.getpid()


@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTORS)
def test_killed_worker_is_recorded_and_rerun_on_resume(executor, plugins, tmp_path, request):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    marker = tmp_path / "kill-now"
    marker.touch()
    m = matrix(["scratch", f"killer,marker={marker}"])
    store = run_matrix(plugins, m, tmp_path, executor=executor,
                       executor_options=_options(executor), show_progress=False)
    recs = {r["config"]["strategy"].split(",")[0]: r for r in store.records()}
    assert recs["scratch"]["status"] == "ok"  # the other cell went on
    killed = recs["killer"]
    assert killed["status"] == "failed"
    if executor == "processes":
        assert "SIGKILL" in killed["error"] and killed["exitcode"] == -signal.SIGKILL
    else:
        assert "died" in killed["error"].lower()
    ok_file = store.cell_path(recs["scratch"]["key"])
    ok_mtime = ok_file.stat().st_mtime_ns

    marker.unlink()  # the cause is gone: resume runs the failed cell only
    store = run_matrix(plugins, m, tmp_path, executor=executor,
                       executor_options=_options(executor), show_progress=False)
    assert [r["status"] for r in store.records()] == ["ok", "ok"]
    assert ok_file.stat().st_mtime_ns == ok_mtime
    rows = json.loads((store.path / "results.json").read_text())
    assert {r["status"] for r in rows} == {"ok"}


@pytest.mark.slow
def test_cell_timeout_recorded(plugins, tmp_path):
    marker = tmp_path / "hang"
    marker.touch()
    m = matrix([f"killer,marker={marker},action=sleep"])
    t0 = time.monotonic()
    store = run_matrix(plugins, m, tmp_path, executor="processes",
                       executor_options={"jobs": 1, "threads": 1, "cell_timeout": 6},
                       show_progress=False)
    (rec,) = store.records()
    assert rec["status"] == "timeout" and "timeout of 6 s" in rec["error"]
    assert time.monotonic() - t0 < 50  # the sleeping worker (60 s) was killed


@pytest.mark.slow
def test_resume_is_shared_between_executors(plugins, tmp_path, one_thread):
    m = matrix(["scratch"])
    first = run_matrix(plugins, m, tmp_path, show_progress=False)
    f = first.cell_path(first.records()[0]["key"])
    mtime = f.stat().st_mtime_ns
    again = run_matrix(plugins, m, tmp_path, executor="processes",
                       executor_options={"jobs": 2}, show_progress=False)
    assert again.path == first.path and f.stat().st_mtime_ns == mtime


def test_describe_exit_names_the_signal():
    assert "SIGSEGV (11)" in describe_exit(-11) and "segmentation" in describe_exit(-11)
    assert "exited with code 3" in describe_exit(3)


def _cli(args, tmp_path):
    from harness.cli import cli
    mfile = tmp_path / "m.toml"
    mfile.write_text('backbones = ["tinynet"]\ndatasets = ["quadrants"]\nstrategies = ["scratch"]\n'
                     'image_size = 16\n[train]\nepochs = 1\n')
    return CliRunner().invoke(cli, ["run", "-m", str(mfile), "-q", "--out",
                                    str(tmp_path / "runs"), *args])


def test_ray_missing_says_how_to_install(plugins, tmp_path, monkeypatch):
    import plugins.executors_ray as er
    monkeypatch.setattr(er, "ray_available", lambda: (False, "Ray is not installed; "
                                                       f"install it with: {er.INSTALL_HINT}"))
    res = _cli(["--executor", "ray"], tmp_path)
    assert res.exit_code == 2
    assert "pip install 'transfer-bench[ray]'" in res.output
    assert not (tmp_path / "runs").exists()  # nothing ran, no run folder


def test_option_an_executor_does_not_take_is_a_usage_error(plugins, tmp_path):
    res = _cli(["--executor", "processes", "--address", "auto"], tmp_path)
    assert res.exit_code == 2
    assert "address" in res.output and "jobs" in res.output  # names it and lists what works
    res = _cli(["--executor", "inprocess", "--jobs", "2"], tmp_path)
    assert res.exit_code == 2 and "processes" in res.output


@pytest.mark.skipif(not HAVE_RAY, reason="Ray is not installed (pip install 'transfer-bench[ray]')")
def test_unreachable_ray_address_fails_within_seconds(plugins, tmp_path):
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    res = _cli(["--executor", "ray", "--address", f"127.0.0.1:{port}"], tmp_path)
    assert res.exit_code == 2
    assert f"nothing answers at 127.0.0.1:{port}" in res.output and "ray start" in res.output
    assert time.monotonic() - t0 < 30  # Ray alone would retry the GCS for minutes


# -- cache safety -----------------------------------------------------------------------------
def _bump(path: str, n: int) -> None:
    for _ in range(n):
        with cache_lock(path):
            value = int(Path(path).read_text())
            time.sleep(0.002)  # widen the race window: without the lock, increments get lost
            Path(path).write_text(str(value + 1))


def _write_big(path: str, fill: int) -> None:
    for _ in range(5):
        atomic_write_bytes(path, bytes([fill]) * 2_000_000)


@pytest.mark.slow
def test_cache_lock_serialises_workers(tmp_path):
    counter = tmp_path / "entry"
    counter.write_text("0")
    ctx = mp.get_context("fork")  # the children only touch files
    procs = [ctx.Process(target=_bump, args=(str(counter), 20)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert counter.read_text() == "60"


@pytest.mark.slow
def test_concurrent_atomic_writes_leave_one_whole_entry(tmp_path):
    entry = tmp_path / "weights.bin"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_big, args=(str(entry), fill)) for fill in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    data = entry.read_bytes()
    assert len(data) == 2_000_000 and len(set(data)) == 1  # one writer's bytes, whole
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]  # no temporary left


def test_atomic_path_keeps_the_old_entry_when_the_writer_fails(tmp_path):
    from harness.api.files import atomic_path
    entry = tmp_path / "features.npz"
    entry.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        with atomic_path(entry) as tmp:
            tmp.write_bytes(b"half")  # a library writing by path, then failing
            raise OSError("disk full")
    assert entry.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["features.npz"]
    with atomic_path(entry) as tmp:
        tmp.write_bytes(b"new")
    assert entry.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["features.npz"]


@pytest.mark.slow
def test_lock_released_when_holder_is_killed(tmp_path):
    entry = tmp_path / "x"
    ctx = mp.get_context("fork")
    holder = ctx.Process(target=_hold_forever, args=(str(entry),))
    holder.start()
    deadline = time.monotonic() + 20
    while not (tmp_path / "held").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    from harness.run.locks import LockTimeout
    with pytest.raises(LockTimeout, match="x.lock"):
        with cache_lock(entry, timeout=0.3):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    with cache_lock(entry, timeout=5):  # the kernel dropped the dead holder's lock
        pass


def _hold_forever(path: str) -> None:
    with cache_lock(path):
        Path(path).with_name("held").touch()
        time.sleep(120)
