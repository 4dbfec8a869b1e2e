"""Shared mechanics of the CSV/Parquet-backed readers: reading a table, class labels,
group ids from one or several group columns (intersectional), path resolution, and the
stratified row subsample taken before any image is decoded."""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Sequence
from itertools import product
from typing import Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, MissingDependencyError, close_matches
from ..fairness.intersectional import IntersectionalGroups
from .base import GroupDataset, stratified_split
from .npz import GroupSpec

__all__ = [
    "MISSING_TOKENS",
    "Table",
    "class_ids",
    "column",
    "compact_groups",
    "group_ids",
    "read_table",
    "resolve_path",
    "stratified_rows",
    "to_float",
    "to_text",
    "validate_spec",
]

SpecT = TypeVar("SpecT", bound=BaseModel)


def validate_spec(cls: type[SpecT], spec: SpecT | Any, key: str) -> SpecT:
    """``spec`` itself, or a mapping validated into ``cls``; every problem a ConfigError
    line naming its key path (unknown keys with the allowed ones)."""
    if isinstance(spec, cls):
        return spec
    try:
        return cls.model_validate(spec)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            where = ".".join([key, *(str(p) for p in err["loc"])])
            if err["type"] == "extra_forbidden":
                allowed = sorted(cls.model_fields)
                hint = close_matches(str(err["loc"][-1]), allowed)
                lines.append(
                    f"{where}: unknown key. Allowed keys: {', '.join(allowed)}."
                    + (f" Did you mean {hint}?" if hint else "")
                )
            else:
                value = err.get("input")
                shown = "" if isinstance(value, dict) else f" (got {value!r})"
                lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}{shown}")
        raise ConfigError("\n  ".join(lines)) from None


Table = dict[str, list[Any]]
"""Column name → one value per row (CSV: stripped text; Parquet: Python values, None = null)."""

MISSING_TOKENS = frozenset({"", "na", "nan", "n/a", "null", "none"})
"""Cell texts (case-insensitive) that mean 'no value' in every column."""


def resolve_path(path: str, base_dir: str | os.PathLike[str] | None) -> str:
    """``$VARS`` and ``~`` expanded; a relative path is taken from ``base_dir`` (default cwd)."""
    p = os.path.expanduser(os.path.expandvars(path))
    if not os.path.isabs(p) and base_dir is not None:
        p = os.path.join(os.fspath(base_dir), p)
    return os.path.normpath(p)


def _exists(path: str, what: str, key: str) -> None:
    if not os.path.isfile(path):
        where = "a folder" if os.path.isdir(path) else "missing"
        raise ConfigError(f"{what} {path!r} is {where}; give the path of the file", key=key)


def read_csv(path: str, *, key: str) -> Table:
    """Every column as stripped text; a ragged row, a duplicate header or an empty file is
    an error naming the file (and line)."""
    _exists(path, "CSV file", key)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh, skipinitialspace=True)
            header = next(reader, None)
            if not header:
                raise ConfigError(f"{path!r} is empty; it needs a header row", key=key)
            header = [h.strip() for h in header]
            dup = sorted({h for h in header if header.count(h) > 1})
            if dup:
                raise ConfigError(f"{path!r} names the columns {dup} more than once", key=key)
            cols: list[list[Any]] = [[] for _ in header]
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != len(header):
                    raise ConfigError(
                        f"{path!r} line {reader.line_num} has {len(row)} fields but the header "
                        f"has {len(header)}; fix the row (a stray comma or quote?)",
                        key=key,
                    )
                for c, v in zip(cols, row, strict=True):
                    c.append(v.strip())
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 CSV",
            key=key,
        ) from None
    except csv.Error as exc:
        raise ConfigError(f"cannot parse {path!r} as CSV: {exc}", key=key) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path!r}: {exc.strerror or exc}", key=key) from None
    return dict(zip(header, cols, strict=True))


