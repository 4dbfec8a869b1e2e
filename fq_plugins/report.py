"""The report of a run: one record per variant, a printed table and JSON."""

from __future__ import annotations

import csv
import dataclasses
import io
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
    seed: int = 0
    """The seed of this variant's data split, initialisation and training."""

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
                "seed": self.seed,
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


REPORT_SCHEMA_VERSION = 2
"""``report.json`` schema: 2 adds ``seed`` per variant, ``seeds``, ``summary`` (mean ± std
over seeds) and ``pepr_by_seed``."""

RESULT_COLUMNS = (
    "variant",
    "seed",
    "methods",
    "accuracy",
    "mean_group_accuracy",
    "worst_group_accuracy",
    "accuracy_gap",
    "avg_bits",
    "sparsity",
    "packed_bytes",
    "bops_rel",
    "wall_seconds",
    "energy_joules",
    "energy_method",
    "co2_grams",
)
"""The fixed columns of ``results.csv`` (one row per variant and seed; the recipe's
metrics follow as ``metric:<name>``)."""


def headline(v: dict[str, Any]) -> dict[str, Any]:
    """The flat figures of one variant's report dict (``EvaluationReport.to_dict()``);
    a figure the report lacks (NaN in JSON is ``null``) is ``None``."""
    cost = v.get("cost") or {}
    carbon = v.get("carbon") or {}
    out = {
        "variant": v["variant"],
        "seed": v.get("seed", 0),
        "methods": "+".join(v.get("methods", [])) or "none",
        "accuracy": v.get("accuracy"),
        "mean_group_accuracy": v.get("mean_group_accuracy"),
        "worst_group_accuracy": v.get("worst_group_accuracy"),
        "accuracy_gap": v.get("accuracy_gap"),
        "avg_bits": cost.get("avg_bits_param"),
        "sparsity": cost.get("sparsity"),
        "packed_bytes": cost.get("packed_bytes"),
        "bops_rel": cost.get("bops_rel"),
        "wall_seconds": v.get("wall_seconds"),
        "energy_joules": v.get("energy_joules"),
        "energy_method": v.get("energy_method", "none"),
        "co2_grams": carbon.get("grams"),
    }
    for name, m in (v.get("metrics") or {}).items():
        out[f"metric:{name}"] = m.get("value") if isinstance(m, dict) else None
    return out


def _mean_std(values: list[Any]) -> dict[str, Any]:
    """``{mean, std, n}`` over the finite values (std: sample, ddof 1; None for one value)."""
    xs = [float(x) for x in values if isinstance(x, (int, float)) and math.isfinite(x)]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    mean = math.fsum(xs) / len(xs)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": mean, "std": std, "n": len(xs)}


