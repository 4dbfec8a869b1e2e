"""Read images + labels + group attributes stored as arrays in an ``.npz`` file.

One general reader, e.g. ``../shared/data/ham10000_sub_32.npz`` with group = age ≥ 60
(``GroupSpec(column="age", threshold=60)``) or sex (``GroupSpec(column="sex",
values=["female", "male"])``). Rows whose group value is missing (NaN, or not among
``values``) are dropped and counted.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field, model_validator

from .._config import StrictConfig
from ..errors import ConfigError
from .base import GroupDataset

__all__ = ["GroupSpec", "load_npz"]


class GroupSpec(StrictConfig):
    """How to turn an array of the file into group ids.

    ``threshold``: numeric column, group 1 where ``value >= threshold`` (NaN dropped).
    ``values``: categorical column, group i where ``value == values[i]`` (others dropped).
    Neither: every distinct value (sorted) is a group.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    threshold: float | None = None
    values: list[str] | None = Field(default=None, min_length=1)
    missing_values: list[float | str] = Field(
        default_factory=list,
        description="Values that mean 'unknown' (rows dropped), e.g. [-1] for HAM10000's age.",
    )

    @model_validator(mode="after")
    def _one_rule(self) -> GroupSpec:
        if self.threshold is not None and self.values is not None:
            raise ValueError(
                f"give either threshold ({self.threshold:g}: a numeric column split in two) or "
                f"values ({self.values}: categories), not both"
            )
        return self


def _group_ids(
    col: np.ndarray, spec: GroupSpec, key: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if spec.threshold is not None:
        if not np.issubdtype(col.dtype, np.number):
            raise ConfigError(
                f"column {spec.column!r} holds {col.dtype} values; a threshold needs numbers. "
                f"Use `values: [...]` for a categorical column.",
                key=key,
            )
        vals = col.astype(np.float64)
        keep = ~np.isnan(vals)
        for mv in spec.missing_values:
            keep &= vals != float(mv)
        gid = (vals >= spec.threshold).astype(np.int64)
        t = f"{spec.threshold:g}"
        return gid, keep, [f"{spec.column}<{t}", f"{spec.column}>={t}"]
    strs = col.astype(str)
    names = spec.values if spec.values is not None else sorted(set(strs.tolist()))
    if spec.values is not None:
        unknown = [v for v in spec.values if v not in set(strs.tolist())]
        if unknown:
            raise ConfigError(
                f"values {unknown} do not occur in column {spec.column!r}; it holds "
                f"{sorted(set(strs.tolist()))[:20]}",
                key=key,
            )
    missing = {str(v) for v in spec.missing_values}
    names = [v for v in names if v not in missing]
    lookup = {v: i for i, v in enumerate(names)}
    gid = np.array([lookup.get(s, -1) for s in strs], dtype=np.int64)
    keep = gid >= 0
    return np.where(keep, gid, 0), keep, [f"{spec.column}={v}" for v in names]


def load_npz(
    path: str | os.PathLike[str],
    group: GroupSpec | dict[str, Any],
    *,
    x_key: str = "x",
    y_key: str = "y",
    classes_key: str | None = "classes",
    key: str = "data",
    layout: Literal["auto", "nhwc", "nchw"] = "auto",
) -> GroupDataset:
    """Load an ``.npz`` of images ``(N, H, W, C)`` or ``(N, C, H, W)`` with labels and a group column.

    Images are scaled to [0, 1] when stored as uint8 and returned as float32 NCHW. The
    returned dataset's ``name`` is the file name and ``dropped`` counts the rows left out
    for want of a group value. ``layout`` ``auto`` tells channels-last from channels-first
    by the square image axes (and refuses to guess when it cannot).

    :raises ConfigError: an unreadable or malformed file (naming what is wrong), labels that
        are not class indices, no example left.
    """
    spec = group if isinstance(group, GroupSpec) else GroupSpec.model_validate(group)
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ConfigError(
            f"file {p!r} does not exist; give the path of an .npz file", key=f"{key}.path"
        )
    try:
        arrays = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"cannot read {p!r} as .npz: {exc}", key=f"{key}.path") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise ConfigError(
            f"{p!r} holds a single array, not an .npz archive of named arrays (x, y, the group "
            "column); save it with numpy.savez",
            key=f"{key}.path",
        )
    name = os.path.basename(p)
    try:
        with arrays:
            x, y_raw, col, classes = _read_arrays(
                arrays, spec, x_key, y_key, classes_key, name, key
            )
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ConfigError(
            f"cannot read {p!r}: {type(exc).__name__}: {exc} (truncated or corrupted .npz?)",
            key=f"{key}.path",
        ) from None
    if x.ndim != 4:
        raise ConfigError(
            f"images {x_key!r} must have 4 dims (N,H,W,C or N,C,H,W); got shape {x.shape}", key=key
        )
    if x.shape[0] == 0:
        raise ConfigError(f"{name} holds no examples ({x_key!r} has shape {x.shape})", key=key)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ConfigError(
            f"images {x_key!r} hold {x.dtype} values; they must be numbers (uint8 0–255 or float)",
            key=key,
        )
    y = _labels(y_raw, len(x), y_key, name, key)
    if len(y) != len(x) or len(col) != len(x):
        raise ConfigError(
            f"arrays differ in length: {x_key}={len(x)}, {y_key}={len(y)}, {spec.column}={len(col)}",
            key=key,
        )
    gid, keep, group_names = _group_ids(col, spec, f"{key}.group")
    if not keep.any():
        raise ConfigError(
            f"every row of {name} lacks a group value in column {spec.column!r} (all missing or "
            f"not among the values); check data.group",
            key=f"{key}.group",
        )
    x = _to_nchw(x, layout, x_key, key)
    xt = torch.from_numpy(np.ascontiguousarray(x[keep]))
    xt = xt.float() / 255.0 if xt.dtype == torch.uint8 else xt.float()
    n_classes = int(y.max()) + 1
    class_names = (
        classes
        if classes is not None and len(classes) >= n_classes
        else [str(c) for c in range(n_classes)]
    )
    return GroupDataset(
        x=xt,
        y=torch.from_numpy(y[keep]),
        group=torch.from_numpy(gid[keep]),
        class_names=class_names,
        group_names=group_names,
        name=name,
        dropped=int((~keep).sum()),
    )


