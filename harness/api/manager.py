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
from .errors import ConfigError
from .hookspecs import KINDS
from .registry import Registry

ENTRY_POINT_GROUP = "transfer_bench"
DISABLE_ENV = "TRANSFER_BENCH_DISABLE_PLUGINS"
ONLY_ENV = "TRANSFER_BENCH_ONLY_PLUGINS"
"""When set, only the entry-point plugins it names (comma-separated; empty: none) are
loaded; the others are not imported at all. Built-ins always load. Test suites set it so
that whatever else is installed cannot change what they see."""

#: Built-in plugins, registered exactly as third-party ones are.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "plugins.backbones",
    "plugins.weights",
    "plugins.weights_source",
    "plugins.tasks",
    "plugins.strategies",
    "plugins.datasets",
    "plugins.runtimes",
    "plugins.profiles",
    "plugins.reporters",
    "plugins.executors",
    "plugins.presets",
    "plugins.regression",
    "plugins.estimators",
)

@dataclass
class PluginInfo:
    """What ``bench plugins`` shows about one plugin.

    Attributes:
        name: the plugin's name (entry-point name, or module name for built-ins).
        origin: ``"built-in"`` or ``"DIST VERSION"`` of the distribution that declared it.
        registers: kind -> names it registered (empty when broken).
        error: why it is broken, or ``None``.
    """

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

    @property
    def label(self) -> str:
        """``plugin 'NAME' (DIST VERSION)``: how messages name a plugin."""
        return f"plugin {self.name!r} ({self.origin})"

    @property
    def message(self) -> Optional[str]:
        """A self-contained sentence naming the plugin, its distribution and the error."""
        if not self.error:
            return None
        return (f"{self.label} is broken and was left out: {self.error}. Fix or uninstall it, "
                f"or disable it with --disable-plugin {self.name} or {DISABLE_ENV}={self.name}")


def _disabled_names(extra: Iterable[str] = ()) -> set[str]:
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
    return names | {n.strip() for e in extra for n in e.split(",") if n.strip()}


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


def _known_hooks() -> list[str]:
    return sorted(k for k, v in vars(hookspecs).items()
                  if callable(v) and hasattr(v, "transfer_bench_spec"))


