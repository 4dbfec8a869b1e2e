"""FairQuant ablation at 2.0 / 2.5 average bits against Uniform-2, same QAT (issue 16).

Per seed: the HAM10000 split and dense ResNet18 of bench/_ham.py (group = age ≥ 60), then
every variant gets the *same* fine-tuning, so only the bit allocation differs:

* ``uniform-2`` (post-training, reference) and ``uniform-2-qat``;
* ``fq@B-<signal>-<reducer>`` for B ∈ {2.0, 2.5}, signal ∈ {grape, hawq}, reducer ∈
  {balanced (group-aware), mean (group-blind: equal weight per group, no lift of the
  low-importance group)} — FairQuant mode ``qat``, allocation by MILP at a
  parameter-weighted average of B bits, levels 1–8 (1 bit = binary ±s; without it 2.0
  bits leaves only all-2-bit, i.e. Uniform-2).

Fine-tuning for every variant: ``--ft-epochs`` epochs, AdamW lr 1e-4, wd 0.01, clip 1.0,
CE + 0.5·(max_g CE_g − min_g CE_g) (FairQuant's λ_fair term, given to Uniform-2 as well).
Importance: ``--calib-batches`` batches of 64 (eval-mode BN, per-group losses over the
whole calibration set), hawq with ``--hawq-samples`` probes.

Seeds may run in separate processes (``--part FILE`` each), then ``--merge FILE...``::

    python bench/fairquant_ablation.py --seeds 0 1 2 --epochs 20 --ft-epochs 5
    python bench/fairquant_ablation.py --seeds 0 --part /tmp/a0.json   # one process per seed
    python bench/fairquant_ablation.py --merge /tmp/a0.json /tmp/a1.json /tmp/a2.json

Writes bench/results/fairquant_ablation.json: every variant's group confusion table,
allocation (bits per channel) and cost, then a summary (mean ± std over seeds) and paired
t-tests over seeds (scipy.stats.ttest_rel) for group-aware vs group-blind, grape vs hawq,
and each FairQuant variant vs uniform-2-qat.
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
from fq_plugins.run_folder import atomic_write
from fq_plugins.session import CompressionSession

RESULTS = Path(__file__).parent / "results" / "fairquant_ablation.json"
BUDGETS = (2.0, 2.5)
SIGNALS = ("grape", "hawq")
REDUCERS = ("balanced", "mean")
CHOICES = [1, 2, 3, 4, 5, 6, 7, 8]


def variants(calib_batches: int, hawq_samples: int) -> dict[str, tuple[list[dict], bool]]:
    """name → (methods, fine-tune?). Ordered so the most informative run first."""
    out: dict[str, tuple[list[dict], bool]] = {
        "uniform-2": ([{"method": "uniform", "bits": 2}], False),
        "uniform-2-qat": ([{"method": "uniform", "bits": 2}], True),
    }
    for sig in SIGNALS:
        for b in BUDGETS:
            for red in REDUCERS:
                imp = {"signal": sig, "reducer": red, "calib_batches": calib_batches,
                       "hawq_samples": hawq_samples}
                out[f"fq@{b}-{sig}-{red}"] = (
                    [{"method": "fairquant", "mode": "qat", "importance": imp,
                      "budget": {"avg_bits": b, "choices": CHOICES}}], True)
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_seed(args, seed: int, save) -> dict:
    train, test = ham_split(args.data, seed)
    t0 = time.perf_counter()
    model = train_dense(train, seed, args.epochs, log)
    out: dict = {"groups": train.group_names, "classes": train.class_names,
                 "n_train": len(train), "n_test": len(test)}
    pm = get_plugin_manager(autoload=False)

    def record(name: str, m: torch.nn.Module, session: CompressionSession | None, secs: float,
               extra: dict | None = None) -> None:
        table, _ = evaluate(m, test)
        cost = (session.cost(m) if session else CompressionSession([]).cost(m)).to_dict(layers=False)
        out[name] = {"counts": table.counts.tolist(), "cost": cost, "seconds": secs, **(extra or {})}
        log(f"[seed {seed}] {name:24s} acc {table.overall_accuracy():.4f} acc/group "
            f"{[round(a, 4) for a in table.group_accuracy().tolist()]}  "
            f"bits(p) {cost['avg_bits_param']:.3f}  {secs:.0f}s")
        save(out)

    record("fp32", model, None, time.perf_counter() - t0)
    calib = lambda: iterate_batches(train, 64, shuffle=True, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    for name, (methods, finetune) in variants(args.calib_batches, args.hawq_samples).items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        m = copy.deepcopy(model)
        session = CompressionSession.from_configs(methods, plugin_manager=pm)
        session.attach(m, AttachContext(calib_batches=calib, n_groups=train.n_groups))
        t_attach = time.perf_counter() - t0
        extra: dict = {"attach_seconds": t_attach}
        comp = session.methods[0]
        if methods[0]["method"] == "fairquant":
            alloc = comp.allocation
            extra["bits"] = {k: v.int().tolist() for k, v in alloc.bits.items()}
            extra["group_totals"] = comp.importance.group_totals.tolist()
        if finetune and args.ft_epochs > 0:
            train_model(m, train, epochs=args.ft_epochs, batch_size=64, lr=1e-4, weight_decay=0.01,
                        grad_clip=1.0, seed=seed + 1, session=session,
                        regularizer=RegularizerSpec(kind="gap", weight=0.5),
                        phase=f"{name} seed {seed}", log=lambda s: None)
        final = session.finalize(m)
        record(name, final, session, time.perf_counter() - t0, extra)
    return out


# --- summary ---------------------------------------------------------------------------


def _table(rec: dict) -> GroupConfusion:
    counts = torch.tensor(rec["counts"], dtype=torch.float64)
    t = GroupConfusion(counts.shape[0], counts.shape[1])
    t.counts = counts
    return t


def _values(rec: dict) -> dict[str, float]:
    t = _table(rec)
    acc = t.group_accuracy().tolist()
    return {"accuracy": t.overall_accuracy(), "mean_group_accuracy": t.mean_group_accuracy(),
            "worst_group_accuracy": t.worst_group_accuracy(), "acc_lt60": acc[0], "acc_ge60": acc[1]}


def _ms(v: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def _paired(results: dict, a: str, b: str, metric: str) -> dict | None:
    from scipy.stats import ttest_rel

    seeds = [s for s, r in results["seeds"].items() if a in r and b in r]
    if len(seeds) < 2:
        return None
    va = [_values(results["seeds"][s][a])[metric] for s in seeds]
    vb = [_values(results["seeds"][s][b])[metric] for s in seeds]
    d = [x - y for x, y in zip(va, vb, strict=True)]
    res = ttest_rel(va, vb)
    return {"a": a, "b": b, "metric": metric, "seeds": seeds, "diffs": d, "mean_diff": statistics.fmean(d),
            "std_diff": statistics.stdev(d), "t": float(res.statistic), "p": float(res.pvalue)}


def _agreement(results: dict, a: str, b: str) -> float | None:
    """Fraction of channels given the same bits by variants a and b (mean over seeds)."""
    fr = []
    for r in results["seeds"].values():
        if a in r and b in r and "bits" in r[a] and "bits" in r[b]:
            same = tot = 0
            for k, ba in r[a]["bits"].items():
                bb = r[b]["bits"][k]
                same += sum(int(x == y) for x, y in zip(ba, bb, strict=True))
                tot += len(ba)
            fr.append(same / tot)
    return statistics.fmean(fr) if fr else None


def summarize(results: dict) -> dict:
    names = ["fp32", *variants(1, 1)]
    rows = []
    for name in names:
        per_seed = [r[name] for r in results["seeds"].values() if name in r]
        if not per_seed:
            continue
        vals: dict[str, list[float]] = {}
        for rec in per_seed:
            for k, v in _values(rec).items():
                vals.setdefault(k, []).append(v)
            for k in ("avg_bits_param", "avg_bits_channel"):
                vals.setdefault(k, []).append(float(rec["cost"][k]))
        rows.append({"variant": name, "seeds": len(per_seed), **{k: _ms(v) for k, v in vals.items()}})
    tests = []
    for metric in ("worst_group_accuracy", "accuracy"):
        for b in BUDGETS:
            for sig in SIGNALS:
                tests.append(_paired(results, f"fq@{b}-{sig}-balanced", f"fq@{b}-{sig}-mean", metric))
            for red in REDUCERS:
                tests.append(_paired(results, f"fq@{b}-grape-{red}", f"fq@{b}-hawq-{red}", metric))
            for sig in SIGNALS:
                for red in REDUCERS:
                    tests.append(_paired(results, f"fq@{b}-{sig}-{red}", "uniform-2-qat", metric))
    agree = {}
    for b in BUDGETS:
        for sig in SIGNALS:
            a = _agreement(results, f"fq@{b}-{sig}-balanced", f"fq@{b}-{sig}-mean")
            if a is not None:
                agree[f"{b}-{sig}: balanced vs mean"] = a
    return {"rows": rows, "paired": [t for t in tests if t], "same_bits_fraction": agree}


def print_summary(s: dict) -> None:
    print("| variant | seeds | accuracy | worst-group (≥ 60) | mean-of-groups | < 60 | bits(p) | bits(c) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in s["rows"]:
        def f(k: str, r: dict = r) -> str:
            return f"{r[k]['mean']:.3f} ± {r[k]['std']:.3f}"

        print(f"| {r['variant']} | {r['seeds']} | {f('accuracy')} | {f('worst_group_accuracy')} | "
              f"{f('mean_group_accuracy')} | {f('acc_lt60')} | {r['avg_bits_param']['mean']:.2f} | "
              f"{r['avg_bits_channel']['mean']:.2f} |")
    print("\n| A − B | metric | per-seed diffs | mean ± std | t | p |")
    print("|---|---|---|---|---|---|")
    for t in s["paired"]:
        d = ", ".join(f"{x:+.3f}" for x in t["diffs"])
        print(f"| {t['a']} − {t['b']} | {t['metric']} | {d} | {t['mean_diff']:+.4f} ± {t['std_diff']:.4f} | "
              f"{t['t']:.2f} | {t['p']:.3f} |")
    for k, v in s["same_bits_fraction"].items():
        print(f"same bits, {k}: {v:.3f} of channels")


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), json.dumps(obj) + "\n")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--ft-epochs", type=int, default=5)
    ap.add_argument("--calib-batches", type=int, default=25)
    ap.add_argument("--hawq-samples", type=int, default=10)
    ap.add_argument("--only", nargs="*", help="variants to run (default: all)")
    ap.add_argument("--part", help="write this process's seeds here (merge later) instead of the results file")
    ap.add_argument("--merge", nargs="+", help="merge --part files into the results file and summarize")
    ap.add_argument("--report-only", action="store_true", help="recompute the summary from the JSON")
    ap.add_argument("--out", default=str(RESULTS), help="results JSON (default: %(default)s)")
    args = ap.parse_args()
    out_path = Path(args.out)
    if args.merge or args.report_only:
        results = json.loads(out_path.read_text()) if out_path.exists() else {"seeds": {}}
        for p in args.merge or []:
            part = json.loads(Path(p).read_text())
            results.update({k: v for k, v in part.items() if k != "seeds"})
            results.setdefault("commands", []).append(part.get("command"))
            results["seeds"].update(part["seeds"])
    else:
        if not Path(args.data).exists():
            sys.exit(f"data file {args.data} not found; pass --data or set FQ_DATA_DIR")
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
        dest = Path(args.part) if args.part else out_path
        results = json.loads(dest.read_text()) if dest.exists() else {"seeds": {}}
        results.update({
            "command": "python " + " ".join(sys.argv), "epochs": args.epochs, "ft_epochs": args.ft_epochs,
            "calib_batches": args.calib_batches, "hawq_samples": args.hawq_samples, "choices": CHOICES,
            "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                        "platform": platform.platform(), "torch": torch.__version__},
            "date": dt.date.today().isoformat(),
        })
        for seed in args.seeds:
            def save(out: dict, seed: int = seed) -> None:
                results["seeds"][str(seed)] = out
                _write(dest, results)  # after every variant: nothing lost
            run_seed(args, seed, save)
        if args.part:
            return
    results["summary"] = summarize(results)
    _write(out_path, results)
    print_summary(results["summary"])


if __name__ == "__main__":
    main()
