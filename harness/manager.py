"""The plugin manager: built-in plugins, entry-point plugins, and the registries.

A plugin that fails to import, implements a hook that does not exist, implements one
with the wrong arguments, raises while registering, or claims a name another plugin
holds is recorded as broken (with its distribution) and every other plugin keeps
working. ``bench plugins`` shows the record.
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import pluggy

from . import hookspecs
from .errors import DuplicateName
from .registry import Registry
from .specs import SPEC_TYPES

ENTRY_POINT_GROUP = "transfer_bench"
DISABLE_ENV = "TRANSFER_BENCH_DISABLE_PLUGINS"

#: Built-in plugins, registered exactly as third-party ones are.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "plugins.backbones",
    "plugins.weights",
    "plugins.tasks",
    "plugins.strategies",
    "plugins.datasets",
    "plugins.runtimes",
    "plugins.profiles",
    "plugins.reporters",
    "plugins.executors",
    "plugins.presets",
)

#: registry kind -> (hook name, singular noun for messages)
KINDS: dict[str, tuple[str, str]] = {
    "backbones": ("register_backbones", "backbone"),
    "tasks": ("register_tasks", "task"),
    "strategies": ("register_strategies", "strategy"),
    "datasets": ("register_datasets", "dataset"),
    "weights": ("register_weight_sources", "weight source"),
    "runtimes": ("register_runtimes", "runtime"),
    "profiles": ("register_profiles", "profile"),
    "reporters": ("register_reporters", "reporter"),
    "executors": ("register_executors", "executor"),
    "presets": ("register_presets", "preset"),
}


@dataclass
class PluginInfo:
    """What ``bench plugins`` shows about one plugin."""

    name: str
    origin: str  # "built-in" or "DIST VERSION"
    registers: dict = field(default_factory=dict)  # kind -> [names]
    error: Optional[str] = None
    disabled: bool = False
    traceback: Optional[str] = None

    @property
    def status(self) -> str:
        if self.disabled:
            return "disabled"
        return "broken" if self.error else "ok"


def _disabled_names(extra: Iterable[str] = ()) -> set[str]:
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    return names | set(extra)


def _module_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """Names of the attributes of ``plugin`` marked as hook implementations."""
    out = []
    for attr in dir(plugin):
        try:
            if pm.parse_hookimpl_opts(plugin, attr) is not None:
                out.append(attr)
        except Exception:  # pragma: no cover - exotic attributes
            continue
    return out


class PluginSystem:
    """A pluggy manager plus the registries it fills.

    Args:
        builtins: dotted module names of the built-in plugins to register.
        entry_points: whether to load third-party plugins from the ``transfer_bench`` group.
        disable: plugin names to leave out (in addition to ``TRANSFER_BENCH_DISABLE_PLUGINS``).
    """

    def __init__(self, builtins: Iterable[str] = BUILTIN_PLUGINS, entry_points: bool = True,
                 disable: Iterable[str] = ()):
        self.pm = pluggy.PluginManager("transfer_bench")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self._disabled = _disabled_names(disable)
        for modname in builtins:
            self._register_import(modname, modname, "built-in")
        if entry_points:
            self._load_entry_points()
        self.registries: dict[str, Registry] = {}
        self._build_registries()

    # -- registration ------------------------------------------------------------------
    def _register_import(self, name: str, target: str, origin: str, loader=None) -> None:
        info = PluginInfo(name=name, origin=origin)
        self.infos[name] = info
        if name in self._disabled:
            info.disabled = True
            return
        try:
            plugin = loader() if loader else importlib.import_module(target)
        except Exception as exc:
            info.error = f"failed to import {target}: {type(exc).__name__}: {exc}"
            return
        self.register(plugin, name=name, origin=origin)

    def register(self, plugin: Any, name: Optional[str] = None, origin: str = "built-in") -> None:
        """Register a plugin object (module, class or instance), checking its hooks."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        info = self.infos.setdefault(name, PluginInfo(name=name, origin=origin))
        unknown = [h for h in _module_hooks(self.pm, plugin) if not hasattr(hookspecs, h)]
        if unknown:
            known = ", ".join(sorted(k for k in dir(hookspecs) if k.startswith("register_")))
            info.error = (f"implements hook(s) that do not exist: {', '.join(unknown)}. "
                          f"Known hooks: {known}")
            return
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            info.error = f"hook with wrong arguments: {exc}"
        except ValueError as exc:
            info.error = str(exc)

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.infos.pop(name, None)
        self._build_registries()

    def _load_entry_points(self) -> None:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
            self._register_import(ep.name, ep.value, origin, loader=ep.load)

    # -- registries --------------------------------------------------------------------
    def _build_registries(self) -> None:
        self.registries = {kind: Registry(noun) for kind, (_, noun) in KINDS.items()}
        for info in self.infos.values():
            info.registers = {}
        for kind, (hook, _noun) in KINDS.items():
            caller = getattr(self.pm.hook, hook)
            # call plugin by plugin so a failure or a duplicate is attributed to its plugin
            for impl in reversed(caller.get_hookimpls()):
                self._collect(kind, impl)

    def _collect(self, kind: str, impl) -> None:
        name = impl.plugin_name
        info = self.infos.setdefault(name, PluginInfo(name=name, origin="built-in"))
        if info.error:
            return
        spec_type = SPEC_TYPES[kind]
        try:
            specs = impl.function() or []
            for spec in specs:
                if not isinstance(spec, spec_type):
                    raise TypeError(f"{impl.function.__name__} returned {type(spec).__name__}, "
                                    f"expected {spec_type.__name__}")
        except Exception as exc:
            info.error = f"{impl.function.__name__} raised {type(exc).__name__}: {exc}"
            info.traceback = traceback.format_exc()
            return
        for spec in specs:
            try:
                self.registries[kind].add(spec, provider=f"{name} ({info.origin})")
            except DuplicateName as exc:
                info.error = str(exc)
                continue
            info.registers.setdefault(kind, []).append(spec.name)

    def __getattr__(self, kind: str) -> Registry:
        regs = self.__dict__.get("registries")
        if regs is not None and kind in regs:
            return regs[kind]
        raise AttributeError(kind)

    def broken(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.error]

    def add_commands(self, cli) -> None:
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(cli=cli)
            except Exception as exc:
                self.infos[impl.plugin_name].error = (
                    f"register_commands raised {type(exc).__name__}: {exc}")


_SYSTEM: Optional[PluginSystem] = None


def get_plugins(reload: bool = False, disable: Iterable[str] = ()) -> PluginSystem:
    """The process-wide plugin system, built on first use."""
    global _SYSTEM
    if _SYSTEM is None or reload or disable:
        _SYSTEM = PluginSystem(disable=disable)
    return _SYSTEM


def set_plugins(system: Optional[PluginSystem]) -> None:
    """Replace the process-wide plugin system (tests use this)."""
    global _SYSTEM
    _SYSTEM = system


def hook_signature(name: str) -> inspect.Signature:
    return inspect.signature(getattr(hookspecs, name))