def summarize(variants: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of every numeric headline figure, one entry per variant name
    (in order of first appearance)."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for v in variants:
        by_name.setdefault(v["variant"], []).append(headline(v))
    out = []
    for name, rows in by_name.items():
        keys = [k for k in rows[0] if k not in ("variant", "seed", "methods", "energy_method")]
        out.append(
            {
                "variant": name,
                "methods": rows[0]["methods"],
                "seeds": [r["seed"] for r in rows],
                **{k: _mean_std([r.get(k) for r in rows]) for k in keys},
            }
        )
    return out


def _pepr_of(variants: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """PePR over one seed's variants (dicts): ``{performance: {resource: {variant: value}}}``."""
    rows = [headline(v) for v in variants]
    res: dict[str, dict[str, float | None]] = {
        "energy": {r["variant"]: r["energy_joules"] for r in rows},
        "time": {r["variant"]: r["wall_seconds"] for r in rows},
        "memory": {r["variant"]: r["packed_bytes"] for r in rows},
    }
    if rows and all(r["co2_grams"] is not None for r in rows):
        res["co2"] = {r["variant"]: r["co2_grams"] for r in rows}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for perf in PEPR_PERFORMANCE:
        p = {r["variant"]: r[perf] for r in rows}
        out[perf] = {name: pepr_by_name(p, r) for name, r in res.items()}
    return out


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
    failed_variants: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """``{"variant", "seed", "error"}`` of each compression pipeline that failed; the others ran."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    restored: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Variants finished by an earlier invocation of a resumed run (their report dicts)."""
    datasets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per seed (as a string): the split's sizes, when there is more than one seed."""

    def variant_dicts(self) -> list[dict[str, Any]]:
        """Every finished variant as a dict: the restored ones, then this invocation's."""
        return [*self.restored, *(v.to_dict() for v in self.variants)]

    def done(self) -> set[tuple[str, int]]:
        """The finished (variant, seed) pairs."""
        return {(v["variant"], int(v.get("seed", 0))) for v in self.variant_dicts()}

    def pepr(self, variants: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
        """PePR over the variants of one seed: ``{performance: {resource: {variant: value}}}``.

        ``PePR = P / (1 + R_n)``, R_n min-max normalised over the variants of the seed
        (:mod:`fq_plugins.energy.pepr`); resources in :data:`PEPR_RESOURCES` (``co2``
        only when every variant has a carbon figure). With several seeds: the mean over
        seeds of each seed's PePR (``pepr_by_seed`` in the JSON has each).
        """
        vs = self.variant_dicts() if variants is None else list(variants)
        by_seed = self._pepr_by_seed(vs)
        if len(by_seed) <= 1:
            return next(iter(by_seed.values()), {perf: {} for perf in PEPR_PERFORMANCE})
        out: dict[str, Any] = {}
        for perf in PEPR_PERFORMANCE:
            out[perf] = {}
            for res in next(iter(by_seed.values()))[perf]:
                names = dict.fromkeys(n for p in by_seed.values() for n in p[perf].get(res, {}))
                out[perf][res] = {
                    n: _mean_std([p[perf].get(res, {}).get(n) for p in by_seed.values()])["mean"]
                    for n in names
                }
        return out

    @staticmethod
    def _pepr_by_seed(vs: Sequence[dict[str, Any]]) -> dict[int, Any]:
        seeds = dict.fromkeys(int(v.get("seed", 0)) for v in vs)
        return {s: _pepr_of([v for v in vs if int(v.get("seed", 0)) == s]) for s in seeds}

    def to_dict(self) -> dict[str, Any]:
        vs = self.variant_dicts()
        return _json_safe(
            {
                "schema_version": REPORT_SCHEMA_VERSION,
                "name": self.name,
                "status": self.status,
                "failed_variants": self.failed_variants,
                "error": self.error,
                "wall_seconds": self.wall_seconds,
                "seeds": self.seeds,
                "conventions": {
                    "accuracy": "overall test accuracy",
                    "mean_group_accuracy": "mean over groups of per-group accuracy",
                    "accuracy_gap": "mean_group_accuracy − worst_group_accuracy",
                    "bits_and_size": BITS_CONVENTION,
                    "energy": "labelled per figure: measured:* or estimated:*",
                    "carbon": "gCO2e = J / 3.6e6 × PUE × intensity (g/kWh); method says "
                    "where the intensity came from",
                    "pepr": "P / (1 + R_n), R_n = min-max normalised resource over the "
                    "variants of one seed; P = accuracy (also worst_group_accuracy); with "
                    "several seeds `pepr` is the mean over seeds of `pepr_by_seed`",
                    "pepr_resources": PEPR_RESOURCES,
                    "energy_prediction": "after a training phase's first epoch: "
                    "first-epoch energy × epochs",
                    "summary": "per variant: mean, sample std (ddof 1; null for one seed) and "
                    "n over seeds of each figure",
                },
                "dataset": self.dataset,
                "datasets_by_seed": self.datasets,
                "environment": self.environment,
                "recipe": self.recipe,
                "variants": vs,
                "summary": summarize(vs),
                "pepr": self.pepr(vs),
                "pepr_by_seed": {str(k): v for k, v in self._pepr_by_seed(vs).items()},
            }
        )

    def write(self, output_dir: str) -> str:
        """Write ``report.json`` and ``results.csv`` atomically (a crash mid-write never
        leaves half a file); returns the path of ``report.json``."""
        d = self.to_dict()
        path = os.path.join(output_dir, "report.json")
        _atomic_write(path, json.dumps(d, indent=2, allow_nan=False) + "\n")
        _atomic_write(os.path.join(output_dir, "results.csv"), results_csv(d["variants"]))
        return path


def _atomic_write(path: str, text: str) -> None:
    from .run_folder import atomic_write

    atomic_write(path, text)


def results_csv(variants: Sequence[dict[str, Any]]) -> str:
    """One row per (variant, seed): :data:`RESULT_COLUMNS`, then ``metric:<name>``."""
    rows = [headline(v) for v in variants]
    metric_cols = list(dict.fromkeys(k for r in rows for k in r if k.startswith("metric:")))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*RESULT_COLUMNS, *metric_cols])
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in (*RESULT_COLUMNS, *metric_cols)])
    return buf.getvalue()


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


