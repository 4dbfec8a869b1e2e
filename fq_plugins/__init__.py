"""fq-plugins: fairness-aware compression and energy accounting as plugins.

The public API is imported lazily (``fq_plugins.load_recipe`` imports ``recipe`` on first
use), so ``import fq_plugins`` stays cheap and never imports transformers or nncf.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "hookimpl": "._markers",
    "hookspec": "._markers",
    "NAME": "._markers",
    "get_plugin_manager": ".manager",
    "DEFAULT_PLUGINS": ".manager",
    "FQPluginManager": ".manager",
    "Registry": ".registry",
    "FQError": ".errors",
    "ConfigError": ".errors",
    "UnknownPluginError": ".errors",
    "DuplicateNameError": ".errors",
    "PluginLoadError": ".errors",
    "MissingDependencyError": ".errors",
    "Recipe": ".recipe",
    "CompressionRecipe": ".recipe",
    "load_recipe": ".recipe",
    "load_compression_recipe": ".recipe",
    "Objective": ".engine",
    "LossTerms": ".engine",
    "CompressionPipeline": ".engine",
    "fit": ".engine",
    "evaluate": ".engine",
    "build_report": ".engine",
    "TargetSpec": ".targets",
    "select_targets": ".targets",
    "CompressionSession": ".session",
    "model_cost": ".accounting",
    "ModelCost": ".accounting",
    "count_macs": ".accounting",
    "Compressor": ".protocols",
    "MethodConfig": ".protocols",
    "AttachContext": ".protocols",
    "CompressionStats": ".protocols",
    "LayerStats": ".protocols",
    "FairnessMetric": ".protocols",
    "MetricResult": ".protocols",
    "EnergyMeter": ".protocols",
    "EnergyReading": ".protocols",
    "Availability": ".protocols",
    "DataSelector": ".protocols",
    "GroupConfusion": ".fairness.table",
    "fairness_penalty": ".fairness.regularizers",
    "GroupDataset": ".data.base",
    "make_synthetic": ".data.synthetic",
    "load_npz": ".data.npz",
    "UniformCompressor": ".compressors.uniform",
    "FairQuantCompressor": ".compressors.fairquant",
    "group_importance": ".compressors.fairquant",
    "allocate_bits": ".compressors.fairquant",
    "run": ".run",
    "co2st_estimate": ".energy.co2st",
    "CarbonModel": ".energy.carbon",
    "pepr": ".energy.pepr",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fq_plugins' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
