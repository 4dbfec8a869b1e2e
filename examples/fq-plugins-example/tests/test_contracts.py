"""The example plugin passes fq-plugins' contract tests (and one check of its own)."""

import torch
from fq_plugins_example import MagnitudePrune, WorstClassRecall

from fq_plugins.fairness.table import GroupConfusion
from fq_plugins.testing import CompressorContract, FairnessMetricContract


class TestMagnitudePrune(CompressorContract):
    compressor_cls = MagnitudePrune
    config = {"sparsity": 0.5}


class TestWorstClassRecall(FairnessMetricContract):
    metric_cls = WorstClassRecall


def test_worst_class_recall_hand_computed():
    t = GroupConfusion(2, 3)
    # class 0: 3/4 right, class 1: 1/2 right, class 2: 2/2 right → worst 0.5
    t.update([0, 0, 0, 1, 1, 2, 2, 2], [0, 0, 0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1, 0, 1])
    assert WorstClassRecall().compute(t).value == 0.5
    assert torch.isfinite(torch.tensor(WorstClassRecall().compute(t).per_class)).all()
