"""The report of a run: one record per variant, a printed table and JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from .accounting import BITS_CONVENTION, ModelCost
from .energy.carbon import CarbonEstimate
from .energy.pepr import pepr_by_name
from .protocols import EnergyReading, MetricResult, _json_safe

__all__ = ["PEPR_PERFORMANCE", "PEPR_RESOURCES", "EvaluationReport", "RunReport", "format_table"]

PEPR_PERFORMANCE = ("accuracy", "worst_group_accuracy")
"""P of PePR: overall test accuracy (headline), and worst-group accuracy."""

PEPR_RESOURCES = {
    "energy": "energy_joules (J, the variant's own phases: FP32 = training + eval; "
    "compressed = fine-tune + eval)",
    "co2": "carbon grams (gCO2e; only when energy.carbon is configured)",
    "time": "wall_seconds (s, the variant's own phases)",
    "memory": "packed model size (bytes)",
}


@dataclasses.dataclass
class EvaluationReport:
    """One evaluated variant (``fp32`` or a compression pipeline) on the test split."""

    variant: str
    methods: list[str]
    accuracy: float
    mean_group_accuracy: float
    worst_group_accuracy: float
    accuracy_gap: float
    group_accuracy: list[float]
    group_names: list[str]
    metrics: dict[str, MetricResult]
    cost: ModelCost
    energy: dict[str, EnergyReading]
    wall_seconds: float
    finalize_max_abs_diff: float | None = None
    carbon: CarbonEstimate | None = None
    checkpoint: dict[str, Any] | None = None
    """The saved model file: path, file_bytes, packed_layers, float_layers."""
    energy_prediction: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    method_stats: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Each method's own figures (``CompressionStats.extra``: BMRS channels removed …)."""

    @property
    def energy_joules(self) -> float:
        vals = [r.total_joules for r in self.energy.values()]
        return float(sum(vals)) if vals else math.nan

    @property
    def energy_method(self) -> str:
        return "+".join(sorted({r.method for r in self.energy.values()})) or "none"

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(
            {
                "variant": self.variant,
                "methods": self.methods,
                "accuracy": self.accuracy,
                "mean_group_accuracy": self.mean_group_accuracy,
                "worst_group_accuracy": self.worst_group_accuracy,
                "accuracy_gap": self.accuracy_gap,
                "group_accuracy": dict(zip(self.group_names, self.group_accuracy, strict=True)),
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "cost": self.cost.to_dict(),
                "energy": {k: v.to_dict() for k, v in self.energy.items()},
                "energy_joules": self.energy_joules,
                "energy_method": self.energy_method,
                "energy_methods_by_phase": {k: v.method for k, v in self.energy.items()},
                "energy_prediction": self.energy_prediction,
                "carbon": self.carbon.to_dict() if self.carbon is not None else None,
                "wall_seconds": self.wall_seconds,
                "finalize_max_abs_diff": self.finalize_max_abs_diff,
                "checkpoint": self.checkpoint,
                "method_stats": self.method_stats,
            }
        )


