"""One evaluator for every host: predictions → group confusion table → metrics → report.

:func:`evaluate` fills a :class:`~fq_plugins.fairness.table.GroupConfusion` (all-reduced
under DDP) from a model and batches; :func:`compute_metrics` runs the recipe's metric
plugins on it; :func:`build_report` adds cost, energy and carbon into the one
:class:`~fq_plugins.report.EvaluationReport` that the CLI table, ``report.json``, the HF logs
and ``fq_on_evaluation`` all read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..fairness.table import GroupConfusion
from .batches import unpack_batch

if TYPE_CHECKING:
    from ..accounting import ModelCost
    from ..data.base import GroupDataset
    from ..energy.carbon import CarbonModel
    from ..manager import FQPluginManager
    from ..protocols import EnergyReading, MetricResult
    from ..report import EvaluationReport

__all__ = ["build_report", "compute_metrics", "construct", "evaluate"]


def construct(cls: type[Any], options: dict[str, Any] | None) -> Any:
    """``cls(**options)``, passing only the options its constructor accepts by name."""
    if not options:
        return cls()
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return cls()
    return cls(**{k: v for k, v in options.items() if k in params and v is not None})


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: GroupDataset | Iterable[Any] | Callable[[], Iterable[Any]],
    *,
    n_groups: int | None = None,
    n_classes: int | None = None,
    batch_size: int = 512,
    group_key: str = "group",
    group_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    keep_logits: bool = True,
    all_reduce: bool = True,
) -> tuple[GroupConfusion, torch.Tensor]:
    """Group confusion table and the logits of ``model`` on ``data`` (eval mode).

    ``data`` is a GroupDataset (sizes and names come from it) or batches as for
    :func:`~fq_plugins.engine.fit` (then give ``n_groups`` and ``n_classes``). Under DDP the
    table is summed over ranks (each rank evaluates its shard); the logits stay local.
    """
    from ..data.base import GroupDataset, iterate_batches

    if isinstance(data, GroupDataset):
        ds = data
        n_groups, n_classes = ds.n_groups, ds.n_classes
        group_names, class_names = ds.group_names, ds.class_names
        batches: Iterable[Any] = iterate_batches(ds, batch_size, shuffle=False)
    else:
        if n_groups is None or n_classes is None:
            raise TypeError("evaluate(model, batches) needs n_groups= and n_classes=")
        batches = data() if callable(data) else data
    was_training = model.training
    model.eval()
    table = GroupConfusion(
        n_groups,
        n_classes,
        group_names=list(group_names) if group_names is not None else None,
        class_names=list(class_names) if class_names is not None else None,
    )
    outs = []
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    try:
        for batch in batches:
            x, y, g = unpack_batch(batch, group_key=group_key)
            logits = model(x.to(device, non_blocking=True))
            table.update(logits, y, g if g is not None else torch.zeros_like(y))
            if keep_logits:
                outs.append(logits)
    finally:
        model.train(was_training)
    if all_reduce:
        table.all_reduce()
    return table, torch.cat(outs) if outs else torch.zeros(0)


def compute_metrics(
    table: GroupConfusion,
    names: Sequence[str],
    pm: FQPluginManager,
    options: dict[str, Any] | None = None,
) -> dict[str, MetricResult]:
    """Every named metric on ``table``; ``options`` (``undefined``) go to metrics accepting them."""
    return {name: construct(pm.metrics.get(name), options).compute(table) for name in names}


def build_report(
    variant: str,
    methods: list[str],
    table: GroupConfusion,
    metric_names: Sequence[str],
    pm: FQPluginManager,
    cost: ModelCost,
    energy: dict[str, EnergyReading],
    wall: float,
    diff: float | None = None,
    *,
    metric_options: dict[str, Any] | None = None,
    carbon: CarbonModel | None = None,
    prediction: dict[str, Any] | None = None,
) -> EvaluationReport:
    """The :class:`~fq_plugins.report.EvaluationReport` of one evaluated variant."""
    from ..report import EvaluationReport

    mean_g = table.mean_group_accuracy()
    worst = table.worst_group_accuracy()
    rep = EvaluationReport(
        variant=variant,
        methods=methods,
        accuracy=table.overall_accuracy(),
        mean_group_accuracy=mean_g,
        worst_group_accuracy=worst,
        accuracy_gap=mean_g - worst,
        group_accuracy=table.group_accuracy().tolist(),
        group_names=table.group_names,
        metrics=compute_metrics(table, metric_names, pm, metric_options),
        cost=cost,
        energy=energy,
        wall_seconds=wall,
        finalize_max_abs_diff=diff,
        energy_prediction=prediction or {},
    )
    if carbon is not None:
        rep.carbon = carbon.estimate(rep.energy_joules)
    return rep
