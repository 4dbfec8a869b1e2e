"""Training-step time of the HF adapter: Trainer + FQCallback (FairQuant BAQ) against the
same model and method trained by the engine's own ``fit`` loop, and against plain Trainer FP32.

A small ``ViTForImageClassification`` (from a config: 16 px, patch 4, hidden 64, 2 layers,
4 classes), batch 64 of the embedded synthetic images. The figure is the *step period*:
the time between consecutive optimizer steps (Trainer: ``on_step_end`` to ``on_step_end``,
so it includes Trainer's data loading and collation; ``fit``: ``fq_on_step`` to
``fq_on_step`` over pre-built batches, with Trainer's optimizer class, kwargs and
``max_grad_norm``), median over ROUNDS × STEPS steps after WARMUP steps
per run. All variants run in this one process, interleaved round-robin, each round on a
fresh copy of the model (attach and calibration are not timed).

    python bench/hf_overhead.py [--rounds 3] [--steps 20]

Also reported: ``fit`` fed through Trainer's data path (a DataLoader over the same dict
items with ``default_data_collator``), so that only the loops differ, and the callback's
own share ``(Trainer+FQ / Trainer FP32) / (fit BAQ / fit FP32)``.

Writes bench/results/hf_overhead.json (``--out`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import (
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    default_data_collator,
)

from fq_plugins.adapters.hf import FQCallback, _LogitsOnly
from fq_plugins.data import make_synthetic
from fq_plugins.engine import CompressionPipeline, Objective, fit
from fq_plugins.protocols import AttachContext
from fq_plugins.recipe import load_compression_recipe

BATCH = 64
WARMUP = 3
BAQ = [{"method": "fairquant", "learnable_bits": True, "budget": {"avg_bits": 4.0},
        "importance": {"calib_batches": 2}, "penalties": {"bitrate": 1.0}, "bit_lr": 3e-3}]
FAIRNESS = {"regularizer": {"kind": "gap", "weight": 0.5}, "metrics": ["worst_group_accuracy"]}


class Images(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> None:
        self.x, self.y, self.g = x, y, g

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i], "group": self.g[i]}


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        self.times.append(time.perf_counter())
        return control


class FitClock:
    """Stands in for the plugin manager in ``fit``: only ``on_step`` is called."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step(self, step: int, phase: str, loss: dict[str, float]) -> None:
        self.times.append(time.perf_counter())


def periods(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times[WARMUP:], times[WARMUP + 1:], strict=False)]


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=64,
                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    num_labels=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(cfg)


def targs(out: str, steps: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out, max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=1e-3,
        weight_decay=0.0, use_cpu=True, report_to=[], disable_tqdm=True, logging_strategy="no",
        save_strategy="no", label_names=["labels", "group"], seed=0, dataloader_num_workers=0,
    )


def run_trainer(base: torch.nn.Module, ds: Images, steps: int, fq: bool, out: str) -> list[float]:
    clock = StepClock()
    model = copy.deepcopy(base)
    if fq:
        cb = FQCallback.from_recipe({"compress": BAQ, "fairness": FAIRNESS,
                                     "energy": {"meters": ["cpu_time"]}}, log=lambda _m: None)
        trainer = cb.trainer(Trainer, model=model, args=targs(out, steps), train_dataset=ds,
                             callbacks=[clock])
    else:
        trainer = Trainer(model=model, args=targs(out, steps), train_dataset=ds, callbacks=[clock])
    trainer.train()
    return periods(clock.times)


def loader_batches(ds: Images) -> Any:
    """Trainer's data path for ``fit``: a shuffling DataLoader over the same items with
    Trainer's default collator (stacking 64 dicts per batch), as (x, y, group)."""
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=gen, drop_last=True,
                        collate_fn=default_data_collator)

    def batches() -> Any:
        return ((b["pixel_values"], b["labels"], b["group"]) for b in loader)

    return batches


