"""Coreset selection: quotas, EL2N scores, k-center greedy, and the API hosts and users call.

* :func:`allocate` — how many examples each stratum keeps: per class (``group_aware`` off)
  or per (class, group) cell keeping every group's share or a floor (``group_aware`` on).
* :func:`el2n_scores`, :func:`penultimate_embeddings` — one evaluation pass of the engine's
  :func:`~fq_plugins.engine.evaluate` (a warm-up, when a selector wants one, is the engine's
  :func:`~fq_plugins.engine.fit`).
* :func:`k_center_greedy` — greedy k-center (Sener & Savarese 2018) in O(N·D) memory: the
  distances to the newest centre are computed in row chunks, never an N×N matrix.
* :func:`select_subset` (a :class:`~fq_plugins.data.GroupDataset`), :func:`select_from_tensors`
  (users' own loops), :func:`subset_of` and :func:`hf_subset` (``datasets.Dataset.select`` or a
  ``torch.utils.data.Subset``) — each returns / carries a :class:`SelectionResult`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._log import Log, stderr_log
from ..errors import ConfigError, FQError
from .base import GroupDataset, iterate_batches

if TYPE_CHECKING:
    from ..manager import FQPluginManager
    from ..protocols import DataSelector

__all__ = [
    "SelectionResult",
    "SelectorCost",
    "allocate",
    "check_fraction",
    "el2n_scores",
    "hf_subset",
    "k_center_greedy",
    "penultimate_embeddings",
    "select_from_tensors",
    "select_subset",
    "subset_of",
    "warm_up",
]


# --- validation and quotas ----------------------------------------------------------


def check_fraction(fraction: Any, n: int, *, key: str | None = None) -> int:
    """``round(fraction·n)``, the number of examples kept; ConfigError unless it is in [1, n]."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ConfigError(
            f"fraction must be a number in (0, 1]; got {fraction!r} ({type(fraction).__name__})",
            key=key,
        )
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise ConfigError(
            f"fraction must lie in (0, 1] (the share of the training set kept); got {fraction}. "
            "Use e.g. 0.25 to keep a quarter, 1.0 for the full set",
            key=key,
        )
    k = round(fraction * n)
    if k < 1:
        raise ConfigError(
            f"fraction {fraction} of {n} examples keeps none; the smallest usable fraction "
            f"here is {1 / max(n, 1):.3g}",
            key=key,
        )
    return k


def _largest_remainder(quota: torch.Tensor, total: int) -> torch.Tensor:
    """Integers summing to ``total``: floors of ``quota`` plus one for the largest remainders."""
    take = quota.floor().long()
    rest = total - int(take.sum())
    if rest > 0:
        order = torch.argsort(quota - take.double(), descending=True, stable=True)
        take[order[:rest]] += 1
    return take


def _group_targets(n_g: torch.Tensor, k: int, floor: float | None) -> torch.Tensor:
    """Real-valued kept counts per group: its share of ``k``, lifted to ``floor·k`` (water-filling)."""
    n = float(n_g.sum())
    target = n_g.double() * k / n
    if not floor:
        return target
    fixed = torch.zeros_like(n_g, dtype=torch.bool)
    want = torch.minimum(n_g.double(), torch.full_like(target, floor * k))
    for _ in range(n_g.numel() + 1):
        free = k - float(target[fixed].sum())
        open_n = n_g[~fixed].double()
        target[~fixed] = open_n * free / max(float(open_n.sum()), 1.0)
        lift = (~fixed) & (target < want) & (n_g > 0)
        if not bool(lift.any()):
            break
        target[lift] = want[lift]
        fixed |= lift
    return target


