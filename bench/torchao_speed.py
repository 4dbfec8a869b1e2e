"""Inference latency and memory of converted models on CPU: FP32, ours, torchao int8.

Models: timm resnet18 (pretrained=False, 10 classes, 64 px input) and a tiny BERT
(``BertConfig``: 4 layers, hidden 256, 4 heads, intermediate 1024, sequence 64), both built
from code. Variants, all in this one process, timed round-robin (drift hits all alike),
variants interleaved call by call, min (the ratio) and median of CALLS forward passes
after warm-up, under ``torch.inference_mode``:

* ``fp32`` — the float model;
* ``ours_size@b`` — uniform b-bit (Conv2d + Linear) via ``quantize_``, ``convert(target="size")``:
  every layer an ``IntxUnpackedToInt8Tensor`` built from our codes (bit-exact);
* ``ours_speed@4`` — the same, ``convert(target="speed")`` (dense finalized float weights);
* ``torchao_int8wo`` / ``torchao_int8dyn`` — torchao's ``Int8WeightOnlyConfig`` and
  ``Int8DynamicActivationInt8WeightConfig`` with their default (Linear-only) filter; their
  own scales, so their outputs differ from ours (not exact, shown for speed only).

Memory, two figures: bytes the weights take in memory now (int8 codes + float scales for
torchao tensors) and the true-bit packed size (b bits per weight + float32 scales,
:mod:`fq_plugins.accounting`'s convention through ``session.cost``).

    python bench/torchao_speed.py [--calls 20] [--models resnet18 bert] [--batches 1 64]

Writes bench/results/torchao_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def resnet18() -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10).eval()


class TinyBert(nn.Module):
    """BERT encoder + a linear head on the [CLS] position (returns logits)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        cfg = BertConfig(
            vocab_size=1000,
            hidden_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=1024,
            max_position_embeddings=128,
        )
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(256, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.bert(input_ids=ids).last_hidden_state[:, 0])


def inputs(model: str, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch)
    if model == "resnet18":
        return torch.randn(batch, 3, 64, 64, generator=g)
    return torch.randint(0, 1000, (batch, 64), generator=g)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def weight_bytes(model: nn.Module) -> int:
    """Bytes the parameters and buffers take in memory (torchao tensors: their parts)."""
    from fq_plugins.adapters.torchao import IntxUnpackedToInt8Tensor

    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if isinstance(t, IntxUnpackedToInt8Tensor):
            total += sum(x.numel() * x.element_size() for x in (t.qdata, t.scale, t.zero_point))
        elif type(t).__name__.endswith("Tensor") and hasattr(t, "qdata"):
            parts = [getattr(t, n) for n in getattr(t, "tensor_data_names", [])]
            total += sum(x.numel() * x.element_size() for x in parts if x is not None)
        else:
            total += t.numel() * t.element_size()
    return total


def build_variants(name: str, bits_list: list[int]) -> dict[str, dict[str, Any]]:
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        quantize_,
    )

    from fq_plugins.adapters.torchao import UniformConfig, convert, session_of, weight_layers

    make: Callable[[], nn.Module] = resnet18 if name == "resnet18" else lambda: TinyBert().eval()
    out: dict[str, dict[str, Any]] = {}
    base = make()
    out["fp32"] = {"model": base, "packed_bytes": weight_bytes(base)}
    probe = inputs(name, 4)
    for target, blist in (("size", bits_list), ("speed", [4])):
        for b in blist:
            m = copy.deepcopy(base)
            quantize_(m, UniformConfig(bits=b), filter_fn=weight_layers)
            packed = session_of(m).cost(m).packed_bytes
            with torch.no_grad():
                fake = m(probe)
            rep = convert(m, target)  # type: ignore[arg-type]
            with torch.no_grad():
                exact = bool(torch.equal(m(probe), fake))
            out[f"ours_{target}@{b}"] = {
                "model": m,
                "packed_bytes": int(packed),
                "exact": exact,
                "torchao_layers": len(rep.torchao_layers),
                "layers": len(rep.layers),
            }
    for label, cfg in (
        ("torchao_int8wo", Int8WeightOnlyConfig()),
        ("torchao_int8dyn", Int8DynamicActivationInt8WeightConfig()),
    ):
        m = copy.deepcopy(base)
        try:
            quantize_(m, cfg)
            with torch.no_grad():
                m(probe)
            out[label] = {"model": m, "packed_bytes": None}
        except Exception as exc:  # report what does not run on this CPU
            out[label] = {"model": None, "error": f"{type(exc).__name__}: {exc}"[:200]}
    return out


def time_variants(
    name: str, variants: dict[str, dict[str, Any]], batch: int, calls: int
) -> dict[str, tuple[float, float]]:
    """``(min, median)`` seconds per forward, variants interleaved call by call (other
    processes on a shared 2-vCPU machine hit every variant alike; the min is the figure
    least disturbed by them)."""
    x = inputs(name, batch)
    runnable = {k: v["model"] for k, v in variants.items() if v.get("model") is not None}
    samples: dict[str, list[float]] = {k: [] for k in runnable}
    with torch.inference_mode():
        for m in runnable.values():
            m(x)
            m(x)
        for _ in range(calls):
            for k, m in runnable.items():
                t0 = time.perf_counter()
                m(x)
                samples[k].append(time.perf_counter() - t0)
    return {k: (min(v), statistics.median(v)) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20, help="timed forwards per variant")
    ap.add_argument("--models", nargs="+", default=["resnet18", "bert"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "torchao_speed.json"))
    args = ap.parse_args()

    import torchao

    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} vCPU, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "torchao": torchao.__version__,
        "calls": args.calls,
        "timing": "min and median of `calls` forwards, variants interleaved call by call",
        "models": {},
    }
    for name in args.models:
        variants = build_variants(name, [2, 4, 8])
        fp32_bytes = variants["fp32"]["packed_bytes"]
        entry: dict[str, Any] = {"variants": {}}
        for batch in args.batches:
            med = time_variants(name, variants, batch, args.calls)
            for k, v in variants.items():
                row = entry["variants"].setdefault(k, {})
                if "error" in v:
                    row["error"] = v["error"]
                    continue
                row[f"min_ms_b{batch}"] = round(med[k][0] * 1e3, 3)
                row[f"median_ms_b{batch}"] = round(med[k][1] * 1e3, 3)
                row[f"ratio_b{batch}"] = round(med[k][0] / med["fp32"][0], 3)
        for k, v in variants.items():
            row = entry["variants"][k]
            if v.get("model") is not None:
                row["memory_bytes"] = weight_bytes(v["model"])
                row["memory_ratio"] = round(row["memory_bytes"] / fp32_bytes, 3)
            if v.get("packed_bytes") is not None:
                row["packed_bytes"] = v["packed_bytes"]
            for extra in ("exact", "torchao_layers", "layers"):
                if extra in v:
                    row[extra] = v[extra]
        result["models"][name] = entry
        print(name, json.dumps(entry, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
