"""Training-step overhead of BMRS's gates over the dense model, in one process.

timm ResNet18 (pretrained=False, 7 classes) at 32 px, batch 64 (and optionally an MLP); one
training step = forward + cross-entropy (+ the BMRS KL) + backward + AdamW step. The dense
model and the gated copy are timed in this one process, interleaved round-robin (ROUNDS ×
STEPS steps each after warm-up) so drift in machine load hits both alike; the figure is
the median step time of the gated model over the dense one's.

    python bench/bmrs_overhead.py [--rounds 7] [--steps 4] [--threads 2] [--label after]

Writes/updates bench/results/bmrs_overhead.json (one entry per --label).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fq_plugins.compressors.bmrs import BMRSCompressor
from fq_plugins.protocols import AttachContext
from fq_plugins.session import CompressionSession

RESULTS = Path(__file__).parent / "results" / "bmrs_overhead.json"


def make_model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "mlp":
        from fq_plugins.models import MLP

        return MLP(3 * 32 * 32, 7, hidden=512)
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=7)


def step_fn(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    session: CompressionSession | None,
    x: torch.Tensor,
    y: torch.Tensor,
):
    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        if session is not None:
            loss = loss + session.penalty()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def measure(arch: str, rounds: int, steps: int, batch: int, cfg: dict) -> dict:
    dense = make_model(arch).train()
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 7, (batch,))
    gated = copy.deepcopy(dense)
    session = CompressionSession([BMRSCompressor(**cfg)])
    session.attach(gated, AttachContext(example_input=x[:2]))
    gated.train()
    opt_d = torch.optim.AdamW(dense.parameters(), lr=1e-4)
    opt_g = torch.optim.AdamW(session.param_groups(gated, lr=1e-4))
    runs = {
        "dense": step_fn(dense, opt_d, None, x, y),
        "bmrs": step_fn(gated, opt_g, session, x, y),
    }
    for fn in runs.values():  # warm-up
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            times[k].extend(fn() for _ in range(steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    units = sum(s.units for s in session.methods[0].sites)
    return {
        "dense_ms": 1e3 * med["dense"],
        "bmrs_ms": 1e3 * med["bmrs"],
        "ratio": med["bmrs"] / med["dense"],
        "gated_layers": len(session.methods[0].sites),
        "gated_units": units,
        "batch": batch,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--archs", nargs="+", default=["resnet18"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--label", default="current")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    ).stdout.strip()
    entry: dict = {
        "command": "python bench/bmrs_overhead.py " + " ".join(os.sys.argv[1:]),
        "date": dt.date.today().isoformat(),
        "commit": commit,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
    }
    for arch in args.archs:
        r = measure(arch, args.rounds, args.steps, args.batch, {"prior": "normal"})
        entry[arch] = r
        print(
            f"{arch}: dense {r['dense_ms']:.1f} ms, bmrs {r['bmrs_ms']:.1f} ms, ratio {r['ratio']:.3f} "
            f"({r['gated_layers']} layers, {r['gated_units']} units)",
            flush=True,
        )
    results[args.label] = entry
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out)


if __name__ == "__main__":
    main()
