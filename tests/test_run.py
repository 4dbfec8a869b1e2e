"""The run pipeline in-process: report contents, partial report on failure."""

from __future__ import annotations

import json
import math

import pytest

from fq_plugins.errors import ConfigError
from fq_plugins.recipe import load_recipe
from fq_plugins.run import run

from .conftest import TINY, data_dir


def test_tiny_run_report(pm, tmp_path):
    recipe = load_recipe(
        {**TINY, "compare": {"u8": [{"method": "uniform", "bits": 8}]}}, plugin_manager=pm
    )
    report, _ = run(recipe, plugin_manager=pm, output_dir=str(tmp_path / "o"), log=lambda m: None)
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["status"] == "ok" and [v["variant"] for v in data["variants"]] == [
        "fp32",
        "uniform-4",
        "u8",
    ]
    fp32, u4, u8 = report.variants
    assert (
        fp32.cost.avg_bits_param == 32
        and u4.cost.avg_bits_param == 4
        and u8.cost.avg_bits_param == 8
    )
    assert u4.cost.packed_bytes < u8.cost.packed_bytes < fp32.cost.packed_bytes
    assert u4.finalize_max_abs_diff == 0.0
    for v in report.variants:
        assert v.worst_group_accuracy <= v.mean_group_accuracy
        assert v.accuracy_gap == pytest.approx(v.mean_group_accuracy - v.worst_group_accuracy)
        assert math.isfinite(v.energy_joules) and v.energy_method.startswith("estimated:")
        assert set(v.metrics) == {"group_accuracy", "worst_group_accuracy", "accuracy_gap"}
    assert (tmp_path / "o" / "recipe.yaml").exists()
    # each compressed variant is saved as packed codes that load back bit-identically
    from fq_plugins.models import build_model
    from fq_plugins.storage import load_compressed

    ck = data["variants"][1]["checkpoint"]
    assert ck["float_layers"] == [] and ck["file_bytes"] < data["variants"][0]["checkpoint"]["file_bytes"]
    m = build_model("small_cnn", in_channels=3, image_size=8, n_classes=4, width=4)
    load_compressed(ck["path"], m)
    assert load_recipe(str(tmp_path / "o" / "recipe.yaml"), plugin_manager=pm) == recipe


def test_a_failing_variant_is_marked_failed_and_the_others_still_run(pm, tmp_path, monkeypatch):
    """A failure inside one variant (here a fault injected into it) marks that variant
    failed in the report; the variants after it still run and are reported."""
    import fq_plugins.run as run_module

    real = run_module._run_variant

    def faulty(vname, *args, **kwargs):
        if vname == "bad":
            raise ConfigError("injected fault", key="compare.bad[0].targets")
        return real(vname, *args, **kwargs)

    monkeypatch.setattr(run_module, "_run_variant", faulty)
    recipe = load_recipe(
        {
            **TINY,
            "compare": {"bad": [{"method": "uniform", "bits": 2}], "after": [{"method": "uniform", "bits": 3}]},
        },
        plugin_manager=pm,
    )
    report, _ = run(recipe, plugin_manager=pm, output_dir=str(tmp_path / "o"), log=lambda m: None)
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["status"] == "partial" and report.status == "partial"
    assert data["failed_variants"] == [
        {"variant": "bad", "seed": 0, "error": "compare.bad[0].targets: injected fault"}
    ]
    assert [v["variant"] for v in data["variants"]] == ["fp32", "uniform-4", "after"]


def test_an_exception_outside_a_variant_keeps_the_partial_report(pm, tmp_path, monkeypatch):
    import fq_plugins.run as run_module

    def broken_plot(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(run_module, "plot_layer_bits", broken_plot)
    recipe = load_recipe(TINY, plugin_manager=pm)
    with pytest.raises(RuntimeError, match="disk on fire"):
        run(recipe, plugin_manager=pm, output_dir=str(tmp_path / "o"), log=lambda m: None)
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["status"] == "failed" and "disk on fire" in data["error"]
    assert [v["variant"] for v in data["variants"]] == ["fp32", "uniform-4"]


@pytest.mark.slow
@pytest.mark.skipif(data_dir() is None, reason="shared data folder not found (set FQ_DATA_DIR)")
def test_npz_run_on_ham10000_subset(pm, tmp_path):
    recipe = load_recipe(
        {
            **TINY,
            "data": {
                "source": "npz",
                "path": str(data_dir() / "ham10000_sub_32.npz"),
                "group": {"column": "age", "threshold": 60},
                "max_examples": 1200,
            },
        },
        plugin_manager=pm,
    )
    report, _ = run(recipe, plugin_manager=pm, output_dir=str(tmp_path / "o"), log=lambda m: None)
    assert report.dataset["groups"] == ["age<60", "age>=60"] and report.dataset["input_shape"] == [
        3,
        32,
        32,
    ]
    assert len(report.variants) == 2


def test_recipe_metrics_are_table_columns(tmp_path):
    from fq_plugins.report import format_table

    recipe = load_recipe(
        {
            "data": {"synthetic": {"n": 200, "image_size": 8}},
            "model": {"kwargs": {"width": 4}},
            "train": {"epochs": 1},
            "finetune": {"epochs": 0},
            "compress": [{"method": "uniform", "bits": 4}],
            "fairness": {"metrics": ["worst_group_accuracy", "eodd", "dp_gap"]},
        }
    )
    report, _ = run(recipe, output_dir=str(tmp_path / "r"), log=lambda s: None)
    lines = format_table(report.variants, metrics=recipe.fairness.metrics).splitlines()
    header = lines[0].split()
    assert "eodd" in header and "dp_gap" in header and "worst_group_accuracy" not in header
    for v, line in zip(report.variants, lines[2:], strict=False):
        cells = line.split()
        assert cells[0] == v.variant
        assert f"{v.metrics['eodd'].value:.4f}" in cells and f"{v.metrics['dp_gap'].value:.4f}" in cells


def test_cli_exits_1_and_names_a_failed_variant(tmp_path, monkeypatch, capsys):
    import yaml

    import fq_plugins.run as run_module
    from fq_plugins.cli import main

    real = run_module._run_variant

    def faulty(vname, *args, **kwargs):
        if vname == "bad":
            raise ConfigError("injected fault")
        return real(vname, *args, **kwargs)

    monkeypatch.setattr(run_module, "_run_variant", faulty)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**TINY, "compare": {"bad": [{"method": "uniform", "bits": 2}]}}))
    monkeypatch.setenv("FQ_PLUGINS_AUTOLOAD", "0")
    assert main(["run", str(path), "-o", str(tmp_path / "o"), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "variant 'bad' failed: injected fault" in captured.err
    assert "uniform-4" in captured.out  # the table of what finished
