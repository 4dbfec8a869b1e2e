"""The plugin manager: a factory and a typed facade over ``pm.hook``.

Nothing is loaded at import time. :func:`get_plugin_manager` adds the hookspecs, blocks the
names in ``FQ_PLUGINS_DISABLE``, loads third-party entry points of the ``fq_plugins`` group
(unless ``FQ_PLUGINS_AUTOLOAD=0``), registers :data:`DEFAULT_PLUGINS` through the same
``pm.register`` path, runs ``check_pending()``, and builds the registries by calling every
plugin's registration hooks. The built-ins register lazy references
(:mod:`fq_plugins.default_plugins`), so none of this imports torch.

Failures are never silent. A third-party plugin that fails to import, implements an unknown
hook, or whose registration hook raises becomes a :class:`PluginLoadError` in
``load_errors`` and registers nothing (it is unregistered); the rest load. A built-in that
fails raises: that is a bug in fq-plugins. Two plugins registering one name is recorded as a
conflict (:meth:`FQPluginManager.conflicts`); using the name, or
:meth:`FQPluginManager.check_conflicts`, raises :class:`DuplicateNameError` naming both.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

from . import default_plugins, hookspecs
from ._markers import NAME
from .errors import DuplicateNameError, FQError, PluginLoadError
from .registry import FAMILIES, Registry, Staging

if TYPE_CHECKING:
    import torch

    from .protocols import (
        Compressor,
        DataSelector,
        EnergyMeter,
        EnergyReading,
        FairnessMetric,
    )
    from .report import EvaluationReport, RunReport
    from .session import CompressionSession

__all__ = ["DEFAULT_PLUGINS", "FQPluginManager", "PluginInfo", "get_plugin_manager"]

DEFAULT_PLUGINS: tuple[str, ...] = tuple(default_plugins.PLUGINS)
"""Names of the built-in plugins, registered exactly like third-party plugins.

