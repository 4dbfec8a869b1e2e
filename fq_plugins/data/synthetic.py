"""The embedded default dataset: synthetic images with a class and a group attribute.

Each class has a smooth random prototype image. An example is
``amplitude_g · prototype[y] + shift_g + noise``. The minority group (``minority_fraction``
of the examples) has a weaker class signal, its own colour/texture shift and more noise,
so it is both under-represented and harder: worst-group accuracy sits clearly below the
mean. Deterministic by seed; 6,000 images of 3×16×16 take well under a second.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import GroupDataset

__all__ = ["make_synthetic"]


def _smooth_patterns(n: int, channels: int, size: int, gen: torch.Generator) -> torch.Tensor:
    coarse = torch.randn(n, channels, 4, 4, generator=gen)
    pat = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return pat / pat.flatten(1).std(dim=1).reshape(-1, 1, 1, 1)


def make_synthetic(
    n: int = 6000,
    *,
    n_classes: int = 8,
    image_size: int = 16,
    channels: int = 3,
    minority_fraction: float = 0.2,
    minority_amplitude: float = 0.14,
    majority_amplitude: float = 0.2,
    minority_noise: float = 1.2,
    seed: int = 0,
) -> GroupDataset:
    """Generate the default dataset (see the module docstring)."""
    if n < 2 * n_classes:
        raise ConfigError(f"synthetic n must be at least 2·n_classes = {2 * n_classes}; got {n}")
    if not 0.0 < minority_fraction < 1.0:
        raise ConfigError(f"minority_fraction must lie in (0, 1); got {minority_fraction}")
    if n_classes < 2 or image_size < 4:
        raise ConfigError(f"need n_classes ≥ 2 and image_size ≥ 4; got {n_classes}, {image_size}")
    gen = torch.Generator().manual_seed(seed)
    protos = _smooth_patterns(n_classes, channels, image_size, gen)
    shift = _smooth_patterns(1, channels, image_size, gen)[0]
    y = torch.randint(0, n_classes, (n,), generator=gen)
    group = (torch.rand(n, generator=gen) < minority_fraction).long()
    amp = torch.where(group == 1, minority_amplitude, majority_amplitude).reshape(-1, 1, 1, 1)
    sigma = torch.where(group == 1, minority_noise, 1.0).reshape(-1, 1, 1, 1)
    noise = torch.randn(n, channels, image_size, image_size, generator=gen)
    x = amp * protos[y] + group.reshape(-1, 1, 1, 1).float() * shift + sigma * noise
    return GroupDataset(
        x=x.float().contiguous(),
        y=y,
        group=group,
        class_names=[f"class{c}" for c in range(n_classes)],
        group_names=["majority", "minority"],
        name="synthetic",
    )
