"""The CPU-time estimate meter: labelled, equal to CPU seconds × watts, always available."""

from __future__ import annotations

import pytest

from fq_plugins.energy.estimate import DEFAULT_WATTS_PER_CPU, CpuTimeMeter, watts_per_cpu
from fq_plugins.errors import ConfigError
from fq_plugins.testing import EnergyMeterContract


class TestCpuTimeContract(EnergyMeterContract):
    meter_cls = CpuTimeMeter


class TestCpuTimeWithPowerContract(EnergyMeterContract):
    """The same meter with the recipe option ``{name: cpu_time, watts_per_cpu: 5}``."""

    meter_cls = CpuTimeMeter
    config = {"watts_per_cpu": 5.0}


def test_joules_equal_cpu_seconds_times_watts():
    m = CpuTimeMeter(watts_per_cpu=7.0)
    m.start()
    sum(i * i for i in range(300_000))
    r = m.stop()
    assert r.joules["cpu:process"] == pytest.approx(r.details["cpu_seconds"] * 7.0)
    assert r.details["cpu_seconds"] > 0 and r.estimated
    assert r.methods == {"cpu:process": "estimated:cpu-time-user-power"}


def test_tdp_table_and_default_are_labelled():
    w, label, _ = watts_per_cpu("AMD EPYC 7763 64-Core Processor")
    assert w == pytest.approx(280 / 128) and label == "estimated:cpu-time-tdp"
    w, label, src = watts_per_cpu("Some Unknown CPU")
    assert (
        w == DEFAULT_WATTS_PER_CPU
        and label == "estimated:cpu-time-default"
        and "not in the TDP table" in src
    )


def test_stop_before_start_and_bad_power():
    with pytest.raises(RuntimeError, match="before start"):
        CpuTimeMeter().stop()
    with pytest.raises(ConfigError, match="watts_per_cpu"):
        CpuTimeMeter(watts_per_cpu=-1)