_IN_CORE_COLUMNS = ("group_accuracy", "worst_group_accuracy", "accuracy_gap")
"""Recipe metrics the fixed columns already show (mean-grp, worst-grp, gap)."""


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) else math.nan


def _cell(values: list[Any], fmt: str, *, missing: str = "missing", spread: bool = True) -> str:
    """One figure, or mean ± std over seeds (``spread``); ``missing`` when there is none."""
    ms = _mean_std(values)
    if ms["mean"] is None:
        return missing
    if spread and ms["std"] is not None:
        return f"{ms['mean']:{fmt}}±{ms['std']:{fmt}}"
    return f"{ms['mean']:{fmt}}"


def format_table(
    variants: Sequence[EvaluationReport | dict[str, Any]], metrics: Sequence[str] | None = None
) -> str:
    """A fixed-width comparison table of the variants (reports or their dicts); with
    several seeds one row per variant, accuracy figures as mean ± std over seeds.

    :param metrics: the recipe's ``fairness.metrics``; each one the fixed columns do not
        already show gets a column of its headline value (default: every metric the
        variants carry).
    """
    vs = [v.to_dict() if isinstance(v, EvaluationReport) else v for v in variants]
    if metrics is None:
        metrics = list(dict.fromkeys(m for v in vs for m in (v.get("metrics") or {})))
    extra_metrics = [m for m in metrics if m not in _IN_CORE_COLUMNS]
    groups: dict[str, list[dict[str, Any]]] = {}
    for v in vs:
        groups.setdefault(v["variant"], []).append(headline(v))
    n_seeds = max((len(g) for g in groups.values()), default=1)
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
    with_carbon = any(v.get("carbon") for v in vs)
    if with_carbon:
        header.append("CO2 g")
    with_pepr = len(groups) > 1
    pepr_e: dict[str, list[float]] = {}
    if with_pepr:
        header.append("PePR-E")
        for v_seed in {h["seed"] for g in groups.values() for h in g}:
            rows_s = [h for g in groups.values() for h in g if h["seed"] == v_seed]
            pe = pepr_by_name(
                {h["variant"]: h["accuracy"] for h in rows_s},
                {h["variant"]: h["energy_joules"] for h in rows_s},
            )
            for name, val in pe.items():
                pepr_e.setdefault(name, []).append(val)
    rows = []
    for name, hs in groups.items():

        def col(key: str, hs: list[dict[str, Any]] = hs) -> list[Any]:
            return [h.get(key) for h in hs]

        extra = []
        if with_carbon:
            extra.append(_cell(col("co2_grams"), ".3g", spread=False))
        if with_pepr:
            extra.append(_cell(pepr_e.get(name, []), ".4f", spread=False))
        packed = _mean_std(col("packed_bytes"))["mean"]
        rows.append(
            [
                name if len(hs) == n_seeds else f"{name} (n={len(hs)})",
                _cell(col("accuracy"), ".4f"),
                _cell(col("mean_group_accuracy"), ".4f"),
                _cell(col("worst_group_accuracy"), ".4f"),
                _cell(col("accuracy_gap"), ".4f"),
                _cell(col("avg_bits"), ".2f", spread=False),
                _cell(col("sparsity"), ".3f", spread=False),
                _fmt_bytes(packed) if packed is not None else "missing",
                _cell(col("wall_seconds"), ".1f", spread=False),
                _cell(col("energy_joules"), ".0f", spread=False),
                *(
                    _cell(
                        col(f"metric:{m}"),
                        ".4f",
                        missing="undef" if any(f"metric:{m}" in h for h in hs) else "–",
                    )
                    for m in extra_metrics
                ),
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
    methods = sorted({h["energy_method"] for g in groups.values() for h in g})
    out.append(
        f"energy: {', '.join(methods)} (estimated:* figures are estimates, not measurements)"
    )
    if n_seeds > 1:
        out.append(
            f"{n_seeds} seeds: acc, mean-grp, worst-grp, gap as mean±std (sample std); "
            "other columns and PePR-E are means over seeds"
        )
    if with_carbon:
        carbons = [v["carbon"] for v in vs if v.get("carbon")]
        carbon_methods = sorted({c["method"] for c in carbons})
        pue = sorted({c["pue"] for c in carbons})
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
