"""Built-in fairness metrics (a plugin module, written like a third-party one).

Definitions follow FairQuant (METHODS.md §7): ``acc_g`` is the accuracy within group g;
groups without examples are left out of the worst / mean / gap and reported as NaN.
"""

from __future__ import annotations

import math

import torch

from ..protocols import FairnessMetric, MetricResult
from .table import GroupConfusion

__all__ = ["AccuracyGap", "GroupAccuracy", "WorstGroupAccuracy"]


class GroupAccuracy(FairnessMetric):
    """Per-group accuracy; headline: mean of group accuracies (not overall accuracy)."""

    name = "group_accuracy"
    description = "Per-group accuracy; value = mean over groups with data (FairQuant's avg_acc)."

    def compute(self, table: GroupConfusion) -> MetricResult:
        acc = table.group_accuracy()
        return MetricResult(
            self.name,
            table.mean_group_accuracy(),
            per_group=acc.tolist(),
            details={
                "overall_accuracy": table.overall_accuracy(),
                "group_sizes": table.group_sizes.tolist(),
            },
        )


class WorstGroupAccuracy(FairnessMetric):
    """Lowest accuracy over groups with data."""

    name = "worst_group_accuracy"
    description = "Minimum accuracy over groups with data (FairQuant's worst_acc)."

    def compute(self, table: GroupConfusion) -> MetricResult:
        acc = table.group_accuracy()
        value = table.worst_group_accuracy()
        if math.isnan(value):
            return MetricResult(self.name, math.nan, per_group=acc.tolist())
        worst = int(torch.nan_to_num(acc, nan=math.inf).argmin())
        return MetricResult(
            self.name,
            value,
            per_group=acc.tolist(),
            details={"worst_group": worst, "worst_group_name": table.group_names[worst]},
        )


class AccuracyGap(FairnessMetric):
    """Mean-of-groups accuracy minus worst-group accuracy (FairQuant's acc_gap)."""

    name = "accuracy_gap"
    description = "avg_acc − worst_acc over groups with data; details carry max − min too."

    def compute(self, table: GroupConfusion) -> MetricResult:
        present = table.present_group_accuracy()
        if present.numel() < 2:
            return MetricResult(
                self.name, 0.0 if present.numel() else math.nan, higher_is_better=False
            )
        return MetricResult(
            self.name,
            float(present.mean() - present.min()),
            higher_is_better=False,
            details={"max_minus_min": float(present.max() - present.min())},
        )
