"""Accuracies compared anywhere are scored on the same test images (issue 25).

A lower precision's accuracy after conversion is compared with the cell's fp32 test metric
(table, recommendation, Pareto front, HTML, MLflow): both must come from every test image.
Records from before (the first 512 images only) are shown with their subset and never
compared.

This module is also a plugin (a dataset with more than 512 test images and two fake
runtimes): the worker processes import it by name.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

from harness import DatasetSpec, RuntimeSpec, hookimpl
from harness.report.recommend import candidates, format_recommendations, recommend
from harness.report.report_mlflow import cell_metrics
from harness.report.scoring import row_metric, scored_on_subset, subset_notes
from harness.report.table import summary_table
from harness.testkit import make_tiny_splits

N_TEST = 600  # more than the 512 images the quantised runtimes used to be scored on


def load_many_tests(task, image_size, seed, cache_dir):
    from harness.train.data import DataSplits
    small, big = make_tiny_splits(image_size, 96, seed), make_tiny_splits(image_size, N_TEST,
                                                                         seed + 7)
    return DataSplits(small.train, small.val, big.train, small.info)


def _outputs(art, n):
    """The fp32 PyTorch model's own logits on the first ``n`` test images: a "lower
    precision" that changes nothing, so its accuracy after must equal the fp32 metric."""
    import torch
    from harness.measure.latency import measure
    from plugins.runtimes._common import as_float_images, batched_outputs, inputs
    x = torch.from_numpy(inputs(art, _Prof))
    with torch.inference_mode():
        stats = measure(lambda: art.model(x), 1, _FAST)
        out = batched_outputs(lambda c: art.model(torch.from_numpy(c)).numpy(),
                              as_float_images(art.test_images)[:n], 64)
    return [{"precision": "int8", "stats": stats, "test_outputs": out}]


class _Prof:
    batch_size = 1


def same_measure(art, profile, settings):
    return _outputs(art, len(art.test_images))


def short_measure(art, profile, settings):
    return _outputs(art, 512)


@hookimpl
def register_backbones():
    from harness.testkit import tiny_backbone_spec
    return [tiny_backbone_spec()]


@hookimpl
def register_datasets():
    return [DatasetSpec("manytests", load=load_many_tests, synthetic=True)]


@hookimpl
def register_runtimes():
    return [RuntimeSpec("same-rt", available=lambda: (True, ""), measure=same_measure),
            RuntimeSpec("short-rt", available=lambda: (True, ""), measure=short_measure)]


def _fast():
    from harness.measure.latency import MeasureSettings
    return MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=3, min_s=0.0)


_FAST = _fast()


@pytest.mark.slow  # trains a tiny model for one epoch and starts two worker processes
def test_accuracy_after_conversion_is_scored_on_every_test_image(register_plugin):
    from harness.run.cell import run_cell
    from harness.run.config import MatrixConfig, matrix_kwargs
    plugins = register_plugin(sys.modules[__name__], name="test-same-images")
    m = MatrixConfig(**matrix_kwargs({
        "backbones": ["testkit_tiny"],
        "datasets": ["manytests"], "strategies": ["scratch"],
        "runtimes": ["same-rt", "short-rt"], "profiles": ["mobile"], "image_size": 16,
        "train": {"epochs": 1, "batch_size": 32},
        "latency": {"warmup_count": 1, "warmup_s": 0.0, "min_count": 3, "min_s": 0.0}}))
    rec = run_cell(plugins, m.cells()[0], "k", custom_profiles=m.custom_profiles)
    assert rec["status"] == "ok", rec.get("traceback") or rec.get("error")
    rows = {r["runtime"]: r for r in rec["latency"]}
    same = rows["same-rt"]
    assert rec["data"]["sizes"]["test"] == N_TEST == same["evaluated_on"]
    # the same model on the same images: the accuracy after equals the fp32 test metric
    assert same["accuracy_after"] == pytest.approx(rec["test_metrics"]["accuracy"], abs=1e-9)
    # every measured row carries its noise figure (tests/test_noise.py has the criterion)
    noise = same["stats"]["noise"]
    assert {"iqr_rel", "p90_p50", "probe_ms", "probe_drift", "load_before", "load_after",
            "noisy", "reasons", "attempts"} <= set(noise)
    assert 1 <= noise["attempts"] <= 3 and len(same["stats"]["attempts"]) == noise["attempts"]
    # a runtime scoring fewer images is an error, never a number compared with fp32
    short = rows["short-rt"]
    assert "stats" not in short and "accuracy_after" not in short
    assert "512" in short["error"] and str(N_TEST) in short["error"]


