"""The plugin manager: a factory and a typed facade over ``pm.hook``.

Nothing is loaded at import time. :func:`get_plugin_manager` adds the hookspecs, blocks the
names in ``FQ_PLUGINS_DISABLE``, loads third-party entry points of the ``fq_plugins`` group
(unless ``FQ_PLUGINS_AUTOLOAD=0``), registers :data:`DEFAULT_PLUGINS` through the same
``pm.register`` path, and runs ``check_pending()``. A third-party plugin that fails to
import or register becomes a :class:`PluginLoadError` in ``load_errors``; the rest load.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as md
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs
from ._markers import NAME
from .errors import DuplicateNameError, PluginLoadError
from .registry import Registry

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

DEFAULT_PLUGINS: tuple[str, ...] = (
    "fq_plugins.compressors.uniform",
    "fq_plugins.compressors.fairquant",
    "fq_plugins.compressors.codeq",
    "fq_plugins.compressors.momos",
    "fq_plugins.compressors.bmrs",
    "fq_plugins.fairness.metrics",
    "fq_plugins.fairness.suite",
    "fq_plugins.energy.estimate",
    "fq_plugins.energy.rapl",
    "fq_plugins.energy.nvml",
    "fq_plugins.energy.codecarbon_meter",
    "fq_plugins.data.selectors",
)
"""Built-in plugin modules, registered exactly like third-party plugins."""

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
    """Typed facade: one method per event hook, registries per family, load errors."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.load_errors: list[PluginLoadError] = []
        self._dists: dict[str, tuple[str, str]] = {}
        self._registries: dict[str, Registry[Any]] | None = None

    # --- registries ---------------------------------------------------------------

    def _build_registries(self) -> dict[str, Registry[Any]]:
        from .protocols import Compressor, DataSelector, EnergyMeter, FairnessMetric

        regs: dict[str, Registry[Any]] = {
            "compressors": Registry("compressors", Compressor),
            "metrics": Registry("metrics", FairnessMetric),
            "meters": Registry("meters", EnergyMeter),
            "selectors": Registry("selectors", DataSelector),
        }
        for family, hook_name in _REGISTRATION_HOOKS.items():
            hook = getattr(self.pm.hook, hook_name)
            # Called one plugin at a time (in pluggy's LIFO order, reversed so built-ins,
            # registered last, come first) so each name is attributed to its plugin.
            for impl in reversed(hook.get_hookimpls()):
                try:
                    impl.function(register=regs[family].registrar(impl.plugin_name))
                except DuplicateNameError:
                    raise  # a conflict between two plugins: the user must choose
                except Exception as exc:
                    if impl.plugin_name in DEFAULT_PLUGINS:
                        raise  # a bug in fq-plugins itself must not be hidden
                    dist = self._dists.get(impl.plugin_name, ("?", "?"))[0]
                    self.load_errors.append(
                        PluginLoadError(
                            dist,
                            impl.plugin_name,
                            f"{hook_name} raised {type(exc).__name__}: {exc}",
                        )
                    )
        return regs

    @property
    def registries(self) -> dict[str, Registry[Any]]:
        if self._registries is None:
            self._registries = self._build_registries()
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

    # --- introspection ------------------------------------------------------------

    def plugin_infos(self) -> list[PluginInfo]:
        registered: dict[str, dict[str, list[str]]] = {}
        for family, reg in self.registries.items():
            for e in reg:
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

    def _check_plugin_hooks(self, plugin: object, plugin_name: str) -> None:
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
                self._check_plugin_hooks(plugin, ep.name)
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # reported, never swallowed: see load_errors
                self.load_errors.append(
                    PluginLoadError(dist_name, ep.name, f"{type(exc).__name__}: {exc}")
                )
                continue
            self._dists[ep.name] = (dist_name, version)

    def register_defaults(self, blocked: Iterable[str] = ()) -> None:
        from . import __version__

        blocked = set(blocked)
        for modname in DEFAULT_PLUGINS:
            if modname in blocked:
                continue
            self.pm.register(importlib.import_module(modname), name=modname)
            self._dists[modname] = (BUILTIN_DISTRIBUTION, __version__)


def _hook_names() -> list[str]:
    return list(hookspecs.__all__)


def get_plugin_manager(
    *, autoload: bool | None = None, disable: Iterable[str] | None = None
) -> FQPluginManager:
    """Build a plugin manager with the built-ins and (by default) third-party plugins.

    :param autoload: load ``fq_plugins`` entry points; default: unless the environment
        sets ``FQ_PLUGINS_AUTOLOAD=0``.
    :param disable: plugin names (entry-point names, or built-in module names such as
        ``fq_plugins.compressors.uniform``) to block; default: ``FQ_PLUGINS_DISABLE``,
        comma-separated.
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
    return fpm
