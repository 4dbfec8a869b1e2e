"""Training-step overhead of FQ-QAT and FQ-BAQ over FP32, next to NNCF's QAT step.

ResNet18 (timm, pretrained=False, 7 classes), batch 64, at 32 px and 64 px; one training
step = forward + cross-entropy + backward + AdamW step. Every variant is timed in this one
process, interleaved round-robin so drift hits all alike; the figure is the median step
time over ROUNDS × STEPS steps after warm-up, reported as a ratio to FP32.

    python bench/overhead.py [--sizes 32 64] [--rounds 5] [--steps 4] [--no-nncf]

Writes bench/results/overhead.json.
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
from pathlib import Path

import torch
import torch.nn.functional as F

from fq_plugins.compressors.fairquant import FairQuantCompressor
from fq_plugins.protocols import AttachContext
from fq_plugins.session import CompressionSession


def make_model() -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=7)


def fq_variant(model: torch.nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor):
    m = copy.deepcopy(model)
    g = torch.arange(x.shape[0]) % 2
    ctx = AttachContext(calib_batches=lambda: iter([(x, y, g)]), n_groups=2)
    session = CompressionSession([FairQuantCompressor(mode=mode, importance={"calib_batches": 1})])
    session.attach(m, ctx)
    opt = torch.optim.AdamW(session.param_groups(m, lr=1e-4))
    return m, opt, session


def nncf_variant(model: torch.nn.Module, x: torch.Tensor):
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", tempfile.mkdtemp(prefix="fq-torch-ext-"))
    import nncf

    m = copy.deepcopy(model).eval()
    qm = nncf.quantize(m, nncf.Dataset([x[:8]]), subset_size=1)
    qm.train()
    opt = torch.optim.AdamW(qm.parameters(), lr=1e-4)
    return qm, opt


def step_fn(model, opt, x, y, session=None):
    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        if session is not None:
            loss = loss + session.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--no-nncf", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    results = {}
    for size in args.sizes:
        gen = torch.Generator().manual_seed(size)
        x = torch.randn(64, 3, size, size, generator=gen)
        y = torch.randint(0, 7, (64,), generator=gen)
        base = make_model()
        variants = {}
        m = copy.deepcopy(base)
        variants["fp32"] = step_fn(m, torch.optim.AdamW(m.parameters(), lr=1e-4), x, y)
        for mode in ("qat", "baq"):
            m, opt, session = fq_variant(base, mode, x, y)
            variants[f"fq-{mode}"] = step_fn(m, opt, x, y, session)
        if not args.no_nncf:
            try:
                m, opt = nncf_variant(base, x)
                variants["nncf-qat"] = step_fn(m, opt, x, y)
            except Exception as exc:  # reported in the output, not hidden
                print(f"nncf QAT unavailable: {type(exc).__name__}: {exc}")
        for fn in variants.values():  # warm-up
            fn()
            fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        results[str(size)] = {
            k: {"median_s": med[k], "ratio_vs_fp32": med[k] / med["fp32"], "n": len(times[k])} for k in med
        }
        print(f"\n{size} px, batch 64, ResNet18 ({os.cpu_count()} CPUs)")
        print(f"{'variant':10s} {'step ms':>9s} {'× fp32':>7s}")
        for k in med:
            print(f"{k:10s} {1000 * med[k]:9.1f} {med[k] / med['fp32']:7.2f}")
    out = {
        "results": results,
        "torch": torch.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "date": dt.date.today().isoformat(),
        "command": "python bench/overhead.py " + " ".join(f"--sizes {' '.join(map(str, args.sizes))}".split()),
    }
    d = Path(__file__).parent / "results"
    d.mkdir(exist_ok=True)
    (d / "overhead.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
