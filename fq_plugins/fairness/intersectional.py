"""Intersectional groups: several sensitive attributes → one group id and one name.

Ids are mixed-radix over the attributes' levels, in the order given (the last attribute
varies fastest): with ``{"sex": ["F", "M"], "age": ["<60", ">=60"]}`` the groups are
``0 = sex=F|age=<60``, ``1 = sex=F|age=>=60``, ``2 = sex=M|age=<60``, ``3 = sex=M|age=>=60``.
The id of a combination depends only on the levels, never on which combinations occur in a
batch, so a combination missing from a batch keeps its id and tables from different batches
or DDP ranks add up. Fix the levels up front (:class:`IntersectionalGroups`) when you stream;
:func:`intersectional_groups` derives them from the data for a one-shot evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import product
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, close_matches

__all__ = ["IntersectionalGroups", "intersectional_groups"]


def _as_list(values: Any) -> list[Any]:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().flatten().tolist()
    if isinstance(values, np.ndarray):
        return values.ravel().tolist()
    return list(values)


class IntersectionalGroups:
    """Fixed levels per attribute; maps attribute values to one group id.

    :param levels: attribute name → its levels (any hashable values: strings, ints), in the
        order that defines the ids. Every attribute needs at least one level, no duplicates.
    """

    def __init__(self, levels: Mapping[str, Sequence[Any]]) -> None:
        if not levels:
            raise ConfigError(
                "intersectional groups need at least one attribute, e.g. "
                "{'sex': ['female', 'male'], 'age': ['<60', '>=60']}"
            )
        self.levels: dict[str, list[Any]] = {}
        for attr, lv in levels.items():
            lv = _as_list(lv)
            if not lv:
                raise ConfigError(f"attribute {attr!r} has no levels; give at least one")
            if len(set(lv)) != len(lv):
                dup = sorted({str(v) for v in lv if lv.count(v) > 1})
                raise ConfigError(f"attribute {attr!r} lists levels {dup} more than once")
            self.levels[str(attr)] = lv
        self._lookup = {a: {v: i for i, v in enumerate(lv)} for a, lv in self.levels.items()}
        radices = [len(lv) for lv in self.levels.values()]
        self.strides = [int(np.prod(radices[i + 1 :], dtype=np.int64)) for i in range(len(radices))]
        self.n_groups = int(np.prod(radices, dtype=np.int64))

    @property
    def attributes(self) -> list[str]:
        return list(self.levels)

    @property
    def names(self) -> list[str]:
        """One display name per group id: ``attr=value|attr=value``."""
        return [
            "|".join(f"{a}={v}" for a, v in zip(self.levels, combo, strict=True))
            for combo in product(*self.levels.values())
        ]

    def ids(self, values: Mapping[str, Any]) -> torch.Tensor:
        """Group ids (int64, shape ``(N,)``) for per-example attribute arrays.

        :param values: attribute name → N values (list, numpy array or tensor); every
            attribute of the levels must be given, all of the same length.
        """
        missing = [a for a in self.levels if a not in values]
        extra = [a for a in values if a not in self.levels]
        if missing or extra:
            raise ConfigError(
                f"attributes given {sorted(values)} do not match the levels' attributes "
                f"{self.attributes}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {extra}" if extra else "")
            )
        cols = {a: _as_list(values[a]) for a in self.levels}
        lengths = {a: len(c) for a, c in cols.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"attribute arrays differ in length: {lengths}")
        n = next(iter(lengths.values()))
        out = np.zeros(n, dtype=np.int64)
        for (attr, col), stride in zip(cols.items(), self.strides, strict=True):
            lookup = self._lookup[attr]
            try:
                codes = np.fromiter((lookup[v] for v in col), dtype=np.int64, count=n)
            except KeyError as exc:
                bad = exc.args[0]
                hint = close_matches(str(bad), [str(v) for v in self.levels[attr]])
                raise ConfigError(
                    f"attribute {attr!r} has value {bad!r}, which is not one of its levels "
                    f"{self.levels[attr]}."
                    + (f" Did you mean {hint}?" if hint else "")
                    + " Add it to the levels or drop those rows."
                ) from None
            except TypeError:
                raise ConfigError(
                    f"attribute {attr!r} holds unhashable values; give strings or numbers"
                ) from None
            out += codes * stride
        return torch.from_numpy(out)

    def decode(self, group_id: int) -> dict[str, Any]:
        """The attribute values of one group id."""
        if not 0 <= group_id < self.n_groups:
            raise ConfigError(f"group id {group_id} is outside [0, {self.n_groups})")
        out = {}
        for (attr, lv), stride in zip(self.levels.items(), self.strides, strict=True):
            out[attr] = lv[(group_id // stride) % len(lv)]
        return out


def intersectional_groups(
    values: Mapping[str, Any], levels: Mapping[str, Sequence[Any]] | None = None
) -> tuple[torch.Tensor, list[str]]:
    """Group ids and names for several attributes at once.

    Without ``levels``, each attribute's levels are its distinct values, sorted — fine for
    one evaluation, but pass fixed ``levels`` when batches are processed separately so the
    ids agree across batches.

    :returns: ``(ids, names)``: int64 ids of shape ``(N,)`` in ``[0, len(names))``.
    """
    if levels is None:
        levels = {}
        for attr, col in values.items():
            try:
                levels[attr] = sorted(set(_as_list(col)))
            except TypeError:
                raise ConfigError(
                    f"attribute {attr!r} mixes value types that cannot be sorted; pass `levels`"
                ) from None
    groups = IntersectionalGroups(levels)
    return groups.ids(values), groups.names
