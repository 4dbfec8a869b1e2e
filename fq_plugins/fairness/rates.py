"""Per-group, per-class rates from a group confusion table, and the one place that
decides what an *undefined* rate means.

Two kinds of "no data" are kept apart:

* A **group without examples** (all its counts are 0: it did not occur in the evaluated
  data) is not part of the evaluation. It keeps its id, shows ``NaN`` in per-group lists and
  is left out of every gap, minimum, maximum, ratio and mean. fairlearn behaves the same way:
  it only sees the groups that occur in ``sensitive_features``.
* A rate that is undefined **inside a group that has examples** — e.g. the true-positive
  rate of class *c* in a group with no example of class *c* — follows the ``undefined``
  setting:

  ``nan``
      the rate is NaN and so is every figure built from it (strict).
  ``zero``
      the rate counts as 0. This is what scikit-learn / fairlearn do
      (``confusion_matrix(normalize="true")`` turns 0/0 into 0), so with ``zero`` the
      per-class differences equal fairlearn's bit for bit.
  ``skip`` (default)
      the group is left out of that class's gap; a class counts when at least one group
      has data for it, and its gap is 0 when fewer than two groups do (FairQuant's rule,
      METHODS.md §7). Classes that no group has data for are left out of the mean over
      classes.

Every rate-based metric calls :func:`safe_rate` and :func:`group_spread`; nothing else
divides counts. :func:`check_pos_label` / :func:`pos_label_in_range` validate the positive
class (``fairness.pos_label``) that a binary task's headline values are reported for.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Literal, get_args

import torch

from ..errors import ConfigError
from .table import GroupConfusion

__all__ = [
    "UNDEFINED_POLICIES",
    "ClassRates",
    "UndefinedPolicy",
    "check_pos_label",
    "check_undefined",
    "class_max",
    "class_mean",
    "class_min",
    "class_rates",
    "group_spread",
    "pos_label_in_range",
    "safe_rate",
]

UndefinedPolicy = Literal["nan", "zero", "skip"]
UNDEFINED_POLICIES: tuple[str, ...] = get_args(UndefinedPolicy)


def check_undefined(policy: str, *, key: str = "fairness.undefined") -> UndefinedPolicy:
    """Validate an ``undefined`` setting; raise :class:`ConfigError` naming the choices."""
    if policy not in UNDEFINED_POLICIES:
        raise ConfigError(
            f"undefined-rate setting {policy!r} is not one of {', '.join(UNDEFINED_POLICIES)}. "
            "Use 'skip' (FairQuant: leave a group without data out of that class's gap), "
            "'zero' (count an undefined rate as 0, like fairlearn) or 'nan' (report NaN).",
            key=key,
        )
    return policy  # type: ignore[return-value]


def check_pos_label(pos_label: object, *, key: str = "fairness.pos_label") -> int:
    """Validate a positive-class id (an integer ≥ 0); raise :class:`ConfigError` naming it.

    The upper bound depends on the task and is checked by :func:`pos_label_in_range` once
    the number of classes is known.
    """
    bad = isinstance(pos_label, bool)
    try:
        value = operator.index(pos_label)  # type: ignore[arg-type]
    except TypeError:
        bad = True
    if bad or value < 0:
        raise ConfigError(
            f"pos_label {pos_label!r} is not a class id; it must be an integer ≥ 0 (the id of "
            "the positive class, fairlearn's pos_label). Set it to 1 (the default) or 0.",
            key=key,
        )
    return int(value)


def pos_label_in_range(pos_label: int, n_classes: int, *, key: str = "fairness.pos_label") -> int:
    """``pos_label`` if it lies in ``[0, n_classes)``, else a :class:`ConfigError` naming it."""
    if not 0 <= pos_label < n_classes:
        raise ConfigError(
            f"pos_label {pos_label} is outside [0, {n_classes}): this task has {n_classes} "
            f"classes (ids 0..{n_classes - 1}). Set it to the id of the positive class "
            f"(for a binary task 1, the default, or 0).",
            key=key,
        )
    return pos_label


def safe_rate(num: torch.Tensor, den: torch.Tensor, policy: UndefinedPolicy) -> torch.Tensor:
    """``num / den`` elementwise (float64); where ``den == 0``: 0 for ``zero``, else NaN.

    Counts are exact integers in float64, so each rate is the correctly rounded quotient —
    the same double that ``numpy`` gives for ``int / int``.
    """
    num = num.to(torch.float64)
    den = den.to(torch.float64)
    fill = 0.0 if policy == "zero" else float("nan")
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), fill)


def group_spread(
    rates: torch.Tensor,
    present: torch.Tensor,
    policy: UndefinedPolicy,
    *,
    kind: Literal["diff", "ratio"] = "diff",
) -> torch.Tensor:
    """Spread over groups (dim 0) of ``rates`` ``[G, ...]``: ``max − min`` or ``min / max``.

    :param present: ``[G]`` bool, groups that have examples; the others are always left out.
    :returns: ``[...]`` float64. Fewer than two groups with a defined rate give 0 (``diff``)
        or 1 (``ratio``); with ``skip``, no group with a defined rate gives NaN (the entry
        does not count); with ``nan``, any undefined rate among present groups gives NaN.
        A ratio whose maximum is 0 (every group's rate is 0) is 1: the groups are equal.
    """
    r = rates[present]
    neutral = 0.0 if kind == "diff" else 1.0
    out_shape = rates.shape[1:]
    if r.shape[0] == 0:
        return torch.full(out_shape, neutral, dtype=torch.float64)
    defined = ~torch.isnan(r)
    n_def = defined.sum(dim=0)
    hi = torch.where(defined, r, -torch.inf).amax(dim=0)
    lo = torch.where(defined, r, torch.inf).amin(dim=0)
    val = hi - lo if kind == "diff" else torch.where(hi > 0, lo / torch.where(hi > 0, hi, 1.0), 1.0)
    val = torch.where(n_def >= 2, val, torch.full_like(val, neutral))
    if policy == "nan":
        val = torch.where(defined.all(dim=0), val, torch.full_like(val, float("nan")))
    elif policy == "skip":
        val = torch.where(n_def >= 1, val, torch.full_like(val, float("nan")))
    return val


def class_mean(per_class: torch.Tensor, policy: UndefinedPolicy) -> float:
    """Mean over classes: NaN entries propagate for ``nan``, are left out for ``skip``."""
    if per_class.numel() == 0:
        return float("nan")
    if policy == "skip":
        ok = per_class[~torch.isnan(per_class)]
        return float(ok.mean()) if ok.numel() else float("nan")
    return float(per_class.mean())


def class_max(per_class: torch.Tensor, policy: UndefinedPolicy) -> float:
    """Max over classes with the same NaN handling as :func:`class_mean`."""
    if per_class.numel() == 0:
        return float("nan")
    if policy == "skip":
        ok = per_class[~torch.isnan(per_class)]
        return float(ok.max()) if ok.numel() else float("nan")
    return float("nan") if bool(torch.isnan(per_class).any()) else float(per_class.max())


def class_min(per_class: torch.Tensor, policy: UndefinedPolicy) -> float:
    """Min over classes with the same NaN handling as :func:`class_mean`."""
    return -class_max(-per_class, policy)


@dataclasses.dataclass
class ClassRates:
    """One-vs-rest rates per group and class, all ``[G, C]`` float64.

    ``selection`` = P(Ŷ=c | A=g); ``tpr`` = P(Ŷ=c | Y=c, A=g); ``fpr`` = P(Ŷ=c | Y≠c, A=g);
    ``tnr`` = P(Ŷ≠c | Y≠c, A=g). ``positives`` / ``negatives`` are the counts of Y=c / Y≠c.
    ``present`` (``[G]`` bool) marks groups with examples.
    """

    selection: torch.Tensor
    tpr: torch.Tensor
    fpr: torch.Tensor
    tnr: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor
    present: torch.Tensor


def class_rates(table: GroupConfusion, policy: UndefinedPolicy) -> ClassRates:
    """One-vs-rest counts → rates for every (group, class), with the ``undefined`` policy."""
    counts = table.counts.to(torch.float64)
    n = counts.sum(dim=(1, 2))  # [G]
    pos = counts.sum(dim=2)  # [G, C] true class c
    pred = counts.sum(dim=1)  # [G, C] predicted class c
    tp = torch.diagonal(counts, dim1=1, dim2=2)  # [G, C]
    fp = pred - tp
    neg = n[:, None] - pos
    tn = neg - fp
    return ClassRates(
        selection=safe_rate(pred, n[:, None].expand_as(pred), policy),
        tpr=safe_rate(tp, pos, policy),
        fpr=safe_rate(fp, neg, policy),
        tnr=safe_rate(tn, neg, policy),
        positives=pos,
        negatives=neg,
        present=n > 0,
    )
