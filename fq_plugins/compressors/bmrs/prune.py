"""Physical channel removal after BMRS: fold the gates, then cut what is exactly zero.

torch-pruning's DependencyGraph (the ``pruning`` extra) does the bookkeeping of coupled
layers: a conv's output channel, its BatchNorm entry, the next layers' input channels, and
every other layer tied to the same channel through a residual add. A channel of such a
group is removed only where removal is exact: every layer *producing* it (conv/linear
output channels in the group) is gated and masked at that channel, and the group has no
channel-mixing norm (LayerNorm/GroupNorm) or raw parameter. Masked channels that fail the
rule stay in the model as exact zeros and are counted as "masked, kept".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...errors import ConfigError

__all__ = ["remove_zero_channels", "require_torch_pruning"]


def require_torch_pruning() -> Any:
    """The ``torch_pruning`` module, or a ConfigError naming the extra to install."""
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise ConfigError(
            "bmrs finalize removes pruned channels with torch-pruning, which is not installed. "
            "Install it with `pip install 'fq-plugins[pruning]'` (or `torch-pruning`)."
        ) from exc
    return tp


def _out_fn(tp: Any, mod: nn.Module) -> Any:
    if isinstance(mod, nn.Linear):
        return tp.prune_linear_out_channels
    return tp.prune_conv_out_channels


def remove_zero_channels(
    model: nn.Module,
    producers: Sequence[nn.Module],
    masks: dict[nn.Module, torch.Tensor],
    example_input: torch.Tensor,
    hosts: Sequence[nn.Module] = (),
) -> dict[str, Any]:
    """Remove, in place, every channel that is exactly zero by construction.

    ``masks`` maps each gated producer (conv/linear) to a bool tensor, True = pruned (its
    gate has been folded to 0); ``hosts`` are the modules the gates were folded into (a
    BatchNorm in a group that is not a host maps a zero channel to its shift, so such a
    group is left alone). Returns counts: ``removed`` channels per producer name and
    ``kept_masked`` (masked, not removable) per producer name.
    """
    tp = require_torch_pruning()
    was_training = model.training
    model.eval()
    names = {m: n for n, m in model.named_modules()}
    with torch.enable_grad():  # DependencyGraph traces through autograd
        dg = tp.DependencyGraph().build_dependency(
            model, example_inputs=example_input, verbose=False
        )
    pruned = {m: masks[m].clone().bool() for m in producers}
    removed: dict[str, int] = {names[m]: 0 for m in producers}
    mixing = (nn.LayerNorm, nn.GroupNorm)
    host_set = set(hosts)
    for prod in producers:
        zero = pruned[prod]
        if not bool(zero.any()):
            continue
        fn = _out_fn(tp, prod)
        group = dg.get_pruning_group(prod, fn, idxs=list(range(zero.numel())))
        removable = {int(i) for i in torch.nonzero(zero).flatten()}
        for item in group.items:
            dep, idxs = item.dep, item.idxs
            target = dep.target.module
            if isinstance(target, (*mixing, nn.Parameter)) or (
                isinstance(target, nn.modules.batchnorm._BatchNorm) and target not in host_set
            ):
                removable = set()
                break
            if not dg.is_out_channel_pruning_fn(dep.handler):
                continue
            if not isinstance(target, nn.Linear | nn.modules.conv._ConvNd):
                continue
            if target not in pruned:  # an ungated producer writes to these channels
                removable = set()
                break
            mask_t = pruned[target]
            ok = {int(r) for i, r in zip(idxs, item.root_idxs, strict=True) if bool(mask_t[int(i)])}
            removable &= ok
        # keep at least one channel per producer (a layer of width 0 disconnects the model)
        if len(removable) >= zero.numel():
            removable.discard(max(removable))
        if not removable:
            continue
        cut = dg.get_pruning_group(prod, fn, idxs=sorted(removable))
        for item in cut.items:
            target = item.dep.target.module
            if (
                target in pruned
                and dg.is_out_channel_pruning_fn(item.dep.handler)
                and isinstance(target, nn.Linear | nn.modules.conv._ConvNd)
            ):
                keep = torch.ones_like(pruned[target])
                keep[[int(i) for i in item.idxs]] = False
                removed[names[target]] += int((~keep).sum())
                pruned[target] = pruned[target][keep]
        with torch.no_grad():
            cut.prune()
    model.train(was_training)
    kept_masked = {names[m]: int(pruned[m].sum()) for m in producers}
    return {"removed": removed, "kept_masked": kept_masked}
