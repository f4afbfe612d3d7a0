"""Every hook is documented (docstring with an example) and has a test of its own.

Patterned on datasette's ``test_plugin_hooks_are_documented`` and
``test_plugin_hooks_have_tests``: adding a hook to ``harness/api/hookspecs.py`` fails these
tests until its docstring says when it is called and what it returns, with an example
implementation, and until ``tests/`` has a ``test_hook_<name>`` test.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from harness.api import hookspecs
from harness.api.manager import _known_hooks

TESTS = Path(__file__).resolve().parent
HOOKS = _known_hooks()


def test_hooks_are_found():
    assert "register_backbones" in HOOKS and "register_commands" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_an_example(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Called" in doc, f"{hook}: say when the hook is called"
    assert re.search(r"Returns", doc), f"{hook}: say what it returns"
    assert "Example::" in doc, f"{hook}: add an 'Example::' block"
    example = doc.split("Example::", 1)[1]
    assert "@hookimpl" in example and f"def {hook}(" in example, \
        f"{hook}: the example must be an implementation of {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    sources = "\n".join(p.read_text() for p in TESTS.glob("test_*.py"))
    assert re.search(rf"^def test_hook_{hook}\(", sources, re.M), \
        f"no test for the hook {hook}: add def test_hook_{hook}(...) in tests/"
