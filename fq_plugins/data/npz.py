"""Read images + labels + group attributes stored as arrays in an ``.npz`` file.

One general reader, e.g. ``../shared/data/ham10000_sub_32.npz`` with group = age ≥ 60
(``GroupSpec(column="age", threshold=60)``) or sex (``GroupSpec(column="sex",
values=["female", "male"])``). Rows whose group value is missing (NaN, or not among
``values``) are dropped and counted.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from .base import GroupDataset

__all__ = ["GroupSpec", "load_npz"]


class GroupSpec(BaseModel):
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
) -> GroupDataset:
    """Load an ``.npz`` of images ``(N, H, W, C)`` or ``(N, C, H, W)`` with labels and a group column.

    Images are scaled to [0, 1] when stored as uint8 and returned as float32 NCHW. The
    returned dataset's ``name`` is the file name and ``dropped`` counts the rows left out
    for want of a group value.
    """
    spec = group if isinstance(group, GroupSpec) else GroupSpec.model_validate(group)
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ConfigError(
            f"file {p!r} does not exist; give the path of an .npz file", key=f"{key}.path"
        )
    try:
        arrays = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {p!r} as .npz: {exc}", key=f"{key}.path") from None
    with arrays:
        names = list(arrays.files)
        for k, role in ((x_key, "images"), (y_key, "labels"), (spec.column, "group column")):
            if k not in names:
                raise ConfigError(
                    f"{os.path.basename(p)} has no array {k!r} ({role}); arrays in the file: "
                    f"{', '.join(names)}. Set the right name in the recipe.",
                    key=f"{key}.group.column" if role == "group column" else f"{key}.{role}",
                )
        x = arrays[x_key]
        y = arrays[y_key].astype(np.int64)
        col = arrays[spec.column]
        classes = (
            [str(c) for c in arrays[classes_key]] if classes_key and classes_key in names else None
        )
    if x.ndim != 4:
        raise ConfigError(
            f"images {x_key!r} must have 4 dims (N,H,W,C or N,C,H,W); got shape {x.shape}", key=key
        )
    if len(y) != len(x) or len(col) != len(x):
        raise ConfigError(
            f"arrays differ in length: {x_key}={len(x)}, {y_key}={len(y)}, {spec.column}={len(col)}",
            key=key,
        )
    gid, keep, group_names = _group_ids(col, spec, f"{key}.group")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = np.transpose(x, (0, 3, 1, 2))
    xt = torch.from_numpy(np.ascontiguousarray(x[keep]))
    xt = xt.float() / 255.0 if xt.dtype == torch.uint8 else xt.float()
    n_classes = int(y.max()) + 1
    class_names = (
        classes
        if classes is not None and len(classes) >= n_classes
        else [str(c) for c in range(n_classes)]
    )
    ds = GroupDataset(
        x=xt,
        y=torch.from_numpy(y[keep]),
        group=torch.from_numpy(gid[keep]),
        class_names=class_names,
        group_names=group_names,
        name=os.path.basename(p),
        dropped=int((~keep).sum()),
    )
    return ds
