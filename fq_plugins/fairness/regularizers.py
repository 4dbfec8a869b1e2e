"""Differentiable fairness regularizers over per-group losses.

Each takes per-example losses and group ids, forms the mean loss of every group present in
the batch, and reduces them: ``gap`` = max − min, ``worst`` = max, ``variance`` = population
variance. Usable with any compressor (the recipe's ``fairness.regularizer``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import ConfigDict, Field

from .._config import StrictConfig
from ..errors import ConfigError

__all__ = ["RegularizerSpec", "fairness_penalty", "per_group_losses"]

RegularizerKind = Literal["gap", "worst", "variance", "none"]


class RegularizerSpec(StrictConfig):
    """``fairness.regularizer`` in a recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: RegularizerKind = "none"
    weight: float = Field(0.5, ge=0.0, description="λ_fair multiplying the penalty.")


def per_group_losses(
    losses: torch.Tensor, groups: torch.Tensor, n_groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss per group and a mask of the groups present; shapes ``(G,)``, ``(G,)``."""
    if groups is None:
        raise ConfigError(
            "a fairness regularizer needs group ids in every batch, but the batch has none; "
            "set fairness.group_key to the dataset's group field or use regularizer kind 'none'"
        )
    groups = groups.to(device=losses.device, dtype=torch.long).flatten()
    if groups.numel() != losses.numel():
        raise ConfigError(f"{groups.numel()} group ids for {losses.numel()} losses")
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= n_groups):
        raise ConfigError(
            f"group ids must lie in [0, {n_groups}); got {groups.min().item()}..{groups.max().item()}"
        )
    sums = torch.zeros(n_groups, dtype=losses.dtype, device=losses.device).index_add(
        0, groups, losses
    )
    counts = torch.bincount(groups, minlength=n_groups).to(losses.dtype)
    present = counts > 0
    return sums / counts.clamp_min(1), present


def fairness_penalty(
    kind: str, losses: torch.Tensor, groups: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """Unweighted regularizer value over per-example ``losses`` (0 if < 2 groups present)."""
    if kind == "none":
        return losses.new_zeros(())
    means, present = per_group_losses(losses, groups, n_groups)
    m = means[present]
    if kind == "worst":
        return m.max() if m.numel() else losses.new_zeros(())
    if m.numel() < 2:
        return losses.new_zeros(())
    if kind == "gap":
        return m.max() - m.min()
    if kind == "variance":
        return m.var(unbiased=False)
    raise ConfigError(f"unknown regularizer kind {kind!r}; allowed: gap, worst, variance, none")
