"""Every ``bench ...`` command shown in a code block of README.md or docs/*.md parses with the
CLI's own parser: the command and subcommand exist, every option exists and gets the number
of values it takes, choices are among the allowed ones, and a name given to an axis option
(``-b``, ``-s``, ``-d``, ``-r``, ``--preset``, ``--format``...) is registered. So a renamed
option or plugin cannot leave the documentation showing a command that no longer runs.

Values that only exist on the user's machine (RUN folders, matrix files) are not checked:
parsing stops before click's type conversion, except for choices and registered names.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
_FENCE = re.compile(r"^```(\w*)\s*$")
_SHELL_LANGS = {"", "sh", "bash", "console", "shell", "text"}
#: names a page teaches the reader to register, so no installed plugin has them
PAGE_EXAMPLE_NAMES = {"writing-a-plugin.md": {"strategies": {"bias_only"}}}


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside a fenced block of a shell-like language
    or an indented (4 spaces, after a blank line) block."""
    out, fence, indented, prev_blank = [], None, False, True
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line.strip())
        if m:
            fence = None if fence is not None else m.group(1)
            continue
        if fence is not None:
            if fence in _SHELL_LANGS:
                out.append((n, line))
            continue
        if line.startswith("    ") and (indented or prev_blank):
            indented = True
            out.append((n, line))
        elif line.strip():
            indented = False
        prev_blank = not line.strip()
    return out


def bench_commands(path: Path) -> list[tuple[int, list[str]]]:
    """The argument lists after ``bench`` of every command in the page's code blocks;
    a trailing comment, redirection or pipe ends a command."""
    cmds = []
    lines, joined = code_lines(path.read_text()), []
    for n, line in lines:  # a trailing backslash continues the command on the next line
        if joined and joined[-1][1].rstrip().endswith("\\"):
            joined[-1] = (joined[-1][0], joined[-1][1].rstrip()[:-1] + " " + line.strip())
        else:
            joined.append((n, line))
    shell_vars: dict = {}  # NAME="..." lines of the page's blocks, expanded as a shell would
    for n, line in joined:
        s = line.strip()
        m = re.match(r"^([A-Za-z_]\w*)=(.*)$", s)
        if m:
            shell_vars[m.group(1)] = " ".join(shlex.split(m.group(2)))
            continue
        s = re.sub(r"\$\{?([A-Za-z_]\w*)\}?", lambda v: shell_vars.get(v.group(1), v.group(0)), s)
        s = s[2:] if s.startswith("$ ") else s
        if not s.startswith("bench "):
            continue
        words = shlex.split(s, comments=True)
        for i, w in enumerate(words):
            if w in {">", ">>", "|", "&&", ";", "2>"}:
                words = words[:i]
                break
        cmds.append((n, words[1:]))
    return cmds


CASES = [pytest.param(p, n, args, id=f"{p.relative_to(ROOT)}:{n}")
         for p in PAGES for n, args in bench_commands(p)]


def test_the_readme_shows_commands():
    readme = [c for c in CASES if c.values[0].name == "README.md"]
    assert len(readme) >= 8, "README.md lost its bench commands"
    assert any(c.values[2][:1] == ["run"] for c in readme)


def _registry_kind(param: click.Parameter):
    """The registry a parameter names (set by harness.cli's completion of registered names)."""
    return getattr(getattr(param, "_custom_shell_complete", None), "registry_kind", None)


def _faults(cmd: click.Command, ctx: click.Context, values: dict, plugins,
            examples: dict) -> list[str]:
    """A choice not allowed, a name not registered, among the parsed values."""
    faults = []
    for param in cmd.params:
        value = values.get(param.name)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, str):
                continue
            if isinstance(param.type, click.Choice):
                try:
                    param.type.convert(v, param, ctx)
                except click.BadParameter as exc:
                    faults.append(f"{param.human_readable_name} {v}: {exc.format_message()}")
            if param.callback is not None and isinstance(param.type, click.types.StringParamType):
                try:  # a value a callback checks (bench list KIND)
                    param.callback(ctx, param, v)
                except click.BadParameter as exc:
                    faults.append(f"{param.human_readable_name} {v}: {exc.format_message()}")
            kind = _registry_kind(param)
            if kind and v.split(",")[0] not in examples.get(kind, ()):
                try:
                    plugins.registries[kind].resolve(v.split(",")[0])
                except Exception as exc:
                    faults.append(f"{param.human_readable_name} {v}: {exc}")
    return faults


@pytest.fixture(scope="module")
def documented_plugins():
    """Built-ins and the repository's example plugin (the docs show its backbone); conftest
    keeps other installed plugins out."""
    from harness.api.manager import PluginSystem, set_plugins
    system = PluginSystem()
    set_plugins(system)
    yield system
    set_plugins(None)


@pytest.mark.parametrize("path,line,args", CASES)
def test_documented_command_parses(path, line, args, documented_plugins):
    from harness.cli import cli

    where = f"{path.name}:{line}: bench {' '.join(args)}"
    cmd: click.Command = cli
    ctx = click.Context(cli, info_name="bench", resilient_parsing=False)
    words = list(args)
    while True:
        try:
            values, rest, _ = cmd.make_parser(ctx).parse_args(list(words))
        except click.UsageError as exc:
            pytest.fail(f"{where}: {exc.format_message()}")
        faults = _faults(cmd, ctx, values, documented_plugins,
                         PAGE_EXAMPLE_NAMES.get(path.name, {}))
        assert not faults, f"{where}: " + "; ".join(faults)
        if not isinstance(cmd, click.Group):
            assert not rest, f"{where}: arguments {rest} that {ctx.command_path} does not take"
            return
        if not rest:  # a group alone prints its help
            return
        sub = cmd.get_command(ctx, rest[0])
        assert sub is not None, (f"{where}: no command {rest[0]!r} under {ctx.command_path}; "
                                 f"commands: {', '.join(cmd.list_commands(ctx))}")
        ctx = click.Context(sub, info_name=rest[0], parent=ctx, resilient_parsing=False)
        cmd, words = sub, rest[1:]
