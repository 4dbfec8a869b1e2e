"""What the HAM10000 tables share: the split, the dense ResNet18 and the common options.

One place, so the FP32/dense rows of bench/fairquant_table.py, bench/codeq_momos_table.py
and bench/bmrs_table.py are the same model for the same seed (stratified class × group
split, 20 % test, group = age ≥ 60 with unknown ages (-1) dropped, train-set
standardization; timm resnet18 from scratch, AdamW lr 1e-3, wd 5e-4, batch 64).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import torch

from fq_plugins.data.base import GroupDataset
from fq_plugins.recipe import DataSpec
from fq_plugins.run import build_datasets, train_model

DEFAULT_DATA = Path(os.environ.get("FQ_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))


def parser(doc: str | None) -> argparse.ArgumentParser:
    """``--data``, ``--seeds`` and ``--epochs`` (dense training), as every table takes them."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA / "ham10000_sub_32.npz"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    return ap


def ham_split(path: str, seed: int) -> tuple[GroupDataset, GroupDataset]:
    """The library's own loader (the same split `fq-plugins run` makes from a recipe)."""
    spec = DataSpec(source="npz", path=path, test_fraction=0.2,
                    group={"column": "age", "threshold": 60, "missing_values": [-1]})
    return build_datasets(spec, seed)


def train_dense(train: GroupDataset, seed: int, epochs: int, log: Callable[[str], None]) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("resnet18", pretrained=False, num_classes=train.n_classes)
    train_model(model, train, epochs=epochs, batch_size=64, lr=1e-3, weight_decay=5e-4, seed=seed,
                phase=f"fp32 seed {seed}", log=log)
    return model
