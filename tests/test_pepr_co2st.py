"""PePR and CO2ST against closed forms, and the `fq-plugins co2st` command."""

from __future__ import annotations

import json
import math
import random

import pytest

from fq_plugins.energy.co2st import WH_PER_UNIT, co2st_estimate
from fq_plugins.energy.pepr import normalize_resource, pepr, pepr_by_name
from fq_plugins.errors import ConfigError

from .conftest import run_cli

# --- PePR -----------------------------------------------------------------------------


def test_pepr_closed_form():
    # R_n = [0, 0.5, 1] → P / 1, P / 1.5, P / 2
    assert pepr([0.9, 0.8, 0.7], [10.0, 20.0, 30.0]) == pytest.approx([0.9, 0.8 / 1.5, 0.35])
    assert pepr_by_name({"a": 0.5, "b": 0.6}, {"a": 3.0, "b": 1.0}) == {"a": 0.25, "b": 0.6}


def test_pepr_equal_resources_and_single_run():
    assert pepr([0.9, 0.8], [5.0, 5.0]) == [0.9, 0.8]
    assert pepr([0.7], [123.0]) == [0.7]


def test_pepr_missing_figures_are_left_out():
    # the NaN run does not move the others' normalisation
    assert normalize_resource([10.0, math.nan, 30.0])[::2] == [0.0, 1.0]
    out = pepr([0.9, 0.8, 0.7], [10.0, math.nan, 30.0])
    assert out[0] == 0.9 and math.isnan(out[1]) and out[2] == 0.35
    assert math.isnan(pepr([math.nan], [1.0])[0])


def test_pepr_lies_between_half_p_and_p():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 6)
        p = [rng.random() for _ in range(n)]
        r = [rng.random() * 1e6 for _ in range(n)]
        for pi, v in zip(p, pepr(p, r), strict=True):
            assert pi / 2 - 1e-15 <= v <= pi + 1e-15


def test_pepr_bad_input():
    with pytest.raises(ConfigError, match="negative"):
        pepr([0.5, 0.5], [-1.0, 2.0])
    with pytest.raises(ConfigError, match="one resource per run"):
        pepr([0.5], [1.0, 2.0])


# --- CO2ST ------------------------------------------------------------------------------


def test_co2st_closed_form():
    e = co2st_estimate("text-to-text", 1000, input_tokens=500)
    wh = (1000 + 0.1 * 500) * 4.68515e-4  # E = N_eff · E_p
    kg = 0.481 * wh / 1000  # C = CI · E, CI in kg/kWh
    assert e.wh == pytest.approx(wh, rel=1e-14)
    assert e.kwh == pytest.approx(wh / 1000, rel=1e-14)
    assert e.kg_co2e == pytest.approx(kg, rel=1e-14)
    assert e.km_driven == pytest.approx(4 * kg, rel=1e-14)
    assert e.flight_minutes == pytest.approx(0.24 * kg, rel=1e-14)
    assert e.method == "estimated:co2st" and e.intensity_source == "CO2ST default"


@pytest.mark.parametrize(
    "task,e_p",
    [
        ("text-to-text", 4.68515e-4),
        ("text-to-image", 1.30097e-3),
        ("image-to-text", 3.42265e-4),
        ("text-to-audio", 1.141833e-3),
        ("text-to-video", 2.174218e-3),
    ],
)
def test_co2st_per_task_table(task, e_p):
    assert WH_PER_UNIT[task] == e_p
    assert co2st_estimate(task, 2000).wh == pytest.approx(2000 * e_p, rel=1e-15)


def test_co2st_intensity_sources():
    assert co2st_estimate("text-to-text", 1e6, intensity_kg_per_kwh=0.1).kg_co2e == pytest.approx(
        1e6 * 4.68515e-4 / 1000 * 0.1, rel=1e-14
    )
    fr = co2st_estimate("text-to-text", 1e6, country="FRA")
    assert fr.intensity_kg_per_kwh == 0.056 and "France" in fr.intensity_source


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"task": "text-to-txt", "units": 1}, "unknown CO2ST task 'text-to-txt'.*'text-to-text'"),
        ({"task": "text-to-text", "units": -1}, "units .* ≥ 0"),
        ({"task": "text-to-text", "units": 1, "input_tokens": math.inf}, "input tokens"),
        ({"task": "text-to-text", "units": 1, "intensity_kg_per_kwh": -0.1}, "intensity"),
        ({"task": "text-to-text", "units": 1, "country": "XXX"}, "unknown country code"),
    ],
)
def test_co2st_bad_input(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        co2st_estimate(**kwargs)


def test_co2st_command():
    out = run_cli("co2st", "--help")
    assert out.returncode == 0
    for opt in ("--task", "--units", "--input-tokens", "--intensity", "--country", "--json"):
        assert opt in out.stdout
    out = run_cli("co2st", "--task", "text-to-image", "--units", "100", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["wh"] == pytest.approx(100 * 1.30097e-3, rel=1e-15)
    assert data["kg_co2e"] == pytest.approx(0.481 * 100 * 1.30097e-3 / 1000, rel=1e-14)
    out = run_cli("co2st", "--task", "text-to-text", "--units", "1000")
    assert out.returncode == 0 and "km driven" in out.stdout and "estimated:co2st" in out.stdout
    out = run_cli("co2st", "--task", "txt2img", "--units", "1")
    assert out.returncode == 2 and "unknown CO2ST task" in out.stderr
    assert "Traceback" not in out.stderr
