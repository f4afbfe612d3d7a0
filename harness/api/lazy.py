"""Names a plugin package exports without importing them at its top (PEP 562).

Importing a plugin must stay cheap (``bench --help`` imports every plugin), so a package
whose modules need torch or numpy imports them in its registration hooks and exports
their names through a module ``__getattr__``::

    __getattr__ = lazy_exports(__name__, {"FineTune": (".basic", "FineTune")})
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


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
