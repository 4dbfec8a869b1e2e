"""Which modules a method touches: module types, name globs to include and to ignore."""

from __future__ import annotations

import fnmatch
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError

__all__ = ["MODULE_TYPES", "TargetSpec", "select_targets"]

ModuleType = Literal["conv", "conv1d", "conv2d", "conv3d", "linear"]

MODULE_TYPES: dict[str, tuple[type[torch.nn.Module], ...]] = {
    "conv": (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d),
    "conv1d": (torch.nn.Conv1d,),
    "conv2d": (torch.nn.Conv2d,),
    "conv3d": (torch.nn.Conv3d,),
    "linear": (torch.nn.Linear,),
}
"""Recipe type names → module classes (subclasses match too)."""


def _default_types() -> list[ModuleType]:
    return ["conv", "linear"]


class TargetSpec(BaseModel):
    """Selects modules by type and by name.

    ``include`` and ``ignore`` are :mod:`fnmatch` globs over the dotted module names of
    ``model.named_modules()`` (``layer1.*``, ``head.fc``); ``ignore`` wins.
    """

    model_config = ConfigDict(extra="forbid")

    types: list[ModuleType] = Field(default_factory=_default_types)
    include: list[str] = Field(default_factory=lambda: ["*"])
    ignore: list[str] = Field(default_factory=list)


def select_targets(
    model: torch.nn.Module, spec: TargetSpec | None = None, *, key: str = "targets"
) -> list[tuple[str, torch.nn.Module]]:
    """Return ``(name, module)`` pairs that ``spec`` selects, in ``named_modules`` order.

    Raises :class:`ConfigError` naming the spec when nothing matches, since a method that
    silently compresses nothing would report a misleading result.
    """
    spec = spec or TargetSpec()
    classes = tuple(c for t in spec.types for c in MODULE_TYPES[t])
    picked = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, classes):
            continue
        if not any(fnmatch.fnmatchcase(name, pat) for pat in spec.include):
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in spec.ignore):
            continue
        picked.append((name, module))
    if not picked:
        candidates = [n for n, m in model.named_modules() if n and isinstance(m, classes)]
        shown = ", ".join(candidates[:12]) + (" …" if len(candidates) > 12 else "")
        raise ConfigError(
            f"matches no module (types={spec.types}, include={spec.include}, "
            f"ignore={spec.ignore}). Modules of those types in this model: "
            f"{shown or '(none)'}. Fix the globs or the types.",
            key=key,
        )
    return picked
