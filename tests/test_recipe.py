"""Recipe validation: key paths, values, allowed values and fixes; YAML/JSON; round trip."""

from __future__ import annotations

import json

import pytest
import yaml

from fq_plugins.compressors.uniform import UniformConfig
from fq_plugins.errors import ConfigError, UnknownPluginError
from fq_plugins.recipe import Recipe, default_recipe_text, load_recipe

from .conftest import TINY


def test_default_recipe_loads_and_has_variants(pm):
    r = load_recipe(None, plugin_manager=pm)
    assert r.name == "default"
    assert list(r.variants()) == [
        "fairquant",
        "uniform-4",
        "uniform-3",
        "uniform-2",
        "codeq",
        "bmrs+fairquant",
        "momos",
    ]
    assert isinstance(r.compare["uniform-4"][0], UniformConfig) and r.compare["uniform-4"][0].bits == 4
    assert r.compress[0].method == "fairquant" and r.compress[0].budget.avg_bits == 2.5
    assert yaml.safe_load(default_recipe_text())["name"] == "default"


def test_json_round_trip(pm, tmp_path):
    r = load_recipe(TINY, plugin_manager=pm)
    dumped = r.model_dump(mode="json")
    p = tmp_path / "r.json"
    p.write_text(json.dumps(dumped))
    again = load_recipe(p, plugin_manager=pm)
    assert again == r
    assert again.model_dump(mode="json") == dumped
    assert dumped["compress"][0]["bits"] == 4  # subclass fields survive serialization


def test_yaml_file(pm, tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(TINY))
    assert load_recipe(p, plugin_manager=pm).compress[0].bits == 4


def test_misspelt_method_key_names_path_and_suggests(pm):
    with pytest.raises(ConfigError) as ei:
        load_recipe({"compress": [{"method": "uniform", "bitz": 4}]}, plugin_manager=pm)
    msg = str(ei.value)
    assert "compress[0].bitz" in msg and "unknown key 'bitz'" in msg
    assert "Did you mean 'bits'" in msg and "granularity" in msg


def test_misspelt_top_level_and_nested_keys(pm):
    with pytest.raises(ConfigError, match=r"traning: unknown key 'traning'.*Did you mean 'train'"):
        load_recipe({"traning": {"epochs": 1}}, plugin_manager=pm)
    with pytest.raises(
        ConfigError, match=r"train.epoch: unknown key 'epoch'.*Did you mean 'epochs'"
    ):
        load_recipe({"train": {"epoch": 1}}, plugin_manager=pm)


@pytest.mark.parametrize("bits", [0, 17, -3])
def test_bits_outside_1_16(pm, bits):
    with pytest.raises(ConfigError) as ei:
        load_recipe({"compress": [{"method": "uniform", "bits": bits}]}, plugin_manager=pm)
    msg = str(ei.value)
    assert "compress[0].bits" in msg and f"got {bits}" in msg and ("16" in msg or "1" in msg)


def test_unknown_method_lists_valid(pm):
    with pytest.raises(UnknownPluginError) as ei:
        load_recipe({"compare": {"x": [{"method": "unifrm"}]}}, plugin_manager=pm)
    msg = str(ei.value)
    assert "compare.x[0].method" in msg and "'unifrm'" in msg and "uniform" in msg


def test_unknown_metric_and_meter(pm):
    with pytest.raises(UnknownPluginError, match=r"fairness.metrics\[1\].*worst_group_accuracy"):
        load_recipe({"fairness": {"metrics": ["group_accuracy", "worst_grp"]}}, plugin_manager=pm)
    with pytest.raises(UnknownPluginError, match=r"energy.meters\[0\].*cpu_time"):
        load_recipe({"energy": {"meters": ["rapl_typo"]}}, plugin_manager=pm)


def test_missing_file_and_not_yaml(pm, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml", plugin_manager=pm)
    bad = tmp_path / "bad.yaml"
    bad.write_text("compress: [\n  - method: uniform\n  bits: : 4\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad, plugin_manager=pm)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_recipe(lst, plugin_manager=pm)


def test_npz_source_needs_path_and_group(pm):
    with pytest.raises(ConfigError, match=r"data: .*needs `path"):
        load_recipe({"data": {"source": "npz"}}, plugin_manager=pm)


def test_overrides(pm):
    r = load_recipe(TINY, plugin_manager=pm, overrides={"train.epochs": 3, "data.synthetic.n": 900})
    assert r.train.epochs == 3 and r.data.synthetic.n == 900
    assert TINY["train"]["epochs"] == 1  # the caller's dict is not mutated


def test_multiple_errors_are_all_listed(pm):
    with pytest.raises(ConfigError) as ei:
        load_recipe({"train": {"epochs": -1, "lr": 0}}, plugin_manager=pm)
    msg = str(ei.value)
    assert "train.epochs" in msg and "train.lr" in msg and "got -1" in msg


def test_variant_name_clash(pm):
    r = load_recipe(
        {
            "compress": [{"method": "uniform", "bits": 4}],
            "compare": {"uniform-4": [{"method": "uniform", "bits": 4}]},
        },
        plugin_manager=pm,
    )
    with pytest.raises(ConfigError, match=r"compare\.uniform-4"):
        r.variants()


def test_recipe_schema_without_plugin_manager_keeps_dicts():
    # Without a registry in the context, method items stay generic MethodConfig objects.
    r = Recipe.model_validate({"compress": [{"method": "uniform"}]})
    assert r.compress[0].method == "uniform"


# --- the host-neutral part, schema version, immutability ----------------------------------


def test_host_neutral_recipe_needs_no_run_keys():
    from fq_plugins.recipe import CompressionRecipe, Recipe, load_compression_recipe

    r = load_compression_recipe(
        {"compress": [{"method": "uniform", "bits": 4}], "fairness": {"group_key": "sex"}}
    )
    assert type(r) is CompressionRecipe and r.compress[0].bits == 4
    assert r.fairness.group_key == "sex" and r.version == 1
    # a full `fq-plugins run` recipe drives a host too
    full = load_compression_recipe({"train": {"epochs": 1}, "compress": [{"method": "uniform"}]})
    assert isinstance(full, Recipe) and full.train.epochs == 1


def test_host_neutral_recipe_errors_name_the_key():
    from fq_plugins.recipe import load_compression_recipe

    with pytest.raises(ConfigError, match=r"compress\[0\]\.bitz: unknown key 'bitz'"):
        load_compression_recipe({"compress": [{"method": "uniform", "bitz": 4}]})
    with pytest.raises(ConfigError, match=r"unknown key 'fairnes'.*Did you mean 'fairness'"):
        load_compression_recipe({"fairnes": {}})


def test_newer_schema_version_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="schema version 2; this fq-plugins reads version 1: upgrade"):
        load_recipe({"version": 2})


def test_validated_configs_are_immutable():
    from pydantic import ValidationError

    r = load_recipe({"compress": [{"method": "momos"}]})
    with pytest.raises(ValidationError, match="frozen"):
        r.compress[0].capacity = None  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        r.train.epochs = -1  # type: ignore[misc]
    assert r.compress[0].capacity == 0.01  # the default, filled during validation