def read_parquet(path: str, *, key: str) -> Table:
    """A Parquet file via pyarrow (or pandas with any Parquet engine it finds)."""
    _exists(path, "Parquet file", key)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    try:
        if pq is not None:
            return {str(k): list(v) for k, v in pq.read_table(path).to_pydict().items()}
        try:
            import pandas as pd
        except ImportError:
            raise MissingDependencyError(
                "pyarrow", "parquet", f"reading the Parquet file {path!r}"
            ) from None
        try:
            frame = pd.read_parquet(path)
        except ImportError:
            raise MissingDependencyError(
                "pyarrow", "parquet", f"reading the Parquet file {path!r}"
            ) from None
        return {
            str(k): [None if _is_na(v) else v for v in frame[k].tolist()] for k in frame.columns
        }
    except (MissingDependencyError, ConfigError):
        raise
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError types
        raise ConfigError(
            f"cannot read {path!r} as Parquet: {type(exc).__name__}: {exc}", key=key
        ) from None


def _is_na(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN, pandas NA/NaT
    except (TypeError, ValueError):
        return False


def read_table(path: str, *, key: str) -> Table:
    """``.csv`` (or ``.tsv``/``.txt`` comma-separated) or ``.parquet``/``.pq``."""
    ext = os.path.splitext(path)[1].lower()
    if ext in (".parquet", ".pq"):
        table = read_parquet(path, key=key)
    elif ext in (".csv", ".txt", ""):
        table = read_csv(path, key=key)
    else:
        raise ConfigError(
            f"cannot tell the format of {path!r} from {ext!r}; allowed: .csv or .parquet/.pq",
            key=key,
        )
    if not table or not next(iter(table.values())):
        raise ConfigError(f"{path!r} has no data rows", key=key)
    return table


def column(table: Table, name: str, *, role: str, source: str, key: str) -> list[Any]:
    if name in table:
        return table[name]
    hint = close_matches(name, table)
    raise ConfigError(
        f"{source} has no column {name!r} ({role}); its columns: {', '.join(table)}."
        + (f" Did you mean {hint}?" if hint else ""),
        key=key,
    )


def to_text(v: Any) -> str | None:
    """A cell as text, or None when it means 'no value'."""
    if _is_na(v):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)  # Parquet float columns of whole numbers read like their CSV text
    s = str(v).strip()
    return None if s.lower() in MISSING_TOKENS else s


def to_float(
    values: Sequence[Any], *, name: str, source: str, key: str, missing: Sequence[Any] = ()
) -> np.ndarray:
    """Numbers as float64 (NaN where a cell means 'no value' or is among ``missing``);
    a cell that is no number is an error naming the column, row and value."""
    miss = {str(m).strip().lower() for m in missing}
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        if _is_na(v):
            out[i] = math.nan
            continue
        if isinstance(v, bool):
            out[i] = float(v)
            continue
        if isinstance(v, (int, float, np.integer, np.floating)) and str(v).lower() not in miss:
            out[i] = float(v)
            continue
        s = str(v).strip()
        if s.lower() in MISSING_TOKENS or s.lower() in miss:
            out[i] = math.nan
            continue
        try:
            out[i] = float(s)
        except ValueError:
            raise ConfigError(
                f"column {name!r} of {source} holds {s!r} in data row {i + 1}, which is no "
                "number; give a numeric column, list the token under missing_values, or treat "
                "the column as categorical",
                key=key,
            ) from None
    if miss:
        for m in missing:
            with contextlib.suppress(TypeError, ValueError):  # a text token: handled above
                out[out == float(m)] = math.nan
    return out


def _sorted_levels(values: set[str]) -> list[str]:
    """Numeric order when every value is a number ('2' before '10'), else text order."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def class_ids(
    values: Sequence[Any],
    classes: Sequence[str] | None,
    *,
    name: str,
    source: str,
    key: str,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(ids, keep, class_names)``: a row without a label, or (with ``classes``) with a
    label not listed, is not kept; a listed class that never occurs is an error."""
    texts = [to_text(v) for v in values]
    present = {t for t in texts if t is not None}
    if not present:
        raise ConfigError(f"label column {name!r} of {source} holds no value", key=key)
    if classes is not None:
        absent = [c for c in classes if c not in present]
        if absent:
            raise ConfigError(
                f"classes {absent} do not occur in label column {name!r} of {source}; it holds "
                f"{_sorted_levels(present)[:30]}",
                key=f"{key}.classes",
            )
        names = list(classes)
    else:
        names = _sorted_levels(present)
    lookup = {c: i for i, c in enumerate(names)}
    ids = np.array([lookup.get(t, -1) if t is not None else -1 for t in texts], dtype=np.int64)
    keep = ids >= 0
    return np.where(keep, ids, 0), keep, names


