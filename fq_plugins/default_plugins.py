"""The built-in plugins: lazy references to fq-plugins' own method classes.

Each built-in is a small plugin object registered through the same ``pm.register`` path as a
third-party plugin, under the name of the module that defines its classes
(``fq_plugins.energy.rapl``): ``FQ_PLUGINS_DISABLE=fq_plugins.energy.rapl`` blocks it, and
``fq-plugins plugins`` attributes its names to it. It registers
:class:`~fq_plugins.registry.LazyPlugin` references instead of classes, so building the
registries (and ``fq-plugins list`` / ``plugins``) imports no method module and no torch; a
class is imported, and checked against its reference, when its name is used.

A new built-in method adds its reference here (one entry of :data:`PLUGINS`), next to its
module, tests and docs page. tests/test_default_plugins.py fails when a reference's name or
description differs from its class, or a method class in the package has no reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._markers import hookimpl
from .registry import LazyPlugin

if TYPE_CHECKING:
    from .hookspecs import RegisterFn

__all__ = ["PLUGINS", "BuiltinPlugin"]


class BuiltinPlugin:
    """One built-in plugin: the lazy references of the classes one module defines.

    Subclasses implement exactly one registration hook, so ``fq-plugins plugins`` shows the
    hook the plugin really uses.
    """

    def __init__(self, *refs: LazyPlugin) -> None:
        modules = {r.module for r in refs}
        if len(modules) != 1:
            raise ValueError(f"a built-in plugin holds the classes of one module; got {modules}")
        self.refs = refs
        self.name = modules.pop()
        """The plugin name: the module that defines the classes."""

    def _register_all(self, register: RegisterFn) -> None:
        for ref in self.refs:
            register(ref)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: {', '.join(r.name for r in self.refs)}>"


class Compressors(BuiltinPlugin):
    @hookimpl
    def fq_register_compressors(self, register: RegisterFn) -> None:
        self._register_all(register)


class FairnessMetrics(BuiltinPlugin):
    @hookimpl
    def fq_register_fairness_metrics(self, register: RegisterFn) -> None:
        self._register_all(register)


class EnergyMeters(BuiltinPlugin):
    @hookimpl
    def fq_register_energy_meters(self, register: RegisterFn) -> None:
        self._register_all(register)


class DataSelectors(BuiltinPlugin):
    @hookimpl
    def fq_register_data_selectors(self, register: RegisterFn) -> None:
        self._register_all(register)


def _by_name(*plugins: BuiltinPlugin) -> dict[str, BuiltinPlugin]:
    return {p.name: p for p in plugins}


PLUGINS: dict[str, BuiltinPlugin] = _by_name(
    Compressors(
        LazyPlugin(
            "fq_plugins.compressors.uniform:UniformCompressor",
            name="uniform",
            description="Uniform k-bit per-channel symmetric absmax weight fake-quant (baseline).",
        ),
    ),
    Compressors(
        LazyPlugin(
            "fq_plugins.compressors.fairquant:FairQuantCompressor",
            name="fairquant",
            description="FairQuant: group-aware importance → budgeted mixed-precision bits; modes static/qat/baq.",
        ),
    ),
    Compressors(
        LazyPlugin(
            "fq_plugins.compressors.codeq:CoDeQCompressor",
            name="codeq",
            description="CoDeQ: learnable dead-zone quantizer per tensor (joint pruning + quantization).",
        ),
    ),
    Compressors(
        LazyPlugin(
            "fq_plugins.compressors.momos:MoMosCompressor",
            name="momos",
            description="MoMos: weights as a mosaic of k motifs (block size s), projected every epoch.",
        ),
    ),
    Compressors(
        LazyPlugin(
            "fq_plugins.compressors.bmrs:BMRSCompressor",
            name="bmrs",
            description="BMRS: Bayesian structured pruning (BMRS_N / BMRS_U, SNR and L2 baselines).",
        ),
    ),
    FairnessMetrics(
        LazyPlugin(
            "fq_plugins.fairness.metrics:GroupAccuracy",
            name="group_accuracy",
            description="Per-group accuracy; value = mean over groups with data (FairQuant's avg_acc).",
        ),
        LazyPlugin(
            "fq_plugins.fairness.metrics:WorstGroupAccuracy",
            name="worst_group_accuracy",
            description="Minimum accuracy over groups with data (FairQuant's worst_acc).",
        ),
        LazyPlugin(
            "fq_plugins.fairness.metrics:AccuracyGap",
            name="accuracy_gap",
            description="avg_acc − worst_acc over groups with data; details carry max − min too.",
        ),
    ),
    FairnessMetrics(
        LazyPlugin(
            "fq_plugins.fairness.suite:MeanGroupAccuracy",
            name="mean_group_accuracy",
            description="Mean over groups with data of per-group accuracy (FairQuant's avg_acc).",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:EOpp0",
            name="eopp0",
            description="FairQuant EOpp0: max − min TNR across groups; binary: of pos_label, multi-class: mean over classes.",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:EOpp1",
            name="eopp1",
            description="FairQuant EOpp1: max − min TPR across groups; binary: of pos_label, multi-class: mean over classes.",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:EOdd",
            name="eodd",
            description="FairQuant EOdd: TPR gap + FPR gap across groups; binary: of pos_label, multi-class: mean over classes.",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:DPDiff",
            name="dp_diff",
            description="Demographic-parity difference (max − min selection rate over groups); binary: of pos_label (= fairlearn), multi-class: mean over classes one-vs-rest.",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:DPGap",
            name="dp_gap",
            description="Alias of dp_diff (demographic-parity difference; binary: of pos_label).",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:EOppDiff",
            name="eopp_diff",
            description="Equal-opportunity difference (max − min TPR over groups); binary: of pos_label (= fairlearn), multi-class: mean over classes one-vs-rest.",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:EOddsDiff",
            name="eodds_diff",
            description="Equalized-odds difference (max of TPR and FPR differences); binary: of pos_label (= fairlearn), multi-class: mean over classes one-vs-rest.",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:DPRatio",
            name="dp_ratio",
            description="Demographic-parity ratio (min / max selection rate, 1 = parity); binary: of pos_label (= fairlearn), multi-class: mean over classes one-vs-rest.",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:EOppRatio",
            name="eopp_ratio",
            description="Equal-opportunity ratio (min / max TPR, 1 = parity); binary: of pos_label (= fairlearn), multi-class: mean over classes one-vs-rest.",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:EOddsRatio",
            name="eodds_ratio",
            description="Equalized-odds ratio (min of TPR and FPR ratios, 1 = parity); binary: of pos_label (= fairlearn), multi-class: mean over classes one-vs-rest.",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:DeltaSP",
            name="delta_sp",
            description="Additive multi-class statistical-parity gap Σ_y |P(Ŷ=y|a) − P(Ŷ=y|a′)|; max over group pairs when G > 2.",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:DeltaEOpp",
            name="delta_eopp",
            description="Additive multi-class equal-opportunity gap Σ_y |TPR_y(a) − TPR_y(a′)|; max over group pairs when G > 2.",
        ),
        LazyPlugin(
            "fq_plugins.fairness.suite:DeltaEOdds",
            name="delta_eodds",
            description="Additive multi-class equalized-odds gap Σ_y′ Σ_y |P(Ŷ=y|Y=y′,a) − P(Ŷ=y|Y=y′,a′)|; max over group pairs when G > 2.",
        ),
    ),
    EnergyMeters(
        LazyPlugin(
            "fq_plugins.energy.estimate:CpuTimeMeter",
            name="cpu_time",
            description="Estimate from process CPU time × TDP per logical CPU (always available; labelled estimated).",
        ),
    ),
    EnergyMeters(
        LazyPlugin(
            "fq_plugins.energy.rapl:RaplMeter",
            name="rapl",
            description="CPU package + DRAM energy from Intel/AMD RAPL counters in powercap sysfs (measured).",
        ),
    ),
    EnergyMeters(
        LazyPlugin(
            "fq_plugins.energy.nvml:NvmlMeter",
            name="nvml",
            description="NVIDIA GPU energy from NVML total-energy counters (measured; needs nvidia-ml-py).",
        ),
    ),
    EnergyMeters(
        LazyPlugin(
            "fq_plugins.energy.codecarbon_meter:CodecarbonMeter",
            name="codecarbon",
            description="codecarbon OfflineEmissionsTracker with an explicit country (optional: pip install codecarbon).",
        ),
    ),
    DataSelectors(
        LazyPlugin(
            "fq_plugins.data.selectors:RandomStratifiedSelector",
            name="random",
            description="Seeded random subset, stratified by class and (if given) group.",
        ),
        LazyPlugin(
            "fq_plugins.data.selectors:EL2NSelector",
            name="el2n",
            description="EL2N score after a short warm-up on the full set; keeps the hardest per stratum.",
        ),
        LazyPlugin(
            "fq_plugins.data.selectors:KCenterSelector",
            name="kcenter",
            description="Greedy k-center on penultimate-layer embeddings after a short warm-up (O(N·D) memory).",
        ),
    ),
)
"""Built-in plugin name → plugin object, in registration order (``DEFAULT_PLUGINS``)."""
