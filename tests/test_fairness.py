"""Group confusion table and the built-in metrics against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from fq_plugins.errors import ConfigError
from fq_plugins.fairness.metrics import AccuracyGap, GroupAccuracy, WorstGroupAccuracy
from fq_plugins.fairness.table import GroupConfusion
from fq_plugins.testing import FairnessMetricContract


class TestGroupAccuracyContract(FairnessMetricContract):
    metric_cls = GroupAccuracy


class TestWorstGroupAccuracyContract(FairnessMetricContract):
    metric_cls = WorstGroupAccuracy


class TestAccuracyGapContract(FairnessMetricContract):
    metric_cls = AccuracyGap


@pytest.fixture
def table():
    # group 0: 4 examples, 3 right; group 1: 2 examples, 1 right; group 2: 1 example, 1 right
    preds = [0, 1, 2, 2, 1, 0, 2]
    target = [0, 1, 2, 0, 1, 1, 2]
    groups = [0, 0, 0, 0, 1, 1, 2]
    return GroupConfusion(3, 3).update(preds, target, groups)


def test_counts_hand_computed(table):
    assert table.counts.dtype == torch.float64
    assert table.counts[0, 0, 2] == 1 and table.counts[0, 0, 0] == 1 and table.counts[1, 1, 0] == 1
    assert table.total == 7
    assert table.group_sizes.tolist() == [4, 2, 1]
    assert table.overall_accuracy() == pytest.approx(5 / 7)


def test_metrics_hand_computed(table):
    assert GroupAccuracy().compute(table).per_group == pytest.approx([0.75, 0.5, 1.0])
    assert GroupAccuracy().compute(table).value == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    w = WorstGroupAccuracy().compute(table)
    assert w.value == 0.5 and w.details["worst_group"] == 1
    gap = AccuracyGap().compute(table)
    assert gap.value == pytest.approx(0.75 - 0.5) and gap.details["max_minus_min"] == 0.5
    assert not gap.higher_is_better


def test_logits_accepted_and_batches_accumulate(table):
    t = GroupConfusion(3, 3)
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 2]), 3).float()
    t.update(logits, [0, 1, 2, 0], [0, 0, 0, 0])
    t.update([1, 0, 2], [1, 1, 2], [1, 1, 2])
    assert torch.equal(t.counts, table.counts)


def test_missing_group_keeps_its_id_and_is_skipped():
    t = GroupConfusion(3, 2).update([0, 1, 1], [0, 1, 0], [0, 0, 2])
    acc = t.group_accuracy()
    assert acc[0] == 1.0 and math.isnan(acc[1]) and acc[2] == 0.0
    assert WorstGroupAccuracy().compute(t).value == 0.0
    assert GroupAccuracy().compute(t).value == 0.5


@pytest.mark.parametrize("groups,what", [([0, 3], "group id 3"), ([-1, 0], "group id -1")])
def test_group_ids_outside_range_are_errors(groups, what):
    with pytest.raises(ConfigError, match=what):
        GroupConfusion(3, 2).update([0, 1], [0, 1], groups)


def test_label_out_of_range_and_length_mismatch():
    with pytest.raises(ConfigError, match="target 5"):
        GroupConfusion(1, 2).update([0], [5], [0])
    with pytest.raises(ConfigError, match="differ in length"):
        GroupConfusion(1, 2).update([0, 1], [0], [0])


def test_merge_equals_single_pass():
    gen = torch.Generator().manual_seed(0)
    p, y, g = (torch.randint(0, 4, (100,), generator=gen) for _ in range(3))
    whole = GroupConfusion(4, 4).update(p, y, g)
    a = GroupConfusion(4, 4).update(p[:37], y[:37], g[:37])
    b = GroupConfusion(4, 4).update(p[37:], y[37:], g[37:])
    assert torch.equal(a.merge(b).counts, whole.counts)


def test_all_reduce_without_distributed_is_noop(table):
    before = table.counts.clone()
    assert torch.equal(table.all_reduce().counts, before)


def test_logits_need_one_column_per_class():
    # a single-logit binary model: argmax over one column would be 0 for every example
    with pytest.raises(ConfigError, match=r"shape \(3, 1\): 1 logit column.*logits > 0"):
        GroupConfusion(1, 2).update(torch.tensor([[2.0], [-1.0], [0.5]]), [1, 0, 1], [0, 0, 0])
    with pytest.raises(ConfigError, match=r"3 logit column\(s\) for a 4-class table"):
        GroupConfusion(1, 4).update(torch.zeros(2, 3), [0, 3], [0, 0])
    # the suggested conversion gives the right class ids
    logits = torch.tensor([[2.0], [-1.0], [0.5]])
    t = GroupConfusion(1, 2).update((logits > 0).long().flatten(), [1, 0, 1], [0, 0, 0])
    assert t.overall_accuracy() == 1.0
