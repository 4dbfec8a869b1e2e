"""One batch convention for every host: ``(x, y, group)`` tuples or mappings.

A mapping batch (HF-style) is read with the recipe's ``fairness.group_key`` for the group
ids, ``input_key`` for the inputs and ``label_key`` for the labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["Batch", "unpack_batch"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def unpack_batch(
    batch: Any,
    *,
    group_key: str = "group",
    input_key: str = "x",
    label_key: str = "y",
) -> Batch:
    """``(x, y, group)`` from a tuple ``(x, y[, group])`` or a mapping (``group`` may be None)."""
    if isinstance(batch, Mapping):
        missing = [k for k in (input_key, label_key) if k not in batch]
        if missing:
            raise ConfigError(
                f"a batch mapping needs keys {input_key!r} and {label_key!r}; it has "
                f"{sorted(map(str, batch))}, missing {missing}"
            )
        return batch[input_key], batch[label_key], batch.get(group_key)
    if isinstance(batch, Sequence) and len(batch) in (2, 3):
        x, y = batch[0], batch[1]
        g = batch[2] if len(batch) == 3 else None
        return x, y, g
    raise ConfigError(
        f"a batch must be (x, y), (x, y, group) or a mapping with {input_key!r}, "
        f"{label_key!r} and {group_key!r}; got {type(batch).__name__}"
    )
