"""CoDeQ and MoMos on HAM10000 (32 px), ResNet18 from scratch, several seeds.

Per seed (same split as bench/fairquant_table.py: stratified class × group, 20 % test,
group = age ≥ 60, unknown ages dropped): FP32 training, then FP32, CoDeQ fixed 4-bit,
CoDeQ mixed precision, MoMos (s = 4, capacity 0.01) and MoMos (s = 4, capacity 0.05), each
fine-tuned FT epochs (AdamW lr 1e-4, weight decay 0.01, grad-clip 1.0). Reports accuracy,
worst-group accuracy, sparsity, average bits, BOPs relative to FP32 (weights-only
convention: b_a = 32), gzip/bz2/lzma ratios of the float32 weights, packed size and the
size on disk of the compressed checkpoint (CoDeQ: packed codes; MoMos: motifs + indices).

    python bench/codeq_momos_table.py [--seeds 0 1 2] [--epochs 20] [--ft-epochs 5]

Writes bench/results/codeq_momos_table.json and prints mean ± std per variant.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _ham import ham_split, parser, train_dense  # bench/_ham.py (the script folder is on sys.path)

from fq_plugins.compressors.momos import complexity_report
from fq_plugins.manager import get_plugin_manager
from fq_plugins.run import evaluate, train_model
from fq_plugins.session import CompressionSession
from fq_plugins.storage import save_compressed

RESULTS = Path(__file__).parent / "results" / "codeq_momos_table.json"

VARIANTS: dict[str, list[dict]] = {
    "codeq-4": [{"method": "codeq", "bits": 4, "sparsity_pressure": 1e-2, "logit_lr": 5e-2}],
    "codeq-mixed": [{"method": "codeq", "bits": None, "sparsity_pressure": 1e-2,
                     "precision_pressure": 1e-2, "logit_lr": 5e-2}],
    "momos-1%": [{"method": "momos", "block_size": 4, "capacity": 0.01}],
    "momos-5%": [{"method": "momos", "block_size": 4, "capacity": 0.05}],
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]


def run_seed(path: str, seed: int, epochs: int, ft_epochs: int) -> dict:
    train, test = ham_split(path, seed)
    model = train_dense(train, seed, epochs, log)
    pm = get_plugin_manager(autoload=False)
    out: dict = {}
    tmp = tempfile.mkdtemp(prefix="fq-bench-")
    example = test.x[:1]

    def record(name: str, m: torch.nn.Module, session: CompressionSession, files: dict[str, int], secs: float):
        table, _ = evaluate(m, test)
        cost = session.cost(m, example)
        acc = table.group_accuracy()
        out[name] = {
            "accuracy": table.overall_accuracy(),
            "worst_group_accuracy": float(acc.min()),
            "mean_group_accuracy": float(acc.mean()),
            "sparsity": cost.sparsity, "avg_bits": cost.avg_bits_param, "bops_rel": cost.bops_rel,
            "packed_bytes": cost.packed_bytes, "fp32_bytes": cost.fp32_bytes,
            "files": files, "complexity": complexity_report(_weights(m)), "seconds": secs,
        }
        log(f"[seed {seed}] {name:12s} acc {out[name]['accuracy']:.4f} worst {out[name]['worst_group_accuracy']:.4f}"
            f" sparsity {cost.sparsity:.3f} bits {cost.avg_bits_param:.2f} BOPs {cost.bops_rel:.4f}"
            f" packed {cost.packed_bytes / 1024:.0f} KiB files {files} {secs:.0f}s")

    fp32_file = os.path.join(tmp, "fp32.pt")
    torch.save(model.state_dict(), fp32_file)
    record("fp32", model, CompressionSession([]), {"fp32.pt": os.path.getsize(fp32_file)}, 0.0)
    for name, methods in VARIANTS.items():
        t0 = time.perf_counter()
        m = copy.deepcopy(model)
        session = CompressionSession.from_configs(methods, plugin_manager=pm)
        session.attach(m)
        train_model(m, train, epochs=ft_epochs, batch_size=64, lr=1e-4, weight_decay=0.01, grad_clip=1.0,
                    seed=seed + 1, session=session, phase=f"{name} seed {seed}", log=lambda s: None)
        files: dict[str, int] = {}
        for meth in session.methods:
            written = meth.export_compact(os.path.join(tmp, f"{name}.{meth.name}"))
            if written is not None:  # a compact form of its own (MoMos)
                files[meth.name] = int(written)
        final = session.finalize(m)
        saved = save_compressed(final, session.storage_codes(), os.path.join(tmp, f"{name}.fqz"))
        files["fqz"] = saved.file_bytes
        record(name, final, session, files, time.perf_counter() - t0)
    return out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--ft-epochs", type=int, default=5)
    args = ap.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"data file {args.data} not found; pass --data or set FQ_DATA_DIR")
    torch.set_num_threads(os.cpu_count() or 1)
    RESULTS.parent.mkdir(exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"seeds": {}}
    results.update({"command": "python " + " ".join(sys.argv), "epochs": args.epochs, "ft_epochs": args.ft_epochs,
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
                    "date": dt.date.today().isoformat()})
    for seed in args.seeds:
        results["seeds"][str(seed)] = run_seed(args.data, seed, args.epochs, args.ft_epochs)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    names = ["fp32", *VARIANTS]
    keys = ["accuracy", "worst_group_accuracy", "sparsity", "avg_bits", "bops_rel"]
    print("| variant | " + " | ".join(keys) + " | gzip/bz2/lzma (float32) | packed KiB | file KiB |")
    print("|" + "---|" * (len(keys) + 4))
    for n in names:
        rows = [r[n] for r in results["seeds"].values() if n in r]
        cells = []
        for k in keys:
            v = [r[k] for r in rows]
            cells.append(f"{statistics.fmean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0:.4f}")
        ratios = "/".join(f"{statistics.fmean(r['complexity'][c + '_float32'] for r in rows):.2f}"
                          for c in ("gzip", "bz2", "lzma"))
        packed = statistics.fmean(r["packed_bytes"] for r in rows) / 1024
        file_kib = statistics.fmean(min(r["files"].values()) for r in rows) / 1024
        print(f"| {n} | " + " | ".join(cells) + f" | {ratios} | {packed:.0f} | {file_kib:.0f} |")


if __name__ == "__main__":
    main()
