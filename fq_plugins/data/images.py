"""Images on disk decoded with Pillow in a torch ``DataLoader`` (worker processes), and the
generic reader of an images folder plus a CSV with a file, a label and group columns.

Every image is opened with Pillow, turned upright by its EXIF orientation, converted to
RGB and resized to ``image_size`` × ``image_size`` (``resize: crop``: the centred square
``min(w, h)`` wide is cut out first, the odd pixel going to the right/bottom margin;
``stretch``: the whole image squeezed), with Pillow's bilinear resampling (antialiased when
shrinking; an image already of that size is left as it is). The result is float32 ``(N, 3, S, S)`` in
[0, 1], held in memory (``N·3·S²`` bytes while decoding, four times that as floats).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from .._config import StrictConfig
from ..errors import ConfigError, MissingDependencyError
from ._tables import (
    Table,
    class_ids,
    column,
    compact_groups,
    group_ids,
    read_csv,
    resolve_path,
    stratified_rows,
    to_text,
    validate_spec,
)
from .base import GroupDataset
from .npz import GroupSpec

__all__ = ["ImagesSpec", "decode_images", "load_images"]

Progress = Callable[[int, int], None]
"""Called with ``(images decoded so far, total)`` after each batch."""

Resize = Literal["crop", "stretch"]


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError("pillow", "images", "decoding image files") from None
    return Image


def decode_one(path: str, image_size: int, resize: str) -> np.ndarray:
    """One image file as uint8 ``(S, S, 3)``; Pillow's own exceptions propagate."""
    from PIL import Image, ImageOps

    with Image.open(path) as f:
        f.load()
        im = (ImageOps.exif_transpose(f) or f).convert("RGB")
        size = (image_size, image_size)
        if resize == "crop":
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side))
        if im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)
        return np.array(im, dtype=np.uint8)  # a writable copy


class _ImageFiles(torch.utils.data.Dataset[tuple[int, Any, str | None]]):
    """Decodes in the worker; a failure comes back as text (exceptions with keyword-only
    arguments do not cross the worker boundary intact)."""

    def __init__(self, paths: Sequence[str], image_size: int, resize: str) -> None:
        self.paths, self.image_size, self.resize = list(paths), image_size, resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        try:
            return i, decode_one(self.paths[i], self.image_size, self.resize), None
        except Exception as exc:  # any decoder failure is reported with the file's name
            return i, None, f"{type(exc).__name__}: {exc}"


def _as_list(batch: list[tuple[int, Any, str | None]]) -> list[tuple[int, Any, str | None]]:
    return batch


def decode_images(
    paths: Sequence[str],
    *,
    image_size: int,
    resize: Resize = "crop",
    workers: int = 0,
    on_bad_image: Literal["error", "drop"] = "error",
    batch_size: int = 64,
    progress: Progress | None = None,
    key: str = "data",
) -> tuple[torch.Tensor, np.ndarray]:
    """Decode image files into float32 ``(N, 3, S, S)`` in [0, 1].

    :param workers: ``DataLoader`` worker processes (0: decode in this process).
    :param on_bad_image: ``error``: a missing or undecodable file is a :class:`ConfigError`
        naming it; ``drop``: such files are left out.
    :returns: ``(images, ok)``: ``ok`` (bool, one per path) marks the files decoded; the
        images are those files' in order.
    """
    _pil()
    if image_size < 1:
        raise ConfigError(f"image_size must be ≥ 1; got {image_size}", key=f"{key}.image_size")
    if workers < 0:
        raise ConfigError(f"workers must be ≥ 0; got {workers}", key=f"{key}.workers")
    ok = np.array([os.path.isfile(p) for p in paths], dtype=bool)
    if on_bad_image == "error" and not ok.all():
        missing = [p for p, o in zip(paths, ok, strict=True) if not o]
        raise ConfigError(
            f"{len(missing)} image file(s) do not exist: "
            + ", ".join(repr(m) for m in missing[:4])
            + (", …" if len(missing) > 4 else "")
            + "; check the images folder and file names, or set on_bad_image: drop",
            key=key,
        )
    todo = [p for p, o in zip(paths, ok, strict=True) if o]
    buf = torch.empty((len(todo), image_size, image_size, 3), dtype=torch.uint8)
    good = np.ones(len(todo), dtype=bool)
    loader = torch.utils.data.DataLoader(
        _ImageFiles(todo, image_size, resize),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
    )
    done = 0
    for batch in loader:
        for i, arr, err in batch:
            if err is not None:
                if on_bad_image == "error":
                    raise ConfigError(
                        f"cannot decode image {todo[i]!r}: {err}; replace or remove the file, "
                        "or set on_bad_image: drop",
                        key=key,
                    )
                good[i] = False
            else:
                buf[i] = torch.from_numpy(arr)
        done += len(batch)
        if progress is not None:
            progress(done, len(todo))
    idx = np.flatnonzero(ok)
    ok[idx[~good]] = False
    images = buf[torch.from_numpy(good)].permute(0, 3, 1, 2).float().div_(255.0)
    return images.contiguous(), ok


