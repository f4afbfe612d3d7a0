"""The recommendation (budget, device class, Pareto front) and the statistics over seeds."""
from __future__ import annotations

import math

import pytest

from harness.report.recommend import format_recommendations, pareto_front, recommend
from harness.report.stats import mean_ci, paired_t
from harness.report.table import repeat_rows, summary_rows


def rec(backbone, strategy, acc, lat, dclass="server", seed=0, profile="mobile",
        runtime="onnxruntime", extra_lat=()):
    """A finished cell record with one latency measurement (p50 = lat ms)."""
    lats = [{"runtime": runtime, "profile": profile, "precision": "fp32",
             "stats": {"p50_ms": lat, "p90_ms": lat * 1.2}}, *extra_lat]
    return {"key": f"{backbone}-{strategy}-{seed}", "status": "ok",
            "config": {"backbone": backbone, "strategy": strategy, "dataset": "d",
                       "task": "classification", "seed": seed, "weights": None,
                       "image_size": 16},
            "backbone_facts": {"device_class": dclass}, "metric_name": "accuracy",
            "higher_is_better": True, "test_metrics": {"accuracy": acc}, "latency": lats}


RECORDS = [
    rec("small", "frozen", 0.70, 1.0, "mobile"),
    rec("small", "finetune", 0.80, 1.1, "mobile"),
    rec("big", "frozen", 0.85, 5.0),
    rec("big", "finetune", 0.95, 20.0),
    rec("mid", "finetune", 0.83, 8.0),  # slower and less accurate than big/frozen
]


def _pick(recs, profile, dclass):
    (r,) = [r for r in recs if r.profile == profile and r.device_class == dclass]
    return r


@pytest.mark.parametrize("budget, server_pick", [
    (None, ("big", "finetune")), (20.0, ("big", "finetune")), (19.9, ("big", "frozen")),
    (5.0, ("big", "frozen")), (4.9, None)])
def test_recommendation_changes_with_budget(budget, server_pick):
    recs = recommend(RECORDS, budget)
    r = _pick(recs, "mobile", "server")
    got = (r.pick.backbone, r.pick.strategy) if r.pick else None
    assert got == server_pick
    if r.pick is None:
        assert "no server-class candidate is within 4.9 ms" in r.reason
        assert "fastest takes 5 ms" in r.reason
    else:
        assert r.pick.latency_ms <= (budget or math.inf)
        assert r.pick in r.front  # the front justifies the pick


def test_mobile_and_server_classes_are_separate():
    recs = recommend(RECORDS)
    assert (_pick(recs, "mobile", "mobile").pick.backbone,
            _pick(recs, "mobile", "server").pick.backbone) == ("small", "big")
    assert recommend(RECORDS, 1.05)[0].pick.strategy == "frozen"


def test_pareto_front_drops_dominated_points():
    from harness.report.recommend import candidates
    front = pareto_front([c for c in candidates(RECORDS) if c.device_class == "server"])
    assert [(c.backbone, c.strategy) for c in front] == [("big", "frozen"), ("big", "finetune")]


def test_recommendation_agrees_with_the_table():
    """The pick is the row of the per-cell table with the best test metric among the rows
    whose latency is within the budget."""
    headers, rows = summary_rows(RECORDS)
    test_col = headers.index("test")
    lat_col = next(i for i, h in enumerate(headers) if "p50/p90" in h)
    for budget in (None, 6.0, 1.05):
        for dclass in ("mobile", "server"):
            ok = [r for r in rows if r[1] == dclass
                  and (budget is None or float(r[lat_col].split(" / ")[0]) <= budget)]
            pick = _pick(recommend(RECORDS, budget), "mobile", dclass).pick
            if not ok:
                assert pick is None
                continue
            best = max(ok, key=lambda r: float(r[test_col]))
            assert (best[0], best[3]) == (pick.backbone, pick.strategy)
            assert f"{pick.metric:.3f}" == best[test_col]


