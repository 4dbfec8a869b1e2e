"""The training objective every host uses: task loss + fairness regularizer + penalties.

``Objective(...)(logits, labels, groups)`` (or ``losses=`` per-example losses) returns
:class:`LossTerms`: the named terms and their weighted ``total``. It is the same code in
``fq-plugins run``, :func:`fq_plugins.engine.fit`, an HF ``compute_loss`` and an NNCF loop.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..fairness.regularizers import RegularizerSpec, fairness_penalty

if TYPE_CHECKING:
    from ..recipe import CompressionRecipe
    from ..session import CompressionSession

__all__ = ["LossTerms", "Objective"]


@dataclasses.dataclass
class LossTerms:
    """One step's loss: ``total`` (backpropagate this) and its named parts (unweighted
    ``task``/``fairness``, the already-weighted ``penalty``), 0-d tensors."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]

    def floats(self) -> dict[str, float]:
        """Every term and the total as Python floats (for logs and ``fq_on_step``)."""
        out = {k: float(v.detach()) for k, v in self.terms.items()}
        out["total"] = float(self.total.detach())
        return out


class Objective:
    """``task + λ·fairness(per-group losses) + Σ method penalties``.

    :param regularizer: the recipe's ``fairness.regularizer`` (``None`` or kind ``none``:
        no fairness term).
    :param session: the compression session whose penalties are added (optional).
    :param n_groups: number of groups (default: inferred per batch from the largest id).
    """

    def __init__(
        self,
        *,
        regularizer: RegularizerSpec | None = None,
        session: CompressionSession | None = None,
        n_groups: int | None = None,
    ) -> None:
        self.regularizer = regularizer
        self.session = session
        self.n_groups = n_groups

    @classmethod
    def from_recipe(
        cls,
        recipe: CompressionRecipe,
        session: CompressionSession | None = None,
        *,
        n_groups: int | None = None,
    ) -> Objective:
        return cls(regularizer=recipe.fairness.regularizer, session=session, n_groups=n_groups)

    @property
    def uses_groups(self) -> bool:
        """True when the fairness term needs group ids in every batch."""
        r = self.regularizer
        return r is not None and r.kind != "none" and r.weight > 0

    def __call__(
        self,
        logits: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        groups: torch.Tensor | None = None,
        *,
        losses: torch.Tensor | None = None,
    ) -> LossTerms:
        """Loss terms from ``logits`` and ``labels`` (cross-entropy per example) or from
        per-example ``losses`` (any task loss, ``reduction="none"``)."""
        if losses is None:
            if logits is None or labels is None:
                raise TypeError("Objective needs (logits, labels) or losses=")
            losses = F.cross_entropy(logits, labels, reduction="none")
        losses = losses.reshape(-1)
        task = losses.mean()
        total = task
        terms: dict[str, torch.Tensor] = {"task": task}
        if self.uses_groups:
            assert self.regularizer is not None  # uses_groups checked it
            if groups is None:
                raise ConfigError(
                    f"the fairness regularizer ({self.regularizer.kind}) needs group ids in "
                    "every batch, but this one has none; give batches (x, y, group), keep the "
                    "group column (fairness.group_key), or set fairness.regularizer.kind: none"
                )
            n = self.n_groups if self.n_groups is not None else _infer_groups(groups)
            fair = fairness_penalty(self.regularizer.kind, losses, groups, n)
            total = total + self.regularizer.weight * fair
            terms["fairness"] = fair
        if self.session is not None:
            pen = self.session.penalty()
            total = total + pen.to(total.device)
            terms["penalty"] = pen
        return LossTerms(total=total, terms=terms)


def _infer_groups(groups: Any) -> int:
    g = torch.as_tensor(groups)
    return int(g.max()) + 1 if g.numel() else 1
