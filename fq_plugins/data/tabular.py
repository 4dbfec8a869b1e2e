"""Tabular data (Adult/COMPAS-style) from CSV or Parquet: numeric and categorical feature
columns, a label column and group column(s).

Features become ``x`` of shape ``(N, F, 1, 1)`` float32 — numeric columns as their values
(``run`` standardizes every feature with training statistics when ``data.normalize``),
categorical columns one-hot over their sorted levels — so the ``mlp`` model takes them
(``in_channels = F``, ``image_size = 1``). :func:`tabular_features` names the F features.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from .._config import StrictConfig
from ..errors import ConfigError
from ._tables import (
    MISSING_TOKENS,
    Table,
    class_ids,
    column,
    compact_groups,
    group_ids,
    read_table,
    resolve_path,
    to_float,
    to_text,
    validate_spec,
)
from .base import GroupDataset
from .npz import GroupSpec

__all__ = ["MAX_LEVELS", "TabularSpec", "load_tabular", "tabular_features"]

MAX_LEVELS = 1000
"""A categorical column with more levels than this is refused (an id column?)."""


class TabularSpec(StrictConfig):
    """``data.tabular``: the file, the label, the groups and the feature columns."""

    path: str = Field(description=".csv or .parquet/.pq; relative paths from the recipe's folder.")
    label: str = Field(description="The class label column.")
    classes: list[str] | None = Field(
        None, min_length=2, description="Class order; rows with other labels are left out."
    )
    groups: list[GroupSpec] = Field(
        min_length=1, description="Group column(s); several give intersectional groups."
    )
    numeric: list[str] | None = Field(
        None, description="Numeric feature columns; default (with categorical unset): detected."
    )
    categorical: list[str] | None = Field(
        None, description="Categorical feature columns, one-hot encoded."
    )
    missing_values: list[str] = Field(
        default_factory=lambda: ["?"],
        description="Cell texts meaning 'no value' besides empty/NA/NaN/null.",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> TabularSpec:
        num, cat = self.numeric or [], self.categorical or []
        both = sorted(set(num) & set(cat))
        if both:
            raise ValueError(f"columns {both} are listed as both numeric and categorical")
        for name, cols in (("numeric", num), ("categorical", cat)):
            dup = sorted({c for c in cols if cols.count(c) > 1})
            if dup:
                raise ValueError(f"{name} lists {dup} more than once")
            if self.label in cols:
                raise ValueError(
                    f"the label column {self.label!r} cannot be a feature ({name}); remove it"
                )
        return self


def _feature_columns(
    table: Table, s: TabularSpec, source: str, key: str
) -> tuple[list[str], list[str]]:
    """Explicit lists, or (both unset) every column but the label and group columns:
    numeric when every present cell is a number, else categorical."""
    if s.numeric is not None or s.categorical is not None:
        num, cat = list(s.numeric or []), list(s.categorical or [])
        for c in num + cat:
            column(table, c, role="feature", source=source, key=f"{key}.numeric/categorical")
        if not num and not cat:
            raise ConfigError("no feature columns given", key=f"{key}.numeric")
        return num, cat
    skip = {s.label, *(g.column for g in s.groups)}
    num, cat = [], []
    for c, values in table.items():
        if c in skip:
            continue
        try:
            vals = to_float(values, name=c, source=source, key=key, missing=s.missing_values)
        except ConfigError:
            cat.append(c)
            continue
        (num if np.isfinite(vals).any() else cat).append(c)
    if not num and not cat:
        raise ConfigError(
            f"{source} has no column besides the label and group columns to use as a feature",
            key=key,
        )
    return num, cat


def _encode(
    table: Table, s: TabularSpec, source: str, key: str, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(features (N, F) float32, keep, feature names)``: ``keep`` narrowed to the rows
    with every numeric value; a missing categorical value is its own level ``<missing>``;
    categorical levels are those of the kept rows, sorted."""
    num, cat = _feature_columns(table, s, source, key)
    n = len(next(iter(table.values())))
    blocks: list[np.ndarray] = []
    names: list[str] = []
    keep = keep.copy()
    missing = {m.strip().lower() for m in s.missing_values} | MISSING_TOKENS
    for c in num:
        vals = to_float(
            table[c], name=c, source=source, key=f"{key}.numeric", missing=s.missing_values
        )
        keep &= np.isfinite(vals)
        blocks.append(np.nan_to_num(vals, nan=0.0, posinf=0.0, neginf=0.0)[:, None])
        names.append(c)
    for c in cat:
        texts = [to_text(v) or "<missing>" for v in table[c]]
        texts = ["<missing>" if t.lower() in missing else t for t in texts]
        levels = sorted({t for t, k in zip(texts, keep, strict=True) if k})
        if len(levels) > MAX_LEVELS:
            raise ConfigError(
                f"categorical column {c!r} of {source} has {len(levels)} levels (> {MAX_LEVELS}); "
                "an id or free-text column? Leave it out of the features",
                key=f"{key}.categorical",
            )
        lookup = {v: i for i, v in enumerate(levels)}
        onehot = np.zeros((n, len(levels)), dtype=np.float64)
        rows = np.flatnonzero(keep)
        onehot[rows, [lookup[texts[i]] for i in rows.tolist()]] = 1.0
        blocks.append(onehot)
        names.extend(f"{c}={v}" for v in levels)
    return np.concatenate(blocks, axis=1).astype(np.float32), keep, names


