"""Binary tasks: the headline of every per-class rate metric is the positive class's value.

fairlearn's parity functions (``demographic_parity_difference`` … ``equalized_odds_ratio``)
take no ``pos_label``: they treat label 1 as positive. A practitioner checks ``pos_label: 1``
by calling them on the raw 0/1 labels and ``pos_label: 0`` by calling them on the labels
binarised as ``y == 0``; the tests below do exactly that. fairlearn has no EOpp0 / EOdd
function, so those (and EOpp1 again) are checked against ``MetricFrame`` with fairlearn's
``true_positive_rate`` / ``true_negative_rate`` / ``false_positive_rate`` given
``pos_label`` on the raw labels — a second, independent route to the same rates.

A hand-computed case (no fairlearn needed) pins the values, the ``pos_label`` switch, the
old mean-over-classes figure kept in ``details`` and the errors.

    group A: (y, ŷ) = (1,1) (1,1) (1,0) (0,0) (0,1)          n = 5
    group B: (y, ŷ) = (1,1) (0,0) (0,0) (0,0) (0,0) (0,1)    n = 6

    positive class 1:  sel A 3/5  B 1/3 | TPR A 2/3  B 1 | FPR A 1/2  B 1/5 | TNR A 1/2  B 4/5
    positive class 0:  sel A 2/5  B 2/3 | TPR A 1/2  B 4/5 | FPR A 1/3  B 0 | TNR A 2/3  B 1
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
import torch

from fq_plugins.engine.evaluator import compute_metrics
from fq_plugins.errors import ConfigError
from fq_plugins.fairness import suite
from fq_plugins.fairness.table import GroupConfusion
from fq_plugins.recipe import FairnessSpec

A = [(1, 1), (1, 1), (1, 0), (0, 0), (0, 1)]
B = [(1, 1), (0, 0), (0, 0), (0, 0), (0, 0), (0, 1)]

PER_CLASS = (
    suite.DPDiff,
    suite.DPGap,
    suite.EOppDiff,
    suite.EOddsDiff,
    suite.DPRatio,
    suite.EOppRatio,
    suite.EOddsRatio,
    suite.EOpp1,
    suite.EOpp0,
    suite.EOdd,
)


def binary_table(*groups: list[tuple[int, int]], n_groups: int | None = None) -> GroupConfusion:
    y, yhat, g = [], [], []
    for k, pairs in enumerate(groups):
        for t, p in pairs:
            y.append(t)
            yhat.append(p)
            g.append(k)
    return GroupConfusion(n_groups or len(groups), 2).update(yhat, y, g)


# --- hand-computed -------------------------------------------------------------------

HAND = {
    1: {
        "dp_diff": 3 / 5 - 1 / 3,
        "dp_gap": 3 / 5 - 1 / 3,
        "dp_ratio": (1 / 3) / (3 / 5),
        "eopp_diff": 1 - 2 / 3,
        "eopp1": 1 - 2 / 3,
        "eopp_ratio": 2 / 3,
        "eodds_diff": max(1 / 3, 1 / 2 - 1 / 5),
        "eodds_ratio": min(2 / 3, (1 / 5) / (1 / 2)),
        "eopp0": 4 / 5 - 1 / 2,
        "eodd": 1 / 3 + (1 / 2 - 1 / 5),
    },
    0: {
        "dp_diff": 2 / 3 - 2 / 5,
        "dp_gap": 2 / 3 - 2 / 5,
        "dp_ratio": (2 / 5) / (2 / 3),
        "eopp_diff": 4 / 5 - 1 / 2,
        "eopp1": 4 / 5 - 1 / 2,
        "eopp_ratio": (1 / 2) / (4 / 5),
        "eodds_diff": max(4 / 5 - 1 / 2, 1 / 3),
        "eodds_ratio": 0.0,  # FPR ratio 0 / (1/3)
        "eopp0": 1 / 3,
        "eodd": (4 / 5 - 1 / 2) + 1 / 3,
    },
}


@pytest.mark.parametrize("pos_label", [1, 0])
@pytest.mark.parametrize("policy", ["skip", "zero", "nan"])  # every rate is defined here
def test_hand_computed_binary_headline(pos_label, policy):
    t = binary_table(A, B)
    for cls in PER_CLASS:
        r = cls(policy, pos_label=pos_label).compute(t)
        assert r.value == pytest.approx(HAND[pos_label][cls.name], abs=1e-15), cls.name
        # per_class holds both classes; the headline is the positive class's entry
        assert r.per_class == pytest.approx([HAND[0][cls.name], HAND[1][cls.name]], abs=1e-15), (
            cls.name
        )
        assert r.value == r.per_class[pos_label]
        # the old convention (mean over both classes) stays visible in details
        assert r.details["mean_over_classes"] == pytest.approx(
            (HAND[0][cls.name] + HAND[1][cls.name]) / 2, abs=1e-15
        )
        assert r.details["reduction"] == "pos_label"
        assert r.details["pos_label"] == pos_label and r.details["pos_label_counted"]
        assert r.details["classes"] == ["0", "1"]


def test_default_pos_label_is_one_and_eopp0_differs_from_eopp1():
    t = binary_table(A, B)
    for cls in PER_CLASS:
        assert cls().compute(t).value == cls(pos_label=1).compute(t).value
    assert suite.EOpp0().compute(t).value != suite.EOpp1().compute(t).value
    # the two ratios that the mean used to mix
    assert suite.DPRatio(pos_label=0).compute(t).value != suite.DPRatio().compute(t).value


def test_binary_undefined_rates():
    # group C has no positive example: its TPR (class 1) is undefined
    c = [(0, 0), (0, 1)]
    t = binary_table(A, B, c)
    assert suite.EOppDiff("skip").compute(t).value == pytest.approx(1 / 3)  # A, B only
    assert suite.EOppDiff("zero").compute(t).value == 1.0  # C's TPR counts as 0
    assert math.isnan(suite.EOppDiff("nan").compute(t).value)
    # class 0 (pos_label 0): C's TPR = TNR of class 1 is defined (1/2), so no policy matters
    for policy in ("skip", "zero", "nan"):
        assert suite.EOppDiff(policy, pos_label=0).compute(t).value == pytest.approx(4 / 5 - 1 / 2)
    # a group with no example at all keeps its id and is left out
    t4 = binary_table(A, B, n_groups=4)
    for cls in PER_CLASS:
        assert cls().compute(t4).value == cls().compute(binary_table(A, B)).value
        assert cls().compute(t4).details["groups_without_examples"] == ["2", "3"]


def test_no_positive_example_at_all():
    t = binary_table([(0, 0), (0, 1)], [(0, 0), (0, 0), (0, 0)])
    r = suite.EOppDiff("skip").compute(t)
    assert r.value == 0.0 and not r.details["pos_label_counted"]  # fewer than two groups
    assert suite.EOppRatio("skip").compute(t).value == 1.0
    assert suite.EOppDiff("zero").compute(t).value == 0.0  # fairlearn: every TPR is 0
    assert math.isnan(suite.EOppDiff("nan").compute(t).value)
    # eodds: the TPR component does not count, the FPR gap (1/2 − 0) does
    assert suite.EOddsDiff("skip").compute(t).value == 0.5


# --- pos_label validation ------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, True, 1.5, "1", None])
def test_pos_label_must_be_a_class_id(bad):
    with pytest.raises(ConfigError, match=rf"fairness\.pos_label: pos_label {bad!r} is not"):
        suite.EOppDiff(pos_label=bad)


def test_pos_label_outside_the_classes_names_the_value():
    with pytest.raises(ConfigError, match=r"pos_label 2 is outside \[0, 2\).*ids 0\.\.1"):
        suite.EOpp0(pos_label=2).compute(binary_table(A, B))
    t3 = GroupConfusion(2, 3).update([0, 1, 2, 2], [0, 1, 2, 1], [0, 0, 1, 1])
    with pytest.raises(ConfigError, match=r"pos_label 3 is outside \[0, 3\)"):
        suite.DPRatio(pos_label=3).compute(t3)
    assert np.int64(0) == suite.DPDiff(pos_label=np.int64(0)).pos_label  # numpy ints are fine


def test_multiclass_keeps_the_mean_and_ignores_pos_label():
    gen = torch.Generator().manual_seed(5)
    y, p, g = (torch.randint(0, 4, (300,), generator=gen) for _ in range(3))
    t = GroupConfusion(4, 4).update(p, y, g)
    for cls in PER_CLASS:
        results = [cls(pos_label=k).compute(t) for k in range(4)]
        per_class = torch.tensor(results[0].per_class, dtype=torch.float64)
        assert results[0].value == float(per_class.mean())
        assert results[0].value == results[0].details["mean_over_classes"]
        assert {r.value for r in results} == {results[0].value}
        assert results[0].details["reduction"] == "mean_over_classes"
        assert results[0].details["pos_label"] is None


def test_recipe_pos_label_reaches_the_metrics(pm):
    t = binary_table(A, B)
    names = ["eopp_diff", "eopp0", "dp_ratio", "delta_sp", "group_accuracy"]
    for pos in (0, 1):
        opts = FairnessSpec(pos_label=pos).metric_options
        got = compute_metrics(t, names, pm, opts)
        for name in ("eopp_diff", "eopp0", "dp_ratio"):
            assert got[name].value == pytest.approx(HAND[pos][name], abs=1e-15)
        # metrics without the keyword are built without it
        assert got["delta_sp"].value == pytest.approx(2 * HAND[pos]["dp_diff"], abs=1e-15)
    with pytest.raises(ConfigError, match="pos_label 5 is outside"):
        compute_metrics(t, ["eodd"], pm, {"undefined": "skip", "pos_label": 5})


# --- against fairlearn's public functions ------------------------------------------------

PUBLIC = {
    "dp_diff": "demographic_parity_difference",
    "dp_ratio": "demographic_parity_ratio",
    "eopp_diff": "equal_opportunity_difference",
    "eopp_ratio": "equal_opportunity_ratio",
    "eodds_diff": "equalized_odds_difference",
    "eodds_ratio": "equalized_odds_ratio",
}
OURS = {
    "dp_diff": suite.DPDiff,
    "dp_ratio": suite.DPRatio,
    "eopp_diff": suite.EOppDiff,
    "eopp_ratio": suite.EOppRatio,
    "eodds_diff": suite.EOddsDiff,
    "eodds_ratio": suite.EOddsRatio,
    "eopp1": suite.EOpp1,
    "eopp0": suite.EOpp0,
    "eodd": suite.EOdd,
}


def random_cases(n_groups: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(y, ŷ, g) binary draws, skewed so small groups sometimes lack a class."""
    rng = np.random.default_rng(seed)
    cases = []
    for n in (12, 300):
        p_pos = rng.uniform(0.1, 0.6)
        pg = rng.dirichlet(np.full(n_groups, 1.0))
        g = rng.choice(n_groups, size=n, p=pg)
        g[:n_groups] = np.arange(n_groups)  # every group occurs: fairlearn sees them all
        y = (rng.random(n) < p_pos + 0.3 * (g == 0)).astype(int)  # group 0 differs
        flip = rng.random(n) < rng.uniform(0.05, 0.4)
        yhat = np.where(flip, 1 - y, y)
        cases.append((y, yhat, g))
    return cases


