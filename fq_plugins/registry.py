"""Name → plugin class, one registry per family.

A plugin registers a class, or a :class:`LazyPlugin`: a reference by import path that
carries the name and the one-line description, so building a registry (and
``fq-plugins list`` / ``fq-plugins plugins``) imports no method module and no torch. The
class behind a reference is imported and checked on first use (:meth:`Registry.get`,
:attr:`Entry.cls`).

A plugin's registrations are staged (:meth:`Registry.stage`) and committed only when its
registration hook returns, so a hook that raises registers nothing.

Two plugins registering the same name is a *conflict*: it is recorded (both plugins named),
listed, and raised as :class:`DuplicateNameError` when the name is used or
:meth:`Registry.check_conflicts` is called — never resolved silently in favour of one.
Unknown names raise :class:`UnknownPluginError` listing the valid ones.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from .errors import DuplicateNameError, FQError, UnknownPluginError

__all__ = ["FAMILIES", "FAMILY_BASES", "Entry", "LazyPlugin", "Registry", "Staging"]

T = TypeVar("T")

FAMILIES: dict[str, str] = {
    "compressors": "compressor",
    "metrics": "fairness metric",
    "meters": "energy meter",
    "selectors": "data selector",
}
"""Family key (as in ``fq-plugins list KEY``) → singular label used in messages."""

FAMILY_BASES: dict[str, str] = {
    "compressors": "fq_plugins.protocols:Compressor",
    "metrics": "fq_plugins.protocols:FairnessMetric",
    "meters": "fq_plugins.protocols:EnergyMeter",
    "selectors": "fq_plugins.protocols:DataSelector",
}
"""Family key → import path of the base class its plugins subclass (imported on first check,
because ``fq_plugins.protocols`` imports torch)."""

_TARGET = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _import_target(target: str) -> Any:
    """``"package.module:Outer.Inner"`` → the object (ImportError / AttributeError propagate)."""
    module, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0].strip() if text else ""


@dataclasses.dataclass(frozen=True)
class LazyPlugin:
    """A plugin class by reference, imported only when its name is used.

    ``register(LazyPlugin("fq_plugins_x.pruner:MyPruner", name="my_pruner",
    description="One line for `fq-plugins list`."))`` registers ``my_pruner`` without
    importing ``fq_plugins_x.pruner``. On first use the class is imported and must subclass
    the family's base and have ``name`` equal to :attr:`name`; otherwise the use raises
    :class:`~fq_plugins.errors.FQError` saying which.

    :param target: ``"package.module:Class"`` (a dotted path, a colon, the class's qualified name).
    :param name: the class's ``name``; the default registered name.
    :param description: the class's one-line description, shown by ``fq-plugins list``.
    """

    target: str
    name: str
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not _TARGET.fullmatch(self.target):
            raise FQError(
                f"LazyPlugin target {self.target!r} is not an import path; "
                f"write it as 'package.module:ClassName', e.g. "
                f"'fq_plugins.compressors.uniform:UniformCompressor'"
            )
        if not isinstance(self.name, str) or not self.name:
            raise FQError(
                f"LazyPlugin({self.target!r}) has name {self.name!r}; pass the class's `name`, "
                f"a non-empty string: LazyPlugin({self.target!r}, name='...')"
            )
        if not isinstance(self.description, str):
            raise FQError(
                f"LazyPlugin({self.target!r}) has description {self.description!r}; "
                f"pass the class's one-line description as a string"
            )

    @property
    def module(self) -> str:
        """The module that defines the class (imported on first use)."""
        return self.target.partition(":")[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Entry(Generic[T]):
    """One registration: ``name`` by ``plugin``, as a class or a :class:`LazyPlugin`."""

    name: str
    plugin: str
    target: type[T] | LazyPlugin
    registry: Registry[T] = dataclasses.field(repr=False)

    @property
    def lazy(self) -> bool:
        """True while the class is a reference (importing it is deferred)."""
        return isinstance(self.target, LazyPlugin)

    @property
    def description(self) -> str:
        """The one-line description; never imports a lazy reference's module."""
        if isinstance(self.target, LazyPlugin):
            return _first_line(self.target.description)
        cls = self.target
        return _first_line(getattr(cls, "description", "") or (cls.__doc__ or ""))

    @property
    def plugins(self) -> list[str]:
        """Every plugin that registered this name, first registration first."""
        return [e.plugin for e in self.registry.claims(self.name)]

    @property
    def conflict(self) -> bool:
        """True when more than one plugin registered this name."""
        return len(self.registry.claims(self.name)) > 1

    @property
    def cls(self) -> type[T]:
        """The class: a lazy reference is imported and checked here.

        :raises DuplicateNameError: when another plugin registered the same name.
        """
        self.registry.check_conflict(self.name)
        return self.registry.resolve(self)


class Staging(Generic[T]):
    """The ``register`` callable handed to one plugin's registration hook.

    Each call is validated at once (so the error points at the plugin's line) but nothing is
    added to the registry until :meth:`commit`, which the manager calls only when every
    registration hook of the plugin returned.
    """

    def __init__(self, registry: Registry[T], plugin: str) -> None:
        self.registry = registry
        self.plugin = plugin
        self.entries: list[Entry[T]] = []

    def __call__(self, cls: type[T] | LazyPlugin, name: str | None = None) -> None:
        entry = self.registry.make_entry(cls, name, plugin=self.plugin)
        if any(e.name == entry.name for e in self.entries):
            raise FQError(
                f"plugin {self.plugin} registered the {self.registry.label} name "
                f"{entry.name!r} twice; register each name once"
            )
        self.entries.append(entry)

    def commit(self) -> None:
        """Add the staged entries to the registry (a name another plugin has is a conflict)."""
        for entry in self.entries:
            self.registry.add(entry)
        self.entries = []


class Registry(Generic[T]):
    """Plugin classes of one family, by name.

    :param family: a key of :data:`FAMILIES`.
    :param base: the class every plugin must subclass, or its import path
        (``"package.module:Class"``); default: the family's entry in :data:`FAMILY_BASES`.
    """

    def __init__(self, family: str, base: type[T] | str | None = None) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown family {family!r}; valid: {sorted(FAMILIES)}")
        self.family = family
        self.label = FAMILIES[family]
        self._base: type[T] | str = FAMILY_BASES[family] if base is None else base
        self._claims: dict[str, list[Entry[T]]] = {}

    @property
    def base(self) -> type[T]:
        """The family's base class (imported on first access when given by path)."""
        if isinstance(self._base, str):
            base = _import_target(self._base)
            if not isinstance(base, type):
                raise TypeError(f"{self._base!r} is {base!r}, not a class; pass a base class")
            self._base = base
        return self._base

    # --- adding -------------------------------------------------------------------

    def make_entry(
        self, cls: type[T] | LazyPlugin, name: str | None = None, *, plugin: str = "?"
    ) -> Entry[T]:
        """Validate one registration by ``plugin`` and return its entry (not added)."""
        if isinstance(cls, LazyPlugin):
            name = cls.name if name is None else name
        elif isinstance(cls, type):
            where = f"plugin {plugin} registered {cls!r} as a {self.label}"
            self._check_class(cls, where, named=False)
            name = getattr(cls, "name", "") if name is None else name
        else:
            raise FQError(
                f"plugin {plugin} passed {cls!r} ({type(cls).__name__}) to register() for a "
                f"{self.label}; pass the class itself, or a lazy reference "
                f"LazyPlugin('package.module:Class', name=..., description=...) from "
                f"fq_plugins.registry"
            )
        if not name or not isinstance(name, str):
            what = cls.target if isinstance(cls, LazyPlugin) else cls.__qualname__
            raise FQError(
                f"plugin {plugin} registered {self.label} {what} without a name (got "
                f"{name!r}): set the class attribute `name` or pass register(cls, name=...)"
            )
        return Entry(name, plugin, cls, self)

    def add(self, entry: Entry[T]) -> None:
        """Add a validated entry; a name already registered by a plugin becomes a conflict."""
        self._claims.setdefault(entry.name, []).append(entry)

    def register(
        self, cls: type[T] | LazyPlugin, name: str | None = None, *, plugin: str = "?"
    ) -> None:
        """Add ``cls`` under ``name`` (default ``cls.name``) on behalf of ``plugin``, now."""
        self.add(self.make_entry(cls, name, plugin=plugin))

    def stage(self, plugin: str) -> Staging[T]:
        """A ``register`` callable for ``plugin`` whose registrations wait for ``commit()``."""
        return Staging(self, plugin)

    def remove_plugin(self, plugin: str) -> None:
        """Forget every name ``plugin`` registered (it was unregistered)."""
        for name in list(self._claims):
            kept = [e for e in self._claims[name] if e.plugin != plugin]
            if kept:
                self._claims[name] = kept
            else:
                del self._claims[name]

    # --- conflicts ----------------------------------------------------------------

    def conflicts(self) -> dict[str, list[str]]:
        """Names registered by more than one plugin → those plugins, in registration order."""
        return {
            name: [e.plugin for e in claims]
            for name, claims in sorted(self._claims.items())
            if len(claims) > 1
        }

    def check_conflict(self, name: str) -> None:
        """Raise :class:`DuplicateNameError` naming both plugins if ``name`` is a conflict."""
        claims = self._claims.get(name, [])
        if len(claims) > 1:
            raise DuplicateNameError(self.label, name, claims[0].plugin, claims[1].plugin)

    def check_conflicts(self) -> None:
        """Raise :class:`DuplicateNameError` for the first conflicting name, if any."""
        for name in self.conflicts():
            self.check_conflict(name)

    # --- lookup -------------------------------------------------------------------

    def claims(self, name: str) -> list[Entry[T]]:
        """Every registration of ``name`` (two or more for a conflict; [] if unknown)."""
        return list(self._claims.get(name, []))

    def entry(self, name: str, *, key: str | None = None) -> Entry[T]:
        """The entry of ``name``.

        :raises UnknownPluginError: no plugin registered ``name`` (lists the valid ones).
        :raises DuplicateNameError: two plugins registered it.
        """
        if name not in self._claims:
            raise UnknownPluginError(
                self.label, name, self._claims, key=key, list_command=self.family
            )
        self.check_conflict(name)
        return self._claims[name][0]

    def get(self, name: str, *, key: str | None = None) -> type[T]:
        """The class registered as ``name``, imported and checked if it was a reference.

        :param key: the recipe key path, named by the error for an unknown name.
        """
        return self.resolve(self.entry(name, key=key))

    def create(self, name: str, *args: Any, key: str | None = None, **kwargs: Any) -> T:
        return self.get(name, key=key)(*args, **kwargs)

    def resolve(self, entry: Entry[T]) -> type[T]:
        """``entry``'s class; a :class:`LazyPlugin` is imported and checked.

        :raises FQError: the reference does not import, names no attribute, is not a
            subclass of the family's base, or its ``name`` differs from the reference's.
        """
        ref = entry.target
        if not isinstance(ref, LazyPlugin):
            return ref
        where = (
            f"plugin {entry.plugin} registered {self.label} {entry.name!r} as "
            f"LazyPlugin({ref.target!r})"
        )
        fix = f"fix the plugin, or disable it with FQ_PLUGINS_DISABLE={entry.plugin}"
        try:
            cls = _import_target(ref.target)
        except FQError:
            raise  # e.g. MissingDependencyError: its message already gives the fix
        except ImportError as exc:
            raise FQError(
                f"{where}, but importing {ref.module!r} failed ({type(exc).__name__}: {exc}); "
                f"install what it needs, {fix}"
            ) from exc
        except AttributeError as exc:
            raise FQError(
                f"{where}, but that attribute does not exist ({exc}); correct the target, {fix}"
            ) from exc
        self._check_class(cls, where, f": correct the target, {fix}")
        if getattr(cls, "name", None) != ref.name:
            raise FQError(
                f"{where} with name {ref.name!r}, but "
                f"{cls.__module__}.{cls.__qualname__}.name is {getattr(cls, 'name', None)!r}; "
                f"make LazyPlugin(name=...) equal the class's `name`, {fix}"
            )
        return cls

    def _check_class(self, cls: object, where: str, fix: str = "", *, named: bool = True) -> None:
        base = self.base
        if not (isinstance(cls, type) and issubclass(cls, base)):
            path = f"{base.__module__}.{base.__qualname__}"
            subject = repr(cls) if named else "it"
            raise FQError(
                f"{where}, but {subject} is not a subclass of {path}; register "
                f"a {self.label} class (a subclass of {path}){fix}"
            )

    def names(self) -> list[str]:
        """Every registered name once, sorted (a conflicting name included)."""
        return sorted(self._claims)

    def __contains__(self, name: object) -> bool:
        return name in self._claims

    def __iter__(self) -> Iterator[Entry[T]]:
        """One entry per name, sorted: the first registration (see ``conflict``)."""
        return iter(self._claims[name][0] for name in sorted(self._claims))

    def __len__(self) -> int:
        return len(self._claims)
