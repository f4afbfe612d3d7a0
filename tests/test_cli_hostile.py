"""The command line against hostile or unlucky use: run names that would leave --out, --fresh
on a link, bench report into a folder or on a folder that is not a run, Ctrl-C mid-run."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
import robust_plugin
from click.testing import CliRunner

from harness import StrategySpec, hookimpl
from harness.cli import cli
from harness.run.config import MatrixConfig, check_run_name
from harness.api.errors import ConfigError


# -- run names stay inside --out ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../x", "..", ".", "a/b", "a\\b", "/tmp/abs", "", " ",
                                  "x\ny", "../escape"])
def test_a_run_name_that_is_not_one_folder_name_is_refused(name):
    with pytest.raises(ConfigError, match=r"must be one folder name"):
        check_run_name(name)
    with pytest.raises(ConfigError):
        MatrixConfig(backbones=["b"], datasets=["d"], strategies=["s"], name=name)


@pytest.mark.parametrize("name", ["flowers-test", "a..b", "run.v2", "ÄÖ-名前"])
def test_ordinary_run_names_are_accepted(name):
    check_run_name(name)


@pytest.mark.parametrize("name", ["../../escaped", os.path.join(os.sep, "tmp", "abs-run")])
def test_name_option_outside_out_exits_2_and_creates_nothing(plugin_system, tmp_path, name):
    out = tmp_path / "box" / "runs"
    res = CliRunner().invoke(cli, ["run", "-b", "resnet18", "-s", "scratch", "-d", "digits",
                                   "--name", name, "--out", str(out), "--fresh"])
    assert res.exit_code == 2, res.output
    assert res.output.startswith(f"Error: run name {name!r}") and "one folder name" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even --out
    assert not list(Path(os.sep, "tmp").glob("abs-run-*"))


def test_matrix_file_name_outside_out_names_file_and_line(plugin_system, tmp_path):
    m = tmp_path / "m.toml"
    m.write_text('backbones = ["resnet18"]\ndatasets = ["digits"]\nstrategies = ["scratch"]\n'
                 'name = "../../x"\n')
    res = CliRunner().invoke(cli, ["run", "-m", str(m), "--out", str(tmp_path / "runs")])
    assert res.exit_code == 2, res.output
    assert f"{m}:4: run name '../../x'" in res.output
    assert not (tmp_path / "runs").exists()


def test_fresh_never_removes_what_a_link_in_out_points_to(tmp_path):
    from harness.run.runner import prepare_run_dir

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    out = tmp_path / "runs"
    out.mkdir()
    (out / "m-1234").symlink_to(precious)
    with pytest.raises(ConfigError, match=r"--fresh would remove .*m-1234 .*nothing was removed"):
        prepare_run_dir(out / "m-1234", fresh=True)
    assert (precious / "data.txt").read_text() == "keep me"
    prepare_run_dir(out / "m-5678", fresh=True)  # a folder inside --out is made and emptied
    (out / "m-5678" / "cells" / "old.json").write_text("{}")
    prepare_run_dir(out / "m-5678", fresh=True)
    assert list((out / "m-5678" / "cells").iterdir()) == []


# -- bench report: into an existing folder; a folder that is not a run --------------------------

@pytest.fixture
def run_dir(tmp_path):
    from test_report import make_run

    make_run(tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("fmt,name", [("table", "report.txt"), ("markdown", "report.md"),
                                      ("csv", "results.csv"), ("json", "results.json"),
                                      ("html", "report.html")])
def test_report_out_existing_folder_writes_into_it(plugin_system, run_dir, tmp_path, fmt, name):
    folder = tmp_path / "reports"
    folder.mkdir()
    res = CliRunner().invoke(cli, ["report", str(run_dir), "--format", fmt, "--out", str(folder)])
    assert res.exit_code == 0, res.output
    assert f"wrote {folder / name}" in res.output
    assert (folder / name).stat().st_size > 0


def test_report_out_that_cannot_be_written_says_why(plugin_system, run_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    res = CliRunner().invoke(cli, ["report", str(run_dir), "--format", "json",
                                   "--out", str(blocker / "r.json")])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: reporter 'json' cannot write ")
    assert "give --out a writable file or existing folder" in res.output
    res = CliRunner().invoke(cli, ["report", str(run_dir), "--format", "publish",
                                   "--out", str(blocker)])
    assert res.exit_code == 1 and "is a file; the publish reporter writes" in res.output


@pytest.mark.parametrize("content", [
    {},  # an empty folder
    {"config.json": '{"unrelated": true}'},  # someone else's config.json
    {"cells/notes.txt": "x", "cells/data.json": '[1, 2]'},  # a cells/ folder of other things
])
@pytest.mark.parametrize("fmt", ["table", "csv", "html"])
def test_report_on_a_folder_that_is_not_a_run_exits_2_and_writes_nothing(plugin_system,
                                                                          tmp_path, content,
                                                                          fmt):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    for rel, text in content.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    res = CliRunner().invoke(cli, ["report", str(folder), "--format", fmt])
    assert res.exit_code == 2, res.output
    assert "is not a run folder" in res.output and "nothing was written" in res.output
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before


# -- Ctrl-C during bench run --------------------------------------------------------------------

class CtrlCOnSecondSeed(robust_plugin.Slow):
    """Trains like ``slow``; the cell of seed 1 is "interrupted by Ctrl-C" while
    $CTRLC_TEST is set."""

    def fit(self, model, data, ctx):
        if ctx.settings.seed >= 1 and os.environ.get("CTRLC_TEST"):
            raise KeyboardInterrupt
        return super().fit(model, data, ctx)


class CtrlCPlugin:
    @hookimpl
    def register_strategies(self):
        return [StrategySpec("ctrlc", cls=CtrlCOnSecondSeed, description="test: Ctrl-C")]


@pytest.mark.slow
def test_ctrl_c_exits_130_says_what_is_kept_and_the_command_that_resumes(plugin_system,
                                                                        tmp_path, monkeypatch):
    plugin_system.register(robust_plugin, name=robust_plugin.NAME)
    plugin_system.register(CtrlCPlugin(), name="ctrlc-test")
    plugin_system.rebuild()
    m = robust_plugin.write_matrix(tmp_path / "m.toml", strategies=('"ctrlc"',), runtimes=(),
                                   seeds=2)
    out = tmp_path / "my runs"
    args = ["run", "-m", str(m), "--out", str(out), "--fresh", "-q"]
    monkeypatch.setenv("CTRLC_TEST", "1")
    res = CliRunner().invoke(cli, args, prog_name="bench")
    assert res.exit_code == 130, res.output
    (run,) = out.iterdir()
    assert "Interrupted (Ctrl-C); kept: 1 of 2 cells finished ok" in res.output
    assert f"{run}/cells" in res.output
    again = shlex.join(["bench", "run", "-m", str(m), "--out", str(out), "-q"])  # no --fresh
    assert res.output.rstrip().endswith(f"Resume with:\n  {again}")
    statuses = sorted(json.loads(p.read_text())["status"] for p in (run / "cells").iterdir())
    assert statuses == ["interrupted", "ok"]
    # the printed command resumes: the finished cell is not run again
    monkeypatch.delenv("CTRLC_TEST")
    log = tmp_path / "ran.log"
    monkeypatch.setenv("ROBUST_LOG", str(log))
    res = CliRunner().invoke(cli, shlex.split(again)[1:])
    assert res.exit_code == 0, res.output
    assert log.read_text().split()[:2] == ["seed", "1"] and len(log.read_text().splitlines()) == 1
    assert sorted(json.loads(p.read_text())["status"]
                  for p in (run / "cells").iterdir()) == ["ok", "ok"]


def test_ctrl_c_in_any_command_exits_130_not_aborted(plugin_system, run_dir, monkeypatch):
    from harness.run import results

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(results.RunStore, "records", interrupted)
    res = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert res.exit_code == 130, res.output
    assert "Interrupted (Ctrl-C)." in res.output and "Aborted!" not in res.output
