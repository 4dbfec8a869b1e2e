"""Models built from code (no weight downloads): small built-ins and timm by name."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ConfigError, MissingDependencyError

__all__ = ["BUILTIN_MODELS", "MLP", "SmallCNN", "build_model"]


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (``features``) and a linear ``head`` (≈ 25 k params at width 16).

    A module rather than a top-level ``nn.Sequential``, which NNCF's wrapper cannot take.
    """

    def __init__(self, in_channels: int, n_classes: int, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *block(in_channels, width, 1),
            *block(width, 2 * width, 2),
            *block(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MLP(nn.Module):
    """Flatten → two hidden ReLU layers → ``head``."""

    def __init__(self, in_features: int, n_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


BUILTIN_MODELS = ("small_cnn", "mlp")


def build_model(
    name: str,
    *,
    in_channels: int,
    image_size: int,
    n_classes: int,
    key: str = "model.name",
    **kwargs: Any,
) -> nn.Module:
    """Build ``small_cnn``, ``mlp`` or ``timm:<architecture>`` (``pretrained=False``)."""
    if name == "small_cnn":
        return SmallCNN(in_channels, n_classes, **kwargs)
    if name == "mlp":
        return MLP(in_channels * image_size * image_size, n_classes, **kwargs)
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise MissingDependencyError("timm", "timm", f"model {name!r}") from None
        arch = name.split(":", 1)[1]
        if arch not in timm.list_models():
            raise ConfigError(f"timm has no architecture {arch!r}; see timm.list_models()", key=key)
        return timm.create_model(
            arch, pretrained=False, num_classes=n_classes, in_chans=in_channels, **kwargs
        )
    raise ConfigError(
        f"unknown model {name!r}; allowed: {', '.join(BUILTIN_MODELS)} or 'timm:<architecture>' "
        f"(e.g. timm:resnet18, needs pip install 'fq-plugins[timm]')",
        key=key,
    )
