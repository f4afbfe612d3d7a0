"""Latency timing measured once per architecture x runtime x precision x profile and shared
(harness.run.timing): what is shared, what stays per cell, what is never stored."""
from __future__ import annotations

import json
import multiprocessing
import sys

import pytest
import torch
from torch import nn

from harness import ProfileSpec
from harness.measure.fingerprint import architecture_fingerprint
from harness.measure.latency import MeasureSettings
from harness.run.timing import OUTPUTS_ONLY, CellTiming, TimingCache, measure_shared
from harness.testkit import TestkitPlugin

SETTINGS = MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=3, min_s=0.0)
PROFILE = ProfileSpec("tiny", batch_size=2, threads=1, precisions=("fp32", "int8"))


def fake_measure(art, profile, settings):  # its module's source is part of the key
    raise AssertionError("not called: the tests pass their own `call`")


class Recorder:
    """A stand-in for the worker: rows with made-up statistics, and a log of its calls."""

    def __init__(self, fail=(), log=None):
        self.calls, self.fail, self.log, self.n = [], set(fail), log, 0

    def __call__(self, profile, settings, suffix):
        full = settings.min_count > 1
        self.calls.append((tuple(profile.precisions), full))
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps([list(profile.precisions), full]) + "\n")
        rows = []
        for p in profile.precisions:
            self.n += 1
            if p in self.fail:
                rows.append({"precision": p, "error": "RuntimeError: boom"})
                continue
            row = {"precision": p, "stats": {"count": settings.min_count, "p50_ms": 10.0 * self.n,
                                             "truncated": False}, "threads": 1}
            if p != "fp32":
                row["test_outputs"] = f"outputs of this cell's {p} model"
            rows.append(row)
        return rows


def timing_for(tmp_path, cell="cell-a", arch="arch-1", cache=True):
    return CellTiming(TimingCache(tmp_path / "timing") if cache else None, cell, f"label {cell}",
                      {"architecture": arch, "image_size": 16, "versions": {"torch": "x"}})


def rows_by_precision(rows):
    return {r["precision"]: r for r in rows}


def test_the_first_cell_measures_the_next_ones_share_and_still_run_their_own_weights(tmp_path):
    first, second = Recorder(), Recorder()
    a = rows_by_precision(measure_shared(first, fake_measure, "rt", PROFILE, SETTINGS,
                                         timing_for(tmp_path, "cell-a")))
    b = rows_by_precision(measure_shared(second, fake_measure, "rt", PROFILE, SETTINGS,
                                         timing_for(tmp_path, "cell-b")))
    assert first.calls == [(("fp32", "int8"), True)]
    assert all(r["latency_measured"] == "here" for r in a.values())
    # the second cell's worker still runs, on its own weights, with one call only
    assert second.calls == [(("fp32", "int8"), False)]
    for p in ("fp32", "int8"):
        assert b[p]["latency_measured"] == "shared"
        assert b[p]["latency_shared_with"] == "cell-a"
        assert b[p]["measurement_id"] == a[p]["measurement_id"]
        assert b[p]["stats"] == a[p]["stats"]  # the shared figure, not its one call
    assert b["int8"]["test_outputs"] == "outputs of this cell's int8 model"


def test_fp32_rows_still_run_on_the_cells_own_weights(tmp_path):
    """fp32 outputs are compared with PyTorch's per cell: a shared fp32 row still runs once."""
    prof = ProfileSpec("tiny", batch_size=2, threads=1, precisions=("fp32",))
    measure_shared(Recorder(), fake_measure, "rt", prof, SETTINGS, timing_for(tmp_path, "a"))
    second = Recorder()
    (row,) = measure_shared(second, fake_measure, "rt", prof, SETTINGS, timing_for(tmp_path, "b"))
    assert second.calls == [(("fp32",), False)]
    assert row["latency_shared_with"] == "a" and row["stats"]["count"] == 3


def test_outputs_that_disagree_are_not_stored(tmp_path):
    def disagreeing(profile, settings, suffix):
        return [{"precision": p, "stats": {"count": 3, "p50_ms": 1.0},
                 "outputs_check": {"ok": False}} for p in profile.precisions]

    measure_shared(disagreeing, fake_measure, "rt", PROFILE, SETTINGS, timing_for(tmp_path))
    assert not list((tmp_path / "timing").glob("*.json"))


