"""The built-in plugins' lazy references: they match their classes, cover every method class,
and let `fq-plugins list` / `plugins` answer without importing torch."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys

import pytest

from fq_plugins import default_plugins
from fq_plugins.manager import DEFAULT_PLUGINS
from fq_plugins.protocols import Compressor, DataSelector, EnergyMeter, FairnessMetric

# family key → (base class, the plugin class that registers it), written out here rather than
# read from fq_plugins so that a wrong mapping there fails
FAMILY = {
    "compressors": (Compressor, default_plugins.Compressors),
    "metrics": (FairnessMetric, default_plugins.FairnessMetrics),
    "meters": (EnergyMeter, default_plugins.EnergyMeters),
    "selectors": (DataSelector, default_plugins.DataSelectors),
}
REFS = [
    (plugin_name, ref)
    for plugin_name, plugin in default_plugins.PLUGINS.items()
    for ref in plugin.refs
]


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip()


def _import(target: str) -> type:
    module, _, qualname = target.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def test_builtin_plugin_names_are_the_method_modules():
    """These are the names FQ_PLUGINS_DISABLE takes (unchanged since 0.1: users rely on them)."""
    assert DEFAULT_PLUGINS == (
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
    names = [ref.name for _, ref in REFS]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("plugin_name,ref", REFS, ids=[r.name for _, r in REFS])
def test_lazy_reference_matches_its_class(plugin_name, ref):
    """The light module cannot drift from the classes: name, description, family, module."""
    cls = _import(ref.target)
    assert cls.__dict__.get("name") == ref.name, f"{ref.target}.name is {cls.name!r}"
    assert _first_line(cls.description) == ref.description
    assert cls.__module__ == plugin_name == ref.module
    [(_base, plugin_cls)] = [
        v for v in FAMILY.values() if isinstance(cls, type) and issubclass(cls, v[0])
    ]
    assert type(default_plugins.PLUGINS[plugin_name]) is plugin_cls


@pytest.mark.parametrize("plugin_name,ref", REFS, ids=[r.name for _, r in REFS])
def test_lazy_reference_resolves_through_the_registry(pm, plugin_name, ref):
    family = next(
        f
        for f, (_, plugin_cls) in FAMILY.items()
        if type(default_plugins.PLUGINS[plugin_name]) is plugin_cls
    )
    entry = pm.registries[family].entry(ref.name)
    assert entry.plugin == plugin_name and entry.description == ref.description
    assert pm.registries[family].get(ref.name) is _import(ref.target)


def _method_classes() -> set[str]:
    """Every class in the method packages that subclasses a family base and sets its own
    ``name``: what a user can name in a recipe, so each needs a reference."""
    found = set()
    bases = tuple(base for base, _ in FAMILY.values())
    for pkg_name in ("compressors", "fairness", "energy", "data"):
        pkg = importlib.import_module(f"fq_plugins.{pkg_name}")
        modules = [pkg] + [
            importlib.import_module(m.name)
            for m in pkgutil.walk_packages(pkg.__path__, f"{pkg.__name__}.")
        ]
        for mod in modules:
            for obj in vars(mod).values():
                if (
                    inspect.isclass(obj)
                    and obj.__module__ == mod.__name__
                    and issubclass(obj, bases)
                    and obj.__dict__.get("name")
                ):
                    found.add(f"{obj.__module__}:{obj.__qualname__}")
    return found


def test_every_method_class_has_a_lazy_reference():
    assert {ref.target for _, ref in REFS} == _method_classes()


def test_each_builtin_plugin_implements_only_its_family_hook(pm):
    for name in DEFAULT_PLUGINS:
        hooks = [h.name for h in pm.pm.get_hookcallers(pm.pm.get_plugin(name))]
        assert len(hooks) == 1 and hooks[0].startswith("fq_register_"), (name, hooks)


PROBE = """
import contextlib, io, json, sys
from fq_plugins.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main({argv!r}) == 0
heavy = [m for m in sys.modules if m == "torch" or m.startswith("torch.")
         or m == "fq_plugins.protocols" or m.startswith(("fq_plugins.compressors",
         "fq_plugins.fairness", "fq_plugins.energy", "fq_plugins.data"))]
print(json.dumps({{"heavy": heavy, "out": out.getvalue()}}))
"""


@pytest.mark.parametrize(
    "argv", [["list", "meters"], ["list", "compressors"], ["plugins", "--json"]]
)
def test_list_and_plugins_do_not_import_torch(argv):
    import json

    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)],
        capture_output=True,
        text=True,
        env={**os.environ, "FQ_PLUGINS_AUTOLOAD": "0"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["heavy"] == []
    if argv[0] == "list":  # and the answer is the real one, not an empty list
        assert ("rapl" if argv[1] == "meters" else "fairquant") in data["out"]
    else:
        assert len(json.loads(data["out"])["plugins"]) == len(DEFAULT_PLUGINS)
