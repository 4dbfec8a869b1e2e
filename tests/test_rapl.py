"""The RAPL meter on a fake powercap tree: domains, wrap-around, permission denied, DDP."""

from __future__ import annotations

import builtins
import math
import os
import time
from pathlib import Path

import pytest

from fq_plugins.energy import rapl
from fq_plugins.energy.rapl import RaplMeter, RaplPermissionError, discover_domains, wrap_delta
from fq_plugins.errors import FQError
from fq_plugins.run import EnergyTracker, resolve_meters
from fq_plugins.testing import EnergyMeterContract

MAX = 262_143_328_850  # a common max_energy_range_uj


def zone(root: Path, name: str, label: str, energy: int, max_range: int = MAX) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d


def set_uj(root: Path, name: str, value: int) -> None:
    # Atomic replace: the meter's sampling thread may read while we write, and a plain
    # write_text truncates first (sysfs itself never shows an empty counter).
    tmp = root / name / "energy_uj.tmp"
    tmp.write_text(f"{value}\n")
    os.replace(tmp, root / name / "energy_uj")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Two sockets as on a real host: package + core + dram per socket, plus psys and
    the mmio duplicate (both must be ignored) and the control-type folder."""
    root = tmp_path / "powercap"
    (root / "intel-rapl").mkdir(parents=True)  # control type, no counters
    zone(root, "intel-rapl:0", "package-0", 1_000_000)
    zone(root, "intel-rapl:0:0", "core", 500_000)
    zone(root, "intel-rapl:0:1", "dram", 2_000_000)
    zone(root, "intel-rapl:1", "package-1", 7_000_000)
    zone(root, "intel-rapl:1:0", "dram", 9_000_000)
    zone(root, "intel-rapl:2", "psys", 1)
    zone(root, "intel-rapl-mmio:0", "package-0", 1)
    return root


@pytest.fixture
def deny(monkeypatch):
    """Make a file unreadable as a non-root user would find it (root ignores chmod, so
    then ``open`` in the rapl module raises the same PermissionError the kernel gives)."""

    def _deny(path: Path) -> None:
        os.chmod(path, 0o200)
        try:
            with open(path):
                readable = True
        except PermissionError:
            readable = False
        if readable:
            real_open = builtins.open

            def fake_open(file, *a, **k):
                if os.fspath(file) == os.fspath(path):
                    raise PermissionError(13, "Permission denied", os.fspath(file))
                return real_open(file, *a, **k)

            monkeypatch.setattr(rapl, "open", fake_open, raising=False)

    return _deny


class TestRaplContract(EnergyMeterContract):
    meter_cls = RaplMeter
    config = {"poll_seconds": 0.05}

    @pytest.fixture(autouse=True)
    def _tree(self, tree, monkeypatch):
        monkeypatch.setenv("FQ_POWERCAP_ROOT", str(tree))
        monkeypatch.delenv("LOCAL_RANK", raising=False)


def test_discovers_package_and_dram_only(tree):
    doms = discover_domains(tree)
    assert [d.label for d in doms] == ["cpu:0", "cpu:1", "dram:0", "dram:1"]
    assert {os.path.basename(d.path) for d in doms} == {
        "intel-rapl:0",
        "intel-rapl:1",
        "intel-rapl:0:1",
        "intel-rapl:1:0",
    }
    assert all(d.max_range_uj == MAX for d in doms)


def test_amd_and_nested_subzones(tmp_path):
    root = tmp_path / "pc"
    zone(root, "amd-rapl:0", "package", 10)
    zone(root / "amd-rapl:0", "amd-rapl:0:0", "dram", 20)  # only inside the package folder
    assert [d.label for d in discover_domains(root)] == ["cpu:0", "dram:0"]


def test_reading_is_the_counter_delta_in_joules(tree, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    m = RaplMeter(tree, poll_seconds=None)
    assert m.probe().ok
    m.start()
    set_uj(tree, "intel-rapl:0", 1_000_000 + 2_500_000)  # +2.5 J
    set_uj(tree, "intel-rapl:0:1", 2_000_000 + 400_000)  # +0.4 J
    set_uj(tree, "intel-rapl:1", 7_000_000 + 1_000_001)  # +1.000001 J
    set_uj(tree, "intel-rapl:0:0", 999_999_999)  # core: part of the package, not added
    r = m.stop()
    assert r.joules == {"cpu:0": 2.5, "dram:0": 0.4, "cpu:1": 1.000001, "dram:1": 0.0}
    assert set(r.methods.values()) == {"measured:rapl"} and not r.estimated
    assert r.total_joules == pytest.approx(3.900001)
    assert r.details["devices"]["cpu:0"].endswith(":intel-rapl:0")


def test_wrap_around(tree, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    zone(tree, "intel-rapl:0", "package-0", 999_900, max_range=1_000_000)
    m = RaplMeter(tree, poll_seconds=None)
    m.start()
    set_uj(tree, "intel-rapl:0", 50)  # wrapped: 100 µJ to the top, then 50
    r = m.stop()
    assert r.joules["cpu:0"] == 150 / 1e6 and r.details["wraps"] == 1
    assert wrap_delta(10, 30, 100) == 20 and wrap_delta(90, 5, 100) == 15


def test_a_counter_reset_is_not_taken_for_a_wrap(tree, monkeypatch):
    """A counter that jumps backwards far from its top (reset by a driver reload or a VM
    migration) would unwrap to ~262 kJ for a short phase: the implied power is impossible,
    so the phase's figure is missing with the reason, never 262 kJ."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    zone(tree, "intel-rapl:0", "package-0", 5_000_000_000, max_range=MAX)
    m = RaplMeter(tree, poll_seconds=None)
    m.start()
    set_uj(tree, "intel-rapl:0", 4_000_000_000)  # 1 kJ *below* where it was
    with pytest.raises(
        RuntimeError, match=r"went backwards .* max_watts 2000 W, so the counter was reset"
    ):
        m.stop()
    # a generous max_watts accepts it as a wrap (the user's call on exotic hardware)
    m = RaplMeter(tree, poll_seconds=None, max_watts=1e12)
    m.start()
    set_uj(tree, "intel-rapl:0", 3_000_000_000)
    r = m.stop()
    assert (
        r.joules["cpu:0"] == (3_000_000_000 + MAX - 4_000_000_000) / 1e6 and r.details["wraps"] == 1
    )


