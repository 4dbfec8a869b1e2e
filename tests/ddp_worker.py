"""Run by tests/test_fairness_ddp.py as ``torchrun --standalone --nproc_per_node 2`` (gloo).

Each rank streams its shard of the same data into a group confusion table, all-reduces it
and computes every metric; then measures energy on a fake powercap tree
(``$FQ_POWERCAP_ROOT``) that rank 0 advances between two barriers, and combines the
readings over ranks. Each rank writes ``<out>/rank<R>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

N, GROUPS, CLASSES = 997, 4, 5
PACKAGE_UJ, DRAM_UJ = 1_500_000, 250_000  # what rank 0 adds to the fake counters


def make_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Predictions, targets, group ids; group 3 never occurs (it must keep its id)."""
    gen = torch.Generator().manual_seed(11)
    y = torch.randint(0, CLASSES, (N,), generator=gen)
    noise = torch.randint(0, CLASSES, (N,), generator=gen)
    p = torch.where(torch.rand(N, generator=gen) < 0.6, y, noise)
    g = torch.randint(0, GROUPS - 1, (N,), generator=gen)
    return p, y, g


def metric_classes() -> list[type]:
    from fq_plugins.fairness import metrics, suite

    return [
        metrics.GroupAccuracy,
        metrics.WorstGroupAccuracy,
        metrics.AccuracyGap,
        *suite.ALL_METRICS,
    ]


def compute_metrics(table) -> dict:
    out = {}
    for cls in metric_classes():
        for policy in ("skip", "zero", "nan"):
            try:
                m = cls(policy)
            except TypeError:  # the accuracy metrics take no option
                m = cls()
            out[f"{cls.name}/{policy}"] = m.compute(table).to_dict()
    return out


def main(out_dir: str) -> None:
    import torch.distributed as dist

    from fq_plugins.energy.ddp import reduce_reading_across_ranks
    from fq_plugins.energy.estimate import CpuTimeMeter
    from fq_plugins.energy.rapl import RaplMeter
    from fq_plugins.fairness.table import GroupConfusion
    from fq_plugins.manager import get_plugin_manager
    from fq_plugins.run import EnergyTracker

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    # --- fairness: shard, stream in batches, all-reduce -----------------------------
    p, y, g = make_data()
    table = GroupConfusion(GROUPS, CLASSES)
    shard = torch.arange(rank, N, world)
    for batch in shard.split(64):
        table.update(p[batch], y[batch], g[batch])
    local_total = table.total
    table.all_reduce()
    result: dict = {
        "rank": rank,
        "local_examples": local_total,
        "counts": table.counts.tolist(),
        "metrics": compute_metrics(table),
    }

    # --- energy: every rank starts a RAPL meter; the node's counters advance once -------
    root = Path(os.environ["FQ_POWERCAP_ROOT"])

    def advance() -> None:
        dist.barrier()
        if rank == 0:
            for zone, add in (("intel-rapl:0", PACKAGE_UJ), ("intel-rapl:0:0", DRAM_UJ)):
                f = root / zone / "energy_uj"
                f.write_text(str(int(f.read_text()) + add))
        dist.barrier()

    meter = RaplMeter(poll_seconds=None)  # LOCAL_RANK comes from torchrun
    meter.start()
    advance()
    local = meter.stop()
    combined = reduce_reading_across_ranks(local)
    result["rapl_local"] = local.to_dict()
    result["rapl_combined"] = combined.to_dict()

    # the run's EnergyTracker combines over ranks by itself
    pm = get_plugin_manager(autoload=False)
    tracker = EnergyTracker([RaplMeter(poll_seconds=None), CpuTimeMeter()], pm, lambda s: None)
    _, readings = tracker.measure("train", advance)
    result["tracker"] = {k: v.to_dict() for k, v in readings.items()}

    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