Each is named after the module that defines its classes (``fq_plugins.compressors.uniform``,
``fq_plugins.energy.rapl`` …), which is also the name ``FQ_PLUGINS_DISABLE`` takes; the
plugin objects, which register lazy references, are in :mod:`fq_plugins.default_plugins`.
"""

BUILTIN_DISTRIBUTION = "fq-plugins"

_REGISTRATION_HOOKS = {
    "compressors": "fq_register_compressors",
    "metrics": "fq_register_fairness_metrics",
    "meters": "fq_register_energy_meters",
    "selectors": "fq_register_data_selectors",
}


@dataclasses.dataclass
class PluginInfo:
    """One loaded plugin, as ``fq-plugins plugins`` shows it."""

    name: str
    distribution: str
    version: str
    hooks: list[str]
    registered: dict[str, list[str]]
    builtin: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _env_list(var: str) -> set[str]:
    return {p.strip() for p in os.environ.get(var, "").split(",") if p.strip()}


class FQPluginManager:
    """Typed facade: one method per event hook, registries per family, load errors.

    Build it with :func:`get_plugin_manager`. The registries reflect the plugins registered
    with ``pm``: one added later (:meth:`register`, or ``pm.register`` directly) has its
    registration hooks called on the next registry access, one unregistered loses its names.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.load_errors: list[PluginLoadError] = []
        self._dists: dict[str, tuple[str, str]] = {}
        self._registries: dict[str, Registry[Any]] = {
            family: Registry(family) for family in FAMILIES
        }
        # plugin name → the plugin object whose names the registries hold
        self._registered: dict[str, object] = {}
        self._built = False

    # --- registries ---------------------------------------------------------------

    def build_registries(self) -> None:
        """Call the registration hooks of every plugin not yet seen (built-ins first).

        Called by :func:`get_plugin_manager`, where a third-party failure is recorded in
        ``load_errors``; afterwards (a plugin added at run time) the failure raises.
        """
        current = {name: p for name, p in self.pm.list_name_plugin() if p is not None}
        for name, plugin in list(self._registered.items()):
            if current.get(name) is not plugin:  # unregistered (or replaced) since
                for reg in self._registries.values():
                    reg.remove_plugin(name)
                del self._registered[name]
        new = [name for name in current if name not in self._registered]
        new.sort(key=lambda name: name not in DEFAULT_PLUGINS)  # stable: built-ins first
        for name in new:
            self._register_names(name, current[name])
        self._built = True

    def _register_names(self, name: str, plugin: object) -> None:
        """Run one plugin's registration hooks; commit its names only if all return."""
        stages: dict[str, Staging[Any]] = {
            family: reg.stage(name) for family, reg in self._registries.items()
        }
        hook_name = ""
        try:
            for family, hook_name in _REGISTRATION_HOOKS.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is not plugin:
                        continue
                    if impl.wrapper or impl.hookwrapper:
                        raise FQError(
                            "a registration hook cannot be a wrapper; remove "
                            "wrapper=True / hookwrapper=True from its @hookimpl"
                        )
                    kwargs = {"register": stages[family]} if "register" in impl.argnames else {}
                    impl.function(**kwargs)
        except Exception as exc:
            if name in DEFAULT_PLUGINS:
                raise  # a bug in fq-plugins itself must not be hidden
            self.pm.unregister(plugin, name)  # nothing of a half-registered plugin is used
            reason = f"{hook_name} raised {type(exc).__name__}: {exc}"
            if self._built:  # added at run time by the caller's own code: tell the caller now
                raise FQError(
                    f"plugin {name!r} failed to register: {reason}; it was unregistered"
                ) from exc
            dist = self._dists.pop(name, ("?", "?"))[0]
            self.load_errors.append(PluginLoadError(dist, name, reason))
            return
        for stage in stages.values():
            stage.commit()
        self._registered[name] = plugin

    @property
    def registries(self) -> dict[str, Registry[Any]]:
        """Family key → registry, up to date with the plugins registered now."""
        self.build_registries()
        return self._registries

    @property
    def compressors(self) -> Registry[Compressor]:
        return self.registries["compressors"]

    @property
    def metrics(self) -> Registry[FairnessMetric]:
        return self.registries["metrics"]

    @property
    def meters(self) -> Registry[EnergyMeter]:
        return self.registries["meters"]

    @property
    def selectors(self) -> Registry[DataSelector]:
        return self.registries["selectors"]

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Add a plugin now and register its names (``pm.register`` plus the registration hooks).

        :returns: the plugin name, or None when the name is blocked (``FQ_PLUGINS_DISABLE``).
        :raises FQError: the plugin implements an unknown hook, or a registration hook raised
            (the plugin is then unregistered and none of its names are kept).
        """
        try:
            self._check_plugin_hooks(plugin)
        except ValueError as exc:
            raise FQError(f"plugin {name or plugin!r}: {exc}") from None
        registered = self.pm.register(plugin, name=name)
        self.build_registries()
        return registered

    # --- conflicts ----------------------------------------------------------------

    def conflicts(self) -> list[DuplicateNameError]:
        """One error per name that two or more plugins registered in a family."""
        out = []
        for reg in self.registries.values():
            for name, plugins in reg.conflicts().items():
                out.append(DuplicateNameError(reg.label, name, plugins[0], plugins[1]))
        return out

    def check_conflicts(self) -> None:
        """Raise the first :class:`DuplicateNameError`, if two plugins registered one name.

        ``fq-plugins run`` and ``validate`` call it before using any plugin; a library
        caller meets the same error when it uses a conflicting name.
        """
        for err in self.conflicts():
            raise err

    # --- introspection ------------------------------------------------------------

    def plugin_infos(self) -> list[PluginInfo]:
        registered: dict[str, dict[str, list[str]]] = {}
        for family, reg in self.registries.items():
            for name in reg.names():
                for e in reg.claims(name):
                    registered.setdefault(e.plugin, {}).setdefault(family, []).append(e.name)
        infos = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            dist, version = self._dists.get(name, ("?", "?"))
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            infos.append(
                PluginInfo(
                    name=name,
                    distribution=dist,
                    version=version,
                    hooks=hooks,
                    registered=registered.get(name, {}),
                    builtin=name in DEFAULT_PLUGINS,
                )
            )
        return sorted(infos, key=lambda i: (not i.builtin, i.name))

    # --- event hooks (typed) ------------------------------------------------------

    def after_attach(self, session: CompressionSession, model: torch.nn.Module) -> None:
        self.pm.hook.fq_after_attach(session=session, model=model)

    def on_step(self, step: int, phase: str, losses: dict[str, float]) -> None:
        self.pm.hook.fq_on_step(step=step, phase=phase, losses=losses)

    def on_evaluation(self, report: EvaluationReport) -> None:
        self.pm.hook.fq_on_evaluation(report=report)

    def on_energy_reading(self, phase: str, reading: EnergyReading) -> None:
        self.pm.hook.fq_on_energy_reading(phase=phase, reading=reading)

    def on_run_end(self, report: RunReport, output_dir: str) -> None:
        self.pm.hook.fq_on_run_end(report=report, output_dir=output_dir)

    # --- loading ------------------------------------------------------------------

    def _check_plugin_hooks(self, plugin: object) -> None:
        """Reject a plugin implementing a hook we do not define, naming the hook."""
        for attr in dir(plugin):
            if not attr.startswith("fq_"):
                continue
            if self.pm.parse_hookimpl_opts(plugin, attr) is None:
                continue
            caller = getattr(self.pm.hook, attr, None)
            if caller is None or not caller.has_spec():
                known = ", ".join(sorted(_hook_names()))
                raise ValueError(f"it implements unknown hook {attr!r}; known hooks: {known}")

    def load_entry_points(self, blocked: Iterable[str] = ()) -> None:
        blocked = set(blocked)
        seen: set[str] = set()
        for ep in md.entry_points(group=NAME):
            if ep.name in blocked or ep.name in seen:
                continue
            seen.add(ep.name)
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            version = dist.version if dist is not None else "?"
            try:
                plugin = ep.load()
                self._check_plugin_hooks(plugin)
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # reported, never swallowed: see load_errors
                self.load_errors.append(
                    PluginLoadError(dist_name, ep.name, f"{type(exc).__name__}: {exc}")
                )
                continue
            self._dists[ep.name] = (dist_name, version)

    def register_defaults(self, blocked: Iterable[str] = ()) -> None:
        """Register the built-in plugin objects (lazy references: no method module is imported)."""
        from . import __version__

        blocked = set(blocked)
        for name, plugin in default_plugins.PLUGINS.items():
            if name in blocked:
                continue
            self.pm.register(plugin, name=name)
            self._dists[name] = (BUILTIN_DISTRIBUTION, __version__)


def _hook_names() -> list[str]:
    return list(hookspecs.__all__)


def get_plugin_manager(
    *, autoload: bool | None = None, disable: Iterable[str] | None = None
) -> FQPluginManager:
    """Build a plugin manager with the built-ins and (by default) third-party plugins.

    Its registries are built here: every plugin's registration hooks run once, a third-party
    failure lands in ``load_errors`` (check it, and :meth:`FQPluginManager.conflicts`).

    :param autoload: load ``fq_plugins`` entry points; default: unless the environment
        sets ``FQ_PLUGINS_AUTOLOAD=0``.
    :param disable: plugin names (entry-point names, or built-in plugin names such as
        ``fq_plugins.compressors.uniform``, see :data:`DEFAULT_PLUGINS`) to block; default:
        ``FQ_PLUGINS_DISABLE``, comma-separated.
    """
    pm = pluggy.PluginManager(NAME)
    pm.add_hookspecs(hookspecs)
    blocked = set(disable) if disable is not None else _env_list("FQ_PLUGINS_DISABLE")
    for name in blocked:
        pm.set_blocked(name)
    fpm = FQPluginManager(pm)
    if autoload is None:
        autoload = os.environ.get("FQ_PLUGINS_AUTOLOAD", "1").strip().lower() not in (
            "0",
            "false",
            "no",
        )
    if autoload:
        fpm.load_entry_points(blocked)
    fpm.register_defaults(blocked)
    pm.check_pending()
    fpm.build_registries()
    return fpm
