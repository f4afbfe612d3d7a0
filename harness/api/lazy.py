"""Names a plugin package exports without importing them at its top (PEP 562).

Importing a plugin must stay cheap (``bench --help`` imports every plugin), so a package
whose modules need torch or numpy imports them in its registration hooks and exports
their names through a module ``__getattr__``::

    __getattr__ = lazy_exports(__name__, {"FineTune": (".basic", "FineTune")})
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable, Optional


def lazy_exports(package: str, names: dict) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``names`` maps an exported name to
    ``(module, attribute)``, the module relative to ``package`` or absolute; it is
    imported on the first access of the name."""
    def __getattr__(name: str) -> Any:
        if name in names:
            module, attr = names[name]
            return getattr(importlib.import_module(module, package), attr)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__


class LazyCallable:
    """A function or class named by its import path, ``"package.module:name"``, imported
    when first called: a registration hook hands one to a spec (``TaskSpec(factory=...)``,
    ``DatasetSpec(load=...)``, ``RuntimeSpec(measure=...)``...) so that building the
    registries (``bench list``) imports no module that needs torch.

    It calls through (``spec.factory(**params)``), and ``inspect.signature`` sees the
    target's signature (``__wrapped__``), so parameter checks work as on the target itself.
    The target is looked up on every call (a test that patches the module attribute is seen).

    Args:
        path: ``"package.module:name"``; a module starting with ``.`` is relative to
            ``package`` (a plugin module passes ``__package__``).
        package: the package a relative ``path`` is resolved against.

    Example::

        TaskSpec("pose", factory=LazyCallable(".pose:Pose", __package__))
    """

    __slots__ = ("path",)

    def __init__(self, path: str, package: Optional[str] = None):
        module, sep, attr = path.partition(":")
        if not (module and sep and attr):
            raise ValueError(f"lazy import path {path!r}: write 'package.module:name'")
        if module.startswith("."):
            if not package:
                raise ValueError(f"lazy import path {path!r} is relative: pass the package")
            module = importlib.util.resolve_name(module, package)
        self.path = f"{module}:{attr}"

    def resolve(self) -> Any:
        """The target (imports its module on first use)."""
        module, _, attr = self.path.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    @property
    def __wrapped__(self) -> Any:  # inspect.signature / inspect.unwrap follow it
        return self.resolve()

    @property
    def __name__(self) -> str:
        return self.path.rpartition(":")[2].rpartition(".")[2]

    def __reduce__(self):  # worker processes receive the path, not the target
        return (LazyCallable, (self.path,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LazyCallable) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"LazyCallable({self.path!r})"
