"""`fq-plugins run` under `torchrun --nproc_per_node 2` (gloo, CPU): each training runs
data-parallel, rank 0 writes the report, and the report equals one process's within DDP's
numerical tolerance (a model without BatchNorm and no batch-level fairness term: those two
are computed per rank's shard, see docs/recipes.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from .conftest import torchrun

RECIPE = {
    "name": "ddp",
    "data": {"source": "synthetic", "synthetic": {"n": 1200, "n_classes": 4, "image_size": 8}},
    "model": {"name": "mlp", "kwargs": {"hidden": 32}},
    "train": {"epochs": 2, "batch_size": 64},
    "compress": [{"method": "uniform", "bits": 4}],
    "compare": {
        "baq": [
            {
                "method": "fairquant",
                "mode": "baq",
                "importance": {"calib_batches": 2},
                "budget": {"avg_bits": 4.0},
            }
        ]
    },
    "finetune": {"epochs": 1},
    "fairness": {"regularizer": {"kind": "none"}},
}


@pytest.mark.slow
def test_two_processes_give_the_one_process_report(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    one_proc = subprocess.run(
        [sys.executable, "-m", "fq_plugins", "run", str(recipe), "-q", "-o", str(tmp_path / "one")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one_proc.returncode == 0, one_proc.stdout[-2000:] + one_proc.stderr[-3000:]
    two_proc = torchrun(["-m", "fq_plugins", "run", str(recipe), "-q", "-o", str(tmp_path / "two")])
    assert two_proc.stdout.count("uniform-4 ") == 1  # rank 0 alone prints the table
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["environment"]["world_size"] == 2 and one["environment"]["world_size"] == 1
    n_test = one["dataset"]["n_test"]
    assert two["dataset"]["n_test"] == n_test  # every rank's shard is counted once
    for a, b in zip(one["variants"], two["variants"], strict=True):
        assert a["variant"] == b["variant"]
        # the same data in the same order, gradients averaged over equal shards: at most a
        # prediction flipped by float summation order
        for k in ("accuracy", "worst_group_accuracy", "mean_group_accuracy"):
            assert abs(a[k] - b[k]) <= 2 / n_test, (a["variant"], k, a[k], b[k])
        assert a["cost"]["packed_bytes"] == b["cost"]["packed_bytes"]
        # energy: one figure per rank (per-process estimates), each counted once
        tr = b["energy"]["train:cpu_time" if a["variant"] == "fp32" else next(iter(b["energy"]))]
        assert tr["details"]["ranks"] == 2 and len(tr["joules"]) == 2
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
