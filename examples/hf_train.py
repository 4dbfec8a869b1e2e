"""FairQuant BAQ (learned bits, 4-bit budget) vs Uniform-4 on a small ViT, through HF Trainer.

A ``ViTForImageClassification`` built from a config (no download) is trained in FP32 on the
embedded synthetic images (a minority group that is rarer and harder), then each variant
fine-tunes a copy with :class:`fq_plugins.adapters.hf.FQCallback` — the group-loss gap
regularizer in the loss, the methods' own optimizer groups — is finalized (real low-bit
weights, checked against the fake-quantized model) and evaluated. A per-group table ends it.

    python examples/hf_train.py                       # synthetic, ~1 minute on 2 CPU cores
    python examples/hf_train.py --npz ../shared/data/ham10000_sub_32.npz   # HAM10000 subset
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
import warnings
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification

from fq_plugins.adapters.hf import FQCallback
from fq_plugins.data import make_synthetic
from fq_plugins.data.base import GroupDataset, stratified_split
from fq_plugins.report import format_table


class Images(Dataset):
    """A GroupDataset as Trainer examples: ``pixel_values``, ``labels``, ``group``."""

    def __init__(self, ds: GroupDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.ds.x[i], "labels": self.ds.y[i], "group": self.ds.group[i]}


def load(npz: str | None) -> tuple[GroupDataset, GroupDataset]:
    if npz:
        from fq_plugins.data import load_npz

        full = load_npz(npz, group={"column": "age", "threshold": 60, "missing_values": [-1]})
    else:
        full = make_synthetic(3000, n_classes=4, image_size=16, seed=0)
    return stratified_split(full, test_fraction=0.3, seed=0)


def args_for(out: str, epochs: float, lr: float) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=64,
        per_device_eval_batch_size=256, learning_rate=lr, weight_decay=0.01, use_cpu=True,
        report_to=[], disable_tqdm=True, logging_strategy="no", save_strategy="no",
        label_names=["labels", "group"], seed=0, data_seed=0,
    )


VARIANTS: dict[str, list[dict[str, Any]]] = {
    "fairquant-baq-4": [{
        "method": "fairquant", "learnable_bits": True, "bits": {"min": 2, "max": 8},
        "budget": {"avg_bits": 4.0}, "importance": {"calib_batches": 8},
        "penalties": {"bitrate": 1.0}, "bit_lr": 3e-3,
    }],
    "uniform-4": [{"method": "uniform", "bits": 4}],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--npz", help="a .npz dataset (fq_plugins.data.load_npz) instead of synthetic")
    ap.add_argument("--epochs", type=float, default=4.0, help="FP32 training epochs")
    ap.add_argument("--finetune-epochs", type=float, default=2.0)
    opt = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    t0 = time.perf_counter()
    train, test = load(opt.npz)
    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=int(train.x.shape[-1]), patch_size=4, num_channels=int(train.x.shape[1]),
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        num_labels=train.n_classes, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    fp32 = ViTForImageClassification(cfg)
    out = tempfile.mkdtemp(prefix="fq-hf-")
    fairness = {"group_key": "group", "regularizer": {"kind": "gap", "weight": 0.5},
                "metrics": ["worst_group_accuracy", "accuracy_gap", "eodd"]}
    Trainer(model=fp32, args=args_for(os.path.join(out, "fp32"), opt.epochs, 3e-3),
            train_dataset=Images(train)).train()
    print(f"FP32 trained ({time.perf_counter() - t0:.0f}s)")

    reports = []
    for name, methods in VARIANTS.items():
        fq = FQCallback.from_recipe(
            {"compress": methods, "fairness": fairness, "energy": {"meters": ["auto"]}},
            finalize_at_end=True, variant=name, n_groups=train.n_groups,
        )
        trainer = fq.trainer(
            Trainer, model=copy.deepcopy(fp32),
            args=args_for(os.path.join(out, name), opt.finetune_epochs, 1e-3),
            train_dataset=Images(train), eval_dataset=Images(test),
        )
        trainer.train()
        m = trainer.evaluate()  # on the finalized model (plain, low-bit weights)
        assert fq.report is not None
        fq.report.group_names = list(train.group_names)
        reports.append(fq.report)
        print(f"[{name}] acc {m['eval_accuracy']:.4f}  worst-group {m['eval_worst_group_accuracy']:.4f}  "
              f"avg bits {m['eval_avg_bits']:.2f}  finalize |diff| {fq.finalize_max_abs_diff:.2g}  "
              f"({time.perf_counter() - t0:.0f}s)")

    print()
    print(format_table(reports, fairness["metrics"]))
    print()
    print("per-group accuracy")
    print(f"{'variant':<18}" + "".join(f"{g:>14}" for g in train.group_names) + f"{'gap':>8}")
    for r in reports:
        print(f"{r.variant:<18}" + "".join(f"{a:>14.4f}" for a in r.group_accuracy)
              + f"{r.accuracy_gap:>8.4f}")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
