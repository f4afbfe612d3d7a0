"""The summary table: a (runtime, precision) that no cell measured becomes a note with its
reason rather than a column of identical "n/a" cells; a partly measured one keeps its column."""
from harness.report.table import summary_rows, summary_table


def _rec(strategy, latency):
    return {"config": {"backbone": "b", "strategy": strategy, "dataset": "d"},
            "metric_name": "accuracy", "test_metrics": {"accuracy": 0.5}, "status": "ok",
            "latency": latency}


def _lat(runtime, precision, p50=None, why=None):
    lat = {"runtime": runtime, "profile": "mobile", "precision": precision}
    if p50 is None:
        lat["unavailable"] = why
    else:
        lat["stats"] = {"p50_ms": p50, "p90_ms": p50 * 1.1}
    return lat


RECORDS = [
    _rec("scratch", [_lat("pytorch", "fp32", 5.0), _lat("pytorch", "int8", why="fp32 only"),
                     _lat("ort", "int8", 1.0)]),
    _rec("frozen", [_lat("pytorch", "fp32", 6.0), _lat("pytorch", "int8", why="fp32 only"),
                    _lat("ort", "int8", why="calibration failed: boom")]),
]


def test_never_measured_precision_is_a_note_with_its_reason():
    headers, rows = summary_rows(RECORDS)
    assert "pytorch int8 p50/p90 ms" not in headers
    assert "pytorch p50/p90 ms" in headers
    text = summary_table(RECORDS)
    assert "pytorch int8 (mobile profile): not measured: fp32 only" in text


def test_partly_measured_column_stays_with_the_reason_in_the_cell():
    headers, rows = summary_rows(RECORDS)
    col = headers.index("ort int8 p50/p90 ms")
    assert rows[0][col] == "1.00 / 1.10"
    assert rows[1][col] == "n/a: calibration failed: boom"
    assert "ort int8 (mobile profile)" not in summary_table(RECORDS)


def test_seed_column_only_when_the_run_has_repeats():
    assert "seed" not in summary_rows(RECORDS)[0]
    repeats = [dict(r, config=dict(r["config"], seed=i)) for i, r in enumerate(RECORDS)]
    headers, rows = summary_rows(repeats)
    col = headers.index("seed")
    assert [row[col] for row in rows] == [0, 1]


def test_training_flops_column_per_cell_and_what_it_counts():
    """Each cell's training FLOPs in a narrow column (SI suffix), "n/c" where part of the
    training was not counted, and a line under the table saying what is counted."""
    recs = [dict(_rec("finetune", []), budget={"unit": "flops", "train_flops": 5.26e10}),
            dict(_rec("frozen", []), budget={"unit": "flops", "train_flops": 8.7e8}),
            dict(_rec("offtheshelf", []), budget={"unit": "flops", "train_flops": None,
                                                  "flops_note": "solver"}),
            _rec("old", [])]
    headers, rows = summary_rows(recs)
    col = headers.index("train FLOPs")
    assert [r[col] for r in rows] == ["52.6G", "870M", "n/c", "-"]
    text = summary_table(recs)
    assert "train FLOPs: forward and backward of every training step" in text
    assert "flops (the same training FLOPs for every strategy" in text