def allocate(
    labels: torch.Tensor,
    groups: torch.Tensor | None,
    k: int,
    *,
    floor: float | None = None,
    class_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
    key: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kept count per stratum: ``(stratum id per example, stratum ids, quotas)``.

    ``groups=None`` (group-aware off): strata are the classes, each keeping its share of
    ``k`` (largest-remainder rounding; a tiny class can round to 0 — the caller warns).
    With ``groups``: each group keeps its share of ``k`` (or at least ``floor·k`` examples,
    capped by its size, the other groups shrinking proportionally), split over its classes by
    their shares; then every non-empty (class, group) cell keeps at least one example, taken
    from the largest cell of the same group. ConfigError when ``k`` cannot keep every
    group and class.
    """
    y = labels.long().flatten()
    n = y.numel()
    if groups is None:
        strata = y
        ids, counts = torch.unique(strata, return_counts=True)
        return strata, ids, _largest_remainder(counts.double() * k / n, k)
    g = groups.long().flatten()
    n_groups = int(g.max()) + 1
    n_classes = int(y.max()) + 1
    strata = y * n_groups + g
    cnames = list(class_names) if class_names else [str(c) for c in range(n_classes)]
    gnames = list(group_names) if group_names else [str(i) for i in range(n_groups)]
    cell_n = torch.bincount(strata, minlength=n_classes * n_groups).view(n_classes, n_groups)
    n_g = cell_n.sum(0)
    live = int((cell_n > 0).sum())
    if k < live:
        raise ConfigError(
            f"group-aware selection keeps {k} of {n} examples, fewer than the {live} non-empty "
            f"(class, group) cells, so some class or group would be left empty; use a fraction "
            f"of at least {live / n:.3g}, or group_aware: false",
            key=key,
        )
    if floor is not None:
        n_live_groups = int((n_g > 0).sum())
        if not (0.0 < floor <= 1.0 / n_live_groups):
            raise ConfigError(
                f"floor must lie in (0, 1/{n_live_groups}] (the least share of the kept subset "
                f"each of the {n_live_groups} groups gets); got {floor}",
                key=key,
            )
    g_take = _largest_remainder(_group_targets(n_g, k, floor), k)
    quota = torch.zeros(n_classes, n_groups, dtype=torch.long)
    for j in range(n_groups):
        if g_take[j] == 0:
            continue
        col = cell_n[:, j]
        q = _largest_remainder(col.double() * int(g_take[j]) / int(n_g[j]), int(g_take[j]))
        empty = (col > 0) & (q == 0)
        while bool(empty.any()):
            if int(q.max()) <= 1:  # the group keeps fewer examples than it has classes
                missing = [cnames[c] for c in torch.nonzero(empty).flatten().tolist()]
                raise ConfigError(
                    f"group-aware selection keeps {int(g_take[j])} examples of group "
                    f"{gnames[j]!r}, too few for its {int((col > 0).sum())} classes (would drop "
                    f"{missing}); raise the fraction, or set a floor for this group",
                    key=key,
                )
            q[int(torch.argmax(q))] -= 1
            q[int(torch.nonzero(empty).flatten()[0])] += 1
            empty = (col > 0) & (q == 0)
        quota[:, j] = q
    ids = torch.nonzero(cell_n.flatten() > 0).flatten()
    return strata, ids, quota.flatten()[ids]


def _pick_per_stratum(
    strata: torch.Tensor,
    ids: torch.Tensor,
    quota: torch.Tensor,
    choose: Callable[[torch.Tensor, int], torch.Tensor],
) -> torch.Tensor:
    """``choose(member indices, q)`` per stratum → sorted kept indices."""
    picked = []
    for s, q in zip(ids.tolist(), quota.tolist(), strict=True):
        if q == 0:
            continue
        members = torch.nonzero(strata == s).flatten()
        picked.append(members[choose(members, q)])
    if not picked:
        return torch.zeros(0, dtype=torch.long)
    return torch.sort(torch.cat(picked)).values


# --- the model parts: warm-up (fit) and one evaluation pass (evaluate) -----------------


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _batches(
    ds: GroupDataset,
    batch_size: int,
    device: torch.device,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    for x, y, g in iterate_batches(ds, batch_size, shuffle=shuffle, generator=generator):
        yield x.to(device), y.to(device), g.to(device)


def _as_dataset(
    inputs: torch.Tensor | None,
    labels: torch.Tensor,
    groups: torch.Tensor | None = None,
    *,
    class_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
) -> GroupDataset:
    """A GroupDataset over plain tensors (``x`` empty columns when there are no inputs)."""
    y = torch.as_tensor(labels, dtype=torch.long).flatten()
    g = torch.zeros_like(y) if groups is None else torch.as_tensor(groups).long().flatten()
    x = torch.zeros(y.numel(), 0) if inputs is None else torch.as_tensor(inputs)
    n_c = int(y.max()) + 1 if y.numel() else 1
    n_g = int(g.max()) + 1 if g.numel() else 1
    cnames = list(class_names) if class_names is not None else [str(c) for c in range(n_c)]
    gnames = list(group_names) if group_names is not None else [str(i) for i in range(n_g)]
    return GroupDataset(x, y, g, cnames, gnames, name="selection")


def warm_up(
    model: nn.Module,
    data: GroupDataset,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
    pm: FQPluginManager | None = None,
    log: Log = stderr_log,
) -> nn.Module:
    """``epochs`` of the engine's :func:`~fq_plugins.engine.fit` (plain cross-entropy) on
    ``data``, on the model's device; trains ``model`` in place and returns it."""
    from ..engine.fit import fit

    if epochs <= 0:
        return model
    device = _device_of(model)
    gen = torch.Generator().manual_seed(seed)
    fit(
        model,
        lambda: _batches(data, batch_size, device, shuffle=True, generator=gen),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        seed=seed,
        pm=pm,
        phase="selection warm-up",
        log=log,
    )
    return model


def _find_head(model: nn.Module, layer: str | None) -> nn.Module:
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            raise ConfigError(
                f"embedding_layer {layer!r} is not a module of {type(model).__name__}; "
                f"valid names include {[n for n in modules if n][-5:]}"
            )
        return modules[layer]
    linears = [m for m in modules.values() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(
            f"{type(model).__name__} has no nn.Linear classifier whose input could serve as "
            "the penultimate-layer embedding; name the module with embedding_layer"
        )
    return linears[-1]


def _forward_pass(
    model: nn.Module,
    data: GroupDataset,
    *,
    batch_size: int,
    embed: bool,
    layer: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (and the input of the classifier head) on ``data`` via the engine's evaluate."""
    from ..engine.evaluator import evaluate

    device = _device_of(model)
    captured: list[torch.Tensor] = []
    handle = None
    if embed:
        head = _find_head(model, layer)

        def grab(_m: nn.Module, args: tuple[Any, ...]) -> None:
            captured.append(args[0].detach().flatten(1).float().cpu())

        handle = head.register_forward_pre_hook(grab)
    try:
        _, logits = evaluate(
            model,
            lambda: _batches(data, batch_size, device, shuffle=False),
            n_groups=data.n_groups,
            n_classes=data.n_classes,
            keep_logits=True,
            all_reduce=False,
        )
    finally:
        if handle is not None:
            handle.remove()
    emb = torch.cat(captured) if embed else None
    return logits.detach().float().cpu(), emb


def el2n_scores(model: nn.Module, data: GroupDataset, *, batch_size: int = 512) -> torch.Tensor:
    """EL2N (Paul et al. 2021): ``‖softmax(f(x)) − onehot(y)‖₂`` per example, eval mode."""
    logits, _ = _forward_pass(model, data, batch_size=batch_size, embed=False)
    return _el2n_from_logits(logits, data.y)


def _el2n_from_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.shape[0] != y.numel():
        raise FQError(f"the model gave {logits.shape[0]} logit rows for {y.numel()} examples")
    p = torch.softmax(logits.double(), dim=1)
    p[torch.arange(y.numel()), y] -= 1.0
    scores = p.norm(dim=1)
    if not bool(torch.isfinite(scores).all()):
        raise FQError(
            "EL2N scores are not finite (the model's logits contain NaN/inf); the warm-up "
            "diverged — lower its lr or check the inputs"
        )
    return scores


def penultimate_embeddings(
    model: nn.Module, data: GroupDataset, *, batch_size: int = 512, layer: str | None = None
) -> torch.Tensor:
    """``(N, D)`` float32: the input of the classifier head (default the last ``nn.Linear``)."""
    _, emb = _forward_pass(model, data, batch_size=batch_size, embed=True, layer=layer)
    assert emb is not None
    return emb


# --- k-center greedy -------------------------------------------------------------------


def k_center_greedy(
    emb: torch.Tensor, k: int, *, first: int = 0, chunk_size: int = 16384
) -> torch.Tensor:
    """Greedy k-center: ``k`` indices (in pick order), starting at ``first``.

    Each step adds the point farthest from the chosen centres (ties: the lowest index).
    Memory is the N×D embedding plus O(N) working space: the squared distances to the
    newest centre are ``|x|² + |c|² − 2·x·c``, one matrix-vector product per row chunk of
    ``chunk_size`` (never an N×N matrix), in the embedding's dtype (clamped at 0; give float64
    for distances exact to round-off on tiny differences).
    """
    if emb.dim() != 2:
        raise ConfigError(f"k-center needs an (N, D) embedding; got shape {tuple(emb.shape)}")
    n = emb.shape[0]
    if not 0 < k <= n:
        raise ConfigError(f"k-center: k must lie in [1, {n}]; got {k}")
    if not 0 <= first < n:
        raise ConfigError(f"k-center: first must lie in [0, {n}); got {first}")
    spans = [(lo, min(lo + chunk_size, n)) for lo in range(0, n, chunk_size)]
    sq = torch.cat([emb[lo:hi].pow(2).sum(1) for lo, hi in spans])
    mind = torch.full((n,), math.inf, dtype=emb.dtype, device=emb.device)
    d = torch.empty(min(chunk_size, n), dtype=emb.dtype, device=emb.device)
    chosen = torch.empty(k, dtype=torch.long)
    c = first
    for step in range(k):
        chosen[step] = c
        centre, c_sq = emb[c], sq[c]
        for lo, hi in spans:
            dd = d[: hi - lo]
            torch.addmv(sq[lo:hi], emb[lo:hi], centre, alpha=-2.0, out=dd)
            dd.add_(c_sq).clamp_(min=0.0)
            torch.minimum(mind[lo:hi], dd, out=mind[lo:hi])
        mind[c] = -1.0  # never picked again, even when every point is already covered
        c = int(torch.argmax(mind))
    return chosen


# --- the result and the API --------------------------------------------------------


@dataclasses.dataclass
class SelectorCost:
    """What a selector spent: warm-up epochs over the full set and wall seconds."""

    warmup_epochs: int = 0
    warmup_seconds: float = 0.0
    scoring_seconds: float = 0.0


@dataclasses.dataclass
class SelectionResult:
    """The kept indices and what the selection did to the data and cost.

    ``per_class`` / ``per_group``: one dict per class / group with ``full`` and ``kept``
    counts, ``share_full`` / ``share_kept`` (of the whole set / of the subset) and
    ``kept_fraction``. ``seconds`` is the selector's whole wall time (model build, warm-up,
    scoring, picking); ``warmup_epochs`` counts epochs over the *full* set.
    ``features`` (EL2N scores or embeddings) can be passed back to :func:`select_subset`
    to pick another fraction without a second warm-up; it is not serialized.
    """

    selector: str
    fraction: float
    group_aware: bool
    floor: float | None
    seed: int
    indices: torch.Tensor
    n_full: int
    per_class: list[dict[str, Any]]
    per_group: list[dict[str, Any]]
    warmup_epochs: int = 0
    warmup_seconds: float = 0.0
    seconds: float = 0.0
    warnings: list[str] = dataclasses.field(default_factory=list)
    features: torch.Tensor | None = dataclasses.field(default=None, repr=False)

    @property
    def n_kept(self) -> int:
        return int(self.indices.numel())

    def apply(self, dataset: GroupDataset) -> GroupDataset:
        """The kept part of ``dataset`` (the one the selection ran on)."""
        if len(dataset) != self.n_full:
            raise ConfigError(
                f"this selection was made on {self.n_full} examples; the dataset has {len(dataset)}"
            )
        return dataset.subset(self.indices)

    def to_dict(self, *, indices: bool = False) -> dict[str, Any]:
        """JSON-able summary (``indices=True`` adds the kept index list)."""
        d = {
            "selector": self.selector,
            "fraction": self.fraction,
            "group_aware": self.group_aware,
            "floor": self.floor,
            "seed": self.seed,
            "n_full": self.n_full,
            "n_kept": self.n_kept,
            "per_class": self.per_class,
            "per_group": self.per_group,
            "warmup_epochs": self.warmup_epochs,
            "warmup_seconds": self.warmup_seconds,
            "seconds": self.seconds,
            "warnings": list(self.warnings),
        }
        if indices:
            d["indices"] = self.indices.tolist()
        return d


def _shares(values: torch.Tensor, kept: torch.Tensor, names: Sequence[str]) -> list[dict[str, Any]]:
    full = torch.bincount(values, minlength=len(names))
    sub = torch.bincount(values[kept], minlength=len(names))
    n, k = max(int(full.sum()), 1), max(int(sub.sum()), 1)
    return [
        {
            "name": name,
            "full": int(f),
            "kept": int(s),
            "share_full": int(f) / n,
            "share_kept": int(s) / k,
            "kept_fraction": int(s) / int(f) if int(f) else math.nan,
        }
        for name, f, s in zip(names, full.tolist(), sub.tolist(), strict=True)
    ]


def _accepts(cls: type[Any], name: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _resolve(
    selector: str | DataSelector,
    *,
    options: dict[str, Any],
    host: dict[str, Any],
    pm: FQPluginManager | None,
    key: str,
) -> tuple[DataSelector, str]:
    from ..protocols import DataSelector

    if isinstance(selector, DataSelector):
        if options:
            raise ConfigError(
                f"options {sorted(options)} were given with a ready selector instance "
                f"({type(selector).__name__}); set them on the instance instead",
                key=key,
            )
        return selector, selector.name or type(selector).__name__
    if not isinstance(selector, str):
        raise ConfigError(
            f"selector must be a registered name or a DataSelector; got {type(selector).__name__}",
            key=f"{key}.selector",
        )
    if pm is None:
        from ..manager import get_plugin_manager

        pm = get_plugin_manager()
    cls = pm.selectors.get(selector, key=f"{key}.selector")
    unknown = [o for o in options if not _accepts(cls, o)]
    if unknown:
        raise ConfigError(
            f"selector {selector!r} has no option(s) {unknown}"
            + (
                " (random needs no model, so it has no warm-up)"
                if "warmup_epochs" in unknown
                else ""
            )
            + f"; its options: {_option_names(cls)}",
            key=key,
        )
    kwargs = {**{k: v for k, v in host.items() if _accepts(cls, k)}, **options}
    return cls(**kwargs), selector


def _option_names(cls: type[Any]) -> list[str]:
    try:
        return [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):
        return []


def select_subset(
    dataset: GroupDataset,
    *,
    selector: str | DataSelector = "random",
    fraction: float,
    group_aware: bool = False,
    floor: float | None = None,
    seed: int = 0,
    model_factory: Callable[[], nn.Module] | None = None,
    warmup_epochs: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    options: dict[str, Any] | None = None,
    features: torch.Tensor | None = None,
    pm: FQPluginManager | None = None,
    log: Log = stderr_log,
    key: str = "data.selection",
) -> SelectionResult:
    """Choose the kept part of ``dataset``; the host trains on ``result.apply(dataset)``.

    :param selector: a registered name (``random``, ``el2n``, ``kcenter``) or an instance.
    :param fraction: share of the examples kept, in (0, 1].
    :param group_aware: keep every group's share (per (class, group) cell) — or, with
        ``floor``, at least ``floor`` of the subset per group; off: stratified by class only.
    :param model_factory: builds a fresh, untrained model (selectors that score examples
        with a model need it: ``el2n``, ``kcenter``). It is warmed up for ``warmup_epochs``
        with the engine's ``fit`` (``lr``, ``batch_size``, ``weight_decay``) and thrown away.
    :param options: the selector's own options (``keep``, ``embedding_layer``, …).
    :param features: ``result.features`` of an earlier selection by the same selector on the
        same data: picks again without the warm-up (its cost is then not in this result).
    :raises ConfigError: fraction outside (0, 1] or keeping none; group-aware selection that
        cannot keep every class and group; a floor without ``group_aware`` or out of range; a
        model-based selector without ``model_factory``; an unknown selector or option.
    """
    n = len(dataset)
    k = check_fraction(fraction, n, key=f"{key}.fraction")
    if floor is not None and not group_aware:
        raise ConfigError(
            f"floor {floor} is a per-group minimum; it needs group_aware: true", key=f"{key}.floor"
        )
    opts = dict(options or {})
    if floor is not None:
        opts["floor"] = floor
    if warmup_epochs is not None:
        opts["warmup_epochs"] = warmup_epochs
    sel, name = _resolve(
        selector,
        options=opts,
        host={"lr": lr, "batch_size": batch_size, "weight_decay": weight_decay, "log": log},
        pm=pm,
        key=key,
    )
    needs_model = bool(getattr(sel, "needs_model", False))
    if needs_model and model_factory is None and features is None:
        raise ConfigError(
            f"selector {name!r} scores the examples with a model (a short warm-up, then one "
            "pass), so it needs model_factory= (in a recipe: the model section); or use "
            "selector 'random', which needs none",
            key=f"{key}.selector",
        )
    groups = dataset.group if group_aware else None
    # feasibility before any warm-up is paid for (the built-in quotas raise here)
    allocate(
        dataset.y,
        groups,
        k,
        floor=floor,
        class_names=dataset.class_names,
        group_names=dataset.group_names,
        key=key,
    )
    t0 = time.perf_counter()
    cost = SelectorCost()
    feats = features
    if hasattr(sel, "prepare") and hasattr(sel, "choose"):
        if feats is None:
            model = model_factory() if (needs_model and model_factory is not None) else None
            feats = sel.prepare(dataset.x, dataset.y, model=model, seed=seed, pm=pm)
            cost = getattr(sel, "last_cost", cost)
        idx = sel.choose(
            feats,
            dataset.y,
            fraction,
            groups=groups,
            seed=seed,
            class_names=dataset.class_names,
            group_names=dataset.group_names,
        )
    else:
        model = model_factory() if model_factory is not None else None
        idx = sel.select(
            dataset.y, fraction, model=model, groups=groups, seed=seed, inputs=dataset.x
        )
        cost = getattr(sel, "last_cost", cost)
    seconds = time.perf_counter() - t0
    idx = _check_indices(idx, n, k, name)
    result = SelectionResult(
        selector=name,
        fraction=float(fraction),
        group_aware=group_aware,
        floor=floor,
        seed=seed,
        indices=idx,
        n_full=n,
        per_class=_shares(dataset.y, idx, dataset.class_names),
        per_group=_shares(dataset.group, idx, dataset.group_names),
        warmup_epochs=cost.warmup_epochs,
        warmup_seconds=cost.warmup_seconds,
        seconds=seconds,
        features=feats if torch.is_tensor(feats) else None,
    )
    for kind, rows in (("class", result.per_class), ("group", result.per_group)):
        lost = [r["name"] for r in rows if r["full"] > 0 and r["kept"] == 0]
        if not lost:
            continue
        msg = (
            f"selection {name!r} at fraction {fraction} keeps no example of {kind}(s) {lost}; "
            "training will never see them — raise the fraction or set group_aware: true"
        )
        if group_aware:
            raise FQError(msg.replace(" or set group_aware: true", ""))
        result.warnings.append(msg)
        log(f"warning: {msg}")
    return result


def _check_indices(idx: Any, n: int, k: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(idx)
    if t.dim() != 1 or t.dtype not in (torch.int64, torch.int32):
        raise FQError(
            f"selector {name!r} returned {tuple(t.shape)} {t.dtype}; it must return 1-D "
            "int64 indices"
        )
    t = t.long().cpu()
    if t.numel() != k or (t.numel() and (int(t.min()) < 0 or int(t.max()) >= n)):
        raise FQError(f"selector {name!r} returned {t.numel()} indices in [0, {n}); expected {k}")
    t = torch.sort(t).values
    if t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
        raise FQError(f"selector {name!r} returned duplicate indices")
    return t


def select_from_tensors(
    labels: torch.Tensor | Sequence[int],
    *,
    fraction: float,
    groups: torch.Tensor | Sequence[int] | None = None,
    inputs: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
    **kwargs: Any,
) -> SelectionResult:
    """:func:`select_subset` for users' own loops: plain tensors (inputs only for selectors
    with a model). Train on ``result.indices`` (e.g. ``torch.utils.data.Subset``)."""
    y = torch.as_tensor(labels, dtype=torch.long).flatten()
    if groups is None and kwargs.get("group_aware"):
        raise ConfigError("group_aware selection needs groups= (one group id per example)")
    g = torch.zeros_like(y) if groups is None else torch.as_tensor(groups).long().flatten()
    if g.numel() != y.numel():
        raise ConfigError(f"{g.numel()} group ids for {y.numel()} labels; give one per example")
    if inputs is not None and inputs.shape[0] != y.numel():
        raise ConfigError(f"{inputs.shape[0]} inputs for {y.numel()} labels")
    ds = _as_dataset(inputs, y, g, class_names=class_names, group_names=group_names)
    if kwargs.get("model_factory") is not None and inputs is None:
        raise ConfigError("a selector with a model needs inputs= (one row per label)")
    return select_subset(ds, fraction=fraction, **kwargs)


def subset_of(dataset: Any, result: SelectionResult | torch.Tensor) -> Any:
    """The kept part of any dataset: ``dataset.select(indices)`` for a Hugging Face
    ``datasets.Dataset`` (or anything with ``select``), else ``torch.utils.data.Subset``."""
    idx = result.indices if isinstance(result, SelectionResult) else torch.as_tensor(result)
    if len(dataset) != (result.n_full if isinstance(result, SelectionResult) else len(dataset)):
        raise ConfigError(
            f"this selection was made on {result.n_full} examples; the dataset has {len(dataset)}"  # type: ignore[union-attr]
        )
    if callable(getattr(dataset, "select", None)) and hasattr(dataset, "column_names"):
        return dataset.select(idx.tolist())
    return torch.utils.data.Subset(dataset, idx.tolist())


def _column(dataset: Any, name: str) -> torch.Tensor:
    cols = list(getattr(dataset, "column_names", []))
    if name not in cols:
        raise ConfigError(f"the dataset has no column {name!r}; its columns: {cols}")
    return torch.as_tensor(list(dataset[name]))


def hf_subset(
    dataset: Any,
    *,
    fraction: float,
    label_column: str = "label",
    group_column: str | None = None,
    inputs: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[Any, SelectionResult]:
    """Select on a Hugging Face ``datasets.Dataset`` (duck-typed: ``column_names``, column
    access, ``select``; the ``datasets`` package is not required here). Returns
    ``(dataset.select(kept), result)``. Selectors with a model need ``inputs=`` as a tensor
    (one row per example, as the model takes them)."""
    y = _column(dataset, label_column)
    g = _column(dataset, group_column) if group_column is not None else None
    names = None
    feats = getattr(dataset, "features", None)
    label_feature = feats.get(label_column) if isinstance(feats, dict) else None
    if label_feature is not None and getattr(label_feature, "names", None):
        names = list(label_feature.names)
    result = select_from_tensors(
        y, fraction=fraction, groups=g, inputs=inputs, class_names=names, **kwargs
    )
    return subset_of(dataset, result), result
