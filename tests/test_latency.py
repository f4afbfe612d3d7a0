"""The measurement rule (warm-up, minimum count and duration), the statistics, peak memory."""
from __future__ import annotations

import time

import numpy as np
import pytest

from harness.measure.latency import (MeasureSettings, PeakMemory, measure, summarize,
                                     timed_calls, wrap_calls)


def test_min_count_and_min_duration_are_both_met():
    s = MeasureSettings(warmup_count=3, warmup_s=0.0, min_count=5, min_s=0.05)
    stats = measure(lambda: time.sleep(0.001), 1, s)
    assert stats["count"] >= 5 and stats["measured_s"] >= 0.05   # duration drove it
    stats = measure(lambda: None, 1, MeasureSettings(warmup_count=0, warmup_s=0, min_count=40,
                                                     min_s=0))
    assert stats["count"] == 40 and len(stats["raw_ms"]) == 40   # count drove it


def test_warmup_by_count_and_by_time(monkeypatch):
    """On a clock that only the calls move (each takes exactly 1/1024 s), warm-up stops at the
    first call after both 7 calls and 32/1024 s: nothing here depends on how long a sleep took."""
    import types
    import harness.measure.latency as lat
    now = [0.0]
    monkeypatch.setattr(lat, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def call():
        now[0] += 2 ** -10
    s = MeasureSettings(warmup_count=7, warmup_s=32 * 2 ** -10, min_count=3, min_s=0)
    stats = measure(call, 1, s)
    assert stats["warmup_calls"] == 32 and stats["count"] == 3   # the time drove the warm-up
    s = MeasureSettings(warmup_count=40, warmup_s=32 * 2 ** -10, min_count=3, min_s=0)
    assert measure(call, 1, s)["warmup_calls"] == 40              # the count drove it
    assert now[0] == (32 + 3 + 40 + 3) * 2 ** -10


def test_max_s_stops_a_slow_model_and_says_truncated():
    s = MeasureSettings(warmup_count=0, warmup_s=0, min_count=1000, min_s=0, max_s=0.05)
    stats = measure(lambda: time.sleep(0.01), 1, s)
    assert stats["truncated"] is True and stats["count"] < 1000


def test_statistics_match_numpy():
    rng = np.random.default_rng(0)
    times = list(rng.gamma(2.0, 0.002, 200))
    st = summarize(times, batch_size=8)
    ms = np.array(times) * 1000
    for q in (50, 90, 95, 99):
        assert st[f"p{q}_ms"] == pytest.approx(np.percentile(ms, q))
    assert st["mean_ms"] == pytest.approx(ms.mean())
    assert st["std_ms"] == pytest.approx(ms.std(ddof=1))
    assert st["cv"] == pytest.approx(ms.std(ddof=1) / ms.mean())
    assert st["iqr_ms"] == pytest.approx(np.percentile(ms, 75) - np.percentile(ms, 25))
    assert st["throughput_per_s"] == pytest.approx(8 * 1000 / np.percentile(ms, 50))


def test_peak_memory_sees_an_allocation_inside_the_block_only():
    big = np.ones(40_000_000)      # 320 MB before the block must not count
    del big
    with PeakMemory() as mem:
        a = np.ones(8_000_000)     # 64 MB inside
        a[::512] = 2
        del a
    d = mem.as_dict()
    assert 55 <= d["delta_mb"] < 250, d
    assert d["method"] and d["peak_rss_mb"] >= d["baseline_rss_mb"]


@pytest.mark.parametrize("bad", [{"min_count": 0}, {"max_s": 0}, {"warmup_s": -1},
                                 {"worker_timeout_s": 0}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        MeasureSettings(**bad)


def test_timed_calls_records_the_timed_function_and_wrap_calls_wraps_it():
    quick = MeasureSettings(warmup_count=1, warmup_s=0.0, min_count=3, min_s=0.0)
    with timed_calls() as seen, wrap_calls(lambda fn: (lambda: ("wrapped", fn()))):
        stats = measure(lambda: 7, 1, quick)
    (tc,) = seen
    assert tc.stats is stats and tc.output == ("wrapped", 7) and tc.fn() == ("wrapped", 7)
    with timed_calls() as outside:
        pass
    measure(lambda: 7, 1, quick)  # outside both blocks: nothing recorded, nothing wrapped
    assert outside == []
