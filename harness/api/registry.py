"""Registries: specs collected from plugins, keyed by name."""
from __future__ import annotations

from typing import Generic, Iterator, Optional, TypeVar

from .errors import DuplicateName, UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    """Specs of one kind (backbones, tasks...), keyed by name, each with its provider.

    Args:
        kind: singular noun used in messages ("backbone").
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._providers: dict[str, str] = {}
        self._plugins: dict[str, str] = {}

    def add(self, spec: T, provider: str, plugin: Optional[str] = None) -> None:
        """File ``spec``; ``provider`` labels where it came from, ``plugin`` is the plugin's name."""
        name = spec.name  # type: ignore[attr-defined]
        if name in self._items:
            raise DuplicateName(
                f"{self.kind} {name!r} is registered twice: by plugin {self._providers[name]!r} "
                f"and by plugin {provider!r}. Disable one of them "
                "(TRANSFER_BENCH_DISABLE_PLUGINS or --disable-plugin)."
            )
        self._items[name] = spec
        self._providers[name] = provider
        self._plugins[name] = plugin if plugin is not None else provider

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(self.kind, name, self.names()) from None

    def resolve(self, text: str) -> tuple[T, Optional[str]]:
        """Look up ``NAME`` or ``NAME:ARG`` (``file:/w.pth``, ``timm:convnext_nano``).

        An exact registered name wins; otherwise the part before the first ``:`` names the
        spec and the rest is returned as its argument.
        """
        if text in self._items:
            return self._items[text], None
        if ":" in text:
            prefix, arg = text.split(":", 1)
            if prefix in self._items:
                return self._items[prefix], arg
        return self.get(text), None

    def provider(self, name: str) -> str:
        """Who registered ``name``, for messages: ``"PLUGIN (ORIGIN)"``."""
        return self._providers[name]

    def plugin(self, name: str) -> str:
        """The name of the plugin that registered ``name`` (what ``--disable-plugin`` takes)."""
        return self._plugins[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._items)
