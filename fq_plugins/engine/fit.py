"""``fit``: a small training loop for users' own scripts (and ``fq-plugins run``'s driver).

AdamW over ``session.param_groups`` (the methods' own lr / weight-decay groups), the
:class:`~fq_plugins.engine.objective.Objective` as the loss, ``session.on_step`` after every
optimizer step and ``session.on_epoch_end`` after every epoch, ``fq_on_step`` per step.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .._log import Log, stderr_log
from ..errors import FQError
from .batches import unpack_batch
from .objective import Objective

if TYPE_CHECKING:
    from ..data.base import GroupDataset
    from ..manager import FQPluginManager
    from ..session import CompressionSession

__all__ = ["fit"]


def fit(
    model: nn.Module,
    data: GroupDataset | Iterable[Any] | Callable[[], Iterable[Any]],
    *,
    epochs: int,
    lr: float,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
    seed: int = 0,
    session: CompressionSession | None = None,
    objective: Objective | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    group_key: str = "group",
    pm: FQPluginManager | None = None,
    phase: str = "train",
    log: Log = stderr_log,
    on_epoch_end: Callable[[int], None] | None = None,
) -> torch.optim.Optimizer:
    """Train ``model`` for ``epochs``; returns the optimizer (its state, for checkpoints).

    :param data: a :class:`~fq_plugins.data.GroupDataset` (shuffled into ``batch_size``
        batches, seeded by ``seed``), or an iterable / a callable returning an iterable of
        batches ``(x, y[, group])`` or mappings (``x``, ``y`` and ``group_key``) — a
        DataLoader works. A one-shot iterator is consumed by the first epoch, so give a
        re-iterable (a list, a DataLoader) or a callable for ``epochs > 1``.
    :param objective: the loss (default: cross-entropy + the session's penalties, no
        fairness term).
    :param optimizer: default AdamW over ``session.param_groups(model, lr, weight_decay)``.
    :param on_epoch_end: called with the epoch index (from 0) after each epoch.
    """
    from ..data.base import GroupDataset, iterate_batches

    if objective is None:
        objective = Objective(session=session)
    if optimizer is None:
        params: list[dict[str, Any]] | list[nn.Parameter]
        if session is not None:
            params = session.param_groups(model, lr=lr, weight_decay=weight_decay)
        else:
            params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    n_batches: int | None = None
    if isinstance(data, GroupDataset):
        ds = data
        n_batches = (len(ds) + batch_size - 1) // batch_size

        def batches() -> Iterable[Any]:
            return iterate_batches(ds, batch_size, shuffle=True, generator=gen)

    elif callable(data):
        batches = data
    else:
        source = data
        if epochs > 1 and iter(source) is source:
            raise TypeError(
                f"fit(epochs={epochs}) got a one-shot iterator ({type(source).__name__}), which the "
                "first epoch would use up; pass a list, a DataLoader or a callable returning "
                "a fresh iterator"
            )

        def batches() -> Iterable[Any]:
            return source

    from .distributed import rank_world, shard

    rank, world = rank_world()
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    net: nn.Module = model
    trainable = any(p.requires_grad for p in model.parameters())
    if world > 1 and epochs > 0 and trainable and not isinstance(model, DistributedDataParallel):
        # data-parallel: every rank takes its rows of the same batch; DDP averages gradients
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    step = 0
    tty = sys.stderr.isatty() and rank == 0
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        tot_loss = 0.0
        correct = 0
        seen = 0
        for b, batch in enumerate(batches()):
            x, y, g = unpack_batch(batch, group_key=group_key)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            g = g.to(device, non_blocking=True) if g is not None else None
            scale = 1.0
            if world > 1:
                whole = y.shape[0]
                if whole < world:  # a rank would get no rows; every rank skips it alike
                    continue
                x, y, g = shard(x), shard(y), shard(g) if g is not None else None
                # DDP averages gradients over ranks: weighting each rank's mean by its share
                # makes that average the whole batch's mean even when the shards differ in
                # size (the terms shared by every rank keep their weight: the factors mean 1)
                scale = y.shape[0] * world / max(whole, 1)
            logits = net(x)
            loss = objective(logits, y, g)
            if not bool(torch.isfinite(loss.total)):
                parts = ", ".join(f"{k} {v:.4g}" for k, v in loss.floats().items())
                raise FQError(
                    f"[{phase}] the loss is not finite at epoch {epoch + 1}, batch {b + 1} "
                    f"({parts}); training diverged — lower the learning rate (lr {lr:g}), "
                    "set a grad_clip, or check the inputs for NaN/inf"
                )
            optimizer.zero_grad(set_to_none=True)
            (loss.total * scale if scale != 1.0 else loss.total).backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            if session is not None:
                session.on_step(step)
            if pm is not None:
                pm.on_step(step, phase, loss.floats())
            step += 1
            task = loss.terms["task"]
            tot_loss += float(task.detach()) * y.numel()
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += y.numel()
            if tty:
                of = f"/{n_batches}" if n_batches is not None else ""
                print(
                    f"\r[{phase}] epoch {epoch + 1}/{epochs}  batch {b + 1}{of}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        if session is not None:
            session.on_epoch_end(epoch)
        if tty:
            print("\r", end="", file=sys.stderr)
        log(
            f"[{phase}] epoch {epoch + 1}/{epochs}  loss {tot_loss / max(seen, 1):.4f}  "
            f"train acc {correct / max(seen, 1):.4f}  {time.perf_counter() - t0:.1f}s"
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    return optimizer
