"""The group confusion table every fairness metric reads.

``counts[g, t, p]`` is the number of examples of group ``g`` with true class ``t`` and
predicted class ``p`` (float64, so sums stay exact up to 2^53 examples). It is updated batch
by batch and can be all-reduced across DDP ranks, so metrics never re-scan predictions and
always agree with each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import ConfigError

__all__ = ["GroupConfusion"]


def _as_long(x: torch.Tensor | Sequence[int], what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.is_floating_point() and not bool(torch.all(t == torch.round(t))):
        raise ConfigError(f"{what} must be integers; got non-integral values")
    return t.to(torch.long).flatten()


class GroupConfusion:
    """Counts of (group, true class, predicted class), float64.

    :param n_groups: number of groups ``G``; group ids must lie in ``[0, G)``.
    :param n_classes: number of classes ``C``; labels and predictions in ``[0, C)``.
    :param group_names: optional display names, one per group.
    """

    def __init__(
        self,
        n_groups: int,
        n_classes: int,
        *,
        group_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if n_groups < 1 or n_classes < 2:
            raise ConfigError(
                f"need n_groups ≥ 1 and n_classes ≥ 2; got n_groups={n_groups}, n_classes={n_classes}"
            )
        self.n_groups = int(n_groups)
        self.n_classes = int(n_classes)
        self.counts = torch.zeros(n_groups, n_classes, n_classes, dtype=torch.float64)
        self.group_names = list(group_names) if group_names else [str(g) for g in range(n_groups)]
        self.class_names = list(class_names) if class_names else [str(c) for c in range(n_classes)]

    # --- accumulation -------------------------------------------------------------

    def update(
        self,
        preds: torch.Tensor | Sequence[int],
        targets: torch.Tensor | Sequence[int],
        groups: torch.Tensor | Sequence[int],
    ) -> GroupConfusion:
        """Add a batch. ``preds`` are class ids (or logits of shape ``(N, C)``, argmax taken).

        Logits must have one column per class: a single-logit binary model (``(N, 1)``,
        sigmoid) would make the argmax 0 for every example, so it is refused — pass
        ``(logits > 0).long().flatten()`` (class ids) instead.
        """
        p = torch.as_tensor(preds)
        if p.dim() == 2:
            if p.shape[1] != self.n_classes:
                raise ConfigError(
                    f"predictions have shape {tuple(p.shape)}: {p.shape[1]} logit column(s) for "
                    f"a {self.n_classes}-class table. Give one logit per class, or class ids "
                    + (
                        "(a single-logit binary model: `(logits > 0).long().flatten()`)."
                        if p.shape[1] == 1
                        else "(`logits.argmax(1)`)."
                    )
                )
            p = p.argmax(dim=1)
        p = _as_long(p, "predictions").cpu()
        t = _as_long(targets, "targets").cpu()
        g = _as_long(groups, "group ids").cpu()
        if not (p.numel() == t.numel() == g.numel()):
            raise ConfigError(
                f"predictions, targets and group ids differ in length: {p.numel()}, {t.numel()}, {g.numel()}"
            )
        for arr, hi, what in (
            (g, self.n_groups, "group id"),
            (t, self.n_classes, "target"),
            (p, self.n_classes, "prediction"),
        ):
            if arr.numel() and (int(arr.min()) < 0 or int(arr.max()) >= hi):
                bad = arr[(arr < 0) | (arr >= hi)][0].item()
                raise ConfigError(
                    f"{what} {bad} is outside [0, {hi}); ids must be 0..{hi - 1}. "
                    f"Check the dataset's group column / n_groups."
                )
        flat = (g * self.n_classes + t) * self.n_classes + p
        self.counts += (
            torch.bincount(flat, minlength=self.counts.numel())
            .to(torch.float64)
            .reshape(self.counts.shape)
        )
        return self

    def merge(self, other: GroupConfusion) -> GroupConfusion:
        if other.counts.shape != self.counts.shape:
            raise ConfigError(
                f"cannot merge tables of shapes {tuple(other.counts.shape)} and {tuple(self.counts.shape)}"
            )
        self.counts += other.counts
        return self

    def all_reduce(self) -> GroupConfusion:
        """Sum the table over all DDP ranks in place (no-op when not distributed)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            backend = dist.get_backend()
            device = (
                torch.device("cuda", torch.cuda.current_device())
                if backend == "nccl"
                else torch.device("cpu")
            )
            buf = self.counts.to(device)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            self.counts = buf.cpu()
        return self

    # --- derived counts -----------------------------------------------------------

    @property
    def group_sizes(self) -> torch.Tensor:
        """Examples per group, shape ``(G,)``."""
        return self.counts.sum(dim=(1, 2))

    @property
    def total(self) -> float:
        return float(self.counts.sum())

    def group_correct(self) -> torch.Tensor:
        """Correct predictions per group, shape ``(G,)``."""
        return torch.diagonal(self.counts, dim1=1, dim2=2).sum(dim=1)

    def group_accuracy(self) -> torch.Tensor:
        """Accuracy per group (NaN for a group without examples), shape ``(G,)``."""
        n = self.group_sizes
        return torch.where(
            n > 0, self.group_correct() / n.clamp_min(1), torch.full_like(n, float("nan"))
        )

    def present_group_accuracy(self) -> torch.Tensor:
        """Accuracies of the groups that have examples (NaNs dropped)."""
        acc = self.group_accuracy()
        return acc[~torch.isnan(acc)]

    def mean_group_accuracy(self) -> float:
        """Mean over groups with data of per-group accuracy (FairQuant's avg_acc); NaN if none."""
        p = self.present_group_accuracy()
        return float(p.mean()) if p.numel() else float("nan")

    def worst_group_accuracy(self) -> float:
        """Lowest accuracy over groups with data (FairQuant's worst_acc); NaN if none."""
        p = self.present_group_accuracy()
        return float(p.min()) if p.numel() else float("nan")

    def overall_accuracy(self) -> float:
        return float(self.group_correct().sum() / self.total) if self.total else float("nan")