def test_samples_accumulate_several_wraps(tree, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    zone(tree, "intel-rapl:0", "package-0", 900, max_range=1000)
    m = RaplMeter(tree, poll_seconds=None)
    m.start()
    for value in (100, 600, 50):  # +200 (wrap), +500, +450 (wrap)
        set_uj(tree, "intel-rapl:0", value)
        m.sample()
    r = m.stop()
    assert r.joules["cpu:0"] == 1150 / 1e6 and r.details["wraps"] == 2


def test_background_polling_catches_wraps(tree, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    zone(tree, "intel-rapl:0", "package-0", 900, max_range=1000)
    m = RaplMeter(tree, poll_seconds=0.01)
    m.start()
    for value in (400, 800, 200):  # 500 + 400 + 400 (wrap): only visible with sampling
        set_uj(tree, "intel-rapl:0", value)
        time.sleep(0.15)
    r = m.stop()
    assert r.joules["cpu:0"] == 1300 / 1e6


def test_permission_denied_probe_and_start(tree, deny, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    deny(tree / "intel-rapl:0" / "energy_uj")
    m = RaplMeter(tree)
    a = m.probe()
    assert a.status == "permission_denied"
    assert "sudo chmod o+r" in a.reason and str(tree) in a.reason and "cpu_time" in a.reason
    with pytest.raises(RaplPermissionError, match="sudo chmod o\\+r") as exc:
        m.start()
    assert isinstance(exc.value, FQError) and isinstance(exc.value, PermissionError)


def test_missing_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("FQ_POWERCAP_ROOT", str(tmp_path / "nope"))
    a = RaplMeter().probe()
    assert a.status == "missing" and "FQ_POWERCAP_ROOT" in a.reason
    with pytest.raises(FQError, match="no RAPL package zones"):
        RaplMeter().start()


def test_auto_picks_rapl_and_labels_it(tree, monkeypatch, pm):
    monkeypatch.setenv("FQ_POWERCAP_ROOT", str(tree))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    logs: list[str] = []
    (meter,) = resolve_meters(["auto"], pm, logs.append)
    assert isinstance(meter, RaplMeter)
    assert any("'nvml' unavailable" in line for line in logs)  # no GPU/driver here
    monkeypatch.setenv("FQ_POWERCAP_ROOT", str(tree.parent / "none"))
    (meter,) = resolve_meters(["auto"], pm, logs.append)
    assert meter.name == "cpu_time"


def test_meter_failing_mid_run_is_marked_missing_and_the_rest_survives(tree, monkeypatch, pm):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    from fq_plugins.energy.estimate import CpuTimeMeter

    logs: list[str] = []
    tracker = EnergyTracker([RaplMeter(tree, poll_seconds=None), CpuTimeMeter()], pm, logs.append)

    def phase():
        (tree / "intel-rapl:1" / "energy_uj").unlink()  # the counter vanishes mid-run
        return "result kept"

    result, readings = tracker.measure("train", phase)
    assert result == "result kept"
    bad, good = readings["train:rapl"], readings["train:cpu_time"]
    assert bad.missing and "energy_uj" in bad.missing and math.isnan(bad.total_joules)
    assert good.missing is None and math.isfinite(good.total_joules)
    assert any("meter 'rapl' failed during train" in line for line in logs)


def test_lap_splits_a_phase_and_the_phase_adds_the_laps(tree, monkeypatch, pm):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    tracker = EnergyTracker([RaplMeter(tree, poll_seconds=None)], pm, lambda s: None)
    laps = []

    def phase():
        set_uj(tree, "intel-rapl:0", 1_000_000 + 3_000_000)
        laps.append(tracker.lap())  # first "epoch": 3 J
        set_uj(tree, "intel-rapl:0", 1_000_000 + 4_000_000)

    _, readings = tracker.measure("train", phase)
    assert laps == [3.0]
    r = readings["train:rapl"]
    assert r.joules["cpu:0"] == 4.0 and r.details["laps"] == 2


def test_non_leader_local_rank_defers(tree):
    m = RaplMeter(tree, poll_seconds=None, local_rank=1)
    m.start()
    set_uj(tree, "intel-rapl:0", 5_000_000)
    r = m.stop()
    assert r.joules == {} and "local rank 0" in r.details["deferred"]


def test_tracker_begin_snapshot_end_for_hosts_that_do_not_own_the_loop(tmp_path):
    """begin → snapshot (the phase goes on) → end equals one measured phase: the snapshot's
    joules are part of the end's, and the end adds what came after."""
    from fq_plugins.energy.estimate import CpuTimeMeter
    from fq_plugins.manager import get_plugin_manager

    tracker = EnergyTracker([CpuTimeMeter()], get_plugin_manager(autoload=False), lambda s: None)
    tracker.begin("train")
    sum(i * i for i in range(300_000))
    first = tracker.snapshot()["train:cpu_time"].total_joules
    assert tracker.running and first > 0
    sum(i * i for i in range(300_000))
    total = tracker.end()["train:cpu_time"]
    assert not tracker.running
    assert total.total_joules > first and total.details["laps"] == 2
    with pytest.raises(RuntimeError, match="without begin"):
        tracker.end()
