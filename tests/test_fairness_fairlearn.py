"""Exact (float64 ``==``) agreement with fairlearn's binary metrics, applied per class.

fairlearn's parity functions are binary, so for every class c the labels are binarised
(``y == c``, ``ŷ == c``) and fairlearn computes the per-group selection rate, TPR and FPR
and their between-group difference and ratio. fairlearn counts a TPR/FPR that is 0/0
(a group with no positives/negatives) as 0 and only knows groups that occur, which is our
``undefined="zero"`` setting; ``skip`` and ``nan`` are checked against fairlearn's per-group
rates with the groups lacking data removed by plain numpy counting.

The 1,000+ random cases go through one ``MetricFrame`` per class index with the case id as
a control feature (fairlearn's own engine, computing each case's groups separately); a
smaller set goes through the public functions (``demographic_parity_difference`` …) one
case at a time, which also shows the two routes agree. These check ``per_class``; the
binary headline value (the positive class, ``pos_label``) is checked against fairlearn's
public functions in ``tests/test_fairness_binary.py``.
"""

from __future__ import annotations

import math
import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from fq_plugins.fairness import suite
from fq_plugins.fairness.table import GroupConfusion

fairlearn_metrics = pytest.importorskip("fairlearn.metrics")

N_CASES = 1000
MAX_CLASSES = 4


def make_cases(
    n_cases: int, seed: int
) -> list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """(G, C, y, ŷ, g) with skewed draws, so groups and classes are often missing."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n_cases):
        n_groups = int(rng.integers(2, 5))
        n_classes = int(rng.integers(2, MAX_CLASSES + 1))
        n = int(rng.integers(1, 40))
        py = rng.dirichlet(np.full(n_classes, 0.7))
        pg = rng.dirichlet(np.full(n_groups, 0.8))
        y = rng.choice(n_classes, size=n, p=py)
        noise = rng.choice(n_classes, size=n)
        yhat = np.where(rng.random(n) < rng.random(), y, noise)
        g = rng.choice(n_groups, size=n, p=pg)
        cases.append((n_groups, n_classes, y, yhat, g))
    return cases


def _frame_by_class(args: tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """fairlearn MetricFrame for one class index over every case (runs in a worker)."""
    c, y, yhat, g, case = args
    warnings.simplefilter("ignore")
    from fairlearn.metrics import (
        MetricFrame,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    mf = MetricFrame(
        metrics={"sel": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
        y_true=(y == c).astype(int),
        y_pred=(yhat == c).astype(int),
        sensitive_features=g,
        control_features=case,
    )
    diff, ratio, by_group = mf.difference(), mf.ratio(), mf.by_group
    return {
        "diff": {int(k): tuple(float(v) for v in row) for k, row in diff.iterrows()},
        "ratio": {int(k): tuple(float(v) for v in row) for k, row in ratio.iterrows()},
        "by_group": {
            (int(k), int(gr)): tuple(float(v) for v in row) for (k, gr), row in by_group.iterrows()
        },
    }


def _public_functions(args: tuple[list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]]):
    """fairlearn's public binary functions, one case and class at a time (runs in a worker)."""
    (cases,) = args
    warnings.simplefilter("ignore")
    fm = __import__("fairlearn.metrics", fromlist=["x"])
    out = {}
    for k, (_, n_classes, y, yhat, g) in enumerate(cases):
        for c in range(n_classes):
            yt, yp = (y == c).astype(int), (yhat == c).astype(int)
            out[(k, c)] = {
                name: float(getattr(fm, name)(yt, yp, sensitive_features=g))
                for name in (
                    "demographic_parity_difference",
                    "equal_opportunity_difference",
                    "equalized_odds_difference",
                    "demographic_parity_ratio",
                    "equal_opportunity_ratio",
                )
            }
    return out


def _ours(cases, policy):
    out = []
    for n_groups, n_classes, y, yhat, g in cases:
        t = GroupConfusion(n_groups, n_classes).update(yhat.tolist(), y.tolist(), g.tolist())
        out.append(
            {
                name: cls(policy).compute(t).per_class
                for name, cls in (
                    ("dp", suite.DPDiff),
                    ("eopp", suite.EOppDiff),
                    ("eodds", suite.EOddsDiff),
                    ("dp_ratio", suite.DPRatio),
                    ("eopp_ratio", suite.EOppRatio),
                    ("eodds_ratio", suite.EOddsRatio),
                )
            }
        )
    return out


def _pool() -> ProcessPoolExecutor:
    # fork: the workers only run numpy/fairlearn, never torch
    return ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork"))


def same(a: float, b: float) -> bool:
    """Exact float equality, NaN equal to NaN."""
    return a == b or (math.isnan(a) and math.isnan(b))