class PluginSystem:
    """A pluggy manager plus the registries it fills.

    A broken plugin contributes nothing: if any of its hooks fails, or one of its names is
    already held by an earlier plugin, none of its specs are registered and its
    :class:`PluginInfo` says why. Built-ins register first, so they keep their names.

    Args:
        builtins: dotted module names of the built-in plugins to register.
        entry_points: whether to load third-party plugins from the ``transfer_bench`` group.
        disable: plugin names to leave out (in addition to ``TRANSFER_BENCH_DISABLE_PLUGINS``).
    """

    def __init__(self, builtins: Iterable[str] = BUILTIN_PLUGINS, entry_points: bool = True,
                 disable: Iterable[str] = ()):
        self.pm = pluggy.PluginManager("transfer_bench")
        self.pm.add_hookspecs(hookspecs)
        self._infos: dict[str, PluginInfo] = {}
        self._disabled = _disabled_names(disable)
        for modname in builtins:
            self._register_import(modname, modname, "built-in")
        if entry_points:
            self._load_entry_points()
        # the registries are built on first use (the registration hooks import what the
        # plugins need, torch included): ``bench --help`` and plugin commands need none
        self._registries: Optional[dict[str, Registry]] = None
        self._when_built: list = []

    def when_built(self, fn) -> None:
        """Call ``fn(self)`` once the registries are built (now, if they are): the CLI
        warns about broken plugins then, so ``bench run --help`` builds nothing."""
        if self._registries is not None:
            fn(self)
        else:
            self._when_built.append(fn)

    @property
    def registries(self) -> dict[str, Registry]:
        """kind -> :class:`Registry`, built by :meth:`rebuild` on first use."""
        if self._registries is None:
            self.rebuild()
        return self._registries  # type: ignore[return-value]

    @property
    def infos(self) -> dict[str, PluginInfo]:
        """plugin name -> :class:`PluginInfo`, complete (registration faults included)."""
        if self._registries is None:
            self.rebuild()
        return self._infos

    @property
    def unknown_disabled(self) -> list[str]:
        """Names asked to be disabled that match no plugin (probably a typo)."""
        return sorted(n for n in self._disabled if n not in self._infos)

    # -- registration ------------------------------------------------------------------
    def _new_info(self, name: str, origin: str) -> PluginInfo:
        if name in self._infos:
            first = self._infos[name]
            key = f"{name} [{origin}]"
            info = self._infos[key] = PluginInfo(name=name, origin=origin)
            info.error = (f"the plugin name {name!r} is already used by {first.label}; "
                          "rename the entry point in one of the two distributions")
            return info
        info = self._infos[name] = PluginInfo(name=name, origin=origin)
        return info

    def _register_import(self, name: str, target: str, origin: str, loader=None) -> None:
        info = self._new_info(name, origin)
        if info.error:
            return
        if name in self._disabled:
            info.disabled = True
            return
        try:
            plugin = loader() if loader else importlib.import_module(target)
        except Exception as exc:
            info.error = f"failed to import {target}: {type(exc).__name__}: {exc}"
            info.traceback = traceback.format_exc()
            return
        self.register(plugin, name=name, origin=origin)

    def register(self, plugin: Any, name: Optional[str] = None, origin: str = "built-in") -> None:
        """Register a plugin object (module, class or instance), checking its hooks.

        A problem is recorded on the plugin's :class:`PluginInfo` instead of raised, so
        one bad plugin never stops the others. Call :meth:`rebuild` afterwards
        (the ``register_plugin`` fixture does).
        """
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        info = self._infos.setdefault(name, PluginInfo(name=name, origin=origin))
        known = _known_hooks()
        unknown = [h for h in _module_hooks(self.pm, plugin) if h not in known]
        if unknown:
            info.error = (f"implements hook(s) that do not exist: {', '.join(unknown)}. "
                          f"Known hooks: {', '.join(known)}")
            return
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            hook = next((h for h in _module_hooks(self.pm, plugin) if h in str(exc)), None)
            expected = f"; the hook takes {hook}{hook_signature(hook)}" if hook else ""
            info.error = f"hook with wrong arguments: {exc}{expected}"
        except ValueError as exc:
            info.error = str(exc)

    def unregister(self, name: str) -> None:
        """Leave plugin ``name`` out from now on (worker processes leave it out too)."""
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self._infos.pop(name, None)
        self._disabled.add(name)
        self.rebuild()

    def _load_entry_points(self) -> None:
        only = os.environ.get(ONLY_ENV)
        wanted = None if only is None else {n.strip() for n in only.split(",") if n.strip()}
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            dist = getattr(ep, "dist", None)
            origin = f"{dist.name} {dist.version}" if dist is not None else "entry point"
            self._register_import(ep.name, ep.value, origin, loader=ep.load)

    # -- registries --------------------------------------------------------------------
    def rebuild(self) -> None:
        """Call every plugin's registration hooks and file the specs by kind and name."""
        self._registries = {kind: Registry(k.noun) for kind, k in KINDS.items()}
        for info in self._infos.values():
            # what rebuild files again; commands (register_commands) stay as they were added
            info.registers = {k: v for k, v in info.registers.items() if k not in KINDS}
        # pass 1: call each plugin's hooks; a hook that raises breaks its plugin
        collected: dict[str, list] = {}  # plugin name -> [(kind, spec)], registration order
        for kind, k in KINDS.items():
            caller = getattr(self.pm.hook, k.hook)
            for impl in caller.get_hookimpls():  # registration order: built-ins first
                specs = self._call(kind, impl)
                if specs is not None:
                    collected.setdefault(impl.plugin_name, []).extend((kind, s) for s in specs)
        # pass 2: file the specs of healthy plugins; a name already held breaks the newcomer
        for name in [n for n, _ in self.pm.list_name_plugin()]:
            info = self._infos.get(name)
            items = collected.get(name, [])
            if info is None or info.error:
                continue
            clash = self._first_clash(info, items)
            if clash:
                info.error = clash
                continue
            for kind, spec in items:
                self.registries[kind].add(spec, provider=f"{name} ({info.origin})", plugin=name)
                info.registers.setdefault(kind, []).append(spec.name)
        waiting, self._when_built = self._when_built, []
        for fn in waiting:
            fn(self)

    def _call(self, kind: str, impl) -> Optional[list]:
        name = impl.plugin_name
        info = self._infos.setdefault(name, PluginInfo(name=name, origin="built-in"))
        if info.error:
            return None
        spec_type = KINDS[kind].spec
        try:
            specs = list(impl.function() or [])
            for spec in specs:
                if not isinstance(spec, spec_type):
                    raise TypeError(f"{impl.function.__name__} returned {type(spec).__name__}, "
                                    f"expected {spec_type.__name__} (from harness.api.specs)")
        except Exception as exc:
            info.error = f"{impl.function.__name__} raised {type(exc).__name__}: {exc}"
            info.traceback = traceback.format_exc()
            return None
        return specs

    def _first_clash(self, info: PluginInfo, items: list) -> Optional[str]:
        """The message for the first name in ``items`` that is already taken, if any."""
        seen: set = set()
        for kind, spec in items:
            noun = KINDS[kind].noun
            if (kind, spec.name) in seen:
                return f"{noun} {spec.name!r} is registered twice by {info.label} itself"
            seen.add((kind, spec.name))
            reg = self.registries[kind]
            if spec.name in reg:
                holder = self._infos[reg.plugin(spec.name)]
                return (f"{noun} {spec.name!r} is registered twice: it is held by "
                        f"{holder.label} and {info.label} "
                        f"registers it again. Rename it, or disable one of the two plugins "
                        f"(--disable-plugin NAME or {DISABLE_ENV})")
        return None

    def __getattr__(self, kind: str) -> Registry:
        if kind.startswith("_") or kind not in KINDS:
            raise AttributeError(kind)
        return self.registries[kind]

    def quick_specs(self, kind: str) -> list:
        """The specs of ``kind`` for shell completion, fast: the built registry where it is
        built, else only ``kind``'s registration hooks (other kinds' hooks may import torch;
        a hook that raises is skipped here and reported when the registries are built)."""
        if self._registries is not None:
            return list(self._registries[kind])
        out = []
        for impl in getattr(self.pm.hook, KINDS[kind].hook).get_hookimpls():
            info = self._infos.get(impl.plugin_name)
            if info is not None and info.error:
                continue
            try:
                out.extend(s for s in impl.function() or [] if hasattr(s, "name"))
            except Exception:  # completion never prints a traceback into the shell
                continue
        return sorted(out, key=lambda s: s.name)

    def default(self, kind: str, role: str = "default"):
        """The first registered spec of ``kind`` that declares ``role`` (``default=True``).

        The core names no plugin: what it uses when a matrix or a command names nothing
        (the preset, task, profile, executor, the weights of a model trained from scratch)
        is the spec a plugin declared for that role.

        Raises:
            ConfigError: no registered spec of ``kind`` declares ``role``.
        """
        reg = self.registries[kind]
        for spec in reg:
            if getattr(spec, role, False):
                return spec
        raise ConfigError(f"no {KINDS[kind].noun} is registered with {role}=True, and none "
                          f"was named; name one of: {', '.join(reg.names()) or '(none)'}")

    def broken(self) -> list[PluginInfo]:
        """Plugins that were left out because of an error."""
        return [i for i in self.infos.values() if i.error]

    def add_commands(self, cli) -> None:
        """Let plugins attach commands (``register_commands``); a failing plugin is recorded."""
        for impl in self.pm.hook.register_commands.get_hookimpls():
            info = self._infos.get(impl.plugin_name)
            if info is not None and info.error:
                continue
            before = set(getattr(cli, "commands", {}))
            try:
                impl.function(cli=cli)
            except Exception as exc:
                if info is not None:
                    info.error = f"register_commands raised {type(exc).__name__}: {exc}"
                continue
            added = sorted(set(getattr(cli, "commands", {})) - before)
            if info is not None and added:
                info.registers["commands"] = added


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
