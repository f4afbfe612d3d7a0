"""scripts/tuning_study.py (issue 31's study): the paired gain per seed, the rankings and the
halving verdict come from the three runs' records, on run folders written here by hand."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_module import load_script

STRATS = ("scratch", "frozen", "finetune")


def _module():
    return load_script("tuning_study")


def _rec(strategy, seed, acc, status="ok", **extra):
    rec = {"key": f"{strategy}-{seed}", "status": status, "metric_name": "accuracy",
           "higher_is_better": True, "config": {"strategy": strategy, "seed": seed},
           "started": 100.0 + seed, "finished": 110.0 + seed, "train_seconds": 4.0,
           "history": {"epochs": [{}] * 4}, "curve_summary": {"best": acc}}
    if status == "ok":
        rec["test_metrics"] = {"accuracy": acc}
    rec.update(extra)
    return rec


def _run(root: Path, name: str, recs: list, **matrix) -> Path:
    run = root / name
    (run / "cells").mkdir(parents=True)
    m = {"name": name, "backbones": ["b"], "datasets": ["d"], "tasks": ["classification"],
         "strategies": list(STRATS), "seeds": 2, "image_size": 32, "train": {"epochs": 4},
         **matrix}
    (run / "config.json").write_text(json.dumps({"matrix": m,
                                                 "cell_keys": [r["key"] for r in recs]}))
    (run / "environment.json").write_text(json.dumps({"cpu": "X", "affinity": 1}))
    for r in recs:
        (run / "cells" / f"{r['key']}.json").write_text(json.dumps(r))
    return run


# default accuracy per (strategy, seed); tuned adds a known gain; halving stops finetune
DEFAULT = {("scratch", 0): 0.10, ("scratch", 1): 0.12, ("frozen", 0): 0.60,
           ("frozen", 1): 0.70, ("finetune", 0): 0.20, ("finetune", 1): 0.30}
GAIN = {"scratch": 0.05, "frozen": 0.0, "finetune": 0.60}


@pytest.fixture
def runs(tmp_path):
    d = [_rec(s, k, DEFAULT[s, k]) for s in STRATS for k in (0, 1)]
    t = [_rec(s, k, DEFAULT[s, k] + GAIN[s] + 0.01 * k,
              tuning={"trials": [{"params": {"lr": 0.01}, "state": "complete", "value": 0.5,
                                  "cost": {"epochs": 4, "seconds": 2.0}}],
                      "best": {"params": {"lr": 0.01}, "value": 0.5},
                      "counts": {"complete": 1, "pruned": 0, "failed": 0}})
         for s in STRATS for k in (0, 1)]
    h = [_rec(s, k, DEFAULT[s, k]) if s != "finetune" else
         _rec(s, k, None, status="stopped (halving)", train_seconds=None,
              timers={"train_s": 1.0},
              history={"epochs": [{}]}, halving={"stopped_after_epochs": 1, "curve": [0.2]})
         for s in STRATS for k in (0, 1)]
    return (_run(tmp_path, "default", d), _run(tmp_path, "tuned", t, tune={"trials": 1}),
            _run(tmp_path, "halving", h))


def test_paired_gain_ranking_and_halving_verdict(runs):
    mod = _module()
    res = mod.study(dict(zip(("default", "tuned", "halving"), runs)))
    dvt = res["default_vs_tuned"]
    for s in STRATS:
        for k in (0, 1):
            assert dvt[s]["gain"][k] == pytest.approx(GAIN[s] + 0.01 * k)
    assert res["ranking"]["default"] == ["frozen", "finetune", "scratch"]
    assert res["ranking"]["tuned"] == ["finetune", "frozen", "scratch"]
    assert res["ranking_per_seed"]["default"][0] == ["frozen", "finetune", "scratch"]
    # frozen is the full run's best in both seeds and halving let it finish
    for k in (0, 1):
        assert res["halving"]["halving"][k]["full_best"] == ["frozen"]
        assert res["halving"]["halving"][k]["full_best_finished"] is True
        stopped = [c["strategy"] for c in res["halving"]["halving"][k]["cells"]
                   if c["status"] == "stopped (halving)"]
        assert stopped == ["finetune"]
    t = res["times"]
    assert t["default"]["train_s"] == 24.0 and t["halving"]["train_s"] == 18.0
    assert t["halving"]["epochs"] == 4 * 4 + 2
    text = mod.markdown(res)
    assert "finetune > frozen > scratch" in text and "train s 18.0 / 24.0 = 0.75" in text


def test_a_stopped_best_cell_is_reported(runs, tmp_path):
    mod = _module()
    d, t, _ = runs
    h = [_rec(s, k, DEFAULT[s, k]) if s != "frozen" else
         _rec(s, k, None, status="stopped (halving)", halving={"stopped_after_epochs": 1,
                                                               "curve": [0.3]})
         for s in STRATS for k in (0, 1)]
    res = mod.study({"default": d, "tuned": t, "halving": _run(tmp_path, "h2", h)})
    assert res["halving"]["halving"][0]["full_best_finished"] is False
    assert "| NO (frozen)" in mod.markdown(res)


def test_runs_of_different_matrices_are_refused(runs, tmp_path):
    mod = _module()
    d, t, h = runs
    other = _run(tmp_path, "other", [_rec(s, k, 0.5) for s in STRATS for k in (0, 1)],
                 train={"epochs": 10})
    with pytest.raises(ValueError, match="differ in train"):
        mod.study({"default": d, "tuned": t, "halving": other})
    assert mod.main([str(d), str(t), str(other)]) == 2
    # the same strategies in another order are the same matrix (halving's order matters)
    rev = _run(tmp_path, "rev", [_rec(s, k, 0.5) for s in reversed(STRATS) for k in (0, 1)],
               strategies=list(reversed(STRATS)))
    res = mod.study({"default": d, "tuned": t, "halving": h, "halving-2": rev})
    assert [c["strategy"] for c in res["halving"]["halving-2"][0]["cells"]] == list(
        reversed(STRATS))
    assert "Halving run `halving-2` (rev)" in mod.markdown(res)
