"""Every hook fq-plugins calls, typed and documented.

Registration hooks follow the llm/datasette pattern: the host passes a ``register``
callable (:class:`RegisterFn`) and keeps control of validation and duplicate names. They are
called once per plugin, when the plugin manager is built (``get_plugin_manager()``; for a
plugin added later, by ``FQPluginManager.register``), one plugin at a time so that every
registered name is attributed to the plugin that registered it. A plugin's registrations
take effect only when all its registration hooks return: one that raises registers nothing.

Event hooks are observers: every implementation is called (pluggy's default "call all"
convention, newest plugin first), results are ignored, and an exception propagates to
the caller so that a broken logger is never silent.

docs/plugin-hooks.md has a section per hook with its exact signature; a test fails when
a hook lacks that section or a test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ._markers import hookspec

if TYPE_CHECKING:
    import torch

    from .protocols import EnergyReading
    from .registry import LazyPlugin
    from .report import EvaluationReport, RunReport
    from .session import CompressionSession

__all__ = [
    "fq_after_attach",
    "fq_on_energy_reading",
    "fq_on_evaluation",
    "fq_on_run_end",
    "fq_on_step",
    "fq_register_compressors",
    "fq_register_data_selectors",
    "fq_register_energy_meters",
    "fq_register_fairness_metrics",
]


class RegisterFn(Protocol):
    """The ``register`` callable a registration hook receives."""

    def __call__(self, cls: type[Any] | LazyPlugin, name: str | None = None) -> None:
        """Register a plugin class of the hook's family under ``name``.

        :param cls: the class (it must subclass the family's base, e.g. ``Compressor``), or a
            :class:`~fq_plugins.registry.LazyPlugin` reference ``LazyPlugin("pkg.mod:Class",
            name=..., description=...)``, imported and checked only when the name is used.
        :param name: the registered name; default ``cls.name`` (the reference's ``name``).
        :raises FQError: ``cls`` is not a class or reference of the family, has no name, or
            this plugin already registered ``name``. Inside the hook, letting it propagate
            makes the plugin register nothing (reported as a ``PluginLoadError``). A name that
            *another* plugin registered is not raised here: it is recorded as a conflict, and
            using the name (or ``fq-plugins run``/``validate``) raises ``DuplicateNameError``
            naming both plugins.
        """


# --- registration hooks -------------------------------------------------------------


@hookspec
def fq_register_compressors(register: RegisterFn) -> None:
    """Contribute :class:`~fq_plugins.protocols.Compressor` subclasses.

    Called once per plugin, when the plugin manager is built; the return value is ignored.

    :param register: ``register(cls, name=None)`` (:class:`RegisterFn`). ``cls`` must
        subclass ``Compressor`` and carry a pydantic ``Config``, or be a ``LazyPlugin``
        reference to such a class; ``name`` defaults to ``cls.name``. A name that another
        plugin also registers is a conflict: using it raises ``DuplicateNameError`` naming
        both.
    """


@hookspec
def fq_register_fairness_metrics(register: RegisterFn) -> None:
    """Contribute :class:`~fq_plugins.protocols.FairnessMetric` subclasses.

    Called once per plugin, when the plugin manager is built; the return value is ignored.

    :param register: ``register(cls, name=None)`` (:class:`RegisterFn`); see
        ``fq_register_compressors``.
    """


@hookspec
def fq_register_energy_meters(register: RegisterFn) -> None:
    """Contribute :class:`~fq_plugins.protocols.EnergyMeter` subclasses.

    Called once per plugin, when the plugin manager is built; the return value is ignored.

    :param register: ``register(cls, name=None)`` (:class:`RegisterFn`); see
        ``fq_register_compressors``.
    """


@hookspec
def fq_register_data_selectors(register: RegisterFn) -> None:
    """Contribute :class:`~fq_plugins.protocols.DataSelector` subclasses (coresets).

    Called once per plugin, when the plugin manager is built; the return value is ignored.

    :param register: ``register(cls, name=None)`` (:class:`RegisterFn`); see
        ``fq_register_compressors``.
    """


# --- event hooks --------------------------------------------------------------------


@hookspec
def fq_after_attach(session: CompressionSession, model: torch.nn.Module) -> None:
    """A compression session has attached all its methods to ``model``.

    Called once per session, after every method's ``attach`` and before any training step.
    All implementations are called; return values are ignored.

    :param session: the session; ``session.methods`` are the attached compressors in order.
    :param model: the model now carrying the methods' state (parametrizations, buffers).
    """


@hookspec
def fq_on_step(step: int, phase: str, losses: dict[str, float]) -> None:
    """One optimizer step finished.

    All implementations are called; return values are ignored. Keep it cheap: it runs on
    the training hot path.

    :param step: global step index within the phase, from 0.
    :param phase: ``"train"`` (FP32 training) or ``"finetune:<variant>"`` (``"finetune:<variant>:<n>"``
        for stage n of a pipeline with a structural method such as BMRS).
    :param losses: the step's loss terms as floats: ``total``, ``task``, ``fairness``,
        ``penalty`` (missing terms are absent).
    """


@hookspec
def fq_on_evaluation(report: EvaluationReport) -> None:
    """An evaluation finished (one model variant on the test split).

    All implementations are called; return values are ignored.

    :param report: accuracy, every fairness metric's ``MetricResult``, compression costs
        (bits, sparsity, packed bytes, BOPs) and the energy readings of the variant.
    """


@hookspec
def fq_on_energy_reading(phase: str, reading: EnergyReading) -> None:
    """An energy meter produced a reading for a phase of the run.

    All implementations are called; return values are ignored.

    :param phase: what was measured, e.g. ``"train"``, ``"finetune:uniform-4"``, ``"eval:fp32"``.
    :param reading: seconds, joules per domain and the method label per domain
        (``measured:rapl``, ``estimated:cpu-time-tdp`` …).
    """


@hookspec
def fq_on_run_end(report: RunReport, output_dir: str) -> None:
    """``fq-plugins run`` finished and wrote its report.

    Called once, after ``report.json`` is written. All implementations are called; return
    values are ignored. Exporters (a tracker, a dashboard) plug in here.

    :param report: the whole run: every variant's ``EvaluationReport`` and the run metadata.
    :param output_dir: the folder holding ``report.json`` and the resolved recipe.
    """