class ImageOptions(StrictConfig):
    """Decoding options every image reader shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(64, ge=1, le=4096, description="Side in pixels of the square images.")
    resize: Resize = Field(
        "crop", description="crop: centred square, then resized; stretch: whole image squeezed."
    )
    workers: int = Field(0, ge=0, le=256, description="DataLoader worker processes decoding.")
    on_bad_image: Literal["error", "drop"] = Field(
        "error", description="A missing/undecodable image: an error naming it, or left out."
    )


class ImagesSpec(ImageOptions):
    """An images folder and a CSV with one row per image: file, label, group column(s)."""

    csv: str = Field(description="The CSV; relative paths are taken from the recipe's folder.")
    root: str | None = Field(None, description="The images folder; default: the CSV's folder.")
    image_column: str = Field("image", description="The column with each image's file name.")
    extension: str = Field(
        "", description="Appended to each file name (e.g. '.jpg' when the CSV holds ids)."
    )
    label: str = Field("label", description="The class label column.")
    classes: list[str] | None = Field(
        None, min_length=2, description="Class order; rows with other labels are left out."
    )
    groups: list[GroupSpec] = Field(
        min_length=1, description="Group column(s); several give intersectional groups."
    )


def assemble(
    table: Table,
    files: list[str | None],
    *,
    label: str,
    classes: Sequence[str] | None,
    groups: Sequence[GroupSpec],
    options: ImageOptions,
    source: str,
    name: str,
    key: str,
    max_examples: int | None,
    seed: int,
    progress: Progress | None,
    labels: tuple[np.ndarray, np.ndarray, list[str]] | None = None,
) -> GroupDataset:
    """Rows → labels, groups, (sub)sample, decode, drop, compact groups."""
    n = len(files)
    y, keep_y, class_names = labels or class_ids(
        column(table, label, role="label", source=source, key=f"{key}.label"),
        classes,
        name=label,
        source=source,
        key=key,
    )
    g, keep_g, group_names = group_ids(table, groups, source=source, key=f"{key}.groups")
    keep = keep_y & keep_g & np.array([f is not None for f in files], dtype=bool)
    if not keep.any():
        raise ConfigError(
            f"no row of {source} has both a label and every group value; check "
            f"{key}.label and {key}.groups",
            key=key,
        )
    rows = np.flatnonzero(keep)
    g_kept, group_names = compact_groups(g[rows], group_names)
    if max_examples is not None:
        sub = stratified_rows(
            y[rows], g_kept, len(group_names), len(class_names), max_examples, seed
        )
        rows, g_kept = rows[sub], g_kept[sub]
    paths = [f for f in (files[i] for i in rows.tolist()) if f is not None]
    x, ok = decode_images(
        paths,
        image_size=options.image_size,
        resize=options.resize,
        workers=options.workers,
        on_bad_image=options.on_bad_image,
        progress=progress,
        key=key,
    )
    if not ok.any():
        raise ConfigError(f"none of the images of {source} could be read", key=key)
    rows, g_kept = rows[ok], g_kept[ok]
    g_final, group_names = compact_groups(g_kept, group_names)
    return GroupDataset(
        x=x,
        y=torch.from_numpy(y[rows].copy()),
        group=torch.from_numpy(g_final),
        class_names=class_names,
        group_names=group_names,
        name=name,
        dropped=n - len(rows),
    )


def load_images(
    spec: ImagesSpec | dict[str, Any],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    key: str = "data.images",
) -> GroupDataset:
    """An images folder + CSV → :class:`GroupDataset`.

    Rows lacking a label or a group value (or, with ``classes``, with another label) are
    left out and counted in ``dropped``, as are images dropped with ``on_bad_image: drop``.
    Groups no kept row falls in are left out of ``group_names``.

    :param base_dir: where relative ``csv``/``root`` paths start (the recipe's folder).
    :param max_examples: decode only a stratified subsample of about this many rows — the
        rows ``stratified_split(ds, max_examples / N, seed)`` keeps as its test part.
    :param progress: called with ``(decoded, total)`` after each batch of images.
    """
    s = validate_spec(ImagesSpec, spec, key)
    csv_path = resolve_path(s.csv, base_dir)
    table = read_csv(csv_path, key=f"{key}.csv")
    root = resolve_path(s.root, base_dir) if s.root else os.path.dirname(csv_path)
    if not os.path.isdir(root):
        raise ConfigError(f"images folder {root!r} does not exist", key=f"{key}.root")
    source = os.path.basename(csv_path)
    names = column(
        table, s.image_column, role="image file", source=source, key=f"{key}.image_column"
    )
    files: list[str | None] = []
    for v in names:
        t = to_text(v)
        files.append(None if t is None else os.path.join(root, t + s.extension))
    return assemble(
        table,
        files,
        label=s.label,
        classes=s.classes,
        groups=s.groups,
        options=s,
        source=source,
        name=source,
        key=key,
        max_examples=max_examples,
        seed=seed,
        progress=progress,
    )