def test_lower_precision_uses_accuracy_after_and_is_its_own_candidate():
    int8 = {"runtime": "onnxruntime", "profile": "mobile", "precision": "int8",
            "accuracy_after": 0.60, "stats": {"p50_ms": 0.5}}
    recs = [rec("small", "finetune", 0.80, 1.1, "mobile", extra_lat=[int8])]
    assert recommend(recs, 0.6)[0].pick.precision == "int8"
    assert recommend(recs, 0.6)[0].pick.metric == pytest.approx(0.60)
    assert recommend(recs)[0].pick.precision == "fp32"


def test_seeds_are_averaged_and_the_text_names_budget():
    recs = [rec("big", "frozen", a, l, seed=s) for s, (a, l) in enumerate([(0.8, 4.0),
                                                                            (0.9, 6.0),
                                                                            (0.7, 5.0)])]
    (r,) = recommend(recs)
    assert r.pick.metric == pytest.approx(0.8) and r.pick.latency_ms == 5.0 and r.pick.n == 3
    text = format_recommendations(recommend(recs, 7))
    assert "7 ms" in text and "big + frozen" in text and "(n=3)" in text


def test_bad_budget_is_refused():
    with pytest.raises(ValueError, match="budget"):
        recommend(RECORDS, 0)


def test_t_interval_matches_textbook():
    iv = mean_ci([1.0, 2.0, 3.0])
    # sd 1, n 3, t(0.975, 2) = 4.3027
    assert iv.mean == 2.0 and iv.half == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert mean_ci([0.5]).half is None and mean_ci([]) is None


def test_paired_t_matches_scipy():
    from scipy.stats import ttest_rel
    a, b = [0.9, 0.8, 0.85, 0.7], [0.7, 0.75, 0.8, 0.72]
    assert paired_t(a, b).p == pytest.approx(ttest_rel(a, b).pvalue)
    assert not paired_t([0.5], [0.4]).testable
    with pytest.raises(ValueError, match="equal lengths"):
        paired_t([1, 2], [1])


def test_repeat_table_marks_non_significant_differences():
    seeds = range(3)
    recs = ([rec("b", "finetune", a, 1.0, seed=s) for s, a in zip(seeds, (0.90, 0.91, 0.92))]
            + [rec("b", "frozen", a, 1.0, seed=s) for s, a in zip(seeds, (0.50, 0.52, 0.51))]
            + [rec("b", "scratch", a, 1.0, seed=s) for s, a in zip(seeds, (0.95, 0.80, 0.93))])
    headers, rows = repeat_rows(recs)
    by = {r[1]: r for r in rows}
    assert by["finetune"][-1] == "best"
    assert "±" in by["finetune"][5] and by["finetune"][4] == "3"
    assert "n.s." not in by["frozen"][-1] and "p=" in by["frozen"][-1]
    assert by["scratch"][-1].endswith("n.s.")


def test_every_runtime_competes_openvino_and_executorch_included():
    """Each (runtime, precision) measured is its own candidate: a faster OpenVINO int8 or
    ExecuTorch row wins a tight budget with its own accuracy after conversion."""
    lat = [{"runtime": "openvino", "profile": "mobile", "precision": "int8",
            "accuracy_after": 0.78, "stats": {"p50_ms": 0.4}},
           {"runtime": "executorch", "profile": "mobile", "precision": "fp32",
            "stats": {"p50_ms": 0.7}},
           {"runtime": "executorch", "profile": "mobile", "precision": "int8",
            "error": "RuntimeError: lowering failed"}]  # failed rows are no candidates
    recs = [rec("small", "finetune", 0.80, 1.1, "mobile", extra_lat=lat)]
    (r,) = recommend(recs, 0.5)
    assert (r.pick.runtime, r.pick.precision, r.pick.metric) == ("openvino", "int8", 0.78)
    (r,) = recommend(recs, 0.9)
    assert (r.pick.runtime, r.pick.precision, r.pick.metric) == ("executorch", "fp32", 0.80)
    assert {(c.runtime, c.precision) for c in r.front} == {("openvino", "int8"),
                                                          ("executorch", "fp32")}


