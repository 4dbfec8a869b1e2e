"""Which modules a method touches: module types, name globs to include and to ignore."""

from __future__ import annotations

import fnmatch
from typing import Literal

import torch
from pydantic import ConfigDict, Field

from ._config import StrictConfig
from .errors import ConfigError

__all__ = ["MODULE_TYPES", "WEIGHT_LAYER_TYPES", "Target", "TargetSpec", "select_targets"]

ModuleType = Literal["conv", "conv1d", "conv2d", "conv3d", "linear"]

MODULE_TYPES: dict[str, tuple[type[torch.nn.Module], ...]] = {
    "conv": (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d),
    "conv1d": (torch.nn.Conv1d,),
    "conv2d": (torch.nn.Conv2d,),
    "conv3d": (torch.nn.Conv3d,),
    "linear": (torch.nn.Linear,),
}
"""Recipe type names → module classes (subclasses match too)."""

WEIGHT_LAYER_TYPES: tuple[type[torch.nn.Module], ...] = MODULE_TYPES["conv"] + MODULE_TYPES["linear"]
"""The layers whose ``weight`` the accounting counts (Conv1d/2d/3d, Linear)."""


class Target(tuple[str, torch.nn.Module]):
    """One selected ``(name, module)`` pair and the parameter it is about (``.param``).

    It unpacks as ``name, module = target`` (the form plugins written against 0.1 use);
    ``target.param`` names the tensor to transform (``"weight"`` unless the recipe's
    ``targets.parameter`` says otherwise).
    """

    param: str

    def __new__(cls, name: str, module: torch.nn.Module, param: str = "weight") -> Target:
        self = super().__new__(cls, (name, module))
        self.param = param
        return self

    def __getnewargs__(self) -> tuple[str, torch.nn.Module, str]:  # copy / pickle
        return (self[0], self[1], self.param)

    @property
    def name(self) -> str:
        return str(self[0])

    @property
    def module(self) -> torch.nn.Module:
        return self[1]


def _default_types() -> list[ModuleType]:
    return ["conv", "linear"]


class TargetSpec(StrictConfig):
    """Selects modules by type and by name.

    ``include`` and ``ignore`` are :mod:`fnmatch` globs over the dotted module names of
    ``model.named_modules()`` (``layer1.*``, ``head.fc``); ``ignore`` wins.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    types: list[ModuleType] = Field(default_factory=_default_types)
    include: list[str] = Field(default_factory=lambda: ["*"])
    ignore: list[str] = Field(default_factory=list)
    parameter: str = Field(
        "weight", min_length=1, description="The tensor of each module to compress."
    )


def select_targets(
    model: torch.nn.Module, spec: TargetSpec | None = None, *, key: str = "targets"
) -> list[Target]:
    """Return the :class:`Target` pairs that ``spec`` selects, in ``named_modules`` order.

    A module of a selected type without a tensor named ``spec.parameter`` (``bias=False``)
    is skipped.

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
        if not isinstance(getattr(module, spec.parameter, None), torch.Tensor):
            continue
        picked.append(Target(name, module, spec.parameter))
    if not picked:
        candidates = [n for n, m in model.named_modules() if n and isinstance(m, classes)]
        shown = ", ".join(candidates[:12]) + (" …" if len(candidates) > 12 else "")
        raise ConfigError(
            f"matches no module (types={spec.types}, include={spec.include}, "
            f"ignore={spec.ignore}, parameter={spec.parameter!r}). Modules of those types in this model: "
            f"{shown or '(none)'}. Fix the globs or the types.",
            key=key,
        )
    return picked
