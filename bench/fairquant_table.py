"""FairQuant vs Uniform on HAM10000 (32 px), ResNet18 from scratch, several seeds.

Per seed: a seeded stratified split (class × group, 20 % test), group = age ≥ 60 (unknown
ages, stored as -1, dropped), timm resnet18 (pretrained=False) trained in FP32, then:

* shared budget (~5.2 bits): Uniform-8, Uniform-4 (post-training), FairQuant static,
  FQ-QAT and FQ-BAQ at a parameter-weighted average of 5.2 bits;
* tight budget (≤ 3 bits): Uniform-3 and Uniform-2 (post-training and QAT), FairQuant
  static, FQ-QAT and FQ-BAQ at avg_bits 3.0.

Importance: GRAPE, balanced reducer, 25 calibration batches of 64 (METHODS.md default 50,
halved for time on 2 cores). QAT fine-tuning: AdamW lr 1e-4, weight decay 0.01, grad-clip 1.0, FT epochs; Uniform QAT
uses plain cross-entropy, FQ-QAT/BAQ add FairQuant's λ_fair·(max_g CE_g − min_g CE_g),
λ_fair = 0.5; BAQ bit logits lr 3e-3. Every variant's group confusion table is stored, so
the table can be recomputed (``--report-only``) with any metric plugin.

    python bench/fairquant_table.py [--seeds 0 1 2] [--epochs 20] [--ft-epochs 5]

Writes bench/results/fairquant_table.json and prints mean ± std per variant.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from _ham import ham_split, parser, train_dense  # bench/_ham.py (the script folder is on sys.path)

from fq_plugins.data.base import iterate_batches
from fq_plugins.fairness.regularizers import RegularizerSpec
from fq_plugins.fairness.table import GroupConfusion
from fq_plugins.manager import get_plugin_manager
from fq_plugins.protocols import AttachContext
from fq_plugins.run import evaluate, train_model
from fq_plugins.session import CompressionSession

RESULTS = Path(__file__).parent / "results" / "fairquant_table.json"

VARIANTS: dict[str, tuple[list[dict], bool, bool]] = {
    # name: (methods, fine-tune?, fairness regularizer during fine-tune?)
    "uniform-8": ([{"method": "uniform", "bits": 8}], False, False),
    "uniform-4": ([{"method": "uniform", "bits": 4}], False, False),
    "fq-static@5.2": ([{"method": "fairquant", "mode": "static", "budget": {"avg_bits": 5.2}, "importance": {"calib_batches": 25}}], False, False),
    "fq-qat@5.2": ([{"method": "fairquant", "mode": "qat", "budget": {"avg_bits": 5.2}, "importance": {"calib_batches": 25}}], True, True),
    "fq-baq@5.2": ([{"method": "fairquant", "mode": "baq", "budget": {"avg_bits": 5.2}, "importance": {"calib_batches": 25}}], True, True),
    "uniform-3": ([{"method": "uniform", "bits": 3}], False, False),
    "uniform-2": ([{"method": "uniform", "bits": 2}], False, False),
    "uniform-3-qat": ([{"method": "uniform", "bits": 3}], True, False),
    "uniform-2-qat": ([{"method": "uniform", "bits": 2}], True, False),
    "fq-static@3": ([{"method": "fairquant", "mode": "static", "budget": {"avg_bits": 3.0}, "importance": {"calib_batches": 25}}], False, False),
    "fq-qat@3": ([{"method": "fairquant", "mode": "qat", "budget": {"avg_bits": 3.0}, "importance": {"calib_batches": 25}}], True, True),
    "fq-baq@3": ([{"method": "fairquant", "mode": "baq", "budget": {"avg_bits": 3.0}, "importance": {"calib_batches": 25}}], True, True),
}

METRICS = ["group_accuracy", "worst_group_accuracy", "accuracy_gap", "eopp0", "eopp1", "eodd"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_seed(path: str, seed: int, epochs: int, ft_epochs: int, only: list[str] | None) -> dict:
    train, test = ham_split(path, seed)
    t0 = time.perf_counter()
    model = train_dense(train, seed, epochs, log)
    out: dict = {"groups": train.group_names, "classes": train.class_names, "n_train": len(train), "n_test": len(test)}
    pm = get_plugin_manager(autoload=False)

    def record(name: str, m: torch.nn.Module, session: CompressionSession | None, secs: float) -> None:
        table, _ = evaluate(m, test)
        cost = (session.cost(m) if session else CompressionSession([]).cost(m)).to_dict(layers=False)
        out[name] = {"counts": table.counts.tolist(), "cost": cost, "seconds": secs}
        acc = table.group_accuracy().tolist()
        log(f"[seed {seed}] {name:14s} acc/group {[round(a, 4) for a in acc]}  "
            f"avg bits {cost['avg_bits_param']:.3f}  {secs:.0f}s")

    record("fp32", model, None, time.perf_counter() - t0)
    calib = lambda: iterate_batches(train, 64, shuffle=True, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    for name, (methods, finetune, fair) in VARIANTS.items():
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        m = copy.deepcopy(model)
        session = CompressionSession.from_configs(methods, plugin_manager=pm)
        session.attach(m, AttachContext(calib_batches=calib, n_groups=train.n_groups))
        if finetune and ft_epochs > 0:
            train_model(m, train, epochs=ft_epochs, batch_size=64, lr=1e-4, weight_decay=0.01, grad_clip=1.0,
                        seed=seed + 1, session=session,
                        regularizer=RegularizerSpec(kind="gap", weight=0.5) if fair else None,
                        phase=f"{name} seed {seed}", log=lambda s: None)
        final = session.finalize(m)
        record(name, final, session, time.perf_counter() - t0)
    return out


def summarize(results: dict) -> list[dict]:
    pm = get_plugin_manager(autoload=False)
    metrics = [n for n in METRICS if n in pm.metrics]
    rows = []
    names = ["fp32", *VARIANTS]
    for name in names:
        per_seed = [r[name] for r in results["seeds"].values() if name in r]
        if not per_seed:
            continue
        vals: dict[str, list[float]] = {}
        for rec in per_seed:
            counts = torch.tensor(rec["counts"], dtype=torch.float64)
            t = GroupConfusion(counts.shape[0], counts.shape[1])
            t.counts = counts
            for mname in metrics:
                vals.setdefault(mname, []).append(pm.metrics.get(mname)().compute(t).value)
            for k in ("avg_bits_param", "avg_bits_channel", "packed_bytes"):
                vals.setdefault(k, []).append(float(rec["cost"][k]))
        row = {"variant": name, "seeds": len(per_seed)}
        for k, v in vals.items():
            row[k] = {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> str:
    cols = [("group_accuracy", "mean-grp"), ("worst_group_accuracy", "worst-grp"), ("accuracy_gap", "gap"),
            ("eopp0", "EOpp0"), ("eopp1", "EOpp1"), ("eodd", "EOdd"), ("avg_bits_param", "bits(p)"),
            ("avg_bits_channel", "bits(c)")]
    cols = [c for c in cols if any(c[0] in r for r in rows)]
    head = "| variant | " + " | ".join(h for _, h in cols) + " | packed KiB |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for r in rows:
        cells = []
        for k, _ in cols:
            v = r.get(k)
            cells.append("–" if v is None else f"{v['mean']:.3f} ± {v['std']:.3f}" if "bits" not in k
                         else f"{v['mean']:.2f}")
        kib = r["packed_bytes"]["mean"] / 1024
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | {kib:.0f} |")
    text = "\n".join(lines)
    print(text)
    return text


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--ft-epochs", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="variants to run (default: all)")
    ap.add_argument("--report-only", action="store_true", help="recompute the table from the JSON")
    args = ap.parse_args()
    RESULTS.parent.mkdir(exist_ok=True)
    if args.report_only:
        results = json.loads(RESULTS.read_text())
    else:
        if not Path(args.data).exists():
            sys.exit(f"data file {args.data} not found; pass --data or set FQ_DATA_DIR")
        torch.set_num_threads(os.cpu_count() or 1)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"seeds": {}}
        results.update({
            "command": "python " + " ".join(sys.argv),
            "epochs": args.epochs, "ft_epochs": args.ft_epochs,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
            "date": dt.date.today().isoformat(),
        })
        for seed in args.seeds:
            results["seeds"][str(seed)] = run_seed(args.data, seed, args.epochs, args.ft_epochs, args.only)
            RESULTS.write_text(json.dumps(results) + "\n")  # after every seed: nothing lost
    results["summary"] = summarize(results)
    RESULTS.write_text(json.dumps(results) + "\n")
    print_table(results["summary"])


if __name__ == "__main__":
    main()
