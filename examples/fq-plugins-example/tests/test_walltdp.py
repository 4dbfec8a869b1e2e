"""The example meter `walltdp`: joules = configured watts × wall seconds, options from a recipe."""

import time

import fq_plugins_example
import pytest
from fq_plugins_example import WallTdpConfig, WallTdpMeter

from fq_plugins.energy.tracker import EnergyTracker, resolve_meters
from fq_plugins.errors import ConfigError
from fq_plugins.manager import get_plugin_manager
from fq_plugins.recipe import load_recipe
from fq_plugins.testing import EnergyMeterContract


class TestWallTdpMeter(EnergyMeterContract):
    meter_cls = WallTdpMeter
    config = {"watts": 10.0}


@pytest.fixture
def pm():
    """fq-plugins' built-ins plus this package, however (or whether) it is installed."""
    pm = get_plugin_manager(autoload=False)
    pm.pm.register(fq_plugins_example, name="example")
    return pm


def test_joules_are_watts_times_wall_seconds():
    meter = WallTdpMeter(watts=10)
    t_outer = time.perf_counter()
    meter.start()
    t_inner = time.perf_counter()
    time.sleep(0.2)
    inner = time.perf_counter() - t_inner
    reading = meter.stop()
    outer = time.perf_counter() - t_outer
    assert inner <= reading.seconds <= outer
    assert 10 * inner <= reading.joules["system:wall-tdp"] <= 10 * outer
    assert reading.methods == {"system:wall-tdp": "estimated:wall-tdp"} and reading.estimated


def test_config_or_keywords_build_the_same_meter():
    assert (
        WallTdpMeter(watts=3.5).config
        == WallTdpMeter(WallTdpConfig(name="walltdp", watts=3.5)).config
    )
    with pytest.raises(ConfigError, match=r"watts: Input should be greater than 0 \(got 0\)"):
        WallTdpMeter(watts=0)
    with pytest.raises(ConfigError, match="needs option 'watts'"):
        WallTdpMeter()
    with pytest.raises(RuntimeError, match="before start"):
        WallTdpMeter(watts=1).stop()


def test_recipe_options_reach_the_meter(pm):
    recipe = load_recipe(
        {"energy": {"meters": [{"name": "walltdp", "watts": 25}]}}, plugin_manager=pm
    )
    (meter,) = resolve_meters(recipe.energy.meters, pm, lambda s: None)
    assert isinstance(meter, WallTdpMeter) and meter.config.watts == 25.0
    tracker = EnergyTracker([meter], pm, lambda s: None)
    t0 = time.perf_counter()
    _, readings = tracker.measure("phase", lambda: time.sleep(0.1))
    outer = time.perf_counter() - t0
    reading = readings["phase:walltdp"]
    assert 25 * 0.1 <= reading.total_joules <= 25 * outer
    assert reading.method == "estimated:wall-tdp"


def test_recipe_errors_name_the_key_value_and_fix(pm):
    with pytest.raises(ConfigError) as err:
        load_recipe(
            {"energy": {"meters": ["auto", {"name": "walltdp", "wats": 10}]}}, plugin_manager=pm
        )
    msg = str(err.value)
    assert msg.startswith("energy.meters[1].wats: unknown option 'wats' (got 10)")
    assert "Allowed keys here: name, watts." in msg and "Did you mean 'watts'?" in msg
    with pytest.raises(
        ConfigError, match=r"energy.meters\[0\].watts: meter 'walltdp' needs option"
    ):
        load_recipe({"energy": {"meters": ["walltdp"]}}, plugin_manager=pm)
