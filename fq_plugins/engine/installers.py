"""Installers: where a method's weight transform goes.

A method produces a *transform* (an ``nn.Module`` mapping a tensor to its compressed value)
for a ``(module, parameter name)`` pair; an :class:`Installer` puts it in place and later
bakes it. The default, :class:`ParametrizeInstaller`, uses ``torch.nn.utils.parametrize``
(state-dict keys become ``<module>.parametrizations.<param>.original`` and ``...<i>.*``).
The adapters add their own installers (NNCF hook storage, torchao module handlers) with
the same five methods, so a method never knows which host it runs in.

Input transforms (activation fake-quantizers) are installed as a child module named
:data:`INPUT_TRANSFORM_ATTR` plus a forward pre-hook that calls it, so they are part of the
model (``state_dict``, ``deepcopy``, ``print(model)``) and survive ``finalize`` and storage.
"""

from __future__ import annotations

from typing import Any, Protocol, cast, runtime_checkable

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = [
    "INPUT_TRANSFORM_ATTR",
    "Installer",
    "ParametrizeInstaller",
    "default_installer",
    "input_transform",
    "install_input_transform",
]

INPUT_TRANSFORM_ATTR = "fq_input_transform"


@runtime_checkable
class Installer(Protocol):
    """Puts weight transforms on ``(module, param)`` pairs and bakes them."""

    name: str

    def install(self, module: nn.Module, param: str, transform: nn.Module) -> None:
        """Apply ``transform`` to ``module.<param>`` (after any transform already there)."""
        ...

    def transforms(self, module: nn.Module, param: str) -> list[nn.Module]:
        """The transforms on ``module.<param>``, in application order (empty if none)."""
        ...

    def original(self, module: nn.Module, param: str) -> torch.Tensor:
        """The trainable tensor the first transform reads (``module.<param>`` if none)."""
        ...

    def bake(self, module: nn.Module, param: str) -> None:
        """Replace ``module.<param>`` by its current transformed value, a plain Parameter."""
        ...

    def input_of(self, module: nn.Module, param: str, transform: nn.Module) -> torch.Tensor:
        """The value entering ``transform`` (the original run through the ones before it)."""
        ...


class ParametrizeInstaller:
    """The default installer: ``torch.nn.utils.parametrize``."""

    name = "parametrize"

    def install(self, module: nn.Module, param: str, transform: nn.Module) -> None:
        if not isinstance(getattr(module, param, None), torch.Tensor):
            raise ValueError(
                f"{type(module).__name__} has no tensor {param!r} to transform; "
                "check `targets.parameters` in the recipe"
            )
        parametrize.register_parametrization(module, param, transform)

    def transforms(self, module: nn.Module, param: str) -> list[nn.Module]:
        if not parametrize.is_parametrized(module, param):
            return []
        return list(cast(Any, module).parametrizations[param])

    def original(self, module: nn.Module, param: str) -> torch.Tensor:
        if parametrize.is_parametrized(module, param):
            return cast(torch.Tensor, cast(Any, module).parametrizations[param].original)
        return cast(torch.Tensor, getattr(module, param))

    def bake(self, module: nn.Module, param: str) -> None:
        if parametrize.is_parametrized(module, param):
            parametrize.remove_parametrizations(module, param, leave_parametrized=True)

    @torch.no_grad()
    def input_of(self, module: nn.Module, param: str, transform: nn.Module) -> torch.Tensor:
        value = self.original(module, param)
        for t in self.transforms(module, param):
            if t is transform:
                return value.detach()
            value = t(value)
        raise ValueError(f"the transform is not installed on {type(module).__name__}.{param}")


_DEFAULT = ParametrizeInstaller()


def default_installer() -> Installer:
    """The installer used when a host names none (:class:`ParametrizeInstaller`)."""
    return _DEFAULT


def _apply_input_transform(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    t = module._modules.get(INPUT_TRANSFORM_ATTR)
    if t is None or not args:
        return args
    return (t(args[0]), *args[1:])


def install_input_transform(module: nn.Module, transform: nn.Module) -> None:
    """Apply ``transform`` to ``module``'s first input on every forward (activation quant).

    The transform becomes the child ``fq_input_transform`` (in ``state_dict``); the hook is
    a module-level function, so ``deepcopy`` and pickling keep working.
    """
    if INPUT_TRANSFORM_ATTR in module._modules:
        raise ValueError(
            f"{type(module).__name__} already has an input transform; quantize a module's "
            "activations with one method only"
        )
    module.add_module(INPUT_TRANSFORM_ATTR, transform)
    module.register_forward_pre_hook(_apply_input_transform)


def input_transform(module: nn.Module) -> nn.Module | None:
    """The input transform installed on ``module``, if any."""
    return module._modules.get(INPUT_TRANSFORM_ATTR)
