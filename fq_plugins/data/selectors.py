"""Built-in data selector: seeded random subset, stratified by class and group."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError
from ..protocols import DataSelector

__all__ = ["RandomStratifiedSelector"]


class RandomStratifiedSelector(DataSelector):
    """Random subset keeping each (class, group) cell's share (largest-remainder rounding)."""

    name = "random"
    description = "Seeded random subset, stratified by class and (if given) group."

    def select(
        self,
        labels: Sequence[int] | torch.Tensor,
        fraction: float,
        *,
        model: torch.nn.Module | None = None,
        groups: Sequence[int] | torch.Tensor | None = None,
        seed: int = 0,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"fraction must lie in (0, 1]; got {fraction}")
        y = torch.as_tensor(labels, dtype=torch.long).flatten()
        n = y.numel()
        g = (
            torch.zeros_like(y)
            if groups is None
            else torch.as_tensor(groups, dtype=torch.long).flatten()
        )
        if g.numel() != n:
            raise ConfigError(f"{g.numel()} group ids for {n} labels")
        k_total = round(fraction * n)
        cell = y * (int(g.max()) + 1 if n else 1) + g
        cells, counts = torch.unique(cell, return_counts=True)
        quota = counts.double() * k_total / max(n, 1)
        take = quota.floor().long()
        remainder = k_total - int(take.sum())
        if remainder > 0:
            order = torch.argsort(quota - take.double(), descending=True, stable=True)
            take[order[:remainder]] += 1
        gen = torch.Generator().manual_seed(seed)
        picked = []
        for c, k in zip(cells.tolist(), take.tolist(), strict=True):
            idx = torch.nonzero(cell == c).flatten()
            picked.append(idx[torch.randperm(idx.numel(), generator=gen)[:k]])
        return torch.sort(torch.cat(picked)).values if picked else torch.zeros(0, dtype=torch.long)