@pytest.mark.parametrize("change", ["architecture", "runtime", "profile", "settings", "machine"])
def test_a_different_architecture_runtime_profile_settings_or_machine_measures_again(
        tmp_path, change, monkeypatch):
    measure_shared(Recorder(), fake_measure, "rt", PROFILE, SETTINGS, timing_for(tmp_path))
    rt, prof, sets, arch = "rt", PROFILE, SETTINGS, "arch-1"
    if change == "architecture":
        arch = "arch-2"
    elif change == "runtime":
        rt = "other-rt"
    elif change == "profile":
        prof = ProfileSpec("tiny", batch_size=4, threads=1, precisions=("fp32", "int8"))
    elif change == "settings":
        sets = MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=4, min_s=0.0)
    else:
        import harness.run.timing as timing
        monkeypatch.setattr(timing, "machine_identity", lambda: {"cpu": "another CPU"})
    again = Recorder()
    rows = measure_shared(again, fake_measure, rt, prof, sets, timing_for(tmp_path, arch=arch))
    assert again.calls == [(("fp32", "int8"), True)]
    assert {r["latency_measured"] for r in rows} == {"here"}


def test_a_profile_name_alone_does_not_separate_identical_measurements(tmp_path):
    measure_shared(Recorder(), fake_measure, "rt", PROFILE, SETTINGS, timing_for(tmp_path))
    renamed = ProfileSpec("mobile-like", batch_size=2, threads=1, precisions=("int8",))
    again = Recorder()
    (row,) = measure_shared(again, fake_measure, "rt", renamed, SETTINGS, timing_for(tmp_path))
    assert again.calls == [(("int8",), False)] and row["latency_measured"] == "shared"


def test_a_failed_measurement_is_not_stored_and_is_measured_again(tmp_path):
    measure_shared(Recorder(fail={"int8"}), fake_measure, "rt", PROFILE, SETTINGS,
                   timing_for(tmp_path, "a"))
    retry = Recorder()
    rows = rows_by_precision(measure_shared(retry, fake_measure, "rt", PROFILE, SETTINGS,
                                            timing_for(tmp_path, "b")))
    # int8 timed afresh with full settings; fp32 (stored) run once on this cell's weights
    assert sorted(retry.calls) == [(("fp32",), False), (("int8",), True)]
    assert rows["int8"]["latency_measured"] == "here"
    assert rows["fp32"]["latency_shared_with"] == "a"
    assert list(rows) == ["fp32", "int8"]  # the profile's order


def test_a_worker_that_raises_stores_nothing(tmp_path):
    def crash(profile, settings, suffix):
        raise RuntimeError("worker died")

    with pytest.raises(RuntimeError):
        measure_shared(crash, fake_measure, "rt", PROFILE, SETTINGS, timing_for(tmp_path))
    assert not list((tmp_path / "timing").glob("*.json"))


class Noisy(Recorder):
    """Rows whose figures fail the stability criterion; ``iqr`` per call (None: stable)."""

    def __init__(self, iqrs):
        super().__init__()
        self.iqrs, self.retries = list(iqrs), []

    def __call__(self, profile, settings, suffix):
        self.retries.append(settings.noisy_retries)
        rows = super().__call__(profile, settings, suffix)
        iqr = self.iqrs.pop(0) if settings.min_count > 1 else None
        for r in rows:
            if iqr is not None and "stats" in r:
                r["stats"]["noise"] = {"noisy": True, "iqr_rel": iqr,
                                       "reasons": [f"IQR is {iqr:.0%} of p50"]}
        return rows


@pytest.mark.parametrize("second_iqr, kept", [(None, "second"), (0.3, "second"),
                                               (0.9, "first")])
