"""Latency workers forked from a warm zygote (harness/measure/zygote.py, issue 29): each job
still runs in a fresh process of its own, with the job's environment, and a job that hangs,
crashes or outlives bench is dealt with as a spawned worker would be."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.api.specs import ProfileSpec
from harness.measure import zygote
from harness.measure.isolate import WorkerError, measure_in_worker
from harness.measure.latency import MeasureSettings
from harness.run.cell import Artifacts


def report_process(art, profile, settings):
    """A runtime's measure that says which process ran it and what it was given."""
    import torch  # preloaded by the zygote: imported again for nothing
    return [{"precision": "fp32", "pid": os.getpid(), "ppid": os.getppid(),
             "marker": os.environ.get("TB_ZYGOTE_TEST"), "cwd": os.getcwd(),
             "torch": torch.__version__}]


def hang(art, profile, settings):
    print(json.dumps({"pid": os.getpid()}), flush=True)
    time.sleep(600)


def crash(art, profile, settings):
    print("about to crash: the last words", file=sys.stderr, flush=True)
    os._exit(3)


def _job(tmp_path, fn, name="job", **settings):
    art = Artifacts(model=None, image_size=8, workdir=tmp_path)
    return measure_in_worker(fn, art, ProfileSpec("p", batch_size=1),
                             MeasureSettings(**settings), label=name)


@pytest.fixture
def fresh_zygote():
    zygote.stop()
    yield
    zygote.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_each_job_is_a_fresh_child_of_one_warm_process(tmp_path, monkeypatch, fresh_zygote):
    monkeypatch.setenv("TB_ZYGOTE_TEST", "one")
    a = _job(tmp_path, report_process, "a")[0]
    b = _job(tmp_path, report_process, "b")[0]
    z = zygote._CURRENT["zygote"]
    assert a["worker"]["launch"] == b["worker"]["launch"] == "fork"
    assert a["ppid"] == b["ppid"] == z.proc.pid  # both forked by the same zygote ...
    assert a["pid"] != b["pid"] and not _alive(a["pid"])  # ... each a new process, gone after
    assert a["marker"] == "one" and a["cwd"] == os.getcwd()
    assert {"numpy", "torch"} <= z.modules
    # what the worker measured in started after the fork, not in the zygote's imports
    assert b["worker"]["start_s"] < 2.0, b["worker"]


def test_another_environment_gets_another_zygote(tmp_path, monkeypatch, fresh_zygote):
    monkeypatch.setenv("TB_ZYGOTE_TEST", "one")
    first = _job(tmp_path, report_process, "a")[0]
    monkeypatch.setenv("TB_ZYGOTE_TEST", "two")  # read at load by some library: not inherited
    second = _job(tmp_path, report_process, "b")[0]
    assert second["marker"] == "two" and second["ppid"] != first["ppid"]
    assert not _alive(first["ppid"])  # the old zygote was stopped


def test_a_job_past_its_timeout_is_killed_and_the_zygote_serves_on(tmp_path, fresh_zygote):
    with pytest.raises(WorkerError, match="did not finish within 3 s"):
        _job(tmp_path, hang, "slow", worker_timeout_s=3)
    pid = json.loads((tmp_path / "job-slow" / zygote.LOG).read_text().splitlines()[0])["pid"]
    assert not _alive(pid)
    assert _job(tmp_path, report_process, "after")[0]["worker"]["launch"] == "fork"


def test_a_crashing_job_reports_its_exit_code_and_last_words(tmp_path, fresh_zygote):
    with pytest.raises(WorkerError) as err:
        _job(tmp_path, crash, "crash")
    assert "exited with code 3" in str(err.value) and "the last words" in str(err.value)


def test_warm_workers_off_starts_a_new_interpreter(tmp_path, fresh_zygote):
    row = _job(tmp_path, report_process, "cold", warm_workers=False)[0]
    assert row["worker"]["launch"] == "spawn" and row["ppid"] == os.getpid()
    assert "zygote" not in zygote._CURRENT


def test_a_zygote_that_cannot_start_is_said_and_the_job_runs_anyway(tmp_path, monkeypatch,
                                                                     fresh_zygote):
    def refuse(env, path):
        raise zygote.ZygoteError("the warm worker process did not start: test")
    monkeypatch.setattr(zygote, "zygote_for", refuse)
    row = _job(tmp_path, report_process, "fallback")[0]
    assert row["worker"]["launch"] == "spawn"
    assert "warm process failed" in row["worker"]["launch_note"]


DRIVER = """
import os, sys, time
from harness.measure import zygote
z = zygote.zygote_for(dict(os.environ), sys.path)
print(z.proc.pid, flush=True)
time.sleep(600)
"""


def test_the_zygote_dies_with_its_bench_process(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        zpid = int(p.stdout.readline())
        assert _alive(zpid)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    deadline = time.monotonic() + 30
    while _alive(zpid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(zpid)