def _fairlearn_values(y, yhat, g, pos_label: int) -> dict[str, float]:
    warnings.simplefilter("ignore")
    fm = pytest.importorskip("fairlearn.metrics")
    # fairlearn's public functions treat label 1 as positive: binarise for pos_label 0
    yt, yp = (y, yhat) if pos_label == 1 else ((y == 0).astype(int), (yhat == 0).astype(int))
    out = {
        ours: float(getattr(fm, fl)(yt, yp, sensitive_features=g)) for ours, fl in PUBLIC.items()
    }
    frame = fm.MetricFrame(
        metrics={
            name: functools.partial(fn, pos_label=pos_label)
            for name, fn in (
                ("tpr", fm.true_positive_rate),
                ("tnr", fm.true_negative_rate),
                ("fpr", fm.false_positive_rate),
            )
        },
        y_true=y,
        y_pred=yhat,
        sensitive_features=g,
    )
    diff = frame.difference()
    out["eopp1"] = float(diff["tpr"])
    out["eopp0"] = float(diff["tnr"])
    out["eodd"] = float(diff["tpr"]) + float(diff["fpr"])
    out["_tpr_by_group"] = frame.by_group["tpr"].to_dict()  # type: ignore[assignment]
    return out


@pytest.mark.parametrize("n_groups", [2, 5])
def test_binary_headline_equals_fairlearn(n_groups):
    pytest.importorskip("fairlearn.metrics")
    checked = undefined_cases = 0
    for seed in range(4):
        for y, yhat, g in random_cases(n_groups, seed):
            t = GroupConfusion(n_groups, 2).update(yhat.tolist(), y.tolist(), g.tolist())
            for pos in (0, 1):
                fl = _fairlearn_values(y, yhat, g, pos)
                tprs_by_group = fl.pop("_tpr_by_group")
                for name, cls in OURS.items():
                    ours = cls("zero", pos_label=pos).compute(t).value
                    theirs = fl[name]
                    if math.isnan(theirs):  # fairlearn's ratio 0/0: every group's rate is 0
                        assert name.endswith("ratio") and ours == 1.0, (seed, pos, name)
                    else:
                        assert ours == theirs, (seed, n_groups, len(y), pos, name, ours, theirs)
                    checked += 1
                # skip (the default): a group without an example of the positive class is
                # left out of the TPR gap; the others' rates are fairlearn's
                with_pos = [k for k in range(n_groups) if ((g == k) & (y == pos)).any()]
                rates = [tprs_by_group[k] for k in with_pos]
                expected = max(rates) - min(rates) if len(rates) >= 2 else 0.0
                assert suite.EOppDiff(pos_label=pos).compute(t).value == expected
                if len(with_pos) == n_groups:
                    for cls in (suite.EOppDiff, suite.EOppRatio, suite.DPDiff, suite.DPRatio):
                        assert (
                            cls("skip", pos_label=pos).compute(t).value
                            == cls("zero", pos_label=pos).compute(t).value
                        )
                else:
                    undefined_cases += 1
                    assert math.isnan(suite.EOppDiff("nan", pos_label=pos).compute(t).value)
    assert checked == 4 * 2 * 2 * len(OURS)
    if n_groups == 5:  # small skewed groups do exercise the undefined path
        assert undefined_cases > 0
