"""An in-memory image dataset with a class label and a group attribute per example."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from ..errors import ConfigError

__all__ = ["GroupDataset", "iterate_batches", "stratified_split"]


@dataclasses.dataclass
class GroupDataset:
    """``x`` float32 ``(N, C, H, W)``, ``y`` int64 ``(N,)``, ``group`` int64 ``(N,)``."""

    x: torch.Tensor
    y: torch.Tensor
    group: torch.Tensor
    class_names: list[str]
    group_names: list[str]
    name: str = "dataset"
    dropped: int = 0
    """Rows of the source left out (e.g. no group value)."""

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if self.y.shape != (n,) or self.group.shape != (n,):
            raise ConfigError(
                f"dataset {self.name!r}: x has {n} rows but y has shape {tuple(self.y.shape)} "
                f"and group {tuple(self.group.shape)}; they must be ({n},)"
            )
        if n and (int(self.y.min()) < 0 or int(self.y.max()) >= self.n_classes):
            raise ConfigError(f"dataset {self.name!r}: labels must lie in [0, {self.n_classes})")
        if n and (int(self.group.min()) < 0 or int(self.group.max()) >= self.n_groups):
            raise ConfigError(f"dataset {self.name!r}: group ids must lie in [0, {self.n_groups})")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, idx: torch.Tensor) -> GroupDataset:
        return GroupDataset(
            self.x[idx],
            self.y[idx],
            self.group[idx],
            self.class_names,
            self.group_names,
            self.name,
            self.dropped,
        )

    def counts(self) -> dict[str, list[int]]:
        return {
            "per_class": torch.bincount(self.y, minlength=self.n_classes).tolist(),
            "per_group": torch.bincount(self.group, minlength=self.n_groups).tolist(),
        }


def stratified_split(
    ds: GroupDataset, test_fraction: float, seed: int
) -> tuple[GroupDataset, GroupDataset]:
    """Seeded split keeping each (class, group) cell's proportion in both parts."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie in (0, 1); got {test_fraction}")
    gen = torch.Generator().manual_seed(seed)
    cell = ds.y * ds.n_groups + ds.group
    train_idx, test_idx = [], []
    for c in torch.unique(cell):
        idx = torch.nonzero(cell == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        k = round(idx.numel() * test_fraction)
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    tr = torch.sort(torch.cat(train_idx)).values
    te = torch.sort(torch.cat(test_idx)).values
    return ds.subset(tr), ds.subset(te)


def iterate_batches(
    ds: GroupDataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y, group)`` batches; the last one may be smaller."""
    n = len(ds)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size]
        yield ds.x[idx], ds.y[idx], ds.group[idx]
