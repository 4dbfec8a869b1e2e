"""The NVML meter against a fake pynvml module (no GPU or driver on the test machine)."""

from __future__ import annotations

import sys
import time

import pytest

from fq_plugins.energy.nvml import NvmlMeter
from fq_plugins.errors import ConfigError
from fq_plugins.testing import EnergyMeterContract


class NVMLError(Exception):
    pass


class FakeNvml:
    """The subset of pynvml the meter uses; counters in mJ, advanced by the test."""

    NVMLError = NVMLError

    def __init__(self, energy_mj=(1_000, 50_000), names=("H200", "H200"), supported=True):
        self.energy = list(energy_mj)
        self.names = list(names)
        self.supported = supported
        self.init_error: Exception | None = None
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        if self.init_error is not None:
            raise self.init_error
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.energy)

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("handle", i)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return ("handle", int(uuid.rsplit("-", 1)[1]))

    def nvmlDeviceGetIndex(self, handle):
        return handle[1]

    def nvmlDeviceGetName(self, handle):
        return self.names[handle[1]].encode()

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-fake-{handle[1]}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.supported:
            raise NVMLError("Not Supported")
        return self.energy[handle[1]]


@pytest.fixture(autouse=True)
def _no_rank(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


class TestNvmlContract(EnergyMeterContract):
    meter_cls = NvmlMeter
    config = {"devices": [1]}

    def make_meter(self):
        return NvmlMeter(**self.config, nvml=FakeNvml())


def test_reads_every_gpu_as_millijoule_deltas():
    fake = FakeNvml()
    m = NvmlMeter(nvml=fake)
    a = m.probe()
    assert a.ok and "gpu:0 H200" in a.reason
    m.start()
    fake.energy[0] += 12_345  # mJ
    fake.energy[1] += 1
    r = m.stop()
    assert r.joules == {"gpu:0": 12.345, "gpu:1": 0.001}
    assert r.methods == {"gpu:0": "measured:nvml", "gpu:1": "measured:nvml"}
    assert r.details["devices"] == {"gpu:0": "GPU-fake-0", "gpu:1": "GPU-fake-1"}
    assert fake.inits == fake.shutdowns == 2  # probe and start/stop each release NVML


def test_local_rank_reads_only_its_gpu(monkeypatch):
    fake = FakeNvml(energy_mj=(0, 0, 0, 0), names=("A",) * 4)
    monkeypatch.setenv("LOCAL_RANK", "1")
    m = NvmlMeter(nvml=fake)
    m.start()
    fake.energy = [1000, 2000, 3000, 4000]
    assert m.stop().joules == {"gpu:1": 2.0}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,2")  # NVML ignores it; the meter maps it
    m.start()
    fake.energy = [e + 1000 for e in fake.energy]
    assert m.stop().joules == {"gpu:2": 1.0}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-fake-0,GPU-fake-3")
    m.start()
    assert list(m.stop().joules) == ["gpu:3"]


def test_explicit_devices_and_bad_devices():
    fake = FakeNvml()
    m = NvmlMeter([1], nvml=fake)
    m.start()
    fake.energy[1] += 500
    assert m.stop().joules == {"gpu:1": 0.5}
    assert NvmlMeter([5], nvml=fake).probe().status == "error"
    with pytest.raises(ConfigError, match="NVML indices"):
        NvmlMeter([-1])


def test_unsupported_counter_and_no_driver():
    a = NvmlMeter(nvml=FakeNvml(supported=False)).probe()
    assert a.status == "error" and "Volta" in a.reason and "H200" in a.reason
    fake = FakeNvml()
    fake.init_error = NVMLError("Driver Not Loaded")
    a = NvmlMeter(nvml=fake).probe()
    assert a.status == "missing" and "Driver Not Loaded" in a.reason


def test_real_pynvml():
    """Without a driver (nvidia-ml-py installed, libnvidia-ml not) the probe says missing; on
    a GPU host a real reading of every GPU is labelled measured:nvml."""
    m = NvmlMeter()
    a = m.probe()
    if not a.ok:
        assert a.status == "missing" and a.reason
        return
    m.start()
    time.sleep(0.5)
    r = m.stop()
    assert r.joules and set(r.methods.values()) == {"measured:nvml"}
    assert all(j >= 0 for j in r.joules.values())
    assert all(uuid.startswith("GPU-") for uuid in r.details["devices"].values())


def test_package_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    a = NvmlMeter().probe()
    assert a.status == "missing" and "pip install 'fq-plugins[energy]'" in a.reason


def test_counter_going_backwards_fails_the_reading():
    fake = FakeNvml()
    m = NvmlMeter(nvml=fake)
    m.start()
    fake.energy[0] = 0  # driver reloaded
    with pytest.raises(RuntimeError, match="went backwards"):
        m.stop()


def test_recipe_devices_option_selects_the_gpus_read(monkeypatch, pm):
    from fq_plugins.recipe import load_recipe
    from fq_plugins.run import resolve_meters

    fake = FakeNvml(energy_mj=(1_000, 50_000, 7_000), names=("H200",) * 3)
    monkeypatch.setitem(sys.modules, "pynvml", fake)  # what `import pynvml` returns
    recipe = load_recipe({"energy": {"meters": [{"name": "nvml", "devices": [0, 2]}]}})
    (meter,) = resolve_meters(recipe.energy.meters, pm, lambda s: None)
    assert isinstance(meter, NvmlMeter) and meter.devices == [0, 2]
    meter.start()
    fake.energy = [e + 1_500 for e in fake.energy]
    r = meter.stop()
    assert r.joules == {"gpu:0": 1.5, "gpu:2": 1.5}  # GPU 1 is not read
    with pytest.raises(ConfigError, match=r"energy.meters\[0\].devices: .*NVML indices"):
        load_recipe({"energy": {"meters": [{"name": "nvml", "devices": []}]}})
