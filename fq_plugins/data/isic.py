"""ISIC 2019: ``ISIC_2019_Training_GroundTruth.csv`` (``image`` + one-hot diagnosis columns
MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK), ``ISIC_2019_Training_Metadata.csv``
(``image``, ``age_approx``, ``anatom_site_general``, ``lesion_id``, ``sex``) and a folder
of ``<image>.jpg``.

The class of a row is its one-hot column; diagnosis columns no row is positive in (UNK in
the training set) are not classes. Groups come from metadata columns, e.g. ``sex``
(default), ``age_approx`` with a threshold, ``anatom_site_general``, or several at once.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from pydantic import Field

from ..errors import ConfigError
from ._tables import column, read_csv, resolve_path, to_float, to_text, validate_spec
from .base import GroupDataset
from .images import ImageOptions, Progress, assemble
from .npz import GroupSpec

__all__ = ["ISIC2019Spec", "load_isic2019"]


class ISIC2019Spec(ImageOptions):
    """``data.isic2019``: the two CSVs, the images folder and the group column(s)."""

    ground_truth_csv: str = Field(description="ISIC_2019_Training_GroundTruth.csv.")
    metadata_csv: str = Field(description="ISIC_2019_Training_Metadata.csv.")
    images: str = Field(description="The folder holding <image>.jpg.")
    groups: list[GroupSpec] = Field(
        default_factory=lambda: [GroupSpec(column="sex", values=["female", "male"])],
        min_length=1,
        description="Metadata column(s): sex, age_approx (with threshold), anatom_site_general.",
    )
    classes: list[str] | None = Field(
        None, min_length=2, description="Diagnoses kept, in this order; other rows left out."
    )
    extension: str = Field(".jpg", description="Appended to the image id to name each file.")


def _one_hot(
    gt: dict[str, list[Any]], source: str, key: str, classes: list[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    diag = [c for c in gt if c != "image"]
    if not diag:
        raise ConfigError(f"{source} has no diagnosis columns besides 'image'", key=key)
    onehot = np.stack(
        [to_float(gt[c], name=c, source=source, key=key) for c in diag], axis=1
    )  # (N, K)
    images = gt["image"]
    sums = np.nansum(onehot, axis=1)
    bad = np.flatnonzero(
        np.isnan(onehot).any(axis=1) | ~np.isin(onehot, (0.0, 1.0)).all(axis=1) | (sums != 1)
    )
    if bad.size:
        i = int(bad[0])
        raise ConfigError(
            f"{source}: {bad.size} row(s) are not one-hot over {diag}, e.g. image "
            f"{images[i]!r} with {dict(zip(diag, onehot[i].tolist(), strict=True))}; each row "
            "needs exactly one 1",
            key=key,
        )
    label = np.argmax(onehot, axis=1)
    occurring = [c for j, c in enumerate(diag) if (label == j).any()]
    names = list(classes) if classes is not None else occurring
    unknown = [c for c in names if c not in diag]
    if unknown:
        raise ConfigError(
            f"classes {unknown} are not diagnosis columns of {source} ({', '.join(diag)})",
            key=f"{key}.classes",
        )
    absent = [c for c in names if c not in occurring]
    if absent:
        raise ConfigError(
            f"classes {absent} have no positive row in {source}", key=f"{key}.classes"
        )
    remap = np.array([names.index(c) if c in names else -1 for c in diag], dtype=np.int64)
    ids = remap[label]
    keep = ids >= 0
    return np.where(keep, ids, 0), keep, names


def load_isic2019(
    spec: ISIC2019Spec | dict[str, Any],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    key: str = "data.isic2019",
) -> GroupDataset:
    """ISIC 2019 → :class:`GroupDataset` (see :func:`~fq_plugins.data.images.load_images`
    for ``max_examples``, ``progress`` and what ``dropped`` counts).

    :raises ConfigError: a row that is not one-hot, an image of the ground truth absent from
        the metadata, a missing column, a missing or unreadable image (naming the file).
    """
    s = validate_spec(ISIC2019Spec, spec, key)
    gt_path = resolve_path(s.ground_truth_csv, base_dir)
    meta_path = resolve_path(s.metadata_csv, base_dir)
    gt = read_csv(gt_path, key=f"{key}.ground_truth_csv")
    meta = read_csv(meta_path, key=f"{key}.metadata_csv")
    folder = resolve_path(s.images, base_dir)
    if not os.path.isdir(folder):
        raise ConfigError(f"images folder {folder!r} does not exist", key=f"{key}.images")
    gt_name, meta_name = os.path.basename(gt_path), os.path.basename(meta_path)
    ids = [to_text(v) for v in column(gt, "image", role="image id", source=gt_name, key=key)]
    meta_ids = [
        to_text(v) for v in column(meta, "image", role="image id", source=meta_name, key=key)
    ]
    row_of = {m: i for i, m in enumerate(meta_ids) if m is not None}
    if len(row_of) != sum(m is not None for m in meta_ids):
        dup = sorted({m for m in meta_ids if m is not None and meta_ids.count(m) > 1})
        raise ConfigError(f"{meta_name} lists images {dup[:5]} more than once", key=key)
    absent = [i for i in ids if i is not None and i not in row_of]
    if absent:
        raise ConfigError(
            f"{len(absent)} image(s) of {gt_name} have no row in {meta_name}, e.g. "
            f"{absent[:3]}; give the metadata file of the same release",
            key=key,
        )
    labels = _one_hot(gt, gt_name, key, s.classes)
    order = [row_of[i] if i is not None else -1 for i in ids]
    table = {
        c: [vals[j] if j >= 0 else None for j in order] for c, vals in meta.items() if c != "image"
    }
    files = [None if i is None else os.path.join(folder, i + s.extension) for i in ids]
    return assemble(
        table,
        files,
        label="",
        classes=None,
        groups=s.groups,
        options=s,
        source=meta_name,
        name="isic2019",
        key=key,
        max_examples=max_examples,
        seed=seed,
        progress=progress,
        labels=labels,
    )