# -- uncertainty: the tie rule ----------------------------------------------------------------
def _seeds(backbone, strategy, accs, lat, flops=None):
    out = []
    for seed, acc in enumerate(accs):
        r = rec(backbone, strategy, acc, lat, "server", seed=seed)
        if flops is not None:
            r["budget"] = {"train_flops": flops}
        out.append(r)
    return out


def test_overlapping_intervals_are_a_tie_and_the_faster_wins():
    """Means 0.82 vs 0.80 with spreads that make the 95% intervals overlap: the data cannot
    rank them, so the faster one is picked and the verdict says tie (p = ...)."""
    recs = (_seeds("big", "finetune", [0.78, 0.86, 0.82], 20.0)
            + _seeds("big", "frozen", [0.77, 0.83, 0.80], 5.0))
    (r,) = recommend(recs)
    assert (r.pick.strategy, r.pick.n) == ("frozen", 3)
    p = paired_t([0.77, 0.83, 0.80], [0.78, 0.86, 0.82]).p
    assert r.verdict.startswith(f"tie (p = {p:.2g}) with big + finetune (onnxruntime) 0.820")
    assert "picked the faster" in r.verdict
    assert [c.strategy for c in r.ties] == ["finetune"]
    assert "tie (p = " in format_recommendations([r])


def test_tie_at_equal_latency_goes_to_the_cheaper_to_train():
    recs = (_seeds("big", "finetune", [0.78, 0.86, 0.82], 5.0, flops=9e12)
            + _seeds("big", "chain_thaw", [0.79, 0.87, 0.83], 5.0, flops=3e13))
    (r,) = recommend(recs)
    assert r.pick.strategy == "finetune" and "cheaper to train" in r.verdict


def test_a_tie_at_one_shared_latency_does_not_call_the_pick_faster():
    """Strategies of one architecture share a latency measurement: when the pick is as fast
    as a more accurate tied candidate, the verdict says it was cheaper to train, not faster
    (the default run's 3-seed server pick read 'picked the faster' at the same 1.18 ms)."""
    recs = (_seeds("big", "scratch", [0.79, 0.76, 0.78], 5.0, flops=8e12)
            + _seeds("big", "finetune", [0.80, 0.70, 0.72], 5.0, flops=5e12)
            + _seeds("big", "frozen", [0.55, 0.54, 0.56], 5.0, flops=1e10)
            + _seeds("other", "finetune", [0.79, 0.77, 0.78], 9.0, flops=5e12))
    (r,) = recommend(recs)
    assert r.pick.strategy == "finetune" and r.pick.latency_ms == 5.0
    assert "picked the cheaper to train among the 2 equally fast" in r.verdict
    assert "picked the faster" not in r.verdict


def test_separated_intervals_keep_the_most_accurate():
    recs = (_seeds("big", "finetune", [0.90, 0.91, 0.92], 20.0)
            + _seeds("big", "frozen", [0.70, 0.71, 0.72], 5.0))
    (r,) = recommend(recs)
    assert r.pick.strategy == "finetune" and r.verdict.startswith("clear")


def test_one_seed_pick_says_uncertain_in_words():
    (r,) = [x for x in recommend(RECORDS) if x.device_class == "server"]
    assert r.verdict.startswith("uncertain: one seed") and "--seeds 3" in r.verdict
    text = format_recommendations([r])
    assert "(1 seed)" in text and "Uncertain: a pick from one seed has no interval" in text


def test_three_seeds_state_their_interval_and_drop_the_uncertain_line():
    recs = _seeds("big", "finetune", [0.90, 0.91, 0.92], 20.0)
    (r,) = recommend(recs)
    assert not r.verdict.startswith("uncertain")
    text = format_recommendations([r])
    assert "0.910 ± 0.025 (n=3)" in text and "Uncertain" not in text