def test_a_noisy_figure_is_measured_once_more_then_the_less_noisy_one_is_shared(
        tmp_path, second_iqr, kept):
    """Noisy figures are stored; the next cell measures them once more (not every cell
    forever), the less noisy of the two stays, and every later cell shares it."""
    first = Noisy([0.5])
    a = rows_by_precision(measure_shared(first, fake_measure, "rt", PROFILE, SETTINGS,
                                         timing_for(tmp_path, "a")))
    assert {r["latency_measured"] for r in a.values()} == {"here"}
    assert all(r["latency_measurements"] == 1 for r in a.values())
    second = Noisy([second_iqr])
    b = rows_by_precision(measure_shared(second, fake_measure, "rt", PROFILE, SETTINGS,
                                         timing_for(tmp_path, "b")))
    assert second.calls == [(("fp32", "int8"), True)]  # measured again, with full settings
    assert first.retries == [SETTINGS.noisy_retries] and second.retries == [0]  # once more
    third = Noisy([])
    c = rows_by_precision(measure_shared(third, fake_measure, "rt", PROFILE, SETTINGS,
                                         timing_for(tmp_path, "c")))
    assert third.calls == [(("fp32", "int8"), False)]  # shared: one call on its own weights
    for p in ("fp32", "int8"):
        winner = b[p] if kept == "second" else a[p]
        assert c[p]["stats"] == winner["stats"]
        assert c[p]["latency_shared_with"] == ("b" if kept == "second" else "a")
        assert c[p]["latency_measurements"] == 2
        assert c[p]["measurement_id"] == a[p]["measurement_id"] == b[p]["measurement_id"]
        if kept == "second":
            assert b[p]["latency_measured"] == "here"
            assert b[p]["latency_remeasured"]["earlier"]["p50_ms"] == a[p]["stats"]["p50_ms"]
        else:  # the second cell measured, but shows the cleaner earlier figure
            assert b[p]["latency_measured"] == "shared" and b[p]["stats"] == a[p]["stats"]
            assert b[p]["latency_remeasured"]["kept"] == "the earlier figure"
    entry = json.loads(next((tmp_path / "timing").glob("*.json")).read_text())
    assert [m["cell"] for m in entry["measurements"]] == ["a", "b"]
    assert sum(m["kept"] for m in entry["measurements"]) == 1


def test_a_new_row_keeps_its_retries_while_a_noisy_one_is_measured_once_more(tmp_path):
    first = Noisy([0.5])
    first.fail = {"int8"}  # not stored: the next cell measures it as new
    measure_shared(first, fake_measure, "rt", PROFILE, SETTINGS, timing_for(tmp_path, "a"))
    second = Noisy([None, None])
    rows = rows_by_precision(measure_shared(second, fake_measure, "rt", PROFILE, SETTINGS,
                                            timing_for(tmp_path, "b")))
    assert second.calls == [(("int8",), True), (("fp32",), True)]
    assert second.retries == [SETTINGS.noisy_retries, 0]
    assert rows["fp32"]["latency_remeasured"]["kept"] == "this cell's figure"
    assert rows["int8"]["latency_measurements"] == 1 and list(rows) == ["fp32", "int8"]


def test_a_runtimes_not_measured_verdict_is_shared_without_starting_its_worker(tmp_path):
    def declines_int8(profile, settings, suffix):
        calls.append((tuple(profile.precisions), settings.min_count > 1))
        return [{"precision": p, "unavailable": "this runtime runs fp32 only"} if p == "int8"
                else {"precision": p, "stats": {"count": settings.min_count, "p50_ms": 2.0}}
                for p in profile.precisions]

    calls: list = []
    measure_shared(declines_int8, fake_measure, "rt", PROFILE, SETTINGS, timing_for(tmp_path))
    assert calls == [(("fp32", "int8"), True)]
    calls.clear()
    rows = rows_by_precision(measure_shared(declines_int8, fake_measure, "rt", PROFILE,
                                            SETTINGS, timing_for(tmp_path, "b")))
    assert calls == [(("fp32",), False)]  # one worker run, for the figure only
    assert rows["int8"]["unavailable"] == "this runtime runs fp32 only"
    assert rows["int8"]["latency_shared_with"] == "cell-a" and "stats" not in rows["int8"]


def test_truncated_and_corrupt_entries_are_not_reused(tmp_path):
    def truncated(profile, settings, suffix):
        return [{"precision": p, "stats": {"count": 1, "p50_ms": 1.0, "truncated": True}}
                for p in profile.precisions]

    measure_shared(truncated, fake_measure, "rt", PROFILE, SETTINGS, timing_for(tmp_path))
    assert not list((tmp_path / "timing").glob("*.json"))
    measure_shared(Recorder(), fake_measure, "rt", PROFILE, SETTINGS, timing_for(tmp_path))
    for f in (tmp_path / "timing").glob("*.json"):
        f.write_text("{not json")
    again = Recorder()
    measure_shared(again, fake_measure, "rt", PROFILE, SETTINGS, timing_for(tmp_path))
    assert again.calls == [(("fp32", "int8"), True)]


def test_reuse_off_measures_every_cell(tmp_path):
    for cell in ("a", "b"):
        rec = Recorder()
        rows = measure_shared(rec, fake_measure, "rt", PROFILE, SETTINGS,
                              timing_for(tmp_path, cell, cache=False))
        assert rec.calls == [(("fp32", "int8"), True)]
        assert all("latency_measured" not in r for r in rows)


