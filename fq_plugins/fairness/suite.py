"""The fairness-metric suite (a plugin module, written like a third-party one).

Every metric reads the shared :class:`~fq_plugins.fairness.table.GroupConfusion` and takes
the option ``undefined`` (``nan`` | ``zero`` | ``skip``, default ``skip``; see
:mod:`fq_plugins.fairness.rates`); the per-class rate metrics also take ``pos_label``
(default 1). Groups without examples are always left out.

Families (all values are fractions in [0, 1] unless stated):

* ``mean_group_accuracy`` — mean over groups of per-group accuracy (FairQuant's avg_acc;
  the same figure as ``group_accuracy``'s headline, under its own name).
* Per-class rate metrics. For every class *c*, one-vs-rest, a spread over groups:

  - FairQuant / FairPrune: ``eopp1`` = TPR gap, ``eopp0`` = TNR gap, ``eodd`` = TPR gap +
    FPR gap (so in [0, 2]);
  - differences, max − min over groups: ``dp_diff`` (selection rate; alias ``dp_gap``),
    ``eopp_diff`` (TPR), ``eodds_diff`` (max of the TPR and FPR differences);
  - ratios, min / max over groups (1 = parity): ``dp_ratio``, ``eopp_ratio``,
    ``eodds_ratio`` (min of the TPR and FPR ratios).

  **Headline value.** A *binary* task (2 classes) reports the value of the positive class
  ``pos_label`` — fairlearn's convention: ``dp_diff`` / ``dp_ratio``, ``eopp_diff`` /
  ``eopp_ratio``, ``eodds_diff`` / ``eodds_ratio`` equal fairlearn's
  ``demographic_parity_*``, ``equal_opportunity_*``, ``equalized_odds_*`` (with
  ``undefined: zero``), and ``eopp1`` is the TPR gap, ``eopp0`` the TNR gap of the positive
  class, as in the FairQuant / FairPrune papers. A *multi-class* task reports the mean over
  classes (``pos_label`` is only range-checked). ``per_class`` holds every class either way,
  ``details["mean_over_classes"]`` the mean, ``details["max_over_classes"]`` (differences)
  or ``details["min_over_classes"]`` (ratios) the worst class.
* Additive multi-class forms (memorization-and-fairness paper):
  ``delta_sp`` = Σ_y |P(Ŷ=y|A=a) − P(Ŷ=y|A=a′)| (in [0, 2]),
  ``delta_eopp`` = Σ_y |P(Ŷ=y|Y=y,A=a) − P(Ŷ=y|Y=y,A=a′)| (in [0, C]),
  ``delta_eodds`` = Σ_y′ Σ_y |P(Ŷ=y|Y=y′,A=a) − P(Ŷ=y|Y=y′,A=a′)| (in [0, 2C]).
  Defined for two groups; **for more than two groups the value is the maximum over all
  pairs of groups with examples** (``details["pair"]`` names the pair). ``details["normalized"]``
  divides by the largest possible value (2, C, 2C) so it lies in [0, 1]. They sum over
  every class and take no ``pos_label``.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any, ClassVar, Literal

import torch

from ..protocols import FairnessMetric, MetricResult
from .metrics import GroupAccuracy
from .rates import (
    UndefinedPolicy,
    check_pos_label,
    check_undefined,
    class_max,
    class_mean,
    class_min,
    class_rates,
    group_spread,
    pos_label_in_range,
    safe_rate,
)
from .table import GroupConfusion

__all__ = [
    "DPDiff",
    "DPGap",
    "DPRatio",
    "DeltaEOdds",
    "DeltaEOpp",
    "DeltaSP",
    "EOdd",
    "EOddsDiff",
    "EOddsRatio",
    "EOpp0",
    "EOpp1",
    "EOppDiff",
    "EOppRatio",
    "MeanGroupAccuracy",
    "RateMetric",
]


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.tolist()]


class RateMetric(FairnessMetric):
    """Base of the rate-based metrics: holds the validated ``undefined`` policy."""

    def __init__(self, undefined: str = "skip") -> None:
        self.undefined: UndefinedPolicy = check_undefined(undefined)

    def _common(self, table: GroupConfusion) -> dict[str, Any]:
        sizes = table.group_sizes
        return {
            "undefined": self.undefined,
            "groups_without_examples": [
                table.group_names[g] for g in range(table.n_groups) if sizes[g] == 0
            ],
        }


class MeanGroupAccuracy(GroupAccuracy):
    """Mean over groups of per-group accuracy (FairQuant's avg_acc), under its own name."""

    name = "mean_group_accuracy"
    description = "Mean over groups with data of per-group accuracy (FairQuant's avg_acc)."


# --- per-class one-vs-rest differences and ratios -------------------------------------


class _PerClass(RateMetric):
    """Per class: a spread over groups of one or two one-vs-rest rates.

    Headline: the positive class ``pos_label`` for a binary task (fairlearn's convention),
    the mean over classes otherwise.

    :param undefined: ``nan`` | ``zero`` | ``skip`` (see :mod:`fq_plugins.fairness.rates`).
    :param pos_label: the positive class of a binary task, an id in ``[0, n_classes)``;
        checked against the table's number of classes in :meth:`compute`.
    """

    def __init__(self, undefined: str = "skip", pos_label: int = 1) -> None:
        super().__init__(undefined)
        self.pos_label = check_pos_label(pos_label)

    kind: ClassVar[Literal["diff", "ratio"]] = "diff"  # max − min, or min / max
    rates: ClassVar[tuple[str, ...]] = ("selection",)  # fields of ClassRates
    combine: ClassVar[Literal["single", "max", "min", "sum"]] = "single"

    def per_class(self, table: GroupConfusion) -> tuple[torch.Tensor, dict[str, Any]]:
        """``[C]`` per-class values and the per-group rates behind them."""
        r = class_rates(table, self.undefined)
        spreads = []
        shown: dict[str, Any] = {}
        for name in self.rates:
            rate = getattr(r, name)
            spreads.append(group_spread(rate, r.present, self.undefined, kind=self.kind))
            shown[f"{name}_by_group"] = [_floats(row) for row in rate]
        if self.combine == "single":
            val = spreads[0]
        else:
            stack = torch.stack(spreads)
            if self.combine == "sum":
                # skip: a component that does not count (NaN) contributes nothing, and the
                # class counts if either component does.
                if self.undefined == "skip":
                    val = torch.where(
                        torch.isnan(stack).all(dim=0),
                        torch.full_like(stack[0], math.nan),
                        torch.nansum(stack, dim=0),
                    )
                else:
                    val = stack.sum(dim=0)
            else:
                red = torch.amax if self.combine == "max" else torch.amin
                if self.undefined == "skip":
                    fill = -torch.inf if self.combine == "max" else torch.inf
                    filled = torch.where(torch.isnan(stack), fill, stack)
                    val = torch.where(
                        torch.isnan(stack).all(dim=0),
                        torch.full_like(stack[0], math.nan),
                        red(filled, dim=0),
                    )
                else:
                    val = torch.where(
                        torch.isnan(stack).any(dim=0),
                        torch.full_like(stack[0], math.nan),
                        red(torch.nan_to_num(stack), dim=0),
                    )
        return val, shown

    def compute(self, table: GroupConfusion) -> MetricResult:
        pos = pos_label_in_range(self.pos_label, table.n_classes)
        val, shown = self.per_class(table)
        mean = class_mean(val, self.undefined)
        details = self._common(table)
        details["classes"] = list(table.class_names)
        if table.n_classes == 2:
            value = float(val[pos])
            counted = not math.isnan(value)
            if not counted and self.undefined == "skip":
                # no group has data for this rate of the positive class (e.g. no positive
                # example at all): fewer than two groups have data, so the gap is neutral
                value = 0.0 if self.kind == "diff" else 1.0
            details["reduction"] = "pos_label"
            details["pos_label"] = pos
            details["pos_label_counted"] = counted
        else:
            value = mean
            details["reduction"] = "mean_over_classes"
            details["pos_label"] = None  # multi-class: every class counts, none is positive
        details["mean_over_classes"] = mean
        if self.kind == "diff":
            details["max_over_classes"] = class_max(val, self.undefined)
        else:
            details["min_over_classes"] = class_min(val, self.undefined)
        details["classes_counted"] = int((~torch.isnan(val)).sum())
        details.update(shown)
        return MetricResult(
            self.name,
            value,
            per_class=_floats(val),
            higher_is_better=self.kind == "ratio",
            details=details,
        )


class DPDiff(_PerClass):
    """Demographic-parity difference (selection rate P(Ŷ=c | A=g), max − min over groups)."""

    name = "dp_diff"
    description = (
        "Demographic-parity difference (max − min selection rate over groups); binary: of "
        "pos_label (= fairlearn), multi-class: mean over classes one-vs-rest."
    )


class DPGap(DPDiff):
    """Alias of ``dp_diff`` under the name used in DESIGN.md's recipe sketch."""

    name = "dp_gap"
    description = "Alias of dp_diff (demographic-parity difference; binary: of pos_label)."


class EOppDiff(_PerClass):
    """Equal-opportunity difference (TPR, max − min over groups)."""

    name = "eopp_diff"
    description = (
        "Equal-opportunity difference (max − min TPR over groups); binary: of pos_label "
        "(= fairlearn), multi-class: mean over classes one-vs-rest."
    )
    rates = ("tpr",)


class EOddsDiff(_PerClass):
    """Equalized-odds difference: max of the TPR and FPR differences."""

    name = "eodds_diff"
    description = (
        "Equalized-odds difference (max of TPR and FPR differences); binary: of pos_label "
        "(= fairlearn), multi-class: mean over classes one-vs-rest."
    )
    rates = ("tpr", "fpr")
    combine = "max"


class DPRatio(_PerClass):
    """Demographic-parity ratio: min / max selection rate over groups."""

    name = "dp_ratio"
    description = (
        "Demographic-parity ratio (min / max selection rate, 1 = parity); binary: of "
        "pos_label (= fairlearn), multi-class: mean over classes one-vs-rest."
    )
    kind = "ratio"


class EOppRatio(_PerClass):
    """Equal-opportunity ratio: min / max TPR over groups."""

    name = "eopp_ratio"
    description = (
        "Equal-opportunity ratio (min / max TPR, 1 = parity); binary: of pos_label "
        "(= fairlearn), multi-class: mean over classes one-vs-rest."
    )
    kind = "ratio"
    rates = ("tpr",)


class EOddsRatio(_PerClass):
    """Equalized-odds ratio: min of the TPR and FPR ratios."""

    name = "eodds_ratio"
    description = (
        "Equalized-odds ratio (min of TPR and FPR ratios, 1 = parity); binary: of "
        "pos_label (= fairlearn), multi-class: mean over classes one-vs-rest."
    )
    kind = "ratio"
    rates = ("tpr", "fpr")
    combine = "min"


class EOpp1(EOppDiff):
    """FairQuant's EOpp1: the TPR gap across groups (binary: of ``pos_label``)."""

    name = "eopp1"
    description = (
        "FairQuant EOpp1: max − min TPR across groups; binary: of pos_label, multi-class: "
        "mean over classes."
    )


class EOpp0(_PerClass):
    """FairQuant's EOpp0: the TNR gap across groups (binary: of ``pos_label``)."""

    name = "eopp0"
    description = (
        "FairQuant EOpp0: max − min TNR across groups; binary: of pos_label, multi-class: "
        "mean over classes."
    )
    rates = ("tnr",)


class EOdd(_PerClass):
    """FairQuant's EOdd: TPR gap + FPR gap across groups; in [0, 2]."""

    name = "eodd"
    description = (
        "FairQuant EOdd: TPR gap + FPR gap across groups; binary: of pos_label, "
        "multi-class: mean over classes."
    )
    rates = ("tpr", "fpr")
    combine = "sum"


# --- additive multi-class forms ------------------------------------------------------


class _Delta(RateMetric):
    """Σ of absolute rate differences between two groups; max over pairs for G > 2."""

    def terms(self, table: GroupConfusion) -> tuple[torch.Tensor, int]:
        """Rates ``[G, K]`` whose pairwise |differences| are summed, and the max sum."""
        raise NotImplementedError

    def compute(self, table: GroupConfusion) -> MetricResult:
        rates, bound = self.terms(table)
        present = [g for g in range(table.n_groups) if table.group_sizes[g] > 0]
        sums: dict[tuple[int, int], float] = {}
        for a, b in combinations(present, 2):
            d = (rates[a] - rates[b]).abs()
            # skip: terms undefined in either group are left out; zero: no NaN here;
            # nan: a NaN term makes the pair's sum NaN.
            sums[(a, b)] = float(d[~torch.isnan(d)].sum() if self.undefined == "skip" else d.sum())
        pair: tuple[int, int] | None
        if not sums:  # fewer than two groups with examples
            best, pair = 0.0, None
        elif any(math.isnan(v) for v in sums.values()):
            pair = next(k for k, v in sums.items() if math.isnan(v))
            best = math.nan
        else:
            pair = max(sums, key=lambda k: sums[k])
            best = sums[pair]
        by_pair = {
            f"{table.group_names[a]}|{table.group_names[b]}": v for (a, b), v in sums.items()
        }
        details = self._common(table)
        details["pair"] = [table.group_names[pair[0]], table.group_names[pair[1]]] if pair else None
        details["by_pair"] = by_pair
        details["normalized"] = best / bound if math.isfinite(best) else best
        details["max_possible"] = bound
        return MetricResult(self.name, best, higher_is_better=False, details=details)


class DeltaSP(_Delta):
    """Δ_sp = Σ_y |P(Ŷ=y|A=a) − P(Ŷ=y|A=a′)| (max over group pairs); in [0, 2]."""

    name = "delta_sp"
    description = (
        "Additive multi-class statistical-parity gap Σ_y |P(Ŷ=y|a) − P(Ŷ=y|a′)|; "
        "max over group pairs when G > 2."
    )

    def terms(self, table: GroupConfusion) -> tuple[torch.Tensor, int]:
        pred = table.counts.sum(dim=1)  # [G, C]
        n = table.group_sizes[:, None].expand_as(pred)
        return safe_rate(pred, n, self.undefined), 2


class DeltaEOpp(_Delta):
    """Δ_eopp = Σ_y |P(Ŷ=y|Y=y,A=a) − P(Ŷ=y|Y=y,A=a′)| (max over group pairs); in [0, C]."""

    name = "delta_eopp"
    description = (
        "Additive multi-class equal-opportunity gap Σ_y |TPR_y(a) − TPR_y(a′)|; "
        "max over group pairs when G > 2."
    )

    def terms(self, table: GroupConfusion) -> tuple[torch.Tensor, int]:
        tp = torch.diagonal(table.counts, dim1=1, dim2=2)
        pos = table.counts.sum(dim=2)
        return safe_rate(tp, pos, self.undefined), table.n_classes


class DeltaEOdds(_Delta):
    """Δ_eodds = Σ_y′ Σ_y |P(Ŷ=y|Y=y′,A=a) − P(Ŷ=y|Y=y′,A=a′)| (max over pairs); in [0, 2C]."""

    name = "delta_eodds"
    description = (
        "Additive multi-class equalized-odds gap Σ_y′ Σ_y |P(Ŷ=y|Y=y′,a) − P(Ŷ=y|Y=y′,a′)|; "
        "max over group pairs when G > 2."
    )

    def terms(self, table: GroupConfusion) -> tuple[torch.Tensor, int]:
        counts = table.counts  # [G, true y′, pred y]
        pos = counts.sum(dim=2, keepdim=True).expand_as(counts)
        g = counts.shape[0]
        return safe_rate(counts, pos, self.undefined).reshape(g, -1), 2 * table.n_classes


ALL_METRICS: tuple[type[FairnessMetric], ...] = (
    MeanGroupAccuracy,
    EOpp0,
    EOpp1,
    EOdd,
    DPDiff,
    DPGap,
    EOppDiff,
    EOddsDiff,
    DPRatio,
    EOppRatio,
    EOddsRatio,
    DeltaSP,
    DeltaEOpp,
    DeltaEOdds,
)
