"""The dataset readers and the model zoo from a recipe, end to end through `fq-plugins run`:
a tabular CSV with an MLP, an images folder + CSV, user weights."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml

from fq_plugins.errors import ConfigError
from fq_plugins.recipe import load_recipe
from fq_plugins.run import build_datasets, run

from .conftest import run_cli

FAST = {
    "train": {"epochs": 1, "batch_size": 32},
    "finetune": {"epochs": 1},
    "compress": [{"method": "uniform", "bits": 4}],
}


def _adult_like(path, n=240, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["age", "hours", "workclass", "sex", "income"])
        for i in range(n):
            age, hours = int(rng.integers(18, 80)), int(rng.integers(10, 60))
            w.writerow(
                [
                    age,
                    hours,
                    rng.choice(["private", "gov", "self"]),
                    ["female", "male"][i % 2],
                    ">50K" if age + hours + rng.normal(0, 10) > 85 else "<=50K",
                ]
            )
    return path


def test_a_tabular_csv_trains_an_mlp_from_a_recipe_file(tmp_path):
    _adult_like(tmp_path / "adult.csv")
    recipe = {
        "name": "adult",
        "data": {
            "source": "tabular",
            "tabular": {"path": "adult.csv", "label": "income", "groups": [{"column": "sex"}]},
        },
        "model": {"name": "mlp", "kwargs": {"hidden": 16}},
        **FAST,
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    # the CSV is found relative to the recipe, wherever the command runs
    out = run_cli("run", str(tmp_path / "r.yaml"), "-q", "-o", str(tmp_path / "o"), cwd="/")
    assert out.returncode == 0, out.stderr
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert data["dataset"]["groups"] == ["sex=female", "sex=male"]
    assert data["dataset"]["classes"] == ["<=50K", ">50K"]
    # 2 numeric + 3 one-hot workclass levels = 5 features of shape (F, 1, 1)
    assert data["dataset"]["input_shape"] == [5, 1, 1]
    assert [v["variant"] for v in data["variants"]] == ["fp32", "uniform-4"]


def test_an_images_folder_and_user_weights(pm, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(48):
        Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / f"{i}.png"
        )
        rows.append([f"{i}.png", ["a", "b"][i % 2], ["f", "m"][(i // 2) % 2]])
    with open(tmp_path / "meta.csv", "w", newline="") as f:
        csv.writer(f).writerows([["image", "label", "sex"], *rows])
    spec = {
        "data": {
            "source": "images",
            "images": {
                "csv": str(tmp_path / "meta.csv"),
                "root": str(tmp_path / "imgs"),
                "groups": [{"column": "sex"}],
                "image_size": 8,
            },
        },
        "model": {"name": "small_cnn", "kwargs": {"width": 4}},
        **FAST,
    }
    recipe = load_recipe(spec, plugin_manager=pm)
    train, test = build_datasets(recipe.data, 0)
    assert tuple(train.x.shape[1:]) == (3, 8, 8) and len(train) + len(test) == 48
    # user weights: the FP32 model starts from them (weights_only load)
    from fq_plugins.models import build_model

    m = build_model("small_cnn", in_channels=3, image_size=8, n_classes=2, width=4)
    torch.nn.init.constant_(m.head.weight, 0.125)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    recipe = load_recipe(
        {
            **spec,
            "model": {**spec["model"], "weights": str(tmp_path / "w.pt")},
            "train": {"epochs": 0},
        },
        plugin_manager=pm,
    )
    run(recipe, plugin_manager=pm, output_dir=str(tmp_path / "o"), log=lambda msg: None)
    saved = torch.load(tmp_path / "o" / "fp32.pt", weights_only=True)
    assert torch.equal(saved["head.weight"], m.state_dict()["head.weight"])


def test_a_source_without_its_section_names_the_fix(pm):
    with pytest.raises(ConfigError, match=r"source 'tabular' needs its options under `tabular:`"):
        load_recipe({"data": {"source": "tabular"}}, plugin_manager=pm)