MAX_CLASSES = 100_000
"""More classes than this (or than examples) means the labels are not class indices."""


def _read_arrays(
    arrays: Any,
    spec: GroupSpec,
    x_key: str,
    y_key: str,
    classes_key: str | None,
    name: str,
    key: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str] | None]:
    names = list(arrays.files)
    for k, role in ((x_key, "images"), (y_key, "labels"), (spec.column, "group column")):
        if k not in names:
            raise ConfigError(
                f"{name} has no array {k!r} ({role}); arrays in the file: "
                f"{', '.join(names)}. Set the right name in the recipe.",
                key=f"{key}.group.column" if role == "group column" else f"{key}.{role}",
            )
    x = arrays[x_key]
    y = arrays[y_key]
    col = arrays[spec.column]
    classes = (
        [str(c) for c in arrays[classes_key]] if classes_key and classes_key in names else None
    )
    return x, y, col, classes


def _labels(y: np.ndarray, n: int, y_key: str, name: str, key: str) -> np.ndarray:
    """Class indices as int64: integers (or integral floats) in [0, K), K ≤ examples."""
    y = np.asarray(y).reshape(-1) if np.ndim(y) > 1 and np.size(y) == n else np.asarray(y)
    if y.ndim != 1:
        raise ConfigError(f"labels {y_key!r} must be one per example; got shape {y.shape}", key=key)
    if y.dtype == np.bool_:
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not (y == np.round(y)).all():
            bad = y[~np.isfinite(y) | (y != np.round(y))][:3].tolist()
            raise ConfigError(
                f"labels {y_key!r} of {name} hold non-integer values (e.g. {bad}); labels are "
                "class indices 0..K-1 — map them to integers",
                key=key,
            )
    elif not np.issubdtype(y.dtype, np.integer):
        raise ConfigError(
            f"labels {y_key!r} of {name} hold {y.dtype} values; they must be integer class "
            "indices 0..K-1 (map category names to integers)",
            key=key,
        )
    if y.size and (y.min() < 0 or y.max() >= min(MAX_CLASSES, max(n, 2))):
        raise ConfigError(
            f"labels {y_key!r} of {name} range over [{y.min()}, {y.max()}] for {n} examples; "
            f"labels are class indices 0..K-1 with K ≤ the number of examples (and ≤ "
            f"{MAX_CLASSES}) — remap them to consecutive ids",
            key=key,
        )
    return y.astype(np.int64)


_CHANNELS = (1, 2, 3, 4)


def _to_nchw(x: np.ndarray, layout: str, x_key: str, key: str) -> np.ndarray:
    """NCHW view of ``x``; ``auto``: the layout whose spatial axes are square, else the one
    whose channel axis is 1–4 long, else an error asking for ``data.layout``."""
    if layout == "auto":
        sq_last, sq_first = x.shape[1] == x.shape[2], x.shape[2] == x.shape[3]
        ch_last, ch_first = x.shape[3] in _CHANNELS, x.shape[1] in _CHANNELS
        if sq_last != sq_first:
            layout = "nhwc" if sq_last else "nchw"
        elif ch_last != ch_first:
            layout = "nhwc" if ch_last else "nchw"
        else:
            raise ConfigError(
                f"cannot tell whether images {x_key!r} of shape {tuple(x.shape)} are "
                "channels-last (N,H,W,C) or channels-first (N,C,H,W); set data.layout: "
                "nhwc or nchw",
                key=f"{key}.layout",
            )
    return np.transpose(x, (0, 3, 1, 2)) if layout == "nhwc" else x
