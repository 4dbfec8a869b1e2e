"""Two processes under torchrun (gloo, CPU): metrics equal the single-process result, and
energy is one reading per physical device (the node's RAPL counters counted once)."""

from __future__ import annotations

import json

import pytest

from fq_plugins.fairness.table import GroupConfusion

from .conftest import ROOT, fake_rapl, torchrun
from .ddp_worker import CLASSES, DRAM_UJ, GROUPS, PACKAGE_UJ, compute_metrics, make_data


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "out"
    out.mkdir()
    root = fake_rapl(tmp)
    torchrun(
        [str(ROOT / "tests" / "ddp_worker.py"), str(out)],
        env={"FQ_POWERCAP_ROOT": str(root)},
        timeout=120,
    )
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_metrics_under_ddp_equal_single_process(ddp_results):
    p, y, g = make_data()
    single = GroupConfusion(GROUPS, CLASSES).update(p, y, g)
    expected = compute_metrics(single)
    r0, r1 = ddp_results
    assert r0["local_examples"] + r1["local_examples"] == len(y)
    assert 0 < r0["local_examples"] < len(y)  # each rank really saw only its shard
    assert r0["counts"] == r1["counts"] == single.counts.tolist()
    # exact equality (JSON floats round-trip exactly), every metric and policy
    assert r0["metrics"] == r1["metrics"] == json.loads(json.dumps(expected))
    assert r0["metrics"]["eodd/skip"]["details"]["groups_without_examples"] == ["3"]


@pytest.mark.slow
def test_energy_is_counted_once_per_device(ddp_results):
    r0, r1 = ddp_results
    # local rank 1 defers the node's counters to local rank 0
    assert r0["rapl_local"]["joules"] == {"cpu:0": PACKAGE_UJ / 1e6, "dram:0": DRAM_UJ / 1e6}
    assert r1["rapl_local"]["joules"] == {} and "deferred" in r1["rapl_local"]["details"]
    one_reading = (PACKAGE_UJ + DRAM_UJ) / 1e6
    for r in (r0, r1):
        combined = r["rapl_combined"]
        assert combined["total_joules"] == one_reading  # not 2×
        assert combined["details"]["deferred_ranks"] == [1]
        tracked = r["tracker"]
        assert tracked["train:rapl"]["total_joules"] == one_reading
        # per-process estimates are each rank's own: both kept, under rank-qualified names
        assert set(tracked["train:cpu_time"]["joules"]) == {
            "rank0/cpu:process",
            "rank1/cpu:process",
        }


def test_combine_readings_counts_a_shared_device_once():
    from fq_plugins.energy.ddp import combine_readings
    from fq_plugins.protocols import EnergyReading

    def gpu(rank: int, uuid: str, joules: float) -> EnergyReading:
        return EnergyReading(
            "nvml",
            1.0 + rank,
            {"gpu:0": joules},
            {"gpu:0": "measured:nvml"},
            details={"devices": {"gpu:0": uuid}},
        )

    # ranks 0 and 1 share GPU-a (both read it), rank 2 has GPU-b on another node
    c = combine_readings([gpu(0, "GPU-a", 10.0), gpu(1, "GPU-a", 10.5), gpu(2, "GPU-b", 7.0)])
    assert c.total_joules == 17.0 and c.seconds == 3.0
    assert set(c.joules) == {"GPU-a", "GPU-b"}  # same name, different devices: ids kept apart
    assert "GPU-a (rank 1, kept rank 0)" in c.details["counted_once"]
    bad = EnergyReading("nvml", 1.0, missing="driver reloaded")
    m = combine_readings([gpu(0, "GPU-a", 1.0), bad])
    assert m.missing == "rank 1: driver reloaded"