def _build(
    s: TabularSpec, base_dir: str | os.PathLike[str] | None, key: str
) -> tuple[GroupDataset, list[str]]:
    path = resolve_path(s.path, base_dir)
    table = read_table(path, key=f"{key}.path")
    source = os.path.basename(path)
    y, keep_y, class_names = class_ids(
        column(table, s.label, role="label", source=source, key=f"{key}.label"),
        s.classes,
        name=s.label,
        source=source,
        key=key,
    )
    g, keep_g, group_names = group_ids(table, s.groups, source=source, key=f"{key}.groups")
    feats, keep, feature_names = _encode(table, s, source, key, keep_y & keep_g)
    if not keep.any():
        raise ConfigError(
            f"no row of {source} has a label, every group value and every numeric feature",
            key=key,
        )
    g_kept, group_names = compact_groups(g[keep], group_names)
    x = torch.from_numpy(np.ascontiguousarray(feats[keep]))
    ds = GroupDataset(
        x=x.view(x.shape[0], x.shape[1], 1, 1),
        y=torch.from_numpy(y[keep]),
        group=torch.from_numpy(g_kept),
        class_names=class_names,
        group_names=group_names,
        name=source,
        dropped=int((~keep).sum()),
    )
    return ds, feature_names


def tabular_features(
    spec: TabularSpec | dict[str, Any],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    key: str = "data.tabular",
) -> list[str]:
    """The names of the F feature channels :func:`load_tabular` builds, in order
    (``age``, ``workclass=Private``, …)."""
    return _build(validate_spec(TabularSpec, spec, key), base_dir, key)[1]


def load_tabular(
    spec: TabularSpec | dict[str, Any],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    key: str = "data.tabular",
) -> GroupDataset:
    """A CSV/Parquet table → :class:`GroupDataset` with ``x`` of shape ``(N, F, 1, 1)``.

    Rows lacking a label, a group value or a numeric feature value (or, with ``classes``,
    with another label) are left out and counted in ``dropped``; groups no kept row falls
    in are left out of ``group_names``; a categorical level only dropped rows have is no
    feature.

    :raises ConfigError: a missing file or column, a numeric column holding text, a
        categorical column with more than :data:`MAX_LEVELS` levels, no row left.
    :raises MissingDependencyError: a Parquet file without pyarrow installed.
    """
    return _build(validate_spec(TabularSpec, spec, key), base_dir, key)[0]
