"""A yes/no value where a number is meant is an error, not 1 or 0 (pydantic's coercion)."""

from __future__ import annotations

import pytest

from fq_plugins.errors import ConfigError
from fq_plugins.recipe import load_recipe


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"compress": [{"method": "uniform", "bits": True}]},
            r"compress\[0\]: bits: true is a yes/no value",
        ),
        (
            {"train.epochs": False},
            "epochs: false is a yes/no value, but epochs takes a whole number",
        ),
        ({"finetune.lr": True}, "lr: true is a yes/no value, but lr takes a number"),
        ({"seeds": [0, True]}, r"seeds: \[0, True\] holds a yes/no value"),
        ({"energy.meters": [{"name": "cpu_time", "watts_per_cpu": True}]}, "yes/no value"),
    ],
)
def test_a_boolean_for_a_number_is_refused(pm, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(None, plugin_manager=pm, overrides=overrides)


def test_boolean_fields_still_take_booleans(pm):
    r = load_recipe(None, plugin_manager=pm, overrides={"data.normalize": False})
    assert r.data.normalize is False
