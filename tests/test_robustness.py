"""Nothing lost, nothing silently wrong (issue 20): concurrent runs on one run folder, the
cell write rule, weights precedence, image modes, label validation, workers that die with
their parent, temporary folders, locked downloads, errors checked before training."""
from __future__ import annotations

import http.server
import io
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from harness import ExecutorSpec, hookimpl
from harness.cli import cli
from harness.run.results import INTERRUPTED, RunStore
from harness.train.data import BadData, decode_image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import robust_plugin  # noqa: E402 - the plugin the subprocesses load

slow = pytest.mark.slow


def bench(args, cwd, env=None, **kw) -> subprocess.Popen:
    """``bench ARGS`` with the robustness plugin, as a separate process."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, str(HERE / "robust_plugin.py"), *args], cwd=cwd,
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kw)


def wait_for(cond, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return True


# -- the run store: write rule, stale running cells, results.json follows cells/ -------------
def _rec(key, status, finished=None, **kw):
    return {"key": key, "config": {"backbone": "b", "strategy": "s"}, "status": status,
            "finished": finished, **kw}


def test_running_never_replaces_a_finished_record_and_ok_is_final(tmp_path):
    store = RunStore(tmp_path)
    assert store.write_cell(_rec("k", "running"))
    assert store.write_cell(_rec("k", "failed", 10.0, error="x"))
    assert not store.write_cell(_rec("k", "running"))  # a lagging run's "running"
    assert not store.write_cell(_rec("k", "failed", 5.0, error="older"))
    assert store.write_cell(_rec("k", "ok", 20.0))
    assert not store.write_cell(_rec("k", "failed", 30.0, error="later"))
    assert not store.write_cell(_rec("k", "running"))
    assert json.loads(store.cell_path("k").read_text())["status"] == "ok"


def test_a_dead_runs_running_cell_reads_interrupted_everywhere(tmp_path):
    store = RunStore(tmp_path)
    store.write_cell(_rec("dead", "running"))
    store.write_cell(_rec("live", "running"))
    claim = store.claim("live")  # a live run holds this one
    try:
        store.aggregate()
        cells = {p.stem: json.loads(p.read_text())["status"] for p in store.cells_dir.iterdir()}
        results = {r["key"]: r["status"] for r in json.loads((tmp_path / "results.json")
                                                             .read_text())}
        assert cells == results == {"dead": "interrupted", "live": "running"}
        assert json.loads(store.cell_path("dead").read_text())["error"] == INTERRUPTED
    finally:
        claim.release()


def test_report_rebuilds_results_json_from_cells(tmp_path, plugin_system):
    store = RunStore(tmp_path)
    store.write_cell(_rec("a", "ok", 1.0))
    (tmp_path / "results.json").write_text("[]\n")  # a run killed between the two writes
    res = CliRunner().invoke(cli, ["report", str(tmp_path), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert [r["key"] for r in json.loads((tmp_path / "results.json").read_text())] == ["a"]


@slow
def test_two_runs_on_one_folder_run_each_cell_once(tmp_path):
    mfile = robust_plugin.write_matrix(tmp_path / "m.toml", strategies=('"slow,sleep_s=1"',),
                                       runtimes=(), seeds=4)
    log = tmp_path / "ran.log"
    env = {"ROBUST_LOG": str(log)}
    procs = [bench(["run", "-m", str(mfile), "--out", "runs", "-q"], tmp_path, env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    seeds = sorted(int(line.split()[1]) for line in log.read_text().splitlines())
    assert seeds == [0, 1, 2, 3]  # every cell trained exactly once across the two runs
    run = next((tmp_path / "runs").iterdir())
    recs = json.loads((run / "results.json").read_text())
    assert sorted(r["status"] for r in recs) == ["ok"] * 4
    cells = sorted(json.loads(p.read_text())["status"] for p in (run / "cells").glob("*.json"))
    assert cells == ["ok"] * 4


# -- weights precedence ------------------------------------------------------------------------
def test_weights_command_line_beats_file_beats_preset():
    from harness.run.runner import merge_weights

    base = {"resnet18": "source:digits", "*": "imagenet"}
    merged, notes = merge_weights(base, {"*": "file:w.pth"}, "preset 'default'")
    assert merged == {"*": "file:w.pth"}
    assert any("replaces preset 'default''s weights for resnet18 (source:digits)" in n
               for n in notes)
    merged, notes = merge_weights(base, {"resnet18": "packaged"}, "matrix file m.toml")
    assert merged == {"resnet18": "packaged", "*": "imagenet"}
    assert notes == ["--weights resnet18=packaged replaces matrix file m.toml's weights for "
                     "resnet18 (source:digits)"]
    assert merge_weights(base, {}, "x") == (base, [])


def test_global_weights_on_the_command_line_win_over_the_presets_per_backbone(plugin_system,
                                                                             tmp_path):
    res = CliRunner().invoke(cli, ["run", "-b", "resnet18", "-s", "frozen", "--weights",
                                   "file:/nonexistent.pth", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert "weights file /nonexistent.pth does not exist" in res.output  # the user's value
    assert not (tmp_path / "r").exists()  # checked before anything was made


def test_unused_weights_are_said(plugin_system, tmp_path, monkeypatch):
    from harness.run import runner

    cfg = runner.build_matrix({"backbones": ["resnet18"], "datasets": ["digits"],
                               "strategies": ["scratch"]},
                              {"weights": {"*": "imagenet", "vgg19": "imagenet"}})
    _, notes = runner.validate(plugin_system, cfg)
    assert any("vgg19=imagenet is not used: the matrix runs no backbone vgg19" in n
               for n in notes)
    assert any("is not used: no strategy of the matrix starts from pretrained" in n
               for n in notes)
    cfg = runner.build_matrix({"backbones": ["resnet18"], "datasets": ["digits"],
                               "strategies": ["frozen"], "weights": {"resnet18": "imagenet"}}, {})
    assert not [n for n in runner.validate(plugin_system, cfg)[1] if "weights" in n]


# -- image modes --------------------------------------------------------------------------------
GRAD16 = np.tile(np.linspace(0, 65535, 64).round().astype(np.uint16), (64, 1))


def _save(tmp_path, im, name):
    path = tmp_path / name
    im.save(path)
    return path


@pytest.mark.parametrize("mode, make, check", [
    ("I;16", lambda: Image.fromarray(GRAD16), "gradient"),
    ("I;16B", lambda: Image.fromarray(GRAD16).convert("I").convert("I;16B")
     if False else Image.frombytes("I;16B", (64, 64), GRAD16.astype(">u2").tobytes()),
     "gradient"),
    ("I", lambda: Image.fromarray(GRAD16.astype(np.int32) * 1000 - 5_000_000), "gradient"),
    ("F", lambda: Image.fromarray(GRAD16.astype(np.float32) / 65535 * 3.5 - 1), "gradient"),
    ("L", lambda: Image.fromarray((GRAD16 // 257).astype(np.uint8)), "gradient"),
    ("1", lambda: Image.fromarray((GRAD16 > 32767)), "binary"),
    ("P", lambda: Image.fromarray((GRAD16 // 257).astype(np.uint8)).convert("RGB")
     .quantize(4).convert("P"), "palette"),
    ("LA", lambda: Image.merge("LA", [Image.new("L", (64, 64), 0),
                                      Image.new("L", (64, 64), 128)]), "half_black"),
    ("RGBA", lambda: Image.new("RGBA", (64, 64), (255, 0, 0, 0)), "white"),
    ("PA", lambda: Image.new("RGBA", (64, 64), (0, 0, 255, 0)).convert("PA"), "white"),
    ("CMYK", lambda: Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "red"),
    ("RGB", lambda: Image.new("RGB", (64, 64), (10, 200, 30)), "rgb"),
])
def test_every_pillow_mode_decodes_to_what_it_shows(tmp_path, mode, make, check):
    im = make()
    assert im.mode == mode
    ext = "tiff" if mode in ("I", "F", "CMYK", "I;16B", "PA", "LA") else "png"
    if mode in ("PA", "LA"):
        ext = "png" if mode == "LA" else "tiff"
    try:
        path = _save(tmp_path, im, f"x.{ext}")
    except (OSError, KeyError) as exc:  # a format that cannot store the mode
        pytest.skip(f"Pillow cannot write {mode} as {ext}: {exc}")
    with Image.open(path) as reopened:
        stored = reopened.mode
    x, size = decode_image(path, 64)
    assert size == (64, 64) and x.dtype == torch.uint8 and x.shape == (3, 64, 64)
    x = x.float()
    if check == "gradient":  # scaled by the image's own range: 0 .. 255, not clipped white
        row = x[0, 32]
        assert row[0] == 0 and row[-1] == 255, (stored, row[:4], row[-4:])
        assert 120 < x.mean() < 135 and torch.all(row[1:] >= row[:-1])
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey stays grey
    elif check == "binary":
        assert set(x.unique().tolist()) == {0.0, 255.0}
    elif check == "palette":
        assert x.std() > 20  # the palette's colours, not index values
    elif check == "half_black":  # black at 50% alpha over white
        assert torch.allclose(x, torch.full_like(x, 127), atol=2)
    elif check == "white":  # fully transparent shows the background, not the hidden colour
        assert torch.all(x == 255)
    elif check == "red":
        assert x[:, 0, 0].tolist() == [255, 0, 0]
    else:
        assert x[:, 0, 0].tolist() == [10, 200, 30]


def test_sixteen_bit_png_is_not_clipped_white(tmp_path):
    path = _save(tmp_path, Image.fromarray(GRAD16), "g.png")
    x, _ = decode_image(path, 32)
    assert abs(x.float().mean().item() - 127.5) < 3  # Pillow's own convert gives ~254.6


# -- dataset label validation (file and line) ----------------------------------------------------
def _pets_root(tmp_path, lines_tv, lines_test, list_extra=()):
    root = tmp_path / "pets"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rows = []
    for line in [*lines_tv, *lines_test]:
        name = line.split()[0]
        Image.new("RGB", (20, 16), (len(name) * 20 % 255, 40, 90)).save(
            root / "images" / f"{name}.jpg")
        if line not in rows:
            rows.append(line)
    header = "#Image CLASS-ID SPECIES BREED ID\n"
    (root / "annotations" / "list.txt").write_text(header + "\n".join([*rows, *list_extra]) + "\n")
    (root / "annotations" / "trainval.txt").write_text("\n".join(lines_tv) + "\n")
    (root / "annotations" / "test.txt").write_text("\n".join(lines_test) + "\n")
    return root


def _good_pets(n=4):
    tv = [f"Abyssinian_{i} 1 1 1" for i in range(n)] + [f"beagle_{i} 2 2 1" for i in range(n)]
    te = [f"Abyssinian_{i} 1 1 1" for i in range(n, n + 2)] + \
        [f"beagle_{i} 2 2 1" for i in range(n, n + 2)]
    return tv, te


@pytest.mark.parametrize("bad, pattern", [
    ("Bengal_0 99 1 1", r"list\.txt line 14: class id 99 is outside 1\.\.37"),
    ("Bengal_0 0 1 1", r"list\.txt line 14: class id 0 is outside 1\.\.37"),
    ("Bengal_0 1 3 1", r"list\.txt line 14: species 3 is neither 1 \(cat\) nor 2"),
])
def test_pets_bad_label_lines_are_named_before_training(tmp_path, bad, pattern):
    from plugins.datasets.pets import load_pets

    tv, te = _good_pets()
    root = _pets_root(tmp_path, tv, te, list_extra=[bad])
    with pytest.raises(BadData, match=pattern):
        load_pets("classification", 16, 0, tmp_path / "c", root=str(root))


def test_pets_breed_ids_with_gaps_get_no_empty_head_output(tmp_path):
    from plugins.datasets.pets import load_pets

    tv, te = _good_pets()
    tv, te = tv + ["Bengal_0 5 1 1", "Bengal_1 5 1 1"], te + ["Bengal_2 5 1 1"]
    root = _pets_root(tmp_path, tv, te)
    d = load_pets("classification", 16, 0, tmp_path / "c", root=str(root))
    assert d.info.num_classes == 3 and d.info.class_names == ["Abyssinian", "beagle", "Bengal"]
    assert int(d.test.targets.max()) == 2
    assert any("list.txt: class id(s) 3, 4 have no image" in n for n in d.info.notes)


def test_pets_overlapping_lists_are_refused_with_both_lines(tmp_path):
    from plugins.datasets.pets import load_pets

    tv, te = _good_pets()
    root = _pets_root(tmp_path, tv, te + [tv[2]])
    with pytest.raises(BadData, match=r"test\.txt line 5: Abyssinian_2 is also in .*trainval\.txt "
                                      r"line 3 .*must not overlap"):
        load_pets("classification", 16, 0, tmp_path / "c", root=str(root))


def test_pets_split_list_disagreeing_with_list_txt_is_named(tmp_path):
    from plugins.datasets.pets import load_pets

    tv, te = _good_pets()
    root = _pets_root(tmp_path, tv, te)
    (root / "annotations" / "test.txt").write_text("beagle_5 1 1 1\n")
    with pytest.raises(BadData, match=r"test\.txt line 1: beagle_5 is class 1 .*list\.txt line"):
        load_pets("classification", 16, 0, tmp_path / "c", root=str(root))


def test_pets_missing_image_under_root_never_says_delete(tmp_path):
    from plugins.datasets.pets import load_pets

    tv, te = _good_pets()
    root = _pets_root(tmp_path, tv, te)
    (root / "images" / "beagle_1.jpg").unlink()
    with pytest.raises(BadData) as err:
        load_pets("classification", 16, 0, tmp_path / "c", root=str(root))
    assert "trainval.txt line" in str(err.value) and "beagle_1" in str(err.value)
    assert "delete" not in str(err.value).lower()


def test_flowers_root_advice_never_says_delete(tmp_path):
    from scipy.io import savemat

    from plugins.datasets.flowers import load_flowers17

    root = tmp_path / "flowers"
    (root / "jpg").mkdir(parents=True)
    savemat(root / "datasplits.mat", {f"{k}1": np.arange(1, 11) for k in ("trn", "val", "tst")})
    with pytest.raises(BadData) as err:
        load_flowers17("classification", 16, 0, tmp_path / "c", root=str(root))
    assert "missing" in str(err.value) and "delete" not in str(err.value).lower()


def test_flowers_overlapping_official_splits_are_refused(tmp_path):
    from scipy.io import savemat

    from plugins.datasets.flowers import read_splits

    mat = tmp_path / "datasplits.mat"
    savemat(mat, {"trn1": np.arange(1, 11), "val1": np.arange(11, 21), "tst1": np.arange(5, 9)})
    with pytest.raises(BadData, match=r"split tst1 image line|split tst1 image: 5 is also in "
                                      r".*split trn1"):
        read_splits(mat, 1, user_file=True)


def test_imagefolder_class_with_one_image_is_noted(tmp_path):
    from plugins.datasets.imagefolder import load_imagefolder

    root = tmp_path / "mine"
    for c, n in (("cats", 6), ("dogs", 6), ("owl", 1)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (12, 12), (i * 30, 0, 0)).save(root / c / f"{i}.png")
    d = load_imagefolder("classification", 16, 0, tmp_path / "c", root=str(root))
    notes = [n for n in d.info.notes if "owl" in n]
    assert notes and "val split" in notes[0] and "does not cover them" in notes[0]


def test_fashion_label_out_of_range_names_the_file(tmp_path, monkeypatch):
    import gzip
    import struct

    from plugins.datasets.offline import load_fashion_mnist

    def idx(path, arr):
        head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim,
                                                                        *arr.shape)
        with gzip.open(path, "wb") as f:
            f.write(head + arr.astype(np.uint8).tobytes())

    labels = np.arange(40) % 10
    labels[7] = 12
    for split in ("train", "t10k"):
        idx(tmp_path / f"{split}-images-idx3-ubyte.gz", np.zeros((40, 4, 4)))
        idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels)
    with pytest.raises(BadData, match=r"train-labels-idx1-ubyte\.gz \(entry 7\): label 12 is "
                                      r"outside 0\.\.9"):
        load_fashion_mnist("classification", 8, 0, tmp_path, root=str(tmp_path))


# -- errors checked before anything runs --------------------------------------------------------
@pytest.mark.parametrize("args, needle", [
    (["-d", "digits,foo=1"], "dataset 'digits,foo=1': unknown parameter(s) foo. It accepts: "
                             "val_frac, test_frac"),
    (["-d", "digits,val_fac=0.2"], "unknown parameter(s) val_fac (did you mean val_frac?). "
                                   "It accepts: val_frac, test_frac"),
    (["-s", "chain_thaw,patiense=1"], "strategy 'chain_thaw,patiense=1': unknown parameter(s) "
                                      "patiense (did you mean patience?). It accepts: "),
    (["-b", "timm:not_a_model"], "timm has no architecture 'not_a_model'"),
    (["-b", "resnet18,depth=3"], "backbone 'resnet18,depth=3': unknown parameter(s) depth"),
])
def test_bad_plugin_parameters_fail_up_front(plugin_system, tmp_path, args, needle):
    res = CliRunner().invoke(cli, ["run", *args, "-s", "scratch", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output
    assert res.output.count("ccepts") <= 1  # what it accepts is listed once
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("profile, needle", [
    ("batch_size = 0", "[profile.tiny]: profile tiny: batch_size must be >= 1"),
    ('precisions = ["fp8"]', "precision 'fp8' is measured by no runtime; choose from"),
])
def test_impossible_profiles_fail_up_front_and_leave_nothing(plugin_system, tmp_path,
                                                             profile, needle):
    m = tmp_path / "m.toml"
    m.write_text(f'backbones = ["resnet18"]\nstrategies = ["scratch"]\ndatasets = ["digits"]\n'
                 f'runtimes = ["pytorch"]\nprofiles = ["tiny"]\n[profile.tiny]\n{profile}\n')
    res = CliRunner().invoke(cli, ["run", "-m", str(m), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert needle in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_unwritable_out_is_a_one_line_usage_error(plugin_system, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = CliRunner().invoke(cli, ["run", "-b", "resnet18", "-s", "scratch", "-d", "digits",
                                   "--out", str(blocker / "runs")])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("Error: cannot write the run folder") and \
        "give --out a folder you can write" in res.output
    assert len(res.output.strip().splitlines()) == 1


@slow
def test_a_record_that_cannot_be_written_is_retried_then_stops_the_run(tmp_path, monkeypatch,
                                                                        plugin_system):
    from harness.run import runner
    from harness.run.config import MatrixConfig
    from harness.train.loop import TrainSettings

    plugin_system.register(robust_plugin, name=robust_plugin.NAME)
    plugin_system.rebuild()
    m = MatrixConfig(backbones=["tinynet"], datasets=["quadrants"], strategies=["slow"],
                     runtimes=[], seeds=2, image_size=16, name="w",
                     train=TrainSettings(epochs=1, batch_size=32))
    monkeypatch.setattr(runner.time, "sleep", lambda s: None)
    real = RunStore.write_cell
    calls = {"n": 0}

    def flaky(self, rec):  # the first final record fails twice, then the disk comes back
        if rec["status"] == "ok":
            calls["n"] += 1
            if calls["n"] <= 2:
                raise OSError(28, "No space left on device")
        return real(self, rec)

    monkeypatch.setattr(RunStore, "write_cell", flaky)
    store = runner.run_matrix(plugin_system, m, tmp_path, show_progress=False)
    assert [r["status"] for r in store.records()] == ["ok", "ok"]  # kept, retried, written

    def broken(self, rec):
        if rec["status"] == "ok":
            raise PermissionError(13, "Permission denied")
        return real(self, rec)

    monkeypatch.setattr(RunStore, "write_cell", broken)
    with pytest.raises(runner.RecordNotSaved, match=r"cannot write the record of cell \w+ to "
                                                    r".*cells/\w+\.json \(Permission denied\) "
                                                    r"after 3 tries"):
        runner.run_matrix(plugin_system, m, tmp_path, show_progress=False, fresh=True)


class _Unstartable:
    """An executor whose cluster cannot be joined."""

    def __init__(self, **options):
        pass

    def run(self, jobs, run_one, on_done):
        from harness.api.errors import ConfigError
        raise ConfigError("could not join the cluster at nowhere:1; fix the address")


class _ExecutorPlugin:
    @hookimpl
    def register_executors(self):
        return [ExecutorSpec("unstartable", factory=_Unstartable)]


def test_an_executor_that_cannot_start_leaves_no_run_folder(register_plugin, tmp_path):
    register_plugin(_ExecutorPlugin(), name="unstartable-executor")
    res = CliRunner().invoke(cli, ["run", "-b", "resnet18", "-s", "scratch", "-d", "digits",
                                   "--executor", "unstartable", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "could not join the cluster" in res.output, res.output
    assert list((tmp_path / "r").iterdir()) == []  # the run folder it made is gone


# -- workers die with their parent; temporary folders never outlive their process -------------
PARENT = textwrap.dedent("""
    import os, subprocess, sys, time
    env = {**os.environ, "TRANSFER_BENCH_PARENT_PID": str(os.getpid())}  # as bench sets it
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=env)
    print(child.pid, flush=True)
    time.sleep(120)
