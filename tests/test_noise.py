"""Noisy latency is flagged, re-measured a bounded number of times, and reported as such
(issue 25). Every timing here is fake and deterministic: no test times anything real."""
from __future__ import annotations

import itertools

import pytest

from harness.measure.latency import MeasureSettings, measure, stability
from harness.report.recommend import format_recommendations, recommend
from harness.report.report_mlflow import cell_metrics
from harness.report.table import summary_table, table_notes

S = MeasureSettings(warmup_count=2, warmup_s=0.0, min_count=20, min_s=0.0)
QUIET = [0.2, 0.2, 0.1]  # load averages of an idle 2-core machine


class FakeClock:
    """A clock that only moves when the fake inference runs: each call takes the next
    duration (seconds) of ``durations``, cycled."""

    def __init__(self, durations):
        self.t, self.next = 0.0, itertools.cycle(durations).__next__

    def __call__(self):
        return self.t

    def call(self):
        self.t += self.next()


def run(durations, probes=(1.0,), loads=(QUIET,), settings=S):
    clock = FakeClock(durations)
    probe, load = itertools.cycle(probes).__next__, itertools.cycle(loads).__next__
    return measure(clock.call, 1, settings, clock=clock, probe=probe, load=load)


def test_steady_timings_are_stable_and_measured_once():
    st = run([0.010])
    noise = st["noise"]
    assert not noise["noisy"] and noise["reasons"] == [] and noise["attempts"] == 1
    assert noise["iqr_rel"] == pytest.approx(0.0) and noise["p90_p50"] == pytest.approx(1.0)
    assert noise["probe_ms"] == [1.0, 1.0] and noise["probe_drift"] == 1.0
    assert noise["load_before"] == QUIET and noise["load_after"] == QUIET
    assert len(st["attempts"]) == 1 and st["attempts"][0]["kept"]
    assert st["count"] == 20 and st["p50_ms"] == pytest.approx(10.0)  # MLPerf's rule holds


def test_bimodal_timings_are_retried_then_marked_noisy_with_reasons():
    """The issue's case: p50/p90 = 172.7/420.2 ms, CV 0.60. Every attempt is as bad, so
    after 1 + noisy_retries attempts the figure is kept and marked noisy."""
    st = run([0.17, 0.17, 0.17, 0.42, 0.42])
    noise = st["noise"]
    assert noise["noisy"] and noise["attempts"] == 1 + S.noisy_retries == len(st["attempts"])
    assert any("IQR is" in r for r in noise["reasons"])
    assert any("p90 is 2.47x p50" in r for r in noise["reasons"])
    assert sum(a["kept"] for a in st["attempts"]) == 1


def test_a_burst_is_re_measured_and_the_stable_attempt_kept():
    """The first attempt meets a burst (every 3rd call 5x slower), the next is quiet."""
    clock = FakeClock([0.01])
    slow = iter([0.05, 0.01, 0.01] * 8)  # 24 durations: the first attempt's 2 + 20 calls

    def call():
        clock.t += next(slow, 0.01)

    st = measure(call, 1, S, clock=clock, probe=lambda: 1.0, load=lambda: QUIET)
    assert [a["noisy"] for a in st["attempts"]] == [True, False]
    assert st["attempts"][1]["kept"] and not st["noise"]["noisy"]
    assert st["noise"]["attempts"] == 2 and st["p50_ms"] == pytest.approx(10.0)


def test_probe_drift_marks_a_measurement_noisy():
    st = run([0.010], probes=(1.0, 2.0))  # the machine got 2x slower during the calls
    assert st["noise"]["noisy"] and st["noise"]["probe_drift"] == pytest.approx(2.0)
    assert "probe drifted 2.00x" in st["noise"]["reasons"][0]


def test_a_busy_machine_is_noisy_but_not_retried():
    """A 1-minute load average does not change within a retry: marked, measured once."""
    busy = [15.3, 14.3, 9.2]  # seen on this 2-core machine during the session
    st = run([0.010], loads=(busy,))
    assert st["noise"]["noisy"] and st["noise"]["attempts"] == 1
    assert "load average 15.3" in st["noise"]["reasons"][0]


def test_retries_are_bounded_by_the_setting():
    st = run([0.1, 0.5], settings=MeasureSettings(warmup_count=0, warmup_s=0.0, min_count=10,
                                                  min_s=0.0, noisy_retries=0))
    assert st["noise"]["noisy"] and st["noise"]["attempts"] == 1


@pytest.mark.parametrize("bad", [{"max_iqr_rel": 0}, {"max_probe_drift": 1.0},
                                 {"max_p90_p50": 0.9}, {"noisy_retries": -1}])
def test_bad_criterion_settings_are_refused(bad):
    with pytest.raises(ValueError):
        MeasureSettings(**bad)


def test_stability_is_a_pure_function_of_the_figures():
    stats = {"p50_ms": 10.0, "p90_ms": 11.0, "iqr_ms": 0.5}
    ok = stability(stats, 1.0, 1.2, QUIET, QUIET, 2, S)
    assert not ok["noisy"] and ok["criterion"]["max_iqr_rel"] == 0.10
    assert stability(stats, None, None, None, None, 2, S)["noisy"] is False  # no OS figures