def run_fit(base: torch.nn.Module, ds: Images, steps: int, fq: bool = True,
            loader: bool = False) -> list[float]:
    """The same model and BAQ recipe through the engine alone: pipeline + Objective + fit
    (``fq=False``: the same loop in FP32, cross-entropy only). ``loader=False``: pre-built
    batch tensors; ``loader=True``: Trainer's data path (:func:`loader_batches`)."""
    model = copy.deepcopy(base)
    batches: Any = [(ds.x[i:i + BATCH], ds.y[i:i + BATCH], ds.g[i:i + BATCH])
                    for i in range(0, BATCH * steps, BATCH)]
    batches = [(x, y, g) for x, y, g in batches if len(y) == BATCH][:steps]
    calib = list(batches)
    if loader:
        batches = loader_batches(ds)
    # Trainer's own optimizer class and kwargs (5.x: fused AdamW), so only the loops differ
    cls, kw = Trainer.get_optimizer_cls_and_kwargs(targs(tempfile.mkdtemp(), steps), model)
    if not fq:
        clock = FitClock()
        with _LogitsOnly(model):
            fit(model, batches, epochs=1, lr=1e-3, grad_clip=1.0, pm=clock,  # type: ignore[arg-type]
                optimizer=cls([p for p in model.parameters() if p.requires_grad], **kw),
                log=lambda _m: None)
        return periods(clock.times)
    pipe = CompressionPipeline(BAQ, context=AttachContext(calib_batches=lambda: iter(calib)))
    with _LogitsOnly(model):  # the HF model returns a ModelOutput; fit wants logits
        pipe.start(model)
        clock = FitClock()
        recipe = load_compression_recipe({"compress": BAQ, "fairness": FAIRNESS})
        objective = Objective.from_recipe(recipe, pipe.session)
        optimizer = cls(pipe.session.param_groups(model, lr=1e-3), **kw)
        fit(model, batches, epochs=1, lr=1e-3, session=pipe.session, objective=objective,
            optimizer=optimizer, grad_clip=1.0, pm=clock, log=lambda _m: None)  # type: ignore[arg-type]
    return periods(clock.times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hf_overhead.json")
    opt = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    data = make_synthetic(BATCH * (opt.steps + 1), n_classes=4, image_size=16, seed=0)
    ds = Images(data.x, data.y, data.group)
    base = make_model()
    out = tempfile.mkdtemp(prefix="fq-hf-bench-")
    samples: dict[str, list[float]] = {
        "trainer_fp32": [], "trainer_fq_baq": [], "fit_baq": [], "fit_fp32": [],
        "fit_baq_loader": [], "fit_fp32_loader": [],
    }
    for r in range(opt.rounds):
        samples["trainer_fp32"] += run_trainer(base, ds, opt.steps, False, out)
        samples["trainer_fq_baq"] += run_trainer(base, ds, opt.steps, True, out)
        samples["fit_baq"] += run_fit(base, ds, opt.steps)
        samples["fit_fp32"] += run_fit(base, ds, opt.steps, fq=False)
        samples["fit_baq_loader"] += run_fit(base, ds, opt.steps, loader=True)
        samples["fit_fp32_loader"] += run_fit(base, ds, opt.steps, fq=False, loader=True)
        print(f"round {r + 1}/{opt.rounds} done", flush=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = [
        ("engine fit, FP32", med["fit_fp32"]),
        ("engine fit, FP32, loader", med["fit_fp32_loader"]),
        ("Trainer FP32", med["trainer_fp32"]),
        ("engine fit, BAQ", med["fit_baq"]),
        ("engine fit, BAQ, loader", med["fit_baq_loader"]),
        ("Trainer + FQCallback, BAQ", med["trainer_fq_baq"]),
    ]
    print(f"\n{'variant':<28}{'step ms':>10}{'/ fit BAQ':>11}{'/ Trainer FP32':>16}")
    for name, v in rows:
        print(f"{name:<28}{v * 1e3:>10.1f}{v / med['fit_baq']:>11.3f}{v / med['trainer_fp32']:>16.3f}")
    trainer_own = med["trainer_fp32"] / med["fit_fp32"]
    # what the callback itself adds: its BAQ cost inside Trainer relative to BAQ's cost in fit
    share = (med["trainer_fq_baq"] / med["trainer_fp32"]) / (med["fit_baq"] / med["fit_fp32"])
    same_data = med["trainer_fq_baq"] / med["fit_baq_loader"]
    print(f"\nTrainer + FQCallback (BAQ) over engine fit (BAQ): "
          f"{med['trainer_fq_baq'] / med['fit_baq']:.3f}x (target <= 1.05); "
          f"same data path (fit over Trainer's DataLoader + collator): {same_data:.3f}x; "
          f"Trainer's own loop over fit (FP32): {trainer_own:.3f}x; "
          f"the callback's own share: {share:.3f}x; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    result = {
        "date": dt.date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "batch": BATCH,
        "rounds": opt.rounds,
        "steps": opt.steps,
        "warmup_steps_per_run": WARMUP,
        "median_step_seconds": med,
        "adapter_over_fit": med["trainer_fq_baq"] / med["fit_baq"],
        "adapter_over_trainer_fp32": med["trainer_fq_baq"] / med["trainer_fp32"],
        "trainer_over_fit_fp32": trainer_own,
        "adapter_over_fit_same_data_path": same_data,
        "trainer_over_fit_fp32_same_data_path": med["trainer_fp32"] / med["fit_fp32_loader"],
        "callback_own_share": share,
        "load_average_1min_at_end": os.getloadavg()[0],
        "samples": {k: len(v) for k, v in samples.items()},
    }
    path = opt.out
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)  # atomic
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
