"""`data.selection` in `fq-plugins run`: select, then train, then compress — the
selector's cost in the FP32 variant's energy and time, what it kept in the report."""

from __future__ import annotations

import json

import pytest

from fq_plugins.errors import ConfigError
from fq_plugins.recipe import load_recipe
from fq_plugins.run import build_datasets, run

from .conftest import TINY


@pytest.mark.parametrize("selector", ["random", "el2n"])
def test_selection_trains_on_the_kept_part(pm, tmp_path, selector):
    spec = {
        **TINY,
        "data": {
            **TINY["data"],
            "selection": {
                "selector": selector,
                "fraction": 0.5,
                "group_aware": True,
                **({"warmup_epochs": 1} if selector == "el2n" else {}),
            },
        },
    }
    recipe = load_recipe(spec, plugin_manager=pm)
    full, _ = build_datasets(recipe.data, recipe.seed)
    run(recipe, plugin_manager=pm, output_dir=str(tmp_path / "o"), log=lambda m: None)
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    picked = data["dataset"]["selection"]["0"]
    assert picked["selector"] == selector and picked["n_full"] == len(full)
    assert picked["n_kept"] == round(0.5 * len(full))
    # group-aware: every group keeps its share (largest-remainder rounding: within one example per cell)
    counts = full.counts()["per_group"]
    for g, n_g in zip(picked["per_group"], counts, strict=True):
        assert g["full"] == n_g and abs(g["kept"] - n_g / 2) <= len(full.class_names)
    fp32 = data["variants"][0]
    assert any(k.startswith("select") for k in fp32["energy"])  # the selector's cost counts
    assert picked["warmup_epochs"] == (1 if selector == "el2n" else 0)


def test_bad_selection_is_refused_before_any_work(pm):
    with pytest.raises(ConfigError, match=r"data.selection.fraction"):
        load_recipe(
            {**TINY, "data": {**TINY["data"], "selection": {"fraction": 0}}}, plugin_manager=pm
        )
    with pytest.raises(ConfigError, match=r"data.selection.selector"):
        load_recipe(
            {
                **TINY,
                "data": {**TINY["data"], "selection": {"selector": "coreset9", "fraction": 0.5}},
            },
            plugin_manager=pm,
        )
