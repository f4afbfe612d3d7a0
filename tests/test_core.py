"""The plugin core: registries, hooks, built-in plugins."""
from __future__ import annotations

import pytest

from harness import BackboneSpec, hookimpl
from harness.api.errors import DuplicateName, UnknownName
from harness.api.manager import KINDS
from harness.api.registry import Registry


def test_from_harness_import_hookimpl_works_for_plugins():
    import harness
    assert harness.hookimpl is hookimpl
    assert callable(hookimpl)


def test_builtin_plugins_load_without_errors(plugin_system):
    broken = {i.name: i.error for i in plugin_system.broken()}
    assert broken == {}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_has_builtin_entries_and_sorted_names(plugin_system, kind):
    reg = plugin_system.registries[kind]
    assert len(reg) > 0, f"no built-in {kind}"
    assert reg.names() == sorted(reg.names())
    assert [s.name for s in reg] == reg.names()


def test_duplicate_name_names_both_providers():
    reg = Registry("backbone")
    spec = BackboneSpec("net", build=lambda: None)
    reg.add(spec, "plugin-a (dist-a 1.0)")
    with pytest.raises(DuplicateName) as err:
        reg.add(spec, "plugin-b (dist-b 2.0)")
    assert "plugin-a (dist-a 1.0)" in str(err.value)
    assert "plugin-b (dist-b 2.0)" in str(err.value)


def test_unknown_name_lists_closest_and_all_choices(plugin_system):
    with pytest.raises(UnknownName) as err:
        plugin_system.backbones.get("resnet81")
    msg = str(err.value)
    assert "resnet81" in msg and "Did you mean: resnet18" in msg
    assert "mobilenetv2_100" in msg  # the full list follows


def test_resolve_splits_prefix_argument(plugin_system):
    spec, arg = plugin_system.weights.resolve("file:/tmp/w.pth")
    assert spec.name == "file" and arg == "/tmp/w.pth"
    spec, arg = plugin_system.weights.resolve("random")
    assert spec.name == "random" and arg is None


def test_third_party_style_plugin_registers_through_same_hooks(register_plugin):
    class Plugin:
        @hookimpl
        def register_backbones(self):
            return [BackboneSpec("my_tiny_net", build=lambda: None, device_class="mobile")]

    system = register_plugin(Plugin(), name="my-plugin")
    assert "my_tiny_net" in system.backbones
    assert system.backbones.provider("my_tiny_net").startswith("my-plugin")
    assert system.infos["my-plugin"].registers == {"backbones": ["my_tiny_net"]}


def test_duplicate_from_plugin_marks_it_broken_and_others_keep_working(register_plugin):
    class Clash:
        @hookimpl
        def register_backbones(self):
            return [BackboneSpec("resnet18", build=lambda: None)]

    system = register_plugin(Clash(), name="clash")
    assert "registered twice" in system.infos["clash"].error
    assert "plugins.backbones" in system.infos["clash"].error
    assert "resnet50" in system.backbones  # the built-ins are untouched


def test_spec_names_are_validated():
    with pytest.raises(ValueError, match="not valid"):
        BackboneSpec("bad name!", build=lambda: None)
    with pytest.raises(ValueError, match="device_class"):
        BackboneSpec("ok", build=lambda: None, device_class="laptop")
