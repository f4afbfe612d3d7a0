"""One meaning per option name, one way to show defaults (issue 30; docs/cli.md).

Walks every command, the plugin commands (``bench check``, ``bench baseline ...``) included,
so a new option is held to the same rules the day it is added."""
from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from harness.cli import cli


def _commands():
    ctx = click.Context(cli)
    cli._add_plugin_commands()
    todo = [(["bench"], cli)]
    while todo:
        path, cmd = todo.pop()
        if isinstance(cmd, click.Group):
            todo += [(path + [n], cmd.get_command(ctx, n)) for n in cmd.list_commands(ctx)]
        else:
            yield " ".join(path), cmd


COMMANDS = dict(_commands())
OPTIONS = [(name, p) for name, cmd in COMMANDS.items() for p in cmd.params
           if isinstance(p, click.Option)]


@pytest.mark.parametrize("name,opt", OPTIONS, ids=[f"{n} {o.opts[-1]}" for n, o in OPTIONS])
def test_defaults_are_shown_by_click_only(name, opt):
    """A default is shown one way: click's ``[default: ...]`` (``show_default``), never
    written into the help text as "(default X)" or "[X]"."""
    text = opt.help or ""
    assert not re.search(r"\bdefault\b", text, re.I), f"{name} {opt.opts[-1]}: {text!r}"
    assert not re.search(r"\[[^\]]*\]\W*$", text), f"{name} {opt.opts[-1]}: {text!r}"
    if isinstance(opt.default, (str, int, float)) and not opt.is_flag:  # a real default
        root = click.Context(cli, info_name="bench", **cli.context_settings)  # as bench runs
        sub = click.Context(COMMANDS[name], info_name=name, parent=root)
        _, extra = opt.get_help_record(sub)
        assert "[default: " in extra, f"{name} {opt.opts[-1]}: {extra}"


def test_every_help_shows_defaults_the_same_way():
    for name in ("run", "report", "compare", "rank", "list", "check"):
        res = CliRunner().invoke(cli, [name, "--help"])
        assert res.exit_code == 0, res.output
        flat = " ".join(res.output.split())
        assert "(default" not in flat.replace("[default: (", ""), (name, flat)
    run = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "[default: runs]" in run and "[default: logme]" in run and "[default: (auto)]" in run


def test_out_always_names_where_a_command_writes():
    """--out is an output in every command (a folder where the command writes a folder of
    results, bench run; a file elsewhere), never an input."""
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            if isinstance(p, click.Option) and "--out" in p.opts:
                text = (p.help or "").lower()
                assert re.search(r"\b(write|writes|holds|to write)\b", text), (name, text)
                assert "in place" not in text, (name, text)


def test_format_always_names_an_output_format():
    """--format takes an output format named as bench report's reporters name them."""
    report = COMMANDS["bench report"]
    compare = COMMANDS["bench compare"]
    from harness.cli import COMPARE_FORMATS
    assert {"table", "markdown", "csv", "json"} == set(COMPARE_FORMATS)
    assert next(p for p in report.params if p.name == "fmt").default == "table"
    assert next(p for p in compare.params if p.name == "fmt").default == "table"
