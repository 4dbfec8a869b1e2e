"""Group-aware importance (FairQuant step 1–3).

For each sensitive group ``g`` the loss is the mean cross-entropy over **all** of that
group's calibration examples, ``L_g = (1/N_g) Σ_{i∈g} CE_i``, with the model in **eval
mode** (BatchNorm uses its running statistics, dropout is off). Per batch and group, the
gradient of the group's summed loss is back-propagated separately and *accumulated*; the
signal is applied once at the end:

* ``grape`` (default): ``I_g = (∂L_g/∂W ⊙ W)²``
* ``gradient``: ``I_g = |∂L_g/∂W|``
* ``hawq``: ``I_g = |diag(H_g)| ⊙ W²`` with Hutchinson's estimator; each group's Rademacher
  probes are drawn once (re-generated from a fixed seed in every batch), so
  ``Σ_batches v ⊙ H_b v = v ⊙ H v`` exactly.

Why (issue 16): in train mode a group's forward pass normalises with the statistics of
whichever examples of that group share its batch — a batch with one example of a group even
crashes BatchNorm ("Expected more than 1 value per channel when training") — and squaring
per batch makes ``Σ_b (∂L_{g,b}/∂W ⊙ W)²`` depend on how the data is batched. With eval-mode
BN every example's loss is a fixed function of the weights, and accumulating gradients (not
their squares) makes the importance a function of the calibration *set* only: batching it as
1-example groups or all at once gives the same numbers (up to float summation order). This
is the deployed model's first-order (GRAPE) / second-order (HAWQ) loss sensitivity.
METHODS.md's sketch (train mode, ``I_g += (∂L_g/∂W ⊙ W)²`` per batch) differs on both
points; docs/methods.md lists the difference.

Groups are then reduced per weight (``balanced`` default, ``max``, ``mean``, ``cvar``,
``subtractive``) and averaged into unit scores: one per output channel (or per tensor).
Buffers are snapshotted and restored, so calibration leaves the model unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ...errors import ConfigError

__all__ = ["ImportanceResult", "group_importance", "reduce_groups"]

log = logging.getLogger("fq_plugins")

Signal = Literal["grape", "gradient", "hawq"]
Reducer = Literal["balanced", "max", "mean", "cvar", "subtractive"]
GroupSource = Literal["auto", "groups", "classes"]


@dataclasses.dataclass
class ImportanceResult:
    """Unit scores per target module and what they were computed from.

    ``scores[name]`` has one value per output channel (``granularity="channel"``) or one
    value (``"tensor"``). ``group_totals[g]`` is group g's total importance ``Σ I_g`` before
    reduction; ``group_counts[g]`` its number of calibration examples.
    """

    scores: dict[str, torch.Tensor]
    group_totals: torch.Tensor
    group_counts: torch.Tensor
    groups_from: Literal["groups", "classes"]
    n_batches: int
    signal: str
    reducer: str


def reduce_groups(stack: torch.Tensor, reducer: str, *, alpha: float = 0.1) -> torch.Tensor:
    """Reduce per-group importances ``stack`` of shape ``(G, *w.shape)`` to ``w.shape``.

    ``balanced``: ``share_g = ΣI_g / Σ_h ΣI_h``, ``I = max_g I_g / max(share_g, 1e-8)`` — it
    lifts groups whose total importance is small. ``cvar``: mean of the top ``⌈(1−α)G⌉``
    groups per weight. ``subtractive``: what the group with the smallest total importance
    needs beyond the others, ``relu(I_w − mean_{h≠w} I_h)`` (our definition; METHODS.md does
    not fix one).
    """
    g = stack.shape[0]
    if reducer == "max":
        return stack.amax(dim=0)
    if reducer == "mean":
        return stack.mean(dim=0)
    if reducer == "cvar":
        if not 0.0 <= alpha < 1.0:
            raise ConfigError(f"cvar alpha must lie in [0, 1); got {alpha}")
        k = max(1, math.ceil((1.0 - alpha) * g))
        return stack.topk(k, dim=0).values.mean(dim=0)
    totals = stack.reshape(g, -1).sum(dim=1)
    if reducer == "balanced":
        share = totals / totals.sum().clamp_min(1e-30)
        scaled = stack / share.clamp_min(1e-8).reshape((g,) + (1,) * (stack.dim() - 1))
        return scaled.amax(dim=0)
    if reducer == "subtractive":
        if g < 2:
            return stack[0]
        w = int(totals.argmin())
        others = torch.cat([stack[:w], stack[w + 1 :]]).mean(dim=0)
        return torch.relu(stack[w] - others)
    raise ConfigError(
        f"unknown reducer {reducer!r}; allowed: balanced, max, mean, cvar, subtractive"
    )


def _unit_scores(imp: torch.Tensor, granularity: str) -> torch.Tensor:
    flat = imp.abs().reshape(imp.shape[0], -1)
    return flat.mean(dim=1) if granularity == "channel" else flat.mean().reshape(1)


def group_importance(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    targets: Sequence[tuple[str, nn.Module]],
    *,
    signal: Signal = "grape",
    reducer: Reducer = "balanced",
    calib_batches: int = 50,
    n_groups: int | None = None,
    group_source: GroupSource = "auto",
    granularity: Literal["channel", "tensor"] = "channel",
    cvar_alpha: float = 0.1,
    hawq_samples: int = 10,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    seed: int = 0,
    require_all_groups: bool = True,
) -> ImportanceResult:
    """Group-aware importance of the ``weight`` of each target module.

    The model runs in eval mode; each group's loss is its mean over all its calibration
    examples, so the result does not depend on how the examples are batched (see the
    module docstring).

    :param batches: yields ``(x, y, group)``; ``group`` may be None.
    :param calib_batches: how many batches to use (at most).
    :param n_groups: number of groups; group ids must lie in ``[0, n_groups)`` and every
        group must appear in the calibration data.
    :param group_source: ``groups`` requires group ids (error without them), ``classes``
        uses the labels as groups, ``auto`` uses group ids and falls back to classes (with a
        warning) when a batch has none.
    :param loss_fn: a *mean*-reduced loss ``(logits, y) → scalar`` (default cross-entropy);
        it is multiplied by the number of examples to accumulate sums.
    :param require_all_groups: False skips the every-group-present check (a dry run on
        one batch).
    """
    if signal not in ("grape", "gradient", "hawq"):
        raise ConfigError(f"unknown importance signal {signal!r}; allowed: grape, gradient, hawq")
    if calib_batches < 1:
        raise ConfigError(f"calib_batches must be ≥ 1; got {calib_batches}")
    if hawq_samples < 1:
        raise ConfigError(f"hawq_samples must be ≥ 1; got {hawq_samples}")
    loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y))
    modules = [m for _, m in targets]
    names = [n for n, _ in targets]
    params = [getattr(t, "param", "weight") for t in targets]
    # Snapshot buffers so calibration provably leaves the model unchanged.
    buffers = {k: v.detach().clone() for k, v in model.state_dict().items() if not v.requires_grad}
    was_training = model.training
    model.eval()
    acc: dict[int, list[torch.Tensor]] = {}
    counts: dict[int, int] = {}
    used_classes = group_source == "classes"
    n_done = 0
    try:
        for x, y, g in batches:
            if n_done >= calib_batches:
                break
            if g is None or group_source == "classes":
                if group_source == "groups":
                    raise ConfigError(
                        "group importance was asked for with group ids (importance.group_source: "
                        "groups) but a calibration batch has none; check fairness.group_key or "
                        "use group_source: auto to fall back to classes"
                    )
                if not used_classes:
                    warnings.warn(
                        "calibration batches carry no group ids: using classes as groups for "
                        "FairQuant's importance",
                        stacklevel=2,
                    )
                used_classes = True
                g = y
            g = g.to(torch.long).reshape(-1)
            if g.numel() != y.shape[0]:
                raise ConfigError(
                    f"a calibration batch has {y.shape[0]} labels but {g.numel()} group ids; "
                    "give one group id per example"
                )
            if not used_classes and n_groups is not None and g.numel():
                lo, hi = int(g.min()), int(g.max())
                if lo < 0 or hi >= n_groups:
                    raise ConfigError(
                        f"calibration group ids must lie in [0, {n_groups}) (n_groups={n_groups}); "
                        f"got ids from {lo} to {hi}. Check the group column or n_groups"
                    )
            for gid in torch.unique(g).tolist():
                sel = g == gid
                xs, ys = x[sel], y[sel]
                n_sel = int(sel.sum())
                # cached(): a parametrized weight is computed once, so the tensor we
                # differentiate against is the one the forward pass used.
                with parametrize.cached():
                    weights = [
                        cast(torch.Tensor, getattr(m, p))
                        for m, p in zip(modules, params, strict=True)
                    ]
                    logits = model(xs)
                    _check_labels(logits, ys)
                    loss = loss_fn(logits, ys) * n_sel  # the group's summed loss on this batch
                    grads = torch.autograd.grad(
                        loss, weights, create_graph=signal == "hawq", allow_unused=True
                    )
                    if signal == "hawq":
                        contrib = _hutchinson_sum(grads, weights, hawq_samples, seed, gid)
                    else:
                        contrib = [
                            torch.zeros_like(w) if gr is None else gr.detach()
                            for gr, w in zip(grads, weights, strict=True)
                        ]
                if gid not in acc:
                    acc[gid] = [c.clone() for c in contrib]
                else:
                    for a, c in zip(acc[gid], contrib, strict=True):
                        a += c
                counts[gid] = counts.get(gid, 0) + n_sel
            n_done += 1
        # the per-group signal, from the accumulated sums (weights as the passes saw them)
        with torch.no_grad(), parametrize.cached():
            w_now = [
                cast(torch.Tensor, getattr(m, p)).detach()
                for m, p in zip(modules, params, strict=True)
            ]
    finally:
        model.train(was_training)
        with torch.no_grad():
            sd = model.state_dict()
            for k, v in buffers.items():
                sd[k].copy_(v)
    if n_done == 0:
        raise ConfigError("no calibration batches were given; group importance needs at least one")
    for gid, sums in acc.items():
        n_g_i = counts[gid]
        for i, (a, w) in enumerate(zip(sums, w_now, strict=True)):
            mean = a / n_g_i
            if signal == "grape":
                sums[i] = (mean * w) ** 2
            elif signal == "gradient":
                sums[i] = mean.abs()
            else:
                sums[i] = (mean / hawq_samples).abs() * w**2
    n_g = (max(acc) + 1) if used_classes or n_groups is None else n_groups
    missing = [gid for gid in range(n_g) if gid not in acc]
    if missing and not used_classes and require_all_groups:
        raise ConfigError(
            f"group(s) {missing} have no samples in the {n_done} calibration batches; every "
            f"group needs calibration data. Raise importance.calib_batches, or check the "
            f"group column / n_groups={n_g}"
        )
    present = sorted(acc)
    scores = {}
    for i, name in enumerate(names):
        stack = torch.stack([acc[gid][i] for gid in present])
        scores[name] = _unit_scores(reduce_groups(stack, reducer, alpha=cvar_alpha), granularity)
    totals = torch.zeros(n_g, dtype=torch.float64)
    cnt = torch.zeros(n_g, dtype=torch.long)
    for gid in present:
        totals[gid] = float(sum(float(a.sum()) for a in acc[gid]))
        cnt[gid] = counts[gid]
    return ImportanceResult(
        scores=scores,
        group_totals=totals,
        group_counts=cnt,
        groups_from="classes" if used_classes else "groups",
        n_batches=n_done,
        signal=signal,
        reducer=reducer,
    )


def check_calib_groups(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    *,
    calib_batches: int,
    n_groups: int | None,
    group_source: GroupSource = "auto",
) -> None:
    """Raise the ConfigError :func:`group_importance` would raise for a group without
    calibration examples, from the group ids alone (no forward pass): what a dry run can
    check before training. Nothing to check with classes as groups or unknown n_groups."""
    if group_source == "classes" or n_groups is None:
        return
    seen: set[int] = set()
    n_done = 0
    for _, _, g in batches:
        if n_done >= calib_batches:
            break
        if g is None:  # auto falls back to classes: group_importance warns about that
            return
        seen.update(int(v) for v in torch.unique(g.to(torch.long).reshape(-1)).tolist())
        n_done += 1
    missing = [gid for gid in range(n_groups) if gid not in seen]
    if n_done and missing:
        raise ConfigError(
            f"group(s) {missing} have no samples in the {n_done} calibration batches; every "
            f"group needs calibration data. Raise importance.calib_batches, or check the "
            f"group column / n_groups={n_groups}"
        )


def _check_labels(logits: torch.Tensor, y: torch.Tensor) -> None:
    """Labels that the loss would reject with a raw error: say what is wrong instead."""
    if logits.dim() != 2:
        raise ConfigError(
            f"FairQuant's importance needs (batch, classes) logits; the model returned shape "
            f"{tuple(logits.shape)}. Wrap the model so it returns logits, or pass loss_fn"
        )
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise ConfigError(
            f"calibration labels must lie in [0, {logits.shape[1]}) for a model with "
            f"{logits.shape[1]} outputs; got labels from {int(y.min())} to {int(y.max())}. "
            "Check model.num_classes against the data"
        )


def _probe_seed(seed: int, gid: int, k: int) -> int:
    return (int(seed) * 1_000_003 + int(gid) * 10_007 + int(k)) % (2**62)


def _hutchinson_sum(
    grads: Sequence[torch.Tensor | None],
    weights: Sequence[torch.Tensor],
    samples: int,
    seed: int,
    gid: int,
) -> list[torch.Tensor]:
    """``Σ_k v_k ⊙ H v_k`` per weight for this batch's (summed) loss.

    The probes ``v_k`` are Rademacher vectors drawn from a generator seeded by
    ``(seed, gid, k)``, so every batch of group ``gid`` uses the same probes and the sum over
    batches equals the estimator on the whole calibration set.
    """
    live = [(i, g) for i, g in enumerate(grads) if g is not None]
    diag = [torch.zeros_like(w.detach()) for w in weights]
    if not live:
        return diag
    for k in range(samples):
        gen = torch.Generator().manual_seed(_probe_seed(seed, gid, k))
        vs = [
            (torch.randint(0, 2, g.shape, generator=gen).to(dtype=g.dtype, device=g.device) * 2 - 1)
            for _, g in live
        ]
        hv = torch.autograd.grad(
            [g for _, g in live],
            [weights[i] for i, _ in live],
            grad_outputs=vs,
            retain_graph=True,
            allow_unused=True,
        )
        for (i, _), v, h in zip(live, vs, hv, strict=True):
            if h is not None:
                diag[i] += v * h.detach()
    return diag
