"""Built-in data selectors: stratified random, EL2N (training dynamics), k-center greedy.

Each keeps ``round(fraction·N)`` examples, allocated per stratum by
:func:`~fq_plugins.data.coreset.allocate`: per class when no ``groups`` are given, per
(class, group) cell keeping every group's share (or a ``floor`` share of the subset per
group) when they are. Inside a stratum, ``random`` draws uniformly, ``el2n`` keeps the
highest (or lowest) scores, ``kcenter`` runs greedy k-center. The two model-based selectors
warm a *copy* of the given (untrained) model up on the full set with the engine's ``fit``
and score it with one evaluation pass; ``last_cost`` holds what that cost.

Besides the protocol's ``select``, each built-in has ``prepare`` (the model part: scores or
embeddings) and ``choose`` (the cheap part), so a host can pick several fractions from one
warm-up (:func:`~fq_plugins.data.coreset.select_subset` ``features=``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from .._log import Log, stderr_log
from ..errors import ConfigError
from ..protocols import DataSelector
from .coreset import (
    SelectorCost,
    _as_dataset,
    _pick_per_stratum,
    allocate,
    check_fraction,
    el2n_scores,
    k_center_greedy,
    penultimate_embeddings,
    warm_up,
)

if TYPE_CHECKING:
    from ..manager import FQPluginManager

__all__ = ["EL2NSelector", "KCenterSelector", "RandomStratifiedSelector"]


def _tensor(v: Sequence[int] | torch.Tensor | None) -> torch.Tensor | None:
    return None if v is None else torch.as_tensor(v, dtype=torch.long).flatten().cpu()


class _Stratified(DataSelector):
    """Shared: quotas per stratum, ``select`` = ``prepare`` + ``choose``."""

    needs_model = False

    def __init__(self, *, floor: float | None = None) -> None:
        self.floor = floor
        self.last_cost = SelectorCost()

    def prepare(
        self,
        inputs: torch.Tensor | None,
        labels: torch.Tensor,
        *,
        model: torch.nn.Module | None = None,
        seed: int = 0,
        pm: FQPluginManager | None = None,
    ) -> torch.Tensor | None:
        """The model part (nothing for random)."""
        self.last_cost = SelectorCost()
        return None

    def _pick(
        self, features: torch.Tensor | None, members: torch.Tensor, q: int, gen: torch.Generator
    ) -> torch.Tensor:
        raise NotImplementedError

    def choose(
        self,
        features: torch.Tensor | None,
        labels: Sequence[int] | torch.Tensor,
        fraction: float,
        *,
        groups: Sequence[int] | torch.Tensor | None = None,
        seed: int = 0,
        class_names: Sequence[str] | None = None,
        group_names: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Sorted int64 indices of the kept examples, from ``prepare``'s features."""
        y = _tensor(labels)
        assert y is not None
        g = _tensor(groups)
        if g is not None and g.numel() != y.numel():
            raise ConfigError(f"{g.numel()} group ids for {y.numel()} labels")
        if features is not None and features.shape[0] != y.numel():
            raise ConfigError(
                f"{features.shape[0]} feature rows for {y.numel()} labels; features come from "
                "an earlier selection on the same data"
            )
        k = check_fraction(fraction, y.numel())
        if self.floor is not None and g is None:
            raise ConfigError(f"floor {self.floor} is a per-group minimum; it needs groups")
        strata, ids, quota = allocate(
            y, g, k, floor=self.floor, class_names=class_names, group_names=group_names
        )
        gen = torch.Generator().manual_seed(seed)
        return _pick_per_stratum(
            strata, ids, quota, lambda members, q: self._pick(features, members, q, gen)
        )

    def select(
        self,
        labels: Sequence[int] | torch.Tensor,
        fraction: float,
        *,
        model: torch.nn.Module | None = None,
        groups: Sequence[int] | torch.Tensor | None = None,
        seed: int = 0,
        inputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        y = _tensor(labels)
        assert y is not None
        check_fraction(fraction, y.numel())
        feats = self.prepare(inputs, y, model=model, seed=seed)
        return self.choose(feats, y, fraction, groups=groups, seed=seed)


class RandomStratifiedSelector(_Stratified):
    """Seeded random subset, stratified by class and (if given) group.

    Quotas per class (no groups) or per (class, group) cell (groups: every group keeps its
    share, or ``floor`` of the subset); largest-remainder rounding; uniform draw per stratum.
    """

    name = "random"
    description = "Seeded random subset, stratified by class and (if given) group."

    def _pick(
        self, features: torch.Tensor | None, members: torch.Tensor, q: int, gen: torch.Generator
    ) -> torch.Tensor:
        return torch.randperm(members.numel(), generator=gen)[:q]


class _ModelBased(_Stratified):
    needs_model = True

    def __init__(
        self,
        warmup_epochs: int = 2,
        *,
        lr: float = 1e-3,
        batch_size: int = 128,
        weight_decay: float = 0.0,
        floor: float | None = None,
        log: Log = stderr_log,
    ) -> None:
        super().__init__(floor=floor)
        if (
            isinstance(warmup_epochs, bool)
            or not isinstance(warmup_epochs, int)
            or warmup_epochs < 0
        ):
            raise ConfigError(
                f"warmup_epochs must be an integer ≥ 0 (epochs over the full set before "
                f"scoring; 0 scores the model as given); got {warmup_epochs!r}"
            )
        self.warmup_epochs = warmup_epochs
        self.lr, self.batch_size, self.weight_decay, self.log = lr, batch_size, weight_decay, log

    def _features(self, model: torch.nn.Module, data: Any) -> torch.Tensor:
        raise NotImplementedError

    def prepare(
        self,
        inputs: torch.Tensor | None,
        labels: torch.Tensor,
        *,
        model: torch.nn.Module | None = None,
        seed: int = 0,
        pm: FQPluginManager | None = None,
    ) -> torch.Tensor:
        """Warm a copy of ``model`` up for ``warmup_epochs`` (engine ``fit``), then score."""
        if model is None:
            raise ConfigError(
                f"selector {self.name!r} scores the examples with a model; pass model= (a fresh "
                "model of the architecture you will train), or use selector 'random'"
            )
        if inputs is None:
            raise ConfigError(f"selector {self.name!r} needs inputs= (one row per label)")
        y = _tensor(labels)
        assert y is not None
        if inputs.shape[0] != y.numel():
            raise ConfigError(f"{inputs.shape[0]} inputs for {y.numel()} labels")
        data = _as_dataset(inputs, y)
        t0 = time.perf_counter()
        warm = copy.deepcopy(model)  # the caller's model is left as it was
        torch.manual_seed(seed)
        warm_up(
            warm,
            data,
            epochs=self.warmup_epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            seed=seed,
            pm=pm,
            log=self.log,
        )
        t1 = time.perf_counter()
        feats = self._features(warm, data)
        self.last_cost = SelectorCost(self.warmup_epochs, t1 - t0, time.perf_counter() - t1)
        return feats


class EL2NSelector(_ModelBased):
    """EL2N score after a short warm-up on the full set; keeps the hardest per stratum.

    Paul, Ganguli & Dziugaite, "Deep learning on a data diet" (NeurIPS 2021): the error L2
    norm ``‖softmax(f(x)) − onehot(y)‖₂`` early in training ranks examples by difficulty.
    ``keep="hard"`` keeps the highest scores (the paper's rule), ``"easy"`` the lowest.
    Ties: the lower index first.
    """

    name = "el2n"
    description = "EL2N score after a short warm-up on the full set; keeps the hardest per stratum."

    def __init__(
        self,
        warmup_epochs: int = 2,
        *,
        keep: str = "hard",
        lr: float = 1e-3,
        batch_size: int = 128,
        weight_decay: float = 0.0,
        floor: float | None = None,
        log: Log = stderr_log,
    ) -> None:
        super().__init__(
            warmup_epochs,
            lr=lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            floor=floor,
            log=log,
        )
        if keep not in ("hard", "easy"):
            raise ConfigError(f"keep must be 'hard' or 'easy'; got {keep!r}")
        self.keep = keep

    def _features(self, model: torch.nn.Module, data: Any) -> torch.Tensor:
        return el2n_scores(model, data, batch_size=max(self.batch_size, 256))

    def _pick(
        self, features: torch.Tensor | None, members: torch.Tensor, q: int, gen: torch.Generator
    ) -> torch.Tensor:
        assert features is not None
        s = features[members]
        return torch.argsort(s, descending=self.keep == "hard", stable=True)[:q]


class KCenterSelector(_ModelBased):
    """Greedy k-center on penultimate-layer embeddings after a short warm-up (O(N·D) memory).

    Sener & Savarese, "Active learning for convolutional neural networks: a core-set
    approach" (ICLR 2018). The embedding is the input of the classifier head (the last
    ``nn.Linear``, or ``embedding_layer``); per stratum the greedy starts at a seeded random
    member. Distances are computed in chunks of ``chunk_size`` rows.
    """

    name = "kcenter"
    description = (
        "Greedy k-center on penultimate-layer embeddings after a short warm-up (O(N·D) memory)."
    )

    def __init__(
        self,
        warmup_epochs: int = 2,
        *,
        embedding_layer: str | None = None,
        chunk_size: int = 16384,
        lr: float = 1e-3,
        batch_size: int = 128,
        weight_decay: float = 0.0,
        floor: float | None = None,
        log: Log = stderr_log,
    ) -> None:
        super().__init__(
            warmup_epochs,
            lr=lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            floor=floor,
            log=log,
        )
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer; got {chunk_size!r}")
        self.embedding_layer, self.chunk_size = embedding_layer, chunk_size

    def _features(self, model: torch.nn.Module, data: Any) -> torch.Tensor:
        return penultimate_embeddings(
            model, data, batch_size=max(self.batch_size, 256), layer=self.embedding_layer
        )

    def _pick(
        self, features: torch.Tensor | None, members: torch.Tensor, q: int, gen: torch.Generator
    ) -> torch.Tensor:
        assert features is not None
        first = int(torch.randint(members.numel(), (1,), generator=gen))
        return k_center_greedy(features[members], q, first=first, chunk_size=self.chunk_size)
