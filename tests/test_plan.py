"""The plan of a run (harness/run/plan.py): ``bench run --dry-run`` prints it and writes
nothing; a real run prints the same plan first and ends with its time and the next commands."""
from __future__ import annotations

import json

from click.testing import CliRunner

from harness.cli import cli
from harness.run.plan import format_seconds, measured_times

TINY = ["-b", "timm:test_resnet", "-d", "digits",
        "-s", "scratch", "-s", "frozen", "-r", "pytorch", "-p", "mobile",
        "--image-size", "16", "--epochs", "1"]


def test_dry_run_prints_the_plan_and_writes_nothing(plugin_system, tmp_path):
    out = tmp_path / "runs"
    res = CliRunner().invoke(cli, ["run", "--dry-run", "--out", str(out), *TINY,
                                   "-w", "timm:test_resnet=source:fashion_mnist,epochs=1"])
    assert res.exit_code == 0, res.output
    text = res.output
    assert "plan: 2 cell(s)" in text and "1 backbone x 2 strategies x 1 dataset x 1 task" in text
    # frozen starts from the user's source weights, pretrained here first; scratch from random
    assert ("weights timm:test_resnet: source:fashion_mnist,epochs=1 (user); pretrains here on "
            "fashion_mnist") in text
    assert "cells that do not transfer (scratch): random init" in text
    assert "pytorch: available" in text and "profile mobile (batch 1" in text
    assert "2 cell(s) never measured on this machine, so no estimate" in text
    assert not out.exists()


def test_dry_run_names_an_unavailable_runtime_and_usage_errors(plugin_system, tmp_path):
    res = CliRunner().invoke(cli, ["run", "--dry-run", "--out", str(tmp_path), *TINY,
                                   "-r", "tensorrt"])
    assert res.exit_code == 0, res.output
    ok, why = plugin_system.runtimes.get("tensorrt").available()
    line = next(ln for ln in res.output.splitlines() if ln.strip().startswith("tensorrt:"))
    assert ("available" in line) if ok else (why in line and "unavailable here" in line)
    bad = CliRunner().invoke(cli, ["run", "--dry-run", "-s", "nosuch"])
    assert bad.exit_code == 2 and "unknown strategy 'nosuch'" in bad.output


def _fake_record(folder, key, cfg, seconds, status="ok"):
    (folder / "cells").mkdir(parents=True, exist_ok=True)
    (folder / "cells" / f"{key}.json").write_text(json.dumps(
        {"key": key, "config": cfg, "status": status, "started": 100.0,
         "finished": 100.0 + seconds}))


def test_the_estimate_comes_from_measured_times_of_the_same_cells(plugin_system, tmp_path):
    """A dry run reads earlier run folders under --out: the same cell (any seed) measured
    10 s and 20 s estimates 15 s; a failed cell's time and other cells are not used."""
    from harness.run.options import matrix_from_options
    from harness.run.runner import dry_run

    out = tmp_path / "runs"
    opts = {"backbones": ("timm:test_resnet",), "datasets": ("digits",),
            "strategies": ("scratch", "frozen"), "runtimes": ("pytorch",),
            "profiles": ("mobile",), "image_size": 16, "epochs": 1}
    plan = dry_run(plugin_system, matrix_from_options(plugin_system, opts), out)
    scratch = next(c for c in plan.cells if c.strategy.name == "scratch").to_dict()
    _fake_record(out / "earlier-1", "a", {**scratch, "seed": 5}, 10.0)
    _fake_record(out / "earlier-2", "b", scratch, 20.0)
    _fake_record(out / "earlier-2", "c", scratch, 900.0, status="failed")
    assert sorted(next(iter(measured_times(out).values()))) == [10.0, 20.0]
    plan = dry_run(plugin_system, matrix_from_options(plugin_system, opts), out)
    assert (plan.estimated, plan.unestimated, plan.estimate_s) == (1, 1, 15.0)
    assert "about 15 s for 1 cell(s)" in plan.estimate_line()
    assert "1 cell(s) never measured" in plan.estimate_line()


def test_format_seconds():
    assert [format_seconds(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 5 s", "1 h 2 min"]


def test_a_run_prints_its_plan_first_and_its_time_and_next_commands_last(plugin_system,
                                                                        tmp_path):
    res = CliRunner().invoke(cli, [
        "run", "-q", "--out", str(tmp_path), "-b", "timm:test_resnet",
        "-d", "digits", "-s", "scratch", "-r", "pytorch",
        "-p", "mobile", "--image-size", "16", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    err = res.stderr  # the plan and the end go to stderr; stdout holds the table
    assert err.index("plan: 1 cell(s)") < err.index("took ")
    run_dir = next(tmp_path.iterdir())
    assert f"results: {run_dir}" in res.stdout
    assert f"bench report {run_dir}" in err and f"bench compare {run_dir} OTHER_RUN" in err
    assert "(1 of 1 cells ok)" in err
