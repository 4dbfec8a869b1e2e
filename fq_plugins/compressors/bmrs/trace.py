"""Where BMRS may put a gate: one traced forward pass records who feeds whom.

A gate multiplies a layer's output units. Gating is *sound* — removing a unit whose gate is
zero leaves the outputs unchanged — when the gated tensor reaches the next layer only
through per-unit operations. The rules (checked on a forward pass with an example input):

* a conv whose output goes straight into a BatchNorm: gate after the BatchNorm (before the
  nonlinearity); a conv without a following norm: gate its output;
* a conv followed by a channel-mixing norm (GroupNorm, LayerNorm), or a conv without
  BatchNorm in a model that has such norms (a ViT patch embedding): not gated;
* a linear layer whose output is the model's output (the classifier): not gated;
* a linear layer followed by BatchNorm1d: gate after the norm; a linear layer whose output
  reaches another linear layer through elementwise modules only (activations, dropout,
  identity) — the hidden units of an MLP, also inside transformer blocks: gate its output;
* any other linear layer (attention q/k/v, projections into a residual stream whose
  LayerNorm mixes units), a gate followed by an activation with f(0) ≠ 0 (sigmoid,
  softplus) and transposed convs: not gated, with the reason recorded.

Activation modules the table below does not list (``transformers.activations.GELUActivation``,
a user's ``Swish``) are classified by probing them on their traced input: a module without
parameters or buffers whose output has its input's shape, maps 0 to 0 and commutes with a
random permutation of the elements is elementwise with f(0) = 0; one that commutes but maps
0 elsewhere is "f(0) ≠ 0"; anything else (softmax, pooling, norms) is neither.

Functional activations (``torch.sigmoid`` in ``forward``) are invisible to module hooks;
``finalize`` therefore checks the removal on the example input and keeps the masked
(unremoved) model if it is not exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["GateSite", "find_gate_sites", "probe_elementwise"]

_ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.ELU,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Tanh,
    nn.Dropout,
    nn.Identity,
)
"""Modules with f(0) = 0 applied per unit: a zero unit stays zero through them."""
_NONZERO_AT_ZERO: tuple[type[nn.Module], ...] = (nn.Sigmoid, nn.Softplus, nn.Hardsigmoid, nn.SELU)
_MIXING_NORMS: tuple[type[nn.Module], ...] = (nn.GroupNorm, nn.LayerNorm)


@torch.no_grad()
def probe_elementwise(mod: nn.Module, x: torch.Tensor) -> str:
    """``"zero"`` (elementwise, f(0) = 0), ``"nonzero"`` (elementwise, f(0) ≠ 0) or
    ``"other"`` for a module, from the known types or by probing it on its input ``x``."""
    if isinstance(mod, _ELEMENTWISE):
        return "zero"
    if isinstance(mod, _NONZERO_AT_ZERO):
        return "nonzero"
    if any(True for _ in mod.parameters()) or any(True for _ in mod.buffers()):
        return "other"
    if not x.is_floating_point() or x.numel() < 2:
        return "other"
    was_training = mod.training
    mod.eval()
    try:
        y = mod(x)
        if not isinstance(y, torch.Tensor) or y.shape != x.shape:
            return "other"
        gen = torch.Generator().manual_seed(0)
        perm = torch.randperm(x.numel(), generator=gen).to(x.device)
        xp = x.flatten()[perm].reshape(x.shape)
        yp = mod(xp)
        if not isinstance(yp, torch.Tensor) or yp.shape != x.shape:
            return "other"
        if not torch.allclose(yp.flatten(), y.flatten()[perm], rtol=1e-5, atol=1e-6):
            return "other"
        y0 = mod(torch.zeros_like(x))
    except Exception:  # a module that cannot be re-run on its own input is not elementwise
        return "other"
    finally:
        mod.train(was_training)
    return "zero" if bool((y0 == 0).all()) else "nonzero"


@dataclasses.dataclass
class GateSite:
    """One gated layer: ``producer`` (conv/linear) makes the units, ``host`` is the module
    whose output the gate multiplies (the BatchNorm after the producer, or the producer),
    ``dim`` the unit dimension of that output."""

    name: str
    producer: nn.Module
    host_name: str
    host: nn.Module
    dim: int
    units: int


def find_gate_sites(
    model: nn.Module,
    targets: Sequence[tuple[str, nn.Module]],
    example_input: torch.Tensor,
) -> tuple[list[GateSite], dict[str, str]]:
    """Gate sites for ``targets`` and, for each target not gated, the reason."""
    names = {m: n for n, m in model.named_modules()}
    calls: list[tuple[nn.Module, int, int]] = []  # (module, id(input), id(output)), call order
    keep: list[Any] = []  # hold every traced tensor so ids are not reused during the trace

    inputs: dict[nn.Module, torch.Tensor] = {}

    def hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor):
            keep.extend((x, out))
            calls.append((mod, id(x), id(out)))
            inputs.setdefault(mod, x)

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    keep.append(out)
    out_ids = {id(t) for t in (out if isinstance(out, list | tuple) else [out])}
    consumers: dict[int, list[nn.Module]] = {}
    outputs: dict[nn.Module, int] = {}
    for mod, xi, yi in calls:
        consumers.setdefault(xi, []).append(mod)
        outputs.setdefault(mod, yi)  # first call; a module called twice is rejected below

    n_calls: dict[nn.Module, int] = {}
    for mod, _, _ in calls:
        n_calls[mod] = n_calls.get(mod, 0) + 1

    kinds: dict[nn.Module, str] = {}

    def kind(mod: nn.Module) -> str:
        if mod not in kinds:
            x = inputs.get(mod)
            kinds[mod] = probe_elementwise(mod, x) if x is not None else "other"
        return kinds[mod]

    def reaches_linear(tensor_id: int, depth: int = 0) -> bool:
        for c in consumers.get(tensor_id, []):
            if isinstance(c, nn.Linear):
                return True
            if (
                kind(c) == "zero"
                and depth < 8
                and c in outputs
                and reaches_linear(outputs[c], depth + 1)
            ):
                return True
        return False

    mixing_model = any(isinstance(m, _MIXING_NORMS) for m in model.modules())
    sites: list[GateSite] = []
    skipped: dict[str, str] = {}
    for name, mod in targets:
        if mod not in outputs:
            skipped[name] = "not called in the forward pass"
            continue
        if n_calls[mod] > 1:
            skipped[name] = "called more than once per forward pass (shared weights)"
            continue
        y = outputs[mod]
        if y in out_ids:
            skipped[name] = "its output is the model's output (classifier)"
            continue
        direct = consumers.get(y, [])
        bns = [c for c in direct if isinstance(c, nn.modules.batchnorm._BatchNorm)]
        if any(isinstance(c, _MIXING_NORMS) for c in direct):
            skipped[name] = "followed by a channel-mixing norm (GroupNorm/LayerNorm)"
            continue
        if isinstance(mod, nn.modules.conv._ConvTransposeNd):
            skipped[name] = "transposed convolutions are not gated"
            continue
        if isinstance(mod, nn.Linear):
            units, dim = mod.out_features, -1
        elif isinstance(mod, nn.modules.conv._ConvNd):
            units, dim = mod.out_channels, 1
        else:
            skipped[name] = f"type {type(mod).__name__} cannot be gated"
            continue
        if len(bns) == 1 and len(direct) == 1 and n_calls[bns[0]] == 1:
            host: nn.Module = bns[0]
            dim = 1
        elif isinstance(mod, nn.Linear) and not reaches_linear(y):
            skipped[name] = (
                "its output does not reach another linear layer through elementwise ops only "
                "(e.g. attention q/k/v or a projection into a residual stream): removing its "
                "units would change the outputs"
            )
            continue
        elif isinstance(mod, nn.modules.conv._ConvNd) and mixing_model:
            skipped[name] = (
                "a conv without BatchNorm in a model with LayerNorm/GroupNorm (e.g. a ViT patch "
                "embedding): its channels may reach a channel-mixing norm"
            )
            continue
        else:
            host = mod
        if any(kind(c) == "nonzero" for c in consumers.get(outputs[host], [])):
            skipped[name] = (
                "followed by an activation with f(0) ≠ 0 (a removed unit would not be zero)"
            )
            continue
        sites.append(GateSite(name, mod, names[host], host, dim, units))
    return sites, skipped
