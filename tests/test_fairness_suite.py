"""The fairness-metric suite against a hand-computed case (no fairlearn needed).

The table (2 groups, 3 classes), as (true, predicted) pairs:

    group A: (0,0) (0,1) (1,1) (2,2) (2,0)        n = 5
    group B: (0,0) (1,1) (1,2) (1,1)              n = 4   (no example of class 2)

One-vs-rest, by hand:

    class 0: sel A 2/5  B 1/4 | TPR A 1/2  B 1   | FPR A 1/3  B 0   | TNR A 2/3  B 1
    class 1: sel A 2/5  B 1/2 | TPR A 1    B 2/3 | FPR A 1/4  B 0   | TNR A 3/4  B 1
    class 2: sel A 1/5  B 1/4 | TPR A 1/2  B —   | FPR A 0    B 1/4 | TNR A 1    B 3/4

(— : undefined, B has no example of class 2.)
"""

from __future__ import annotations

import math

import pytest
import torch

from fq_plugins.errors import ConfigError
from fq_plugins.fairness import suite
from fq_plugins.fairness.intersectional import IntersectionalGroups, intersectional_groups
from fq_plugins.fairness.rates import check_undefined, group_spread, safe_rate
from fq_plugins.fairness.table import GroupConfusion
from fq_plugins.testing import FairnessMetricContract

PAIRS_A = [(0, 0), (0, 1), (1, 1), (2, 2), (2, 0)]
PAIRS_B = [(0, 0), (1, 1), (1, 2), (1, 1)]


def hand_table(n_groups: int = 2) -> GroupConfusion:
    pairs = [(*p, 0) for p in PAIRS_A] + [(*p, 1) for p in PAIRS_B]
    y, yhat, g = zip(*pairs, strict=True)
    return GroupConfusion(n_groups, 3).update(list(yhat), list(y), list(g))


# --- contract tests for every new metric ---------------------------------------------


# One contract-test class per metric (pytest collects the generated Test* classes).
for _cls in suite.ALL_METRICS:
    globals()[f"Test{_cls.__name__}Contract"] = type(
        f"Test{_cls.__name__}Contract", (FairnessMetricContract,), {"metric_cls": _cls}
    )


def test_registered_through_the_hook(pm):
    names = set(pm.metrics.names())
    expected = {c.name for c in suite.ALL_METRICS}
    assert expected <= names
    assert {"eopp0", "eopp1", "eodd", "dp_gap", "delta_sp"} <= names
    # fq_register_fairness_metrics attributes them to the suite module
    assert pm.metrics.entry("eodd").plugin == "fq_plugins.fairness.suite"


# --- hand-computed values ----------------------------------------------------------


def value(cls, undefined="skip", table=None):
    return cls(undefined).compute(table or hand_table())


def test_demographic_parity_per_class_any_policy():
    for policy in ("skip", "zero", "nan"):
        r = value(suite.DPDiff, policy)
        assert r.per_class == pytest.approx([3 / 20, 1 / 10, 1 / 20], abs=1e-15)
        assert r.value == pytest.approx(0.1, abs=1e-15)
        assert r.details["max_over_classes"] == pytest.approx(0.15, abs=1e-15)
        assert not r.higher_is_better
    assert value(suite.DPGap).value == value(suite.DPDiff).value


@pytest.mark.parametrize(
    "policy,per_class,mean",
    [
        ("skip", [1 / 2, 1 / 3, 0.0], 5 / 18),  # class 2: one group with data → gap 0
        ("zero", [1 / 2, 1 / 3, 1 / 2], 4 / 9),  # B's undefined TPR counts as 0
        ("nan", [1 / 2, 1 / 3, math.nan], math.nan),
    ],
)
def test_equal_opportunity_and_eopp1(policy, per_class, mean):
    for cls in (suite.EOppDiff, suite.EOpp1):
        r = value(cls, policy)
        assert r.per_class == pytest.approx(per_class, abs=1e-15, nan_ok=True)
        assert r.value == pytest.approx(mean, abs=1e-15, nan_ok=True)


