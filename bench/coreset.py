"""Data frugality on HAM10000 (32 px): coreset selectors vs the full training set (issue 17).

Per seed: the split of bench/_ham.py (stratified class × group, 20 % test, group = age ≥ 60,
unknown ages dropped), timm resnet18 (pretrained=False) from scratch, AdamW lr 1e-3, wd 5e-4,
batch 64, the same number of epochs for every row (a subset trains on fewer steps). Rows:

* ``full`` — the whole training set;
* ``{random, el2n, kcenter} × {0.5, 0.25} × {group_aware off, on}`` through
  ``fq_plugins.data.coreset.select_subset``. Off: quotas per class; on: per (class, group).

EL2N and k-center score with a copy of a fresh resnet18 warmed up for ``--warmup-epochs``
on the full set (the engine's ``fit``). The bench runs that warm-up once per seed and reuses
it for both selectors and every fraction (``select_subset(features=...)``): each of their rows
is *charged the whole warm-up* (energy and seconds) plus its own scoring pass, as if it ran
alone. Energy comes from the project's EnergyTracker with meter ``auto`` (RAPL when readable,
else the labelled CPU-time estimate); every figure keeps its method label.

    python bench/coreset.py [--seeds 0 1 2] [--epochs 20] [--warmup-epochs 2]
    python bench/coreset.py --merge part0.json part1.json   # several processes, one table

Writes bench/results/coreset.json (``--out`` to change) and prints mean ± std per row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _ham import DEFAULT_DATA, ham_split  # bench/_ham.py (the script folder is on sys.path)

from fq_plugins.data.coreset import (
    el2n_scores,
    penultimate_embeddings,
    select_subset,
    warm_up,
)
from fq_plugins.energy.tracker import EnergyTracker, resolve_meters
from fq_plugins.fairness.table import GroupConfusion
from fq_plugins.manager import get_plugin_manager
from fq_plugins.run import evaluate, train_model

RESULTS = Path(__file__).parent / "results" / "coreset.json"
SELECTORS = ["random", "el2n", "kcenter"]
FRACTIONS = [0.5, 0.25]
LR, WD, BATCH = 1e-3, 5e-4, 64


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def quiet(_msg: str) -> None:
    pass


def resnet18(n_classes: int) -> torch.nn.Module:
    import timm

    return timm.create_model("resnet18", pretrained=False, num_classes=n_classes)


def energy(readings: dict[str, Any]) -> dict[str, Any]:
    """Total joules and method label of one phase (the first meter)."""
    r = next(iter(readings.values()))
    return {"joules": r.total_joules, "method": r.method, "meter": r.meter, "seconds": r.seconds}


def scores(table: GroupConfusion) -> dict[str, Any]:
    per_class_n = table.counts.sum(dim=(0, 2))
    recall = torch.diagonal(table.counts.sum(0)) / per_class_n.clamp_min(1)
    return {
        "accuracy": table.overall_accuracy(),
        "worst_group_accuracy": table.worst_group_accuracy(),
        "group_accuracy": table.group_accuracy().tolist(),
        "balanced_accuracy": float(recall[per_class_n > 0].mean()),
        "counts": table.counts.tolist(),
    }


def run_seed(
    path: str,
    seed: int,
    epochs: int,
    warmup_epochs: int,
    out: Path,
    store: dict[str, Any],
    only: list[str] | None,
) -> None:
    pm = get_plugin_manager(autoload=False)
    tracker = EnergyTracker(resolve_meters(["auto"], pm, log), pm, quiet)
    train, test = ham_split(path, seed)
    rec: dict[str, Any] = store["seeds"].setdefault(str(seed), {})
    rec.update(
        {
            "n_train": len(train),
            "n_test": len(test),
            "groups": train.group_names,
            "classes": train.class_names,
        }
    )
    factory = lambda: resnet18(train.n_classes)  # noqa: E731

    def train_on(ds: Any, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        torch.manual_seed(seed)
        model = factory()
        t0 = time.perf_counter()
        _, readings = tracker.measure(
            f"train {name}",
            lambda: train_model(
                model,
                ds,
                epochs=epochs,
                batch_size=BATCH,
                lr=LR,
                weight_decay=WD,
                seed=seed,
                phase=f"{name} s{seed}",
                log=quiet,
            ),
        )
        e = energy(readings)
        e["wall_seconds"] = time.perf_counter() - t0
        table, _ = evaluate(model, test)
        return e, scores(table)

    def save() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(store, indent=1))
        os.replace(tmp, out)

    if "full" not in rec and (not only or "full" in only):
        e, s = train_on(train, "full")
        rec["full"] = {"train_energy": e, **s}
        log(
            f"[seed {seed}] full: acc {s['accuracy']:.4f} worst {s['worst_group_accuracy']:.4f} "
            f"{e['joules']:.0f} J ({e['method']}) {e['wall_seconds']:.0f}s"
        )
        save()

    feats: dict[str, torch.Tensor] = {}
    warm_cost: dict[str, Any] | None = rec.get("warmup")
    for sel in SELECTORS:
        if only and sel not in only:
            continue
        for frac in FRACTIONS:
            for ga in (False, True):
                name = f"{sel}@{frac}{'+ga' if ga else ''}"
                if name in rec:
                    continue
                extra = {"joules": 0.0, "seconds": 0.0}
                if sel != "random":
                    if warm_cost is None or "model" not in feats:
                        torch.manual_seed(seed)
                        warm = factory()
                        t0 = time.perf_counter()
                        _, rd = tracker.measure(
                            "selection warm-up",
                            lambda m=warm: warm_up(
                                m,
                                train,
                                epochs=warmup_epochs,
                                lr=LR,
                                batch_size=BATCH,
                                weight_decay=WD,
                                seed=seed,
                                log=quiet,
                            ),
                        )
                        warm_cost = {
                            **energy(rd),
                            "wall_seconds": time.perf_counter() - t0,
                            "epochs": warmup_epochs,
                        }
                        rec["warmup"] = warm_cost
                        feats["model"] = warm
                    if sel not in feats:
                        t0 = time.perf_counter()
                        fn = el2n_scores if sel == "el2n" else penultimate_embeddings
                        f, rd = tracker.measure(
                            f"selection {sel} scoring", lambda fn=fn: fn(feats["model"], train)
                        )
                        feats[sel] = f
                        rec[f"scoring:{sel}"] = {
                            **energy(rd),
                            "wall_seconds": time.perf_counter() - t0,
                        }
                    sc = rec[f"scoring:{sel}"]
                    extra = {
                        "joules": warm_cost["joules"] + sc["joules"],
                        "seconds": warm_cost["wall_seconds"] + sc["wall_seconds"],
                    }
                t0 = time.perf_counter()
                res, rd = tracker.measure(
                    f"selection {name}",
                    lambda sel=sel, frac=frac, ga=ga: select_subset(
                        train,
                        selector=sel,
                        fraction=frac,
                        group_aware=ga,
                        seed=seed,
                        features=feats.get(sel),
                        pm=pm,
                        log=log,
                    ),
                )
                pick = {**energy(rd), "wall_seconds": time.perf_counter() - t0}
                e, s = train_on(res.apply(train), name)
                sel_j = extra["joules"] + pick["joules"]
                sel_s = extra["seconds"] + pick["wall_seconds"]
                rec[name] = {
                    "selector": sel,
                    "fraction": frac,
                    "group_aware": ga,
                    "n_kept": res.n_kept,
                    "per_class": res.per_class,
                    "per_group": res.per_group,
                    "warnings": res.warnings,
                    "selection": {
                        "joules": sel_j,
                        "wall_seconds": sel_s,
                        "pick": pick,
                        "warmup_epochs": warmup_epochs if sel != "random" else 0,
                        "method": pick["method"],
                    },
                    "train_energy": e,
                    "total_joules": sel_j + e["joules"],
                    "total_wall_seconds": sel_s + e["wall_seconds"],
                    **s,
                }
                kept = [round(g["share_kept"], 3) for g in res.per_group]
                log(
                    f"[seed {seed}] {name}: acc {s['accuracy']:.4f} worst {s['worst_group_accuracy']:.4f} "
                    f"train {e['joules']:.0f} J + sel {sel_j:.0f} J ({e['method']}) "
                    f"{sel_s + e['wall_seconds']:.0f}s  group shares kept {kept}"
                )
                save()


ROW_ORDER = ["full"] + [f"{s}@{f}{ga}" for s in SELECTORS for f in FRACTIONS for ga in ("", "+ga")]


def summarize(store: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    seeds = store["seeds"]
    for name in ROW_ORDER:
        per = [(s, r[name], r["full"]) for s, r in seeds.items() if name in r and "full" in r]
        if not per:
            continue
        vals: dict[str, list[float]] = {}
        for _s, rec, full in per:
            tj = rec["train_energy"]["joules"] if name != "full" else full["train_energy"]["joules"]
            tot_j = rec.get("total_joules", tj)
            tot_s = rec.get("total_wall_seconds", rec["train_energy"]["wall_seconds"])
            fj, fs = full["train_energy"]["joules"], full["train_energy"]["wall_seconds"]
            v = {
                "accuracy": rec["accuracy"],
                "worst_group_accuracy": rec["worst_group_accuracy"],
                "balanced_accuracy": rec["balanced_accuracy"],
                "train_joules": tj,
                "selection_joules": rec.get("selection", {}).get("joules", 0.0),
                "total_joules": tot_j,
                "total_seconds": tot_s,
                "energy_saved": 1 - tot_j / fj,
                "time_saved": 1 - tot_s / fs,
                "d_accuracy": rec["accuracy"] - full["accuracy"],
                "d_worst_group": rec["worst_group_accuracy"] - full["worst_group_accuracy"],
                "share_kept_age60": rec["per_group"][1]["share_kept"]
                if "per_group" in rec
                else math.nan,
            }
            for k, x in v.items():
                vals.setdefault(k, []).append(float(x))
        row: dict[str, Any] = {
            "row": name,
            "seeds": len(per),
            "energy_method": per[0][1]["train_energy"]["method"],
        }
        for k, xs in vals.items():
            if any(math.isnan(x) for x in xs):
                row[k] = {"mean": math.nan, "std": math.nan}
                continue
            row[k] = {
                "mean": statistics.fmean(xs),
                "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            }
        rows.append(row)
    return rows


def table_text(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("accuracy", "acc", 3),
        ("worst_group_accuracy", "worst-grp (≥60)", 3),
        ("balanced_accuracy", "bal. acc", 3),
        ("share_kept_age60", "≥60 share kept", 3),
        ("selection_joules", "selection J", 0),
        ("total_joules", "total J", 0),
        ("energy_saved", "energy saved", 3),
        ("total_seconds", "wall s", 0),
    ]
    lines = [
        "| row | seeds | " + " | ".join(h for _, h, _ in cols) + " |",
        "|" + "---|" * (len(cols) + 2),
    ]
    for r in rows:
        cells = []
        for k, _, d in cols:
            m, s = r[k]["mean"], r[k]["std"]
            cells.append(
                "–"
                if math.isnan(m)
                else f"{m:.{d}f} ± {s:.{d}f}"
                if r["seeds"] > 1
                else f"{m:.{d}f}"
            )
        lines.append(f"| {r['row']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def kcenter_scaling(sizes: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """Wall time and peak-RSS growth of k_center_greedy on synthetic N × D embeddings."""
    import resource

    from fq_plugins.data.coreset import k_center_greedy

    rows = []
    for n, d, k in sizes:
        emb = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        k_center_greedy(emb, k)
        secs = time.perf_counter() - t0
        grow = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        rows.append(
            {
                "n": n,
                "d": d,
                "k": k,
                "seconds": secs,
                "ms_per_centre": 1e3 * secs / k,
                "peak_rss_growth_mb": grow / 1024,
                "embedding_mb": n * d * 4 / 2**20,
                "pairwise_matrix_would_be_gb": n * n * 4 / 2**30,
            }
        )
        log(f"k-center {n}×{d}, k={k}: {secs:.1f}s, peak RSS +{grow / 1024:.1f} MB")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", default=str(DEFAULT_DATA / "ham10000_sub_32.npz"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--warmup-epochs", type=int, default=2)
    ap.add_argument("--only", nargs="+", help="rows to run: full and/or selector names")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument(
        "--merge", nargs="+", help="result files of separate runs to combine into --out"
    )
    ap.add_argument(
        "--kcenter-scaling",
        action="store_true",
        help="only time k-center greedy on synthetic 50k embeddings; stored in --out",
    )
    args = ap.parse_args()
    out = Path(args.out)
    if args.kcenter_scaling:
        torch.set_num_threads(1)
        store = json.loads(out.read_text()) if out.exists() else {"seeds": {}}
        store["kcenter_scaling"] = {
            "command": "python bench/coreset.py --kcenter-scaling",
            "threads": 1,
            "rows": kcenter_scaling([(50_000, 64, 12_500), (50_000, 512, 2_000)]),
        }
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(store, indent=1))
        os.replace(tmp, out)
        return
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        store = {**parts[0], "seeds": {}, "commands": [p.get("command") for p in parts]}
        for p in parts:  # rows of one seed may come from several files (--only runs)
            for seed, rec in p["seeds"].items():
                store["seeds"].setdefault(seed, {}).update(rec)
    else:
        if not Path(args.data).exists():
            sys.exit(f"no data at {args.data}; set FQ_DATA_DIR or --data")
        store = json.loads(out.read_text()) if out.exists() else {"seeds": {}}
        for k in (
            "epochs",
            "warmup_epochs",
        ):  # resuming: finished rows are kept, same settings only
            if k in store and store[k] != getattr(args, k):
                sys.exit(f"{out} holds a run with {k}={store[k]}; use the same or another --out")
        store.update(
            {
                "command": "python bench/coreset.py " + " ".join(sys.argv[1:]),
                "epochs": args.epochs,
                "warmup_epochs": args.warmup_epochs,
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                },
                "date": dt.date.today().isoformat(),
            }
        )
        for seed in args.seeds:
            run_seed(args.data, seed, args.epochs, args.warmup_epochs, out, store, args.only)
    store["summary"] = summarize(store)
    text = table_text(store["summary"])
    print(text)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(store, indent=1))
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