def _one_group(
    table: Table, spec: GroupSpec, *, source: str, key: str
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """``(ids, keep, names, levels)`` of one group column; ``names`` as the npz reader
    writes them (``age<60``, ``sex=female``), ``levels`` the bare level labels."""
    col = column(table, spec.column, role="group column", source=source, key=f"{key}.column")
    if spec.threshold is not None:
        vals = to_float(col, name=spec.column, source=source, key=key, missing=spec.missing_values)
        keep = ~np.isnan(vals)
        t = f"{spec.threshold:g}"
        return (
            (np.nan_to_num(vals) >= spec.threshold).astype(np.int64),
            keep,
            [f"{spec.column}<{t}", f"{spec.column}>={t}"],
            [f"<{t}", f">={t}"],
        )
    missing = {str(m).strip() for m in spec.missing_values}
    texts = [to_text(v) for v in col]
    texts = [None if t is None or t in missing else t for t in texts]
    present = {t for t in texts if t is not None}
    if spec.values is not None:
        absent = [v for v in spec.values if v not in present]
        if absent:
            raise ConfigError(
                f"values {absent} do not occur in column {spec.column!r} of {source}; it holds "
                f"{_sorted_levels(present)[:30]}",
                key=f"{key}.values",
            )
        levels = [v for v in spec.values if v not in missing]
    else:
        levels = _sorted_levels(present)
    lookup = {v: i for i, v in enumerate(levels)}
    ids = np.array([lookup.get(t, -1) if t is not None else -1 for t in texts], dtype=np.int64)
    keep = ids >= 0
    return np.where(keep, ids, 0), keep, [f"{spec.column}={v}" for v in levels], levels


def group_ids(
    table: Table, specs: Sequence[GroupSpec], *, source: str, key: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(ids, keep, names)`` over one or several group columns.

    Several columns give intersectional groups (mixed radix, the last column varying
    fastest, as :class:`~fq_plugins.fairness.intersectional.IntersectionalGroups`), named
    ``age<60|sex=female``; a row lacking any one of the values is not kept.
    """
    if not specs:
        raise ConfigError("give at least one group column, e.g. [{column: sex}]", key=key)
    parts = [_one_group(table, s, source=source, key=f"{key}[{i}]") for i, s in enumerate(specs)]
    if len(parts) == 1:
        ids, keep, names, _ = parts[0]
        return ids, keep, names
    inter = IntersectionalGroups(
        {
            f"{i}:{s.column}": list(range(len(p[2])))
            for i, (s, p) in enumerate(zip(specs, parts, strict=True))
        }
    )
    keep = np.logical_and.reduce([p[1] for p in parts])
    combined = inter.ids(
        {f"{i}:{s.column}": p[0] for i, (s, p) in enumerate(zip(specs, parts, strict=True))}
    ).numpy()
    names = ["|".join(combo) for combo in product(*(p[2] for p in parts))]
    return combined, keep, names


def compact_groups(group: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Leave out groups no row falls in; ids renumbered in their original order."""
    occurring = np.unique(group)
    remap = np.full(len(names), -1, dtype=np.int64)
    remap[occurring] = np.arange(occurring.size)
    return remap[group], [names[i] for i in occurring.tolist()]


def stratified_rows(
    y: np.ndarray, group: np.ndarray, n_groups: int, n_classes: int, max_examples: int, seed: int
) -> np.ndarray:
    """Sorted row indices of the subsample :func:`~fq_plugins.data.base.stratified_split`
    keeps as its *test* part with fraction ``max_examples / N`` — the same rows `run`'s
    ``data.max_examples`` picks from the decoded dataset with that seed."""
    n = len(y)
    if max_examples >= n:
        return np.arange(n)
    stub = GroupDataset(
        x=torch.arange(n, dtype=torch.float64).view(n, 1, 1, 1),
        y=torch.from_numpy(y),
        group=torch.from_numpy(group),
        class_names=[str(i) for i in range(n_classes)],
        group_names=[str(i) for i in range(n_groups)],
    )
    _, part = stratified_split(stub, max_examples / n, seed)
    return part.x.flatten().long().numpy()