# -- reports: old records scored on a subset ---------------------------------------------------
def _rec(fp32_acc=0.825, int8_acc=0.834, evaluated_on=512, n_test=1000):
    lat = [{"runtime": "openvino", "profile": "mobile", "precision": "fp32",
            "stats": {"p50_ms": 1.0, "p90_ms": 1.2}},
           {"runtime": "openvino", "profile": "mobile", "precision": "int8",
            "stats": {"p50_ms": 0.5, "p90_ms": 0.6}, "accuracy_after": int8_acc,
            "evaluated_on": evaluated_on}]
    return {"key": "k", "status": "ok", "metric_name": "accuracy", "higher_is_better": True,
            "config": {"backbone": "mobilenetv2_100", "strategy": "frozen", "dataset": "d",
                       "task": "classification", "seed": 0, "weights": None,
                       "image_size": 64},
            "data": {"sizes": {"train": 10, "val": 10, "test": n_test}},
            "backbone_facts": {"device_class": "mobile"},
            "test_metrics": {"accuracy": fp32_acc}, "latency": lat}


def test_a_subset_scored_row_is_shown_with_its_size_and_never_compared():
    rec = _rec()
    int8 = rec["latency"][1]
    assert scored_on_subset(rec, int8) == (512, 1000) and row_metric(rec, int8) is None
    # the recommendation and its Pareto front: only the fp32 candidate competes
    assert [(c.runtime, c.precision) for c in candidates([rec])] == [("openvino", "fp32")]
    (r,) = recommend([rec])
    assert r.pick.precision == "fp32" and r.pick.metric == 0.825
    assert all(c.precision == "fp32" for c in r.front)
    # the table states the subset and its size beside the figure, and in a note
    text = summary_table([rec])
    assert "accuracy 0.834 on the first 512 of 1000 test images" in text
    assert any("first 512 of 1000 test images" in n for n in subset_notes([rec]))
    # MLflow: a key that says it was a subset, not the one compared with test_accuracy
    keys = {k for k, _, _ in cell_metrics(rec)}
    assert "test_accuracy_first512/openvino/mobile/int8" in keys
    assert "test_accuracy/openvino/mobile/int8" not in keys


def test_a_row_scored_on_every_test_image_competes_with_its_own_accuracy():
    rec = _rec(evaluated_on=1000)
    int8 = rec["latency"][1]
    assert scored_on_subset(rec, int8) is None and row_metric(rec, int8) == 0.834
    (r,) = recommend([rec])
    assert (r.pick.precision, r.pick.metric) == ("int8", 0.834)
    assert "subset" not in format_recommendations([r])
    assert "test_accuracy/openvino/mobile/int8" in {k for k, _, _ in cell_metrics(rec)}
    assert "first" not in summary_table([rec])


def test_a_lower_precision_without_its_own_accuracy_never_borrows_the_fp32_one():
    rec = _rec()
    del rec["latency"][1]["accuracy_after"]
    assert row_metric(rec, rec["latency"][1]) is None
    assert [c.precision for c in candidates([rec])] == ["fp32"]


def test_worker_images_are_read_a_writable_batch_at_a_time(tmp_path):
    from plugins.runtimes._common import batched_outputs, fixed_batch_outputs
    np.save(tmp_path / "t.npy", np.ones((7, 3, 2, 2), np.float32))
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")  # as a worker sees the test images

    def run(chunk):
        chunk += 1  # a runtime may write into its input (torch.from_numpy needs writable)
        return chunk.reshape(len(chunk), -1)[:, :1]

    assert batched_outputs(run, mapped, 3).ravel().tolist() == [2.0] * 7
    assert fixed_batch_outputs(run, mapped, 3).ravel().tolist() == [2.0] * 7
    assert float(mapped.sum()) == 7 * 12  # the file is untouched


def test_csv_rows_carry_the_images_each_metric_was_scored_on():
    from harness.run.results import ROW_FIELDS, cell_rows
    fp32, int8 = cell_rows(_rec())
    assert (int8["metric_after"], int8["evaluated_on"], int8["test_images"]) == (0.834, 512, 1000)
    assert fp32["metric_after"] is None and fp32["test_images"] == 1000
    assert {"metric_after", "evaluated_on", "test_images"} <= set(ROW_FIELDS)