# -- reports ----------------------------------------------------------------------------------
def _rec(name, acc, p50, noisy, seed=0):
    noise = {"noisy": noisy, "attempts": 3 if noisy else 1, "iqr_rel": 0.6 if noisy else 0.02,
             "reasons": ["IQR is 60% of p50 (stable: <= 10%)"] if noisy else [],
             "criterion": {"max_iqr_rel": 0.1, "max_p90_p50": 1.5, "max_probe_drift": 1.5,
                           "max_load_per_cpu": 2.0}}
    return {"key": f"{name}-{seed}", "status": "ok", "metric_name": "accuracy",
            "higher_is_better": True, "test_metrics": {"accuracy": acc},
            "config": {"backbone": name, "strategy": "frozen", "dataset": "d",
                       "task": "classification", "seed": seed, "weights": None,
                       "image_size": 64},
            "backbone_facts": {"device_class": "mobile"},
            "latency": [{"runtime": "pytorch", "profile": "mobile", "precision": "fp32",
                         "stats": {"p50_ms": p50, "p90_ms": p50 * 2.4, "noise": noise}}]}


def test_table_and_legend_mark_noisy_figures():
    recs = [_rec("a", 0.8, 172.7, True), _rec("b", 0.7, 5.0, False)]
    text = summary_table(recs)
    assert "~172.70 / 414.48" in text and "~5.00" not in text and " 5.00 / 12.00" in text
    (legend,) = [n for n in table_notes(recs) if n.startswith("~ = noisy")]
    assert "1 of 2 figures" in legend and "IQR <= 10% of p50" in legend
    assert "up to 3 measurements" in legend and "Seen: IQR up to 60% of p50." in legend


def test_a_noisy_pick_is_called_unreliable_in_words():
    (r,) = recommend([_rec("a", 0.8, 172.7, True), _rec("b", 0.7, 5.0, False)])
    assert r.pick.backbone == "a" and "unreliable: its latency was noisy" in r.verdict
    text = format_recommendations([r])
    assert "~173" in text and "~ = noisy latency" in text


def test_a_clean_pick_names_noisy_latencies_on_its_front():
    (r,) = recommend([_rec("a", 0.8, 5.0, False), _rec("b", 0.7, 1.0, True)])
    assert r.pick.backbone == "a" and "unreliable" not in r.verdict
    assert "1 of the 2 Pareto-front latencies were noisy" in r.verdict


def test_records_without_a_noise_figure_are_shown_unmarked():
    rec = _rec("a", 0.8, 5.0, False)
    del rec["latency"][0]["stats"]["noise"]
    assert "~" not in summary_table([rec])
    (r,) = recommend([rec])
    assert "noisy" not in r.verdict


def test_mlflow_logs_the_noise_flag():
    m = {k: v for k, v, _ in cell_metrics(_rec("a", 0.8, 5.0, True))}
    assert m["latency_noisy/pytorch/mobile/fp32"] == 1.0
    assert m["latency_iqr_rel/pytorch/mobile/fp32"] == pytest.approx(0.6)


def test_environment_json_records_load_averages(tmp_path, monkeypatch):
    import os
    from harness.measure.env import environment
    from harness.run.results import RunStore
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 2.0, 1.0))
    env = environment()
    assert env["load_average"]["at_start"] == [3.5, 2.0, 1.0]
    assert env["load_average"]["usable_cpus"] >= 1
    store = RunStore(tmp_path)
    store.write_meta({}, env)
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 4.0, 2.0))
    store.note_load_at_end()
    saved = store.environment()["load_average"]
    assert saved["at_start"] == [3.5, 2.0, 1.0] and saved["at_end"] == [7.0, 4.0, 2.0]


def test_several_durations_get_their_own_noise_and_the_judged_one_decides():
    """A GPU step times its end-to-end latency and a microsecond copy: the copy's spread
    is recorded but only the latency decides re-measuring (harness.measure.gpu)."""
    from harness.measure.latency import measure_many
    clock, copies = FakeClock([0.010]), itertools.cycle([1e-6, 5e-6])

    def step():
        clock.call()
        return {"latency": 0.010, "copy": next(copies)}

    res = measure_many(step, 1, S, clock=clock, probe=lambda: 1.0, load=lambda: QUIET,
                       judge=("latency",))
    assert not res["latency"]["noise"]["noisy"] and res["copy"]["noise"]["noisy"]
    assert res["latency"]["noise"]["attempts"] == 1
    res = measure_many(step, 1, S, clock=clock, probe=lambda: 1.0, load=lambda: QUIET)
    assert res["latency"]["noise"]["attempts"] == 1 + S.noisy_retries  # all names judged


def test_csv_rows_carry_the_noise_flag_and_reasons():
    from harness.run.results import cell_rows
    (row,) = cell_rows(_rec("a", 0.8, 5.0, True))
    assert row["latency_noisy"] is True and row["latency_noise"].startswith("IQR is 60%")
    (row,) = cell_rows(_rec("a", 0.8, 5.0, False))
    assert row["latency_noisy"] is False and row["latency_noise"] is None


def test_the_html_plot_marks_noisy_points():
    from harness.report.report_html import pareto_spec
    spec = pareto_spec([_rec("a", 0.8, 172.7, True), _rec("b", 0.7, 5.0, False)], "mobile", None)
    (marks,) = [ly for ly in spec["layer"] if ly["mark"].get("type") == "text"]
    assert marks["mark"]["text"] == "~" and [p["backbone"] for p in marks["data"]["values"]] == ["a"]
    assert "~: noisy latency" in spec["title"]["subtitle"]
    points = [ly for ly in spec["layer"] if ly["mark"].get("size") == 90][0]["data"]["values"]
    assert {p["backbone"]: p["latency_note"].split(":")[0] for p in points} == {
        "a": "noisy", "b": "stable"}


def test_the_real_probe_runs_single_threaded_numpy_and_reports_milliseconds():
    from harness.measure.latency import probe_ms
    assert probe_ms(reps=3, inner=2, size=1024) > 0  # a duration; its value is not asserted
