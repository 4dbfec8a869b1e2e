"""Name → plugin class, one registry per family.

Duplicate names raise :class:`DuplicateNameError` naming both plugins; unknown names raise
:class:`UnknownPluginError` listing the valid ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import DuplicateNameError, FQError, UnknownPluginError

__all__ = ["FAMILIES", "Entry", "Registry"]

T = TypeVar("T")

FAMILIES: dict[str, str] = {
    "compressors": "compressor",
    "metrics": "fairness metric",
    "meters": "energy meter",
    "selectors": "data selector",
}
"""Family key (as in ``fq-plugins list KEY``) → singular label used in messages."""


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    cls: type[T]
    plugin: str

    @property
    def description(self) -> str:
        desc = getattr(self.cls, "description", "") or (self.cls.__doc__ or "")
        return desc.strip().splitlines()[0] if desc.strip() else ""


class Registry(Generic[T]):
    """Plugin classes of one family, by name."""

    def __init__(self, family: str, base: type[T]) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; valid: {sorted(FAMILIES)}")
        self.family = family
        self.label = FAMILIES[family]
        self.base = base
        self._entries: dict[str, Entry[T]] = {}

    def register(self, cls: type[T], name: str | None = None, *, plugin: str = "?") -> None:
        """Add ``cls`` under ``name`` (default ``cls.name``) on behalf of ``plugin``."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise FQError(
                f"plugin {plugin} registered {cls!r} as a {self.label}, but it is not a "
                f"subclass of {self.base.__module__}.{self.base.__qualname__}"
            )
        name = name or getattr(cls, "name", "")
        if not name or not isinstance(name, str):
            raise FQError(
                f"plugin {plugin} registered {self.label} {cls.__qualname__} without a name: "
                f"set the class attribute `name` or pass register(cls, name=...)"
            )
        if name in self._entries:
            raise DuplicateNameError(self.label, name, self._entries[name].plugin, plugin)
        self._entries[name] = Entry(name, cls, plugin)

    def registrar(self, plugin: str) -> Callable[..., None]:
        """The ``register`` callable handed to one plugin's registration hook."""

        def register(cls: type[T], name: str | None = None) -> None:
            self.register(cls, name, plugin=plugin)

        return register

    def get(self, name: str, *, key: str | None = None) -> type[T]:
        try:
            return self._entries[name].cls
        except KeyError:
            raise UnknownPluginError(
                self.label, name, self._entries, key=key, list_command=self.family
            ) from None

    def entry(self, name: str) -> Entry[T]:
        self.get(name)
        return self._entries[name]

    def create(self, name: str, *args: Any, key: str | None = None, **kwargs: Any) -> T:
        return self.get(name, key=key)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)
