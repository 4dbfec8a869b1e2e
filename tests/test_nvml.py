"""The NVML meter against a fake pynvml module (no GPU or driver on the test machine)."""

from __future__ import annotations

import sys

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

    def make_meter(self):
        return NvmlMeter(nvml=FakeNvml())


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


def test_real_pynvml_without_driver_is_missing():
    a = NvmlMeter().probe()  # nvidia-ml-py is installed, the library is not
    assert a.status == "missing" and a.reason


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
