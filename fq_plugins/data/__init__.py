"""Datasets with group attributes (synthetic default; .npz, images folder + CSV,
Fitzpatrick17k, ISIC 2019 and tabular CSV/Parquet readers) and data selectors."""

from .base import GroupDataset, iterate_batches, stratified_split
from .fitzpatrick import Fitzpatrick17kSpec, load_fitzpatrick17k
from .images import ImageOptions, ImagesSpec, decode_images, load_images
from .isic import ISIC2019Spec, load_isic2019
from .npz import GroupSpec, load_npz
from .synthetic import make_synthetic
from .tabular import TabularSpec, load_tabular, tabular_features

__all__ = [
    "Fitzpatrick17kSpec",
    "GroupDataset",
    "GroupSpec",
    "ISIC2019Spec",
    "ImageOptions",
    "ImagesSpec",
    "TabularSpec",
    "decode_images",
    "iterate_batches",
    "load_fitzpatrick17k",
    "load_images",
    "load_isic2019",
    "load_npz",
    "load_tabular",
    "make_synthetic",
    "stratified_split",
    "tabular_features",
]
