"""Carbon model (closed form), the bundled table, bad input, codecarbon, and a run's report."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest

from fq_plugins.energy import carbon
from fq_plugins.energy.carbon import CarbonModel, joules_to_kwh, lookup_country
from fq_plugins.energy.codecarbon_meter import CodecarbonMeter
from fq_plugins.errors import ConfigError
from fq_plugins.recipe import load_recipe
from fq_plugins.testing import EnergyMeterContract

from .conftest import TINY


def test_closed_form():
    assert joules_to_kwh(3.6e6) == 1.0
    m = CarbonModel.from_spec(country="DNK", pue=1.58)
    assert m is not None and m.intensity_g_per_kwh == 152.0 and m.method == "country:DNK"
    # 7.2 MJ = 2 kWh; × 1.58 × 152 g/kWh
    est = m.estimate(7.2e6)
    assert est.kwh == 2.0 and est.grams == pytest.approx(2 * 1.58 * 152, rel=1e-15)
    assert "Ember" in est.source and "2023" in est.source
    given = CarbonModel.from_spec(intensity_g_per_kwh=100.0)
    assert given is not None and given.grams(3.6e6) == 100.0 and given.method == "given"


def test_energy_only_and_world_average():
    assert CarbonModel.from_spec() is None
    w = CarbonModel.from_spec(world_average=True)
    assert w is not None and w.intensity_g_per_kwh == 475.0
    assert w.method == "estimated:world-average" and "IEA" in w.source


def test_table_has_source_year_and_a_few_dozen_countries():
    assert carbon.TABLE_YEAR == 2023 and "Our World in Data" in carbon.TABLE_SOURCE
    assert len(carbon.COUNTRY_INTENSITY) >= 30
    assert lookup_country("fr").g_per_kwh == 56.0 and lookup_country("POL").g_per_kwh == 662.0
    for row in carbon.COUNTRY_INTENSITY.values():
        assert 0 < row.g_per_kwh < 1000 and len(row.iso3) == 3 and len(row.iso2) == 2


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"country": "DEN"}, "unknown country code 'DEN'.*'DNK' \\(Denmark\\)"),
        ({"country": "Germany"}, "Did you mean 'DEU' \\(Germany\\)"),
        ({"pue": -1.0}, "PUE -1.0 is not allowed.*≥ 1"),
        ({"pue": 0}, "PUE 0(\\.0)? is not allowed"),
        ({"intensity_g_per_kwh": -3.0}, "intensity -3.0 g/kWh is not allowed"),
        ({"country": "DNK", "intensity_g_per_kwh": 5.0}, "one source of carbon intensity"),
        ({"world_average": True, "country": "FRA"}, "one source"),
    ],
)
def test_bad_input_is_a_config_error(spec, match):
    with pytest.raises(ConfigError, match=match):
        CarbonModel.from_spec(**spec)
    with pytest.raises(ConfigError, match=match) as exc:
        load_recipe({"energy": {"carbon": spec}})
    assert str(exc.value).startswith("energy.carbon")


def test_negative_energy_is_rejected():
    m = CarbonModel.from_spec(intensity_g_per_kwh=10.0)
    assert m is not None
    with pytest.raises(ConfigError, match="negative"):
        m.estimate(-1.0)
    assert math.isnan(m.estimate(math.nan).grams)  # a missing figure stays missing


# --- codecarbon (not installed: a fake module stands in) -------------------------------


def test_codecarbon_not_installed_says_how_to_install():
    if "codecarbon" in sys.modules or _installed("codecarbon"):
        pytest.skip("codecarbon is installed here")
    a = CodecarbonMeter("DNK").probe()
    assert a.status == "missing" and "pip install codecarbon" in a.reason


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.fixture
def fake_codecarbon(monkeypatch):
    made = []

    class OfflineEmissionsTracker:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            made.append(self)

        def start(self):
            pass

        def stop(self):
            self.final_emissions_data = types.SimpleNamespace(
                cpu_energy=0.001, gpu_energy=0.0, ram_energy=0.0005, energy_consumed=0.0015
            )
            return 0.0015 * 0.152

    mod = types.ModuleType("codecarbon")
    mod.OfflineEmissionsTracker = OfflineEmissionsTracker  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "codecarbon", mod)
    monkeypatch.delenv("FQ_CARBON_COUNTRY", raising=False)
    return made


def test_codecarbon_always_gets_a_country(fake_codecarbon):
    m = CodecarbonMeter("dnk")
    assert m.probe().ok
    m.start()
    r = m.stop()
    assert fake_codecarbon[0].kwargs["country_iso_code"] == "DNK"
    assert r.joules == {"cpu:codecarbon": 3600.0, "gpu:codecarbon": 0.0, "ram:codecarbon": 1800.0}
    assert set(r.methods.values()) == {"estimated:codecarbon"}


def test_codecarbon_without_country_refuses(fake_codecarbon):
    a = CodecarbonMeter().probe()
    assert a.status == "error" and "needs a country" in a.reason
    with pytest.raises(ConfigError, match="needs a country"):
        CodecarbonMeter().start()
    assert not fake_codecarbon
    with pytest.raises(ConfigError, match="alpha-3"):
        CodecarbonMeter("Denmark")


def test_recipe_country_reaches_codecarbon(fake_codecarbon, pm):
    from fq_plugins.run import resolve_meters

    recipe = load_recipe({"energy": {"meters": ["codecarbon"], "carbon": {"country": "se"}}})
    cm = recipe.energy.carbon.model()
    (meter,) = resolve_meters(recipe.energy.meters, pm, options={"country": cm.country})
    assert isinstance(meter, CodecarbonMeter) and meter.country == "SWE"
    with pytest.raises(ConfigError, match=r"energy.meters\[0\].*needs a country"):
        resolve_meters(["codecarbon"], pm)


def test_recipe_options_reach_codecarbon(fake_codecarbon, pm):
    from fq_plugins.run import resolve_meters

    item = {"name": "codecarbon", "measure_power_secs": 2, "country": "nor"}
    recipe = load_recipe({"energy": {"meters": [item], "carbon": {"country": "DNK"}}})
    (meter,) = resolve_meters(recipe.energy.meters, pm, options={"country": "DNK"})
    meter.start()
    meter.stop()
    kwargs = fake_codecarbon[0].kwargs
    assert kwargs["measure_power_secs"] == 2.0 and kwargs["country_iso_code"] == "NOR"
    with pytest.raises(
        ConfigError, match=r"energy.meters\[0\].measure_power_secs: .*greater than 0"
    ):
        load_recipe({"energy": {"meters": [{"name": "codecarbon", "measure_power_secs": 0}]}})


# --- a whole run: carbon per variant, PePR, first-epoch prediction -------------------------


def test_run_reports_carbon_pepr_and_prediction(tmp_path, pm):
    from fq_plugins.run import run

    spec = {
        **TINY,
        "train": {"epochs": 2, "batch_size": 64},
        "fairness": {"metrics": ["eopp1", "eodd", "dp_gap", "delta_eodds"], "undefined": "zero"},
        "energy": {"meters": ["cpu_time"], "carbon": {"country": "DNK", "pue": 1.5}},
    }
    logs: list[str] = []
    report, _ = run(
        load_recipe(spec, plugin_manager=pm),
        plugin_manager=pm,
        output_dir=str(tmp_path / "r"),
        log=logs.append,
    )
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    assert [v["variant"] for v in data["variants"]] == ["fp32", "uniform-4"]
    for v, rep in zip(data["variants"], report.variants, strict=True):
        c = v["carbon"]
        assert c["method"] == "country:DNK" and c["pue"] == 1.5
        assert c["grams"] == pytest.approx(v["energy_joules"] / 3.6e6 * 1.5 * 152.0, rel=1e-12)
        assert set(v["metrics"]) == {"eopp1", "eodd", "dp_gap", "delta_eodds"}
        assert v["metrics"]["eodd"]["details"]["undefined"] == "zero"
        assert v["energy_method"].startswith("estimated:")
        assert rep.energy_prediction  # one per training phase
    pred = data["variants"][0]["energy_prediction"]["train"]
    assert pred["epochs"] == 2
    assert pred["predicted_joules"] == pytest.approx(2 * pred["first_epoch_joules"])
    assert pred["actual_joules"] >= pred["first_epoch_joules"]
    assert any("predicted total energy for this phase" in line for line in logs)
    # PePR over the variants: closed form from the report's own figures
    accs = {v["variant"]: v["accuracy"] for v in data["variants"]}
    energies = {v["variant"]: v["energy_joules"] for v in data["variants"]}
    lo, hi = min(energies.values()), max(energies.values())
    for name, p in data["pepr"]["accuracy"]["energy"].items():
        rn = (energies[name] - lo) / (hi - lo) if hi > lo else 0.0
        assert p == pytest.approx(accs[name] / (1 + rn))
    assert set(data["pepr"]["accuracy"]) == {"energy", "time", "memory", "co2"}
    assert "worst_group_accuracy" in data["pepr"]
    from fq_plugins.report import format_table  # the table `fq-plugins run` prints

    table = format_table(report.variants, metrics=spec["fairness"]["metrics"])
    assert "CO2 g" in table and "PePR-E" in table and "country:DNK" in table


class TestCodecarbonContract(EnergyMeterContract):
    """The meter contract, with the fake codecarbon module standing in."""

    meter_cls = CodecarbonMeter
    config = {"country": "NOR", "measure_power_secs": 5.0}

    @pytest.fixture(autouse=True)
    def _fake(self, fake_codecarbon):
        pass


def test_meter_failing_mid_run_loses_nothing_else(tmp_path, pm):
    """A meter that fails during one phase: the run finishes, that phase's figure (and the
    variant's energy and CO2) is missing with the reason logged, everything else is kept."""
    from fq_plugins import hookimpl
    from fq_plugins.energy.estimate import CpuTimeMeter
    from fq_plugins.run import run

    class Flaky(CpuTimeMeter):
        name = "flaky"
        description = "fails on its third stop()"
        stops = 0

        def stop(self):
            type(self).stops += 1
            if type(self).stops == 3:  # train: lap + stop; the third is eval:fp32
                raise OSError("counter vanished")
            return super().stop()

    class Plugin:
        @hookimpl
        def fq_register_energy_meters(self, register):
            register(Flaky)

    pm.pm.register(Plugin(), name="flaky-plugin")
    spec = {**TINY, "energy": {"meters": ["flaky"], "carbon": {"intensity_g_per_kwh": 100}}}
    logs: list[str] = []
    report, _ = run(
        load_recipe(spec, plugin_manager=pm),
        plugin_manager=pm,
        output_dir=str(tmp_path / "r"),
        log=logs.append,
    )
    assert report.status == "ok"
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    fp32, q4 = data["variants"]
    assert fp32["energy"]["eval:fp32:flaky"]["missing"] == "OSError: counter vanished"
    assert fp32["energy"]["train:flaky"]["missing"] is None
    assert fp32["energy_joules"] is None and fp32["carbon"]["grams"] is None
    assert fp32["accuracy"] > 0 and fp32["metrics"]  # nothing else lost
    assert q4["energy_joules"] > 0 and q4["carbon"]["grams"] > 0
    assert data["pepr"]["accuracy"]["energy"]["fp32"] is None
    assert any("meter 'flaky' failed during eval:fp32: counter vanished" in s for s in logs)
    from fq_plugins.report import format_table  # the table `fq-plugins run` prints

    assert "missing" in format_table(report.variants)
