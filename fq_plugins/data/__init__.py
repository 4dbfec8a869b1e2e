"""Datasets with group attributes (synthetic default, .npz reader) and data selectors."""

from .base import GroupDataset, iterate_batches, stratified_split
from .npz import load_npz
from .synthetic import make_synthetic

__all__ = ["GroupDataset", "iterate_batches", "load_npz", "make_synthetic", "stratified_split"]
