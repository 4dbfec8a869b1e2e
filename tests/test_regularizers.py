"""Differentiable fairness regularizers against hand computation."""

from __future__ import annotations

import pytest
import torch

from fq_plugins.errors import ConfigError
from fq_plugins.fairness.regularizers import fairness_penalty, per_group_losses

LOSSES = torch.tensor([1.0, 3.0, 2.0, 6.0, 5.0])
GROUPS = torch.tensor([0, 0, 1, 1, 3])  # means: g0=2, g1=4, g2 absent, g3=5


def test_per_group_means():
    means, present = per_group_losses(LOSSES, GROUPS, 4)
    assert means[present].tolist() == [2.0, 4.0, 5.0] and present.tolist() == [
        True,
        True,
        False,
        True,
    ]


def test_kinds():
    assert fairness_penalty("gap", LOSSES, GROUPS, 4).item() == pytest.approx(3.0)
    assert fairness_penalty("worst", LOSSES, GROUPS, 4).item() == pytest.approx(5.0)
    assert fairness_penalty("variance", LOSSES, GROUPS, 4).item() == pytest.approx(
        torch.tensor([2.0, 4, 5]).var(unbiased=False).item()
    )
    assert fairness_penalty("none", LOSSES, GROUPS, 4).item() == 0.0


def test_single_group_gap_is_zero():
    assert fairness_penalty("gap", LOSSES, torch.zeros(5, dtype=torch.long), 2).item() == 0.0


def test_gradient_flows_to_worst_and_best_group():
    x = LOSSES.clone().requires_grad_(True)
    fairness_penalty("gap", x, GROUPS, 4).backward()
    # d(gap)/dx = +1/|g3| for g3's example, −1/|g0| for g0's examples, 0 elsewhere
    assert x.grad.tolist() == [-0.5, -0.5, 0.0, 0.0, 1.0]


def test_missing_groups_and_bad_ids():
    with pytest.raises(ConfigError, match="needs group ids"):
        fairness_penalty("gap", LOSSES, None, 4)
    with pytest.raises(ConfigError, match=r"\[0, 2\)"):
        fairness_penalty("gap", LOSSES, GROUPS, 2)
