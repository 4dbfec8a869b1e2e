"""Overhead of each available energy meter on a CPU-bound loop.

Runs a fixed pure-Python workload (calibrated to ~``--seconds`` of CPU time) without a meter
and with each meter that probes ok here, alternating the order over ``--repeats`` rounds,
and reports:

* overhead: (median process CPU time with the meter − median without) / median without,
  in % — process CPU time counts every thread, so a meter's sampling thread is included;
* start(): the wall time of ``meter.start()`` in ms (the worst of the rounds);
* stop(): the wall time of ``meter.stop()`` in ms;
* own work: the meter's own CPU time — start() + stop(), plus (for RAPL) one background
  sample per 10 s poll period at the measured CPU cost per sample — as % of the loop's CPU
  time. It does not depend on the machine's other load, unlike the A/B difference, whose
  noise (the baseline's max − min spread is printed) is larger than 1 % on a shared VM.

Targets (issue 4): overhead ≤ 1 % of CPU time, start() ≤ 100 ms.

RAPL: when the host's powercap tree probes ok it is used; otherwise the meter runs on a
fake powercap tree in a temporary folder (labelled ``rapl (fake sysfs)``): that measures
the meter's own cost (file reads, the sampling thread), not the kernel's MSR read.
NVML and codecarbon are included only when they probe ok.

Prints a table and writes JSON to ``bench/results/energy_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def workload(n: int) -> int:
    """Pure-Python CPU work: n iterations of integer arithmetic."""
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1_000_003
    return acc


def calibrate(seconds: float) -> int:
    n = 200_000
    while True:
        t = time.process_time()
        workload(n)
        dt = time.process_time() - t
        if dt > 0.2:
            return int(n * seconds / dt)
        n *= 2


def fake_powercap(folder: str) -> str:
    root = os.path.join(folder, "powercap")
    for name, label, value in (
        ("intel-rapl:0", "package-0", 123_456_789),
        ("intel-rapl:0:0", "dram", 23_456_789),
    ):
        d = os.path.join(root, name)
        os.makedirs(d)
        for fname, text in (
            ("name", label),
            ("energy_uj", str(value)),
            ("max_energy_range_uj", "262143328850"),
        ):
            with open(os.path.join(d, fname), "w") as f:
                f.write(text + "\n")
    return root


def meters(tmp: str) -> dict[str, Callable[[], Any]]:
    from fq_plugins.energy.estimate import CpuTimeMeter
    from fq_plugins.energy.nvml import NvmlMeter
    from fq_plugins.energy.rapl import RaplMeter

    out: dict[str, Callable[[], Any]] = {"cpu_time": CpuTimeMeter}
    if RaplMeter().probe().ok:
        out["rapl"] = RaplMeter
    else:
        root = fake_powercap(tmp)
        out["rapl (fake sysfs)"] = lambda: RaplMeter(root)
    if NvmlMeter().probe().ok:
        out["nvml"] = NvmlMeter
    return out


def one(n: int, make: Callable[[], Any] | None) -> dict[str, float]:
    meter = make() if make is not None else None
    c0 = time.process_time()
    t_start = t_stop = direct = 0.0
    if meter is not None:
        t, c = time.perf_counter(), time.process_time()
        meter.start()
        t_start, direct = time.perf_counter() - t, time.process_time() - c
    workload(n)
    if meter is not None:
        t, c = time.perf_counter(), time.process_time()
        meter.stop()
        t_stop, direct = time.perf_counter() - t, direct + time.process_time() - c
    return {
        "cpu_s": time.process_time() - c0,
        "start_ms": t_start * 1e3,
        "stop_ms": t_stop * 1e3,
        "direct_cpu_ms": direct * 1e3,
    }


def sampling_cost_us(make: Callable[[], Any], n: int = 2000) -> float | None:
    """CPU µs per background sample (meters with a sampling thread, e.g. RAPL), else None."""
    meter = make()
    if not hasattr(meter, "sample"):
        return None
    meter.poll_seconds = None  # sample by hand, no thread
    meter.start()
    c = time.process_time()
    for _ in range(n):
        meter.sample()
    cost = (time.process_time() - c) / n * 1e6
    meter.stop()
    return cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="CPU seconds per loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "energy_overhead.json"))
    args = ap.parse_args()
    load0 = os.getloadavg()
    n = calibrate(args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        configs: dict[str, Callable[[], Any] | None] = {"none": None, **meters(tmp)}
        sample_us = {k: sampling_cost_us(m) for k, m in configs.items() if m is not None}
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in configs}
        for rep in range(args.repeats):
            order = list(configs) if rep % 2 == 0 else list(reversed(configs))
            for name in order:
                runs[name].append(one(n, configs[name]))
                print(
                    f"round {rep + 1}: {name:<18} {runs[name][-1]['cpu_s']:.3f} s CPU",
                    file=sys.stderr,
                    flush=True,
                )
    base = statistics.median(r["cpu_s"] for r in runs["none"])
    rows = []
    for name, rs in runs.items():
        cpu = statistics.median(r["cpu_s"] for r in rs)
        # bound from the meter's own work: start+stop CPU plus one sample per poll period
        per_sample = sample_us.get(name)
        polls = base / 10.0  # RaplMeter's default poll period is 10 s
        bound_ms = max(r["direct_cpu_ms"] for r in rs) + (per_sample or 0.0) * polls / 1e3
        rows.append(
            {
                "meter": name,
                "cpu_s_median": cpu,
                "cpu_s_all": [r["cpu_s"] for r in rs],
                "overhead_pct": 100.0 * (cpu - base) / base,
                "direct_cpu_ms_max": max(r["direct_cpu_ms"] for r in rs),
                "direct_pct": 100.0 * max(r["direct_cpu_ms"] for r in rs) / 1e3 / base,
                "sample_cpu_us": per_sample,
                "own_work_bound_pct": 100.0 * bound_ms / 1e3 / base,
                "start_ms_max": max(r["start_ms"] for r in rs),
                "stop_ms_max": max(r["stop_ms"] for r in rs),
            }
        )
    spread = (
        100.0
        * (max(r["cpu_s"] for r in runs["none"]) - min(r["cpu_s"] for r in runs["none"]))
        / base
    )
    print(
        f"\nworkload: {n} iterations ≈ {base:.2f} s CPU; {args.repeats} rounds, medians; "
        f"baseline spread (max−min) {spread:.2f} % of CPU time"
    )
    print(
        f"{'meter':<18} {'CPU s':>8} {'A/B overhead %':>15} {'own work %':>11} "
        f"{'sample µs':>10} {'start ms':>9} {'stop ms':>8}"
    )
    for r in rows:
        smp = f"{r['sample_cpu_us']:.1f}" if r.get("sample_cpu_us") is not None else "-"
        own = f"{r['own_work_bound_pct']:.4f}" if r["meter"] != "none" else "-"
        print(
            f"{r['meter']:<18} {r['cpu_s_median']:>8.3f} {r['overhead_pct']:>15.2f} "
            f"{own:>11} {smp:>10} {r['start_ms_max']:>9.2f} {r['stop_ms_max']:>8.2f}"
        )
    result = {
        "command": "python bench/energy_overhead.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load0,
        },
        "iterations": n,
        "baseline_spread_pct": spread,
        "rows": rows,
        "targets": {"overhead_pct_max": 1.0, "start_ms_max": 100.0},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
