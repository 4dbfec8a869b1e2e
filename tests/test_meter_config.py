"""Energy meters take options from the recipe, validated by the meter's own ``Config``.

``energy.meters`` items are names or ``{name: …, <options>}``; bad options are recipe errors
(before any training) naming the key path, the value, the allowed keys and a close match;
the resolved recipe round-trips; the contract catches a meter whose ``measured`` flag
contradicts its labels or whose Config does not round-trip / accepts unknown keys.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from pydantic import ConfigDict, Field

from fq_plugins import hookimpl
from fq_plugins.energy.codecarbon_meter import CodecarbonConfig, CodecarbonMeter
from fq_plugins.energy.estimate import CpuTimeConfig, CpuTimeMeter
from fq_plugins.energy.nvml import NvmlConfig
from fq_plugins.energy.rapl import RaplConfig, RaplMeter
from fq_plugins.energy.tracker import EnergyTracker, resolve_meters
from fq_plugins.errors import ConfigError, UnknownPluginError
from fq_plugins.protocols import Availability, EnergyMeter, EnergyReading, MeterConfig
from fq_plugins.recipe import load_recipe
from fq_plugins.testing import EnergyMeterContract

from .conftest import TINY, run_cli


class WallConfig(MeterConfig):
    watts: float = Field(gt=0, description="Assumed power (W)")


class WallMeter(EnergyMeter):
    """Keeps the base constructor: ``WallMeter(watts=…)`` or ``WallMeter(config)``."""

    name = "wall"
    description = "wall seconds × watts (test meter)"
    Config = WallConfig
    config: WallConfig
    _t0 = 0.0

    def probe(self) -> Availability:
        return Availability("ok")

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> EnergyReading:
        s = time.perf_counter() - self._t0
        return EnergyReading(
            self.name, s, {"system": s * self.config.watts}, {"system": "estimated:wall"}
        )


class LegacyMeter(EnergyMeter):
    """Written before Configs: no Config of its own, a constructor taking ``country``."""

    name = "legacy"
    description = "legacy meter (test)"

    def __init__(self, country: str | None = None) -> None:
        self.country = country

    def probe(self) -> Availability:
        return Availability("ok")


class _Plugin:
    @hookimpl
    def fq_register_energy_meters(self, register):
        register(WallMeter)
        register(LegacyMeter)


@pytest.fixture
def tpm(pm):
    pm.pm.register(_Plugin(), name="test-meters")
    return pm


def _energy(meters: list[Any], **extra: Any) -> dict[str, Any]:
    return {"energy": {"meters": meters, **extra}}


# --- the recipe -------------------------------------------------------------------------


def test_names_and_mappings(tpm):
    recipe = load_recipe(_energy(["auto", {"name": "wall", "watts": 10}]), plugin_manager=tpm)
    auto, wall = recipe.energy.meters
    assert auto == "auto"
    assert isinstance(wall, WallConfig) and wall.watts == 10.0 and wall.name == "wall"
    # a plain name stays a plain name (recipes written before mappings existed)
    assert load_recipe(_energy(["cpu_time"]), plugin_manager=tpm).energy.meters == ["cpu_time"]


def test_resolved_recipe_round_trips_through_json_and_yaml(tpm):
    spec = _energy(
        [
            "auto",
            {"name": "wall", "watts": 10},
            {"name": "rapl", "poll_seconds": 0.5, "root": "/tmp/powercap"},
            {"name": "cpu_time", "watts_per_cpu": 3},
            {"name": "codecarbon", "country": "dnk"},
            {"name": "nvml", "devices": [0, 2]},
        ]
    )
    recipe = load_recipe(spec, plugin_manager=tpm)
    dumped = recipe.model_dump(mode="json")
    assert dumped["energy"]["meters"] == [
        "auto",
        {"name": "wall", "watts": 10.0},
        {"name": "rapl", "root": "/tmp/powercap", "poll_seconds": 0.5, "max_watts": 2000.0},
        {"name": "cpu_time", "watts_per_cpu": 3.0},
        {"name": "codecarbon", "country": "DNK", "measure_power_secs": 15.0},
        {"name": "nvml", "devices": [0, 2]},
    ]
    for text in (json.dumps(dumped), yaml.safe_dump(dumped)):
        again = load_recipe(yaml.safe_load(text), plugin_manager=tpm)
        assert again == recipe
        assert again.model_dump(mode="json") == dumped
    kinds = [type(m) for m in recipe.energy.meters]
    assert kinds == [str, WallConfig, RaplConfig, CpuTimeConfig, CodecarbonConfig, NvmlConfig]


def test_unknown_option_names_key_value_allowed_keys_and_hint(tpm):
    with pytest.raises(ConfigError) as err:
        load_recipe(_energy(["auto", {"name": "wall", "wats": 10}]), plugin_manager=tpm)
    assert str(err.value) == (
        "energy.meters[1].wats: unknown option 'wats' (got 10) of meter 'wall'. "
        "Allowed keys here: name, watts. Did you mean 'watts'?"
    )


def test_bad_values_name_key_value_and_rule(tpm):
    cases = [
        (
            {"name": "wall", "watts": -1},
            r"energy.meters\[0\].watts: Input should be greater than 0 \(got -1\)",
        ),
        (
            {"name": "rapl", "poll_seconds": "often"},
            r"energy.meters\[0\].poll_seconds: .*valid number.*'often'",
        ),
        (
            {"name": "cpu_time", "watts_per_cpu": 0},
            r"energy.meters\[0\].watts_per_cpu: .*greater than 0 \(got 0\)",
        ),
        (
            {"name": "codecarbon", "country": "Denmark"},
            r"energy.meters\[0\].country: .*alpha-3.*'DNK'.*\(got 'Denmark'\)",
        ),
        (
            {"name": "nvml", "devices": [-1]},
            r"energy.meters\[0\].devices: .*NVML indices ≥ 0.*\(got \[-1\]\)",
        ),
    ]
    for item, match in cases:
        with pytest.raises(ConfigError, match=match):
            load_recipe(_energy([item]), plugin_manager=tpm)


def test_several_errors_are_listed_with_the_rest_of_the_recipe(tpm):
    spec = _energy([{"name": "wall", "wats": 1, "colour": "red"}], carbon={"pue": 0.5})
    with pytest.raises(ConfigError) as err:
        load_recipe(spec, plugin_manager=tpm)
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid recipe:"
    assert lines[1].startswith("  energy.meters[0].wats: unknown option 'wats' (got 1)")
    assert lines[2].startswith("  energy.meters[0].colour: unknown option 'colour' (got 'red')")
    assert lines[3].startswith("  energy.carbon.pue:")


def test_a_required_option_needs_the_mapping_form(tpm):
    with pytest.raises(ConfigError) as err:
        load_recipe(_energy(["wall"]), plugin_manager=tpm)
    assert str(err.value) == (
        "energy.meters[0].watts: meter 'wall' needs option 'watts' (Assumed power (W)); "
        "write it as a mapping: {name: wall, watts: VALUE}"
    )


def test_malformed_items(tpm):
    with pytest.raises(ConfigError, match=r"energy.meters\[1\]: `auto` takes no options \(got x\)"):
        load_recipe(_energy(["cpu_time", {"name": "auto", "x": 1}]), plugin_manager=tpm)
    with pytest.raises(ConfigError, match=r"energy.meters\[0\].name: missing `name`.*cpu_time"):
        load_recipe(_energy([{"watts": 1}]), plugin_manager=tpm)
    with pytest.raises(ConfigError, match=r"energy.meters\[0\]: each meter is a name.*got 3"):
        load_recipe(_energy([3]), plugin_manager=tpm)
    with pytest.raises(
        UnknownPluginError, match=r"energy.meters\[0\].name: unknown energy meter 'wal'.*'wall'"
    ):
        load_recipe(_energy([{"name": "wal", "watts": 1}]), plugin_manager=tpm)
    with pytest.raises(
        ConfigError,
        match=r"energy.meters\[0\].x: unknown option 'x' \(got 1\) of meter 'legacy'. Allowed keys here: name\.",
    ):
        load_recipe(_energy([{"name": "legacy", "x": 1}]), plugin_manager=tpm)


def test_cli_rejects_a_bad_option_before_any_training(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump({**TINY, **_energy([{"name": "cpu_time", "watts_per_cpu": -2}])})
    )
    out_dir = tmp_path / "out"
    out = run_cli("run", str(recipe), "-o", str(out_dir), "-q")
    assert out.returncode == 2, out.stderr
    assert "energy.meters[0].watts_per_cpu: Input should be greater than 0 (got -2)" in out.stderr
    assert not out_dir.exists()  # nothing started: no output folder, no training


def test_cli_validate_prints_meter_options_that_validate_again(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("energy:\n  meters: [auto, {name: rapl, poll_seconds: 2}]\n")
    out = run_cli("validate", str(recipe))
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)
    assert resolved["energy"]["meters"] == [
        "auto",
        {"name": "rapl", "root": None, "poll_seconds": 2.0, "max_watts": 2000.0},
    ]
    again = tmp_path / "again.json"
    again.write_text(out.stdout)
    out2 = run_cli("validate", str(again))
    assert out2.returncode == 0, out2.stderr
    assert json.loads(out2.stdout) == resolved


# --- options reach the meters -------------------------------------------------------------


def _cpu_seconds() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def test_cpu_time_power_from_the_recipe(tpm):
    recipe = load_recipe(_energy([{"name": "cpu_time", "watts_per_cpu": 5}]), plugin_manager=tpm)
    (meter,) = resolve_meters(recipe.energy.meters, tpm, lambda s: None)
    assert isinstance(meter, CpuTimeMeter) and meter.watts == 5.0
    tracker = EnergyTracker([meter], tpm, lambda s: None)
    c0 = _cpu_seconds()
    _, readings = tracker.measure("phase", lambda: sum(i * i for i in range(400_000)))
    cpu = _cpu_seconds() - c0  # process CPU time around the phase, read here
    r = readings["phase:cpu_time"]
    assert r.methods == {"cpu:process": "estimated:cpu-time-user-power"}
    assert 0 < r.joules["cpu:process"] <= 5.0 * cpu + 1e-9
    assert r.joules["cpu:process"] == pytest.approx(5.0 * cpu, abs=5.0 * 0.02)


def _zone(root: Path, name: str, label: str, uj: int) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text("262143328850\n")


def test_rapl_root_from_the_recipe_is_the_tree_read(tpm, tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("FQ_POWERCAP_ROOT", str(tmp_path / "elsewhere"))  # the option wins
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "package-0", 1_000_000)
    item = {"name": "rapl", "root": str(root), "poll_seconds": None}
    recipe = load_recipe(_energy([item]), plugin_manager=tpm)
    (meter,) = resolve_meters(recipe.energy.meters, tpm, lambda s: None)
    assert isinstance(meter, RaplMeter) and meter.root == str(root) and meter.poll_seconds is None
    meter.start()
    (root / "intel-rapl:0" / "energy_uj").write_text("3500000\n")
    r = meter.stop()
    assert r.joules == {"cpu:0": 2.5} and r.methods == {"cpu:0": "measured:rapl"}


@pytest.fixture
def fake_codecarbon(monkeypatch):
    made: list[Any] = []

    class OfflineEmissionsTracker:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs
            made.append(self)

    mod = types.ModuleType("codecarbon")
    mod.OfflineEmissionsTracker = OfflineEmissionsTracker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "codecarbon", mod)
    monkeypatch.delenv("FQ_CARBON_COUNTRY", raising=False)
    return made


def test_host_country_fills_codecarbon_unless_the_item_gives_one(tpm, fake_codecarbon):
    def country(items: list[Any]) -> str | None:
        recipe = load_recipe(_energy(items, carbon={"country": "SWE"}), plugin_manager=tpm)
        host = {"country": recipe.energy.carbon.model().country}
        (meter,) = resolve_meters(recipe.energy.meters, tpm, lambda s: None, host)
        assert isinstance(meter, CodecarbonMeter)
        # the dumped recipe (country: null) still takes the host's country
        again = load_recipe(recipe.model_dump(mode="json"), plugin_manager=tpm)
        (meter2,) = resolve_meters(again.energy.meters, tpm, lambda s: None, host)
        assert meter2.country == meter.country
        return meter.country

    assert country(["codecarbon"]) == "SWE"
    assert country([{"name": "codecarbon"}]) == "SWE"
    assert country([{"name": "codecarbon", "country": "nor", "measure_power_secs": 2}]) == "NOR"
    (meter,) = resolve_meters(
        [CodecarbonConfig(name="codecarbon", measure_power_secs=2)],
        tpm,
        lambda s: None,
        {"country": "FIN"},
    )
    assert isinstance(meter, CodecarbonMeter)
    assert (meter.country, meter.measure_power_secs) == ("FIN", 2.0)


def test_a_meter_without_a_config_still_gets_host_options(tpm):
    (meter,) = resolve_meters(["legacy"], tpm, lambda s: None, {"country": "DNK"})
    assert isinstance(meter, LegacyMeter) and meter.country == "DNK"


def test_a_meter_needing_options_is_skipped_by_auto(tpm, monkeypatch):
    monkeypatch.setattr(WallMeter, "measured", True)
    monkeypatch.setenv("FQ_POWERCAP_ROOT", "/nonexistent")
    logs: list[str] = []
    (meter,) = resolve_meters(["auto"], tpm, logs.append)
    assert isinstance(meter, CpuTimeMeter)
    assert any("'wall' unavailable" in line and "needs option 'watts'" in line for line in logs)


def test_base_constructor_takes_a_config_or_keywords():
    a, b = WallMeter(watts=2), WallMeter(WallConfig(name="wall", watts=2))
    assert a.config == b.config == WallConfig(name="wall", watts=2)
    assert WallMeter.from_config(WallConfig(name="wall", watts=4)).config.watts == 4
    with pytest.raises(TypeError, match="not both"):
        WallMeter(WallConfig(name="wall", watts=2), watts=3)
    with pytest.raises(TypeError, match="takes a WallConfig"):
        WallMeter(CpuTimeConfig(name="cpu_time"))
    with pytest.raises(ConfigError, match="WallMeter options: watts: meter 'wall' needs option"):
        WallMeter()
    with pytest.raises(ConfigError, match=r"unknown option 'wats' \(got 2\).*Did you mean 'watts'"):
        WallMeter(wats=2)
    with pytest.raises(Exception, match="frozen"):
        a.config.watts = 5  # type: ignore[misc]


def test_builtin_constructors_keep_their_keywords(tmp_path):
    m = RaplMeter(tmp_path, poll_seconds=0)
    assert m.config == RaplConfig(name="rapl", root=str(tmp_path), poll_seconds=0)
    assert m.root == str(tmp_path) and m.poll_seconds == 0
    assert RaplMeter.from_config(RaplConfig(name="rapl", poll_seconds=3)).poll_seconds == 3
    assert CpuTimeMeter(7).config.watts_per_cpu == 7


# --- the contract rejects a wrong meter ------------------------------------------------------


class _Labelled(EnergyMeter):
    name = "labelled"
    description = "reports the label it is told (test)"
    label: ClassVar[str] = "estimated:x"

    def probe(self) -> Availability:
        return Availability("ok")

    def start(self) -> None:
        pass

    def stop(self) -> EnergyReading:
        return EnergyReading(self.name, 0.1, {"cpu:0": 1.0}, {"cpu:0": self.label})


class MeasuredButEstimates(_Labelled):
    measured = True
    label = "estimated:tdp"


class EstimateButMeasuredLabel(_Labelled):
    measured = False
    label = "measured:rapl"


class LossyConfig(MeterConfig):
    watts: float = Field(1.0, exclude=True)  # not written to JSON: lost on the way back


class Lossy(_Labelled):
    Config = LossyConfig


class LaxConfig(MeterConfig):
    model_config = ConfigDict(extra="ignore")


class Lax(_Labelled):
    Config = LaxConfig


class NoConfigKept(_Labelled):
    def __init__(self) -> None:  # forgets super().__init__: no self.config
        pass


def _contract(cls: type[EnergyMeter], options: dict[str, Any] | None = None) -> EnergyMeterContract:
    c = type("Contract", (EnergyMeterContract,), {"meter_cls": cls, "config": options or {}})
    return c()


@pytest.mark.parametrize(
    ("cls", "options", "test", "match"),
    [
        (MeasuredButEstimates, {}, "test_measured_flag_matches_the_labels", "measured is True but"),
        (
            EstimateButMeasuredLabel,
            {},
            "test_measured_flag_matches_the_labels",
            "measured is False but",
        ),
        (Lossy, {"watts": 3.0}, "test_config_json_round_trip", "does not survive JSON"),
        (Lax, {}, "test_config_rejects_unknown_key", "accepted the unknown key"),
        (NoConfigKept, {}, "test_config_is_a_meter_config", "self.config"),
    ],
)
def test_contract_rejects_a_wrong_meter(cls, options, test, match):
    with pytest.raises(AssertionError, match=match):
        getattr(_contract(cls, options), test)()


def test_contract_passes_the_right_meter():
    contract = _contract(WallMeter, {"watts": 3.0})
    for name in dir(contract):
        if name.startswith("test_"):
            getattr(contract, name)()
    good = _contract(_Labelled)
    good.test_measured_flag_matches_the_labels()
    good.test_config_json_round_trip()
    good.test_config_rejects_unknown_key()


class TestWallMeterContract(EnergyMeterContract):
    meter_cls = WallMeter
    config: ClassVar[dict[str, Any]] = {"watts": 10.0}