def test_eopp0_tnr_gap():
    for policy in ("skip", "zero", "nan"):  # every group has negatives for every class
        r = value(suite.EOpp0, policy)
        assert r.per_class == pytest.approx([1 / 3, 1 / 4, 1 / 4], abs=1e-15)
        assert r.value == pytest.approx(5 / 18, abs=1e-15)


@pytest.mark.parametrize(
    "policy,eodd,eodds_diff",
    [
        ("skip", [5 / 6, 7 / 12, 1 / 4], [1 / 2, 1 / 3, 1 / 4]),
        ("zero", [5 / 6, 7 / 12, 3 / 4], [1 / 2, 1 / 3, 1 / 2]),
    ],
)
def test_eodd_sum_and_eodds_diff_max(policy, eodd, eodds_diff):
    r = value(suite.EOdd, policy)
    assert r.per_class == pytest.approx(eodd, abs=1e-15)
    assert r.value == pytest.approx(sum(eodd) / 3, abs=1e-15)
    r = value(suite.EOddsDiff, policy)
    assert r.per_class == pytest.approx(eodds_diff, abs=1e-15)
    assert r.details["max_over_classes"] == pytest.approx(1 / 2, abs=1e-15)


def test_ratios():
    r = value(suite.DPRatio)
    assert r.per_class == pytest.approx([5 / 8, 4 / 5, 4 / 5], abs=1e-15)
    assert r.details["min_over_classes"] == pytest.approx(5 / 8, abs=1e-15)
    assert r.higher_is_better
    assert value(suite.EOppRatio, "skip").per_class == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert value(suite.EOppRatio, "zero").per_class == pytest.approx([1 / 2, 2 / 3, 0.0])
    # FPR ratio is 0 in every class (one group has FPR 0), so the min is 0
    assert value(suite.EOddsRatio).per_class == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    "cls,skip,zero",
    [
        (suite.DeltaSP, 3 / 10, 3 / 10),
        (suite.DeltaEOpp, 1 / 2 + 1 / 3, 1 / 2 + 1 / 3 + 1 / 2),
        # Σ_y′ Σ_y: row y′=0: 1/2+1/2+0; y′=1: 0+1/3+1/3; y′=2 (B undefined): 1/2+0+1/2 with zero
        (suite.DeltaEOdds, 1 + 2 / 3, 1 + 2 / 3 + 1),
    ],
)
def test_additive_multiclass_forms(cls, skip, zero):
    assert value(cls, "skip").value == pytest.approx(skip, abs=1e-15)
    assert value(cls, "zero").value == pytest.approx(zero, abs=1e-15)
    nan_val = value(cls, "nan").value
    assert math.isnan(nan_val) if cls is not suite.DeltaSP else nan_val == pytest.approx(0.3)
    r = value(cls, "zero")
    assert r.details["normalized"] == pytest.approx(zero / r.details["max_possible"])
    assert r.details["pair"] == ["0", "1"]


def test_delta_is_max_over_pairs_for_three_groups():
    # group C (id 2) is a copy of group A: pairs A|B = 0.3, A|C = 0, B|C = 0.3
    t = hand_table(3)
    t.update([yhat for _, yhat in PAIRS_A], [y for y, _ in PAIRS_A], [2] * len(PAIRS_A))
    r = suite.DeltaSP().compute(t)
    assert r.value == pytest.approx(0.3, abs=1e-15)
    assert r.details["by_pair"]["0|2"] == 0.0
    assert r.details["pair"] == ["0", "1"]


def test_group_without_examples_is_left_out_and_keeps_its_id():
    t3 = hand_table(3)  # group id 2 never occurs
    for cls in suite.ALL_METRICS:
        if cls is suite.MeanGroupAccuracy:
            continue
        for policy in ("skip", "zero"):
            a, b = cls(policy).compute(hand_table()), cls(policy).compute(t3)
            assert a.value == b.value, (cls.name, policy)
            assert b.details["groups_without_examples"] == ["2"]
    assert math.isnan(suite.MeanGroupAccuracy().compute(t3).per_group[2])


