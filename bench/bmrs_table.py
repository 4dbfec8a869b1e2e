"""BMRS structured pruning on HAM10000 (32 px), timm ResNet18 from scratch, several seeds.

Per seed (same split and FP32 training as bench/fairquant_table.py and
bench/codeq_momos_table.py: stratified class × group, 20 % test, group = age ≥ 60,
unknown ages dropped; 20 epochs AdamW lr 1e-3, wd 5e-4, batch 64): the dense model, then
BMRS_N, BMRS_U (p = 8), BMRS_U (p = 4), SNR (< 1) and L2 (< 0.5) from the same dense
model. Each variant trains its gates (KL to the log-uniform prior, gate lr GATE_LR) with
masks recomputed at the end of each of MASK_EPOCHS epochs, then FROZEN_EPOCHS more epochs
with masks frozen (network lr 1e-4, wd 0.01, grad-clip 1.0), then finalize removes the
channels (torch-pruning). Reported: fraction of gated channels masked and physically
removed, parameters and MACs after finalize, accuracy, worst-group accuracy, the
finalize max |diff| against the gated model, and CPU latency of the finalized model over
the dense one (same process, batch 64, interleaved, median of REPS timings each).

    python bench/bmrs_table.py [--seeds 0 1 2] [--epochs 20] [--mask-epochs 6] [--frozen-epochs 3]
                               [--arch resnet18|mlp] [--kl layer_mean elbo] [--out FILE]

Issue 16: BMRS_N uses the reference code's ΔF by default (`delta_f: reference`); the row
"BMRS_N exact" keeps the exact evidence ratio. `--kl` runs every variant with each KL
reduction (layer_mean: the reference code's mean per layer; elbo: summed KL / n_train),
the elbo rows suffixed " elbo". `--arch mlp` swaps the ResNet for fq_plugins.models.MLP
(hidden 256) on the flattened images.

Writes bench/results/bmrs_table.json (a seed already there is replaced) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from _ham import ham_split, parser, train_dense  # bench/_ham.py (the script folder is on sys.path)

from fq_plugins.accounting import model_cost
from fq_plugins.manager import get_plugin_manager
from fq_plugins.protocols import AttachContext
from fq_plugins.run import evaluate, train_model
from fq_plugins.session import CompressionSession

RESULTS = Path(__file__).parent / "results" / "bmrs_table.json"


def variants(gate_lr: float, mask_epochs: int, kls: list[str], n_train: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for kl in kls:
        common = {"method": "bmrs", "gate_lr": gate_lr, "mask_epochs": mask_epochs,
                  "kl_reduction": kl, **({"n_train": n_train} if kl == "elbo" else {})}
        sfx = "" if kl == "layer_mean" else f" {kl}"
        out.update({
            f"BMRS_N{sfx}": {**common, "prior": "normal"},
            f"BMRS_N exact{sfx}": {**common, "prior": "normal", "delta_f": "exact"},
            f"BMRS_U p=8{sfx}": {**common, "prior": "uniform", "precision": 8},
            f"BMRS_U p=4{sfx}": {**common, "prior": "uniform", "precision": 4},
            f"SNR{sfx}": {**common, "criterion": "snr"},
            f"L2{sfx}": {**common, "criterion": "l2"},
        })
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@torch.no_grad()
def latency_ratio(dense: torch.nn.Module, final: torch.nn.Module, x: torch.Tensor, reps: int) -> dict:
    dense.eval()
    final.eval()
    for _ in range(3):  # warm-up
        dense(x)
        final(x)
    td, tf = [], []
    for _ in range(reps):  # interleaved, so drifts in machine load hit both alike
        t0 = time.perf_counter()
        dense(x)
        td.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        final(x)
        tf.append(time.perf_counter() - t0)
    md, mf = statistics.median(td), statistics.median(tf)
    return {"dense_ms": 1e3 * md, "final_ms": 1e3 * mf, "ratio": mf / md}


def run_seed(path: str, seed: int, args: argparse.Namespace) -> dict:
    train, test = ham_split(path, seed)
    if args.arch == "mlp":
        from fq_plugins.models import MLP

        torch.manual_seed(seed)
        dense = MLP(int(train.x[0].numel()), train.n_classes, hidden=256)
        train_model(dense, train, epochs=args.epochs, batch_size=64, lr=1e-3, weight_decay=5e-4,
                    seed=seed, phase=f"mlp seed {seed}", log=log)
    else:
        dense = train_dense(train, seed, args.epochs, log)
    pm = get_plugin_manager(autoload=False)
    x64 = test.x[:64]
    example = test.x[:1]
    out: dict = {}

    def record(name: str, m: torch.nn.Module, extra: dict) -> None:
        table, _ = evaluate(m, test)
        acc = table.group_accuracy()
        cost = model_cost(m, {}, example_input=example)
        out[name] = {"accuracy": table.overall_accuracy(), "worst_group_accuracy": float(acc.min()),
                     "mean_group_accuracy": float(acc.mean()), "params": cost.weight_params,
                     "macs": cost.macs, **extra}
        r = out[name]
        log(f"[seed {seed}] {name:11s} acc {r['accuracy']:.4f} worst {r['worst_group_accuracy']:.4f} "
            f"params {r['params'] / 1e6:.2f}M MACs {r['macs'] / 1e6:.1f}M "
            + " ".join(f"{k} {v:.3g}" for k, v in extra.items() if isinstance(v, float)))

    record("dense", dense, {})
    for name, cfg in variants(args.gate_lr, args.mask_epochs, args.kl, len(train)).items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        m = copy.deepcopy(dense)
        session = CompressionSession.from_configs([cfg], plugin_manager=pm)
        session.attach(m, AttachContext(example_input=train.x[:2]))
        train_model(m, train, epochs=args.mask_epochs + args.frozen_epochs, batch_size=64, lr=1e-4,
                    weight_decay=0.01, grad_clip=1.0, seed=seed + 1, session=session,
                    phase=f"{name} seed {seed}", log=log,
                    on_epoch_end=lambda e, c=session.methods[0]: log(
                        f"    masked {c.history[-1]['masked_fraction']:.3f}" if c.history else ""))
        _, gated_logits = evaluate(m, test)
        gates = session.methods[0]._gates()
        mu = torch.cat([g.mu.detach() for g in gates])
        sigma = torch.cat([g.log_sigma.detach() for g in gates]).exp()
        posterior = {"median_mu": float(mu.median()), "frac_mu_below_mid": float((mu < -10).float().mean()),
                     "frac_sigma_over_10": float((sigma > 10).float().mean()),
                     "median_sigma": float(sigma.median())}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            final = session.finalize(m)
        st0 = session.stats()[0].extra
        all_pruned = st0.get("all_pruned_layers", {})
        _, final_logits = evaluate(final, test)
        st = session.stats()[0].extra
        lat = latency_ratio(dense, final, x64, args.reps)
        record(name, final, {
            "masked_fraction": st["masked_fraction"], "removed_fraction": st["removed_fraction"],
            "finalize_max_abs_diff": float((final_logits - gated_logits).abs().max()),
            "latency_ratio": lat["ratio"], "latency": lat, "mask_history": st["mask_history"],
            "posterior": posterior, "all_pruned_layers": all_pruned,
            "warnings": [str(w.message)[:200] for w in caught],
            "seconds": time.perf_counter() - t0,
        })
    return out


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--mask-epochs", type=int, default=6)
    ap.add_argument("--frozen-epochs", type=int, default=3)
    ap.add_argument("--gate-lr", type=float, default=0.02)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s)")
    ap.add_argument("--only", nargs="+", help="run only these variants (pilots)")
    ap.add_argument("--arch", choices=["resnet18", "mlp"], default="resnet18")
    ap.add_argument("--kl", nargs="+", choices=["layer_mean", "elbo"], default=["layer_mean", "elbo"])
    ap.add_argument("--table-only", action="store_true", help="print the table from the JSON")
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {"seeds": {}}
    if not args.table_only:
        if not Path(args.data).exists():
            sys.exit(f"data file {args.data} not found; pass --data or set FQ_DATA_DIR")
        torch.set_num_threads(args.threads)
        out.parent.mkdir(exist_ok=True)
        results.update({"command": "python " + " ".join(sys.argv), "epochs": args.epochs,
                        "mask_epochs": args.mask_epochs, "frozen_epochs": args.frozen_epochs,
                        "gate_lr": args.gate_lr, "arch": args.arch, "kl": args.kl,
                        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                    "torch": torch.__version__, "threads": torch.get_num_threads()},
                        "date": dt.date.today().isoformat()})
        for seed in args.seeds:
            results["seeds"][str(seed)] = run_seed(args.data, seed, args)
            out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)


def print_table(results: dict) -> None:
    def ms(vals: list[float], fmt: str = ".3f") -> str:
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return f"{statistics.fmean(vals):{fmt}} ± {sd:{fmt}}"

    seeds = list(results["seeds"].values())
    print(f"seeds: {len(seeds)}")
    print("| variant | channels masked | channels removed | params (M) | MACs (M) | accuracy | worst-group |"
          " latency / dense (batch 64) | layers all-pruned |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in seeds[0]:
        rows = [s[name] for s in seeds if name in s]

        def get(k: str, rows: list[dict] = rows) -> list:
            return [r[k] for r in rows]

        dense = name == "dense"
        print(f"| {name} | {'—' if dense else ms(get('masked_fraction'))} | "
              f"{'—' if dense else ms(get('removed_fraction'))} | {ms([p / 1e6 for p in get('params')], '.2f')} | "
              f"{ms([p / 1e6 for p in get('macs')], '.1f')} | {ms(get('accuracy'))} | "
              f"{ms(get('worst_group_accuracy'))} | {'1' if dense else ms(get('latency_ratio'), '.2f')} | "
              f"{'—' if dense else ms([float(len(r.get('all_pruned_layers', {}))) for r in rows], '.1f')} |")


if __name__ == "__main__":
    main()