def _spread(vals: list[float], kind: str) -> float:
    if len(vals) < 2:
        return 0.0 if kind == "diff" else 1.0
    hi, lo = max(vals), min(vals)
    if kind == "diff":
        return hi - lo
    return lo / hi if hi > 0 else 1.0


@pytest.mark.slow
def test_exact_against_fairlearn_metricframe_on_1000_random_cases():
    cases = make_cases(N_CASES, seed=2026)
    y = np.concatenate([c[2] for c in cases])
    yhat = np.concatenate([c[3] for c in cases])
    g = np.concatenate([c[4] for c in cases])
    case = np.concatenate([np.full(len(c[2]), k) for k, c in enumerate(cases)])
    n_classes = np.array([c[1] for c in cases])
    jobs = []
    for c in range(MAX_CLASSES):
        keep = n_classes[case] > c
        jobs.append((c, y[keep], yhat[keep], g[keep], case[keep]))
    with _pool() as pool:
        frames = list(pool.map(_frame_by_class, jobs))
    zero, skip, nan = _ours(cases, "zero"), _ours(cases, "skip"), _ours(cases, "nan")

    checked = ratio_nan = 0
    for k, (n_groups, n_cls, yk, _, gk) in enumerate(cases):
        for c in range(n_cls):
            fr = frames[c]
            sel_d, tpr_d, fpr_d = fr["diff"][k]
            sel_r, tpr_r, fpr_r = fr["ratio"][k]
            # zero: bit-for-bit fairlearn
            assert zero[k]["dp"][c] == sel_d, (k, c)
            assert zero[k]["eopp"][c] == tpr_d, (k, c)
            assert zero[k]["eodds"][c] == max(tpr_d, fpr_d), (k, c)
            for ours, theirs in (
                (zero[k]["dp_ratio"][c], sel_r),
                (zero[k]["eopp_ratio"][c], tpr_r),
            ):
                if math.isnan(theirs):  # fairlearn: 0/0 when every group's rate is 0
                    assert ours == 1.0, (k, c)
                    ratio_nan += 1
                else:
                    assert ours == theirs, (k, c)
            if not (math.isnan(tpr_r) or math.isnan(fpr_r)):
                assert zero[k]["eodds_ratio"][c] == min(tpr_r, fpr_r), (k, c)
            # skip / nan: fairlearn's per-group rates, groups without data removed by numpy
            present = [gr for gr in range(n_groups) if (gk == gr).any()]
            with_pos = [gr for gr in present if ((gk == gr) & (yk == c)).any()]
            with_neg = [gr for gr in present if ((gk == gr) & (yk != c)).any()]
            tprs = [fr["by_group"][(k, gr)][1] for gr in with_pos]
            fprs = [fr["by_group"][(k, gr)][2] for gr in with_neg]
            exp_tpr = _spread(tprs, "diff") if with_pos else math.nan
            exp_fpr = _spread(fprs, "diff") if with_neg else math.nan
            assert same(skip[k]["eopp"][c], exp_tpr), (k, c)
            exp_eodds = (
                max(v for v in (exp_tpr, exp_fpr) if not math.isnan(v))
                if with_pos or with_neg
                else math.nan
            )
            assert same(skip[k]["eodds"][c], exp_eodds), (k, c)
            if with_pos:
                assert skip[k]["eopp_ratio"][c] == _spread(tprs, "ratio"), (k, c)
            if len(with_pos) == len(present):
                assert nan[k]["eopp"][c] == tpr_d, (k, c)
            else:
                assert math.isnan(nan[k]["eopp"][c]), (k, c)
            assert skip[k]["dp"][c] == nan[k]["dp"][c] == sel_d  # selection never undefined
            checked += 1
    assert checked >= 2 * N_CASES
    # the random cases do exercise the undefined paths
    undefined = sum(
        1
        for k in range(N_CASES)
        for a, b in zip(skip[k]["eopp"], zero[k]["eopp"], strict=True)
        if not same(a, b)
    )
    assert undefined > 50 and ratio_nan > 10


def test_exact_against_fairlearn_public_functions():
    cases = make_cases(24, seed=7)
    with _pool() as pool:
        halves = list(pool.map(_public_functions, [(cases[:12],), (cases[12:],)]))
    theirs = {**halves[0], **{(k + 12, c): v for (k, c), v in halves[1].items()}}
    ours = _ours(cases, "zero")
    for (k, c), fl in theirs.items():
        assert ours[k]["dp"][c] == fl["demographic_parity_difference"]
        assert ours[k]["eopp"][c] == fl["equal_opportunity_difference"]
        assert ours[k]["eodds"][c] == fl["equalized_odds_difference"]
        for name, fl_name in (
            ("dp_ratio", "demographic_parity_ratio"),
            ("eopp_ratio", "equal_opportunity_ratio"),
        ):
            expected = 1.0 if math.isnan(fl[fl_name]) else fl[fl_name]
            assert ours[k][name][c] == expected
    assert len(theirs) >= 50