def test_fewer_than_two_groups_gives_zero_gap():
    t = GroupConfusion(2, 3).update([0, 1, 1], [0, 1, 2], [0, 0, 0])
    for cls in (suite.DPDiff, suite.EOppDiff, suite.EOdd, suite.DeltaSP, suite.DeltaEOdds):
        assert cls().compute(t).value == 0.0
    assert suite.DPRatio().compute(t).value == 1.0


def test_mean_group_accuracy():
    r = suite.MeanGroupAccuracy().compute(hand_table())
    assert r.value == pytest.approx((3 / 5 + 3 / 4) / 2)  # A: 3 of 5 right, B: 3 of 4


def test_undefined_setting_is_validated():
    with pytest.raises(ConfigError, match="'maybe' is not one of nan, zero, skip"):
        suite.DPDiff("maybe")
    assert check_undefined("zero") == "zero"


def test_rate_helpers():
    num, den = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([2.0, 0.0, 4.0])
    assert safe_rate(num, den, "zero").tolist() == [0.5, 0.0, 0.75]
    assert math.isnan(safe_rate(num, den, "skip")[1])
    rates = torch.tensor([[0.2, math.nan], [0.5, math.nan], [math.nan, 0.4]], dtype=torch.float64)
    present = torch.tensor([True, True, True])
    assert group_spread(rates, present, "skip").tolist() == pytest.approx([0.3, 0.0])
    assert all(math.isnan(v) for v in group_spread(rates, present, "nan").tolist())
    assert group_spread(rates, present, "skip", kind="ratio").tolist() == pytest.approx([0.4, 1.0])


def test_streaming_batches_equal_one_pass():
    gen = torch.Generator().manual_seed(3)
    y, p, g = (torch.randint(0, 4, (500,), generator=gen) for _ in range(3))
    whole = GroupConfusion(4, 4).update(p, y, g)
    streamed = GroupConfusion(4, 4)
    for i in range(0, 500, 37):
        streamed.update(p[i : i + 37], y[i : i + 37], g[i : i + 37])
    for cls in suite.ALL_METRICS:
        assert cls().compute(streamed).value == cls().compute(whole).value


# --- intersectional groups -----------------------------------------------------------


def test_intersectional_ids_and_names():
    ig = IntersectionalGroups({"sex": ["F", "M"], "age": ["<60", ">=60", "unknown"]})
    assert ig.n_groups == 6
    assert ig.names == [
        "sex=F|age=<60",
        "sex=F|age=>=60",
        "sex=F|age=unknown",
        "sex=M|age=<60",
        "sex=M|age=>=60",
        "sex=M|age=unknown",
    ]
    ids = ig.ids({"sex": ["M", "F", "M"], "age": [">=60", "<60", "unknown"]})
    assert ids.tolist() == [4, 0, 5]  # M=1 → 1·3 + index of age
    assert ig.decode(4) == {"sex": "M", "age": ">=60"}
    # a combination absent from a batch keeps its id: table shapes agree across batches
    t = GroupConfusion(ig.n_groups, 2, group_names=ig.names).update([0, 1, 1], [0, 1, 0], ids)
    assert t.group_sizes.tolist() == [1, 0, 0, 0, 1, 1]


def test_intersectional_from_data_and_errors():
    ids, names = intersectional_groups({"a": [1, 0, 1], "b": torch.tensor([2, 2, 3])})
    assert names == ["a=0|b=2", "a=0|b=3", "a=1|b=2", "a=1|b=3"]
    assert ids.tolist() == [2, 0, 3]
    ig = IntersectionalGroups({"sex": ["female", "male"]})
    with pytest.raises(ConfigError, match=r"'femal'.*Did you mean 'female'"):
        ig.ids({"sex": ["femal"]})
    with pytest.raises(ConfigError, match="missing"):
        ig.ids({"age": [1]})
    with pytest.raises(ConfigError, match="differ in length"):
        IntersectionalGroups({"a": [0, 1], "b": [0, 1]}).ids({"a": [0], "b": [0, 1]})
    with pytest.raises(ConfigError, match="more than once"):
        IntersectionalGroups({"a": [0, 0]})