def _worker(folder, log, cell):
    measure_shared(Recorder(log=log), fake_measure, "rt", PROFILE, SETTINGS,
                   timing_for(folder, cell))


def test_two_workers_at_once_measure_once(tmp_path):
    """Two processes (``--jobs 2``) reach the same architecture together: the group lock
    lets one measure while the other waits, then shares."""
    log = tmp_path / "calls.jsonl"
    ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "fork")
    procs = [ctx.Process(target=_worker, args=(tmp_path, log, c)) for c in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(calls) == [[["fp32", "int8"], False], [["fp32", "int8"], True]]


def test_outputs_only_settings_make_one_call():
    once = MeasureSettings(**{**vars(SETTINGS), **OUTPUTS_ONLY})
    assert (once.warmup_count, once.min_count, once.min_s) == (0, 1, 0.0)


def test_the_architecture_fingerprint_ignores_weights_but_not_structure():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Linear(8, 4))
    b = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Linear(8, 4))  # other weights
    head = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Linear(8, 5))  # 5 classes
    stride = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Linear(8, 4))
    assert architecture_fingerprint(a) == architecture_fingerprint(b)
    assert architecture_fingerprint(a) != architecture_fingerprint(head)
    assert architecture_fingerprint(a) != architecture_fingerprint(stride)


# -- through run_cell: scratch and fine-tuned cells of one tiny backbone ----------------------
@pytest.mark.slow  # trains two tiny cells and starts runtime workers
def test_cells_of_one_architecture_share_timing_and_keep_their_own_accuracy(
        register_plugin, monkeypatch, tmp_path):
    from harness.run.cell import run_cell
    from harness.run.config import MatrixConfig, matrix_kwargs

    monkeypatch.setenv("TRANSFER_BENCH_CACHE", str(tmp_path))
    plugins = register_plugin(TestkitPlugin(), name="testkit")
    m = MatrixConfig(**matrix_kwargs({
        "backbones": ["testkit_tiny"], "datasets": ["testkit_quadrants,n_train=64"],
        "strategies": ["scratch", "finetune"],
        "runtimes": ["pytorch", "onnxruntime"], "profiles": ["tiny"], "image_size": 16,
        "profile": {"tiny": {"batch_size": 2, "threads": 1, "precisions": ["fp32", "int8"]}},
        "train": {"epochs": 1, "batch_size": 32},
        # a busy machine must not make the first measurement noisy (a noisy one is measured
        # once more by the second cell, which would then not share it)
        "latency": {"warmup_count": 1, "warmup_s": 0.0, "min_count": 5, "min_s": 0.0,
                    "max_iqr_rel": 1e9, "max_p90_p50": 1e9, "max_probe_drift": 1e9,
                    "max_load_per_cpu": 1e9, "noisy_retries": 0}}))
    recs = [run_cell(plugins, c, key, custom_profiles=m.custom_profiles)
            for c, key in zip(m.cells(), ("cell-scratch", "cell-finetune"))]
    rows = []
    for rec in recs:
        assert rec["status"] == "ok", rec.get("traceback")
        rows.append({(r["runtime"], r["precision"]): r for r in rec["latency"] if "stats" in r})
    first, second = rows
    assert set(first) == set(second) == {("pytorch", "fp32"), ("onnxruntime", "fp32"),
                                          ("onnxruntime", "int8")}
    for k in first:
        assert first[k]["latency_measured"] == "here"
        assert second[k]["latency_measured"] == "shared"
        assert second[k]["latency_shared_with"] == "cell-scratch"
        assert second[k]["stats"] == first[k]["stats"]
    # int8 of each cell: quantized from its own weights and scored on the test images
    for r in (first, second):
        assert r[("onnxruntime", "int8")]["evaluated_on"] > 0
        assert r[("onnxruntime", "int8")]["quantize_s"] > 0
    assert recs[1]["timers"]["latency_stage_s"] > 0 and recs[1]["timers"]["export_s"] > 0


def test_editing_a_runtime_module_or_its_siblings_changes_the_code_fingerprint(tmp_path,
                                                                              monkeypatch):
    import importlib

    from harness.measure.fingerprint import code_fingerprint
    pkg = tmp_path / "fakert"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "measure.py").write_text("def measure(art, profile, settings):\n    return []\n")
    (pkg / "_common.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = importlib.import_module("fakert.measure").measure
    before = code_fingerprint(fn)
    assert code_fingerprint(fn) == before
    (pkg / "_common.py").write_text("X = 2\n")
    assert code_fingerprint(fn) != before
