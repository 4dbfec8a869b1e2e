"""Fitzpatrick17k: its CSV (``md5hash``, ``fitzpatrick_scale``, ``label``,
``nine_partition_label``, ``three_partition_label``, …) and a folder of ``<md5hash>.jpg``.

Groups are skin types from ``fitzpatrick_scale`` (1–6; −1 = unknown, rows dropped):
``binary`` splits them 1–3 vs 4–6 (lighter vs darker; groups ``fitzpatrick=1-3``,
``fitzpatrick=4-6``), ``six`` keeps each type (``fitzpatrick=1`` … ``fitzpatrick=6``; a
type no row has is left out).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..errors import ConfigError
from ._tables import column, read_csv, resolve_path, to_float, to_text, validate_spec
from .base import GroupDataset
from .images import ImageOptions, Progress, assemble
from .npz import GroupSpec

__all__ = ["Fitzpatrick17kSpec", "load_fitzpatrick17k"]


class Fitzpatrick17kSpec(ImageOptions):
    """``data.fitzpatrick17k``: the CSV, the images folder, which label, which groups."""

    csv: str = Field(description="fitzpatrick17k.csv; relative paths from the recipe's folder.")
    images: str = Field(description="The folder holding <md5hash>.jpg.")
    label: Literal["three_partition_label", "nine_partition_label", "label"] = Field(
        "three_partition_label",
        description="three (benign/malignant/non-neoplastic), nine categories, or the 114 conditions.",
    )
    classes: list[str] | None = Field(
        None, min_length=2, description="Class order; rows with other labels are left out."
    )
    groups: Literal["binary", "six"] = Field(
        "binary", description="binary: skin types 1-3 vs 4-6; six: each type a group."
    )
    extension: str = Field(".jpg", description="Appended to md5hash to name each image.")


def load_fitzpatrick17k(
    spec: Fitzpatrick17kSpec | dict[str, Any],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    key: str = "data.fitzpatrick17k",
) -> GroupDataset:
    """Fitzpatrick17k → :class:`GroupDataset` (see :func:`~fq_plugins.data.images.load_images`
    for ``max_examples``, ``progress`` and what ``dropped`` counts).

    :raises ConfigError: a skin type other than 1–6 or −1/empty, a missing column, a
        missing or unreadable image (naming the file).
    """
    s = validate_spec(Fitzpatrick17kSpec, spec, key)
    csv_path = resolve_path(s.csv, base_dir)
    table = read_csv(csv_path, key=f"{key}.csv")
    folder = resolve_path(s.images, base_dir)
    if not os.path.isdir(folder):
        raise ConfigError(f"images folder {folder!r} does not exist", key=f"{key}.images")
    source = os.path.basename(csv_path)
    scale = to_float(
        column(table, "fitzpatrick_scale", role="skin type", source=source, key=key),
        name="fitzpatrick_scale",
        source=source,
        key=key,
        missing=[-1],
    )
    known = scale[~np.isnan(scale)]
    bad = sorted({float(v) for v in known if v not in (1, 2, 3, 4, 5, 6)})
    if bad:
        raise ConfigError(
            f"fitzpatrick_scale of {source} holds {bad[:5]}; skin types are 1–6 (−1 or empty: "
            "unknown)",
            key=key,
        )
    # A derived text column read by the shared group code: the group's level per row.
    if s.groups == "binary":
        level = [None if np.isnan(v) else ("1-3" if v <= 3 else "4-6") for v in scale]
        values = ["1-3", "4-6"]
    else:
        level = [None if np.isnan(v) else str(int(v)) for v in scale]
        values = [str(t) for t in range(1, 7)]
    table = {**table, "fitzpatrick": level}
    files: list[str | None] = []
    for v in column(table, "md5hash", role="image id", source=source, key=key):
        t = to_text(v)
        files.append(None if t is None else os.path.join(folder, t + s.extension))
    present = [v for v in values if v in set(level)]
    if not present:
        raise ConfigError(f"no row of {source} has a known skin type", key=key)
    return assemble(
        table,
        files,
        label=s.label,
        classes=s.classes,
        groups=[GroupSpec(column="fitzpatrick", values=present)],
        options=s,
        source=source,
        name="fitzpatrick17k",
        key=key,
        max_examples=max_examples,
        seed=seed,
        progress=progress,
    )