""")
CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {root!r})
    import ctypes
    if {no_prctl}:  # a system without prctl: only the watchdog is left
        ctypes.CDLL = None
    from harness.measure import lifetime  # binds this process to its parent at import
    assert os.environ.get("TRANSFER_BENCH_PARENT_PID") is None  # not passed on
    open({marker!r}, "w").write(lifetime.die_with_parent(poll_s=0.1))
    time.sleep(120)
""")


@slow
@pytest.mark.parametrize("no_prctl", [False, True], ids=["pdeathsig", "watchdog"])
def test_worker_dies_when_its_parent_is_killed(no_prctl, tmp_path):
    marker = tmp_path / "armed"
    parent = subprocess.Popen([sys.executable, "-c", PARENT,
                               CHILD.format(root=str(ROOT), no_prctl=no_prctl,
                                            marker=str(marker))],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    wait_for(lambda: marker.exists() and marker.read_text(), 120, "the child to arm")
    assert marker.read_text() == ("watchdog" if no_prctl else "pdeathsig+watchdog")
    assert alive(child)
    parent.kill()
    parent.wait()
    wait_for(lambda: not alive(child), 30, "the orphaned worker to exit")


CELL_WORKER = textwrap.dedent("""
    import multiprocessing, os, sys, time
    sys.path.insert(0, {root!r})
    import plugins.executors_processes as ep

    def cell(job, threads, gpu):  # a cell that runs until it is told to stop
        try:
            print("running", flush=True)
            time.sleep(120)
        finally:
            open({marker!r}, "w").write("cleaned up")

    ep.execute_job = cell
    recv, send = multiprocessing.Pipe(duplex=False)
    ep._child(None, send, None, os.getppid())
""")


@slow
def test_cell_worker_told_to_stop_cleans_up_and_exits_at_once(tmp_path):
    """SIGTERM (the driver's death signal) ends a cell worker through its finally blocks and
    then os._exit: no record is sent, no interpreter teardown keeps it alive (the soak
    once saw SIGTERMed workers 15 s later)."""
    marker = tmp_path / "cleaned"
    p = subprocess.Popen([sys.executable, "-c", CELL_WORKER.format(root=str(ROOT),
                                                                   marker=str(marker))],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "running"
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 128 + signal.SIGTERM
    assert marker.read_text() == "cleaned up"


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from harness.measure.lifetime import exit_on_signals, temp_folder
    exit_on_signals()
    with temp_folder() as p:
        (p / "data").write_bytes(b"x" * 1000)
        print(p, flush=True)
        time.sleep(120)
""")


@slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_temp_folder_is_removed_on_any_exit_or_swept(tmp_path, sig):
    from harness.measure.lifetime import sweep_temp_folders

    p = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(ROOT))],
                         stdout=subprocess.PIPE, text=True, env={**os.environ,
                                                                 "TMPDIR": str(tmp_path)})
    folder = Path(p.stdout.readline().strip())
    assert folder.parent == tmp_path and folder.name.startswith(f"tb-cell-{p.pid}-")
    assert sweep_temp_folders(root=tmp_path) == []  # its owner lives: left alone
    p.send_signal(sig)
    p.wait(30)
    if sig == signal.SIGKILL:
        assert folder.exists()  # nothing runs on SIGKILL ...
        assert sweep_temp_folders(root=tmp_path) == [folder]  # ... so the next run sweeps it
    assert not folder.exists()
    foreign = tmp_path / "tb-cell-not-ours"
    foreign.mkdir()
    sweep_temp_folders(root=tmp_path)
    assert foreign.exists()  # no lock file: not ours to remove


@slow
def test_kill_9_of_bench_run_leaves_no_worker_and_the_next_run_sweeps(tmp_path):
    """The cell's latency worker is killed with bench; its temporary folder goes next run."""
    mfile = robust_plugin.write_matrix(tmp_path / "m.toml", runtimes=('"slowrt"',), seeds=1)
    marker = tmp_path / "measuring.pid"
    env = {"TMPDIR": str(tmp_path), "ROBUST_MEASURE_MARKER": str(marker)}
    p = bench(["run", "-m", str(mfile), "--out", "runs", "-q"], tmp_path, env)
    wait_for(marker.exists, 300, "the latency worker to start")
    worker = int(marker.read_text())
    p.kill()
    p.communicate()
    wait_for(lambda: not alive(worker), 30, "the latency worker to die with bench")
    left = list(tmp_path.glob("tb-cell-*"))
    assert len(left) == 1  # SIGKILL: nothing could clean up ...
    q = bench(["run", "-m", str(mfile), "--out", "runs", "-q"], tmp_path,
              {"TMPDIR": str(tmp_path)})
    out, err = q.communicate(timeout=600)
    assert q.returncode == 0, err
    assert not list(tmp_path.glob("tb-cell-*"))  # ... the next run swept it and its own
    run = next((tmp_path / "runs").iterdir())
    assert [r["status"] for r in json.loads((run / "results.json").read_text())] == ["ok"]


# -- downloads and extractions under the cache lock ----------------------------------------------
def _fetch_extract(url, folder, res, out):
    from plugins.datasets._common import fetch_and_extract
    try:
        path = fetch_and_extract(res, Path(folder), url, "data")
        Path(out).write_text(str(sorted(p.name for p in (path / "d").iterdir())))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        Path(out).write_text(f"error {type(exc).__name__}: {exc}")


@slow
def test_two_processes_fetching_one_archive_download_it_once(tmp_path):
    import hashlib

    from harness.run.download import Resource

    served = tmp_path / "served"
    served.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(40):
            data = os.urandom(50_000)
            info = tarfile.TarInfo(f"d/f{i:02d}.bin")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    (served / "a.tar.gz").write_bytes(blob)
    gets = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(served), **kw)

        def log_message(self, *a):
            pass

        def copyfile(self, src, dst):  # slow enough that the two fetches overlap
            gets.append(self.path)
            while chunk := src.read(64_000):
                dst.write(chunk)
                time.sleep(0.02)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    res = Resource("a.tar.gz", url + "/a.tar.gz", sha256=hashlib.sha256(blob).hexdigest())
    cache = tmp_path / "cache"
    try:
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=_fetch_extract, args=(url, cache, res, tmp_path / f"o{i}"))
                 for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
    finally:
        server.shutdown()
        server.server_close()
    outs = [(tmp_path / f"o{i}").read_text() for i in range(2)]
    expect = str([f"f{i:02d}.bin" for i in range(40)])
    assert outs == [expect, expect]
    assert gets == ["/a.tar.gz"]  # the second waited for the first's verified file
    assert sorted(p.name for p in cache.iterdir()) == ["a.tar.gz", "a.tar.gz.lock", "data",
                                                        "data.lock"]  # no temporary left


def test_link_member_message_names_the_member(tmp_path):
    from harness.run.download import UnsafeArchive, extract

    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("pics/innocent.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchive, match=r"link member 'pics/innocent\.jpg' points to "):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