@dataclasses.dataclass
class RunReport:
    """A whole ``fq-plugins run``: metadata plus every variant's report."""

    name: str
    recipe: dict[str, Any]
    dataset: dict[str, Any]
    environment: dict[str, Any]
    variants: list[EvaluationReport] = dataclasses.field(default_factory=list)
    status: str = "running"
    """``running``, ``ok``, ``partial`` (some variants failed: see ``failed_variants``),
    ``failed`` or ``interrupted``."""
    error: str | None = None
    wall_seconds: float = 0.0
    failed_variants: list[dict[str, str]] = dataclasses.field(default_factory=list)
    """``{"variant", "error"}`` of each compression pipeline that failed; the others ran."""

    def pepr(self) -> dict[str, dict[str, dict[str, float]]]:
        """PePR over the variants: ``{performance: {resource: {variant: value}}}``.

        ``PePR = P / (1 + R_n)``, R_n min-max normalised over the variants of this run
        (:mod:`fq_plugins.energy.pepr`); resources in :data:`PEPR_RESOURCES` (``co2``
        only when every variant has a carbon figure).
        """
        res: dict[str, dict[str, float]] = {
            "energy": {v.variant: v.energy_joules for v in self.variants},
            "time": {v.variant: v.wall_seconds for v in self.variants},
            "memory": {v.variant: float(v.cost.packed_bytes) for v in self.variants},
        }
        if self.variants and all(v.carbon is not None for v in self.variants):
            res["co2"] = {v.variant: v.carbon.grams for v in self.variants if v.carbon is not None}
        out: dict[str, dict[str, dict[str, float]]] = {}
        for perf in PEPR_PERFORMANCE:
            p = {v.variant: float(getattr(v, perf)) for v in self.variants}
            out[perf] = {name: pepr_by_name(p, r) for name, r in res.items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(
            {
                "name": self.name,
                "status": self.status,
                "failed_variants": self.failed_variants,
                "error": self.error,
                "wall_seconds": self.wall_seconds,
                "conventions": {
                    "accuracy": "overall test accuracy",
                    "mean_group_accuracy": "mean over groups of per-group accuracy",
                    "accuracy_gap": "mean_group_accuracy − worst_group_accuracy",
                    "bits_and_size": BITS_CONVENTION,
                    "energy": "labelled per figure: measured:* or estimated:*",
                    "carbon": "gCO2e = J / 3.6e6 × PUE × intensity (g/kWh); method says "
                    "where the intensity came from",
                    "pepr": "P / (1 + R_n), R_n = min-max normalised resource over the "
                    "variants of this run; P = accuracy (also worst_group_accuracy)",
                    "pepr_resources": PEPR_RESOURCES,
                    "energy_prediction": "after a training phase's first epoch: "
                    "first-epoch energy × epochs",
                },
                "dataset": self.dataset,
                "environment": self.environment,
                "recipe": self.recipe,
                "variants": [v.to_dict() for v in self.variants],
                "pepr": self.pepr(),
            }
        )

    def write(self, output_dir: str) -> str:
        """Write ``report.json`` atomically (a crash mid-write never leaves half a file)."""
        path = os.path.join(output_dir, "report.json")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
        return path


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


_IN_CORE_COLUMNS = ("group_accuracy", "worst_group_accuracy", "accuracy_gap")
"""Recipe metrics the fixed columns already show (mean-grp, worst-grp, gap)."""


def _metric_cell(v: EvaluationReport, name: str) -> str:
    r = v.metrics.get(name)
    if r is None or not math.isfinite(r.value):
        return "–" if r is None else "undef"
    return f"{r.value:.4f}"


def format_table(variants: list[EvaluationReport], metrics: Sequence[str] | None = None) -> str:
    """A fixed-width comparison table of the variants.

    :param metrics: the recipe's ``fairness.metrics``; each one the fixed columns do not
        already show gets a column of its headline value (default: every metric the
        variants carry).
    """
    if metrics is None:
        metrics = list(dict.fromkeys(m for v in variants for m in v.metrics))
    extra_metrics = [m for m in metrics if m not in _IN_CORE_COLUMNS]
    header = [
        "method",
        "acc",
        "mean-grp",
        "worst-grp",
        "gap",
        "avg bits",
        "sparsity",
        "packed",
        "time s",
        "energy J",
        *extra_metrics,
    ]
    with_carbon = any(v.carbon is not None for v in variants)
    if with_carbon:
        header.append("CO2 g")
    with_pepr = len(variants) > 1
    pepr_e: dict[str, float] = {}
    if with_pepr:
        header.append("PePR-E")
        pepr_e = pepr_by_name(
            {v.variant: v.accuracy for v in variants},
            {v.variant: v.energy_joules for v in variants},
        )
    rows = []
    for v in variants:
        extra = []
        if with_carbon:
            g = v.carbon.grams if v.carbon is not None else math.nan
            extra.append(f"{g:.3g}" if math.isfinite(g) else "missing")
        if with_pepr:
            pe = pepr_e[v.variant]
            extra.append(f"{pe:.4f}" if math.isfinite(pe) else "missing")
        rows.append(
            [
                v.variant,
                f"{v.accuracy:.4f}",
                f"{v.mean_group_accuracy:.4f}",
                f"{v.worst_group_accuracy:.4f}",
                f"{v.accuracy_gap:.4f}",
                f"{v.cost.avg_bits_param:.2f}",
                f"{v.cost.sparsity:.3f}",
                _fmt_bytes(v.cost.packed_bytes),
                f"{v.wall_seconds:.1f}",
                f"{v.energy_joules:.0f}" if math.isfinite(v.energy_joules) else "missing",
                *(_metric_cell(v, m) for m in extra_metrics),
                *extra,
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    methods = sorted({v.energy_method for v in variants})
    out.append(
        f"energy: {', '.join(methods)} (estimated:* figures are estimates, not measurements)"
    )
    if with_carbon:
        carbon_methods = sorted({v.carbon.method for v in variants if v.carbon is not None})
        pue = sorted({v.carbon.pue for v in variants if v.carbon is not None})
        out.append(
            f"CO2: gCO2e = J / 3.6e6 × PUE {', '.join(f'{p:g}' for p in pue)} × intensity "
            f"({', '.join(carbon_methods)})"
        )
    if with_pepr:
        out.append(
            "PePR-E: accuracy / (1 + energy min-max normalised over these variants); "
            "report.json has time, memory, CO2 and worst-group variants"
        )
    out.append(
        "avg bits: parameter-weighted over Conv/Linear weights (unquantized = 32); "
        "packed: b-bit codes + fp32 per-channel scales + other tensors"
    )
    return "\n".join(out)
