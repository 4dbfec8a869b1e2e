"""A real third-party package (examples/fq-plugins-example), pip-installed, used by name."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "fq-plugins-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert list(target.glob("fq_plugins_example-*.dist-info"))
    return {"PYTHONPATH": str(target)}


def test_plugins_lists_the_installed_package(installed):
    out = run_cli("plugins", "--json", env=installed)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    ex = next(p for p in data["plugins"] if p["name"] == "example")
    assert (
        ex["distribution"] == "fq-plugins-example"
        and ex["version"] == "0.2.0"
        and not ex["builtin"]
    )
    assert ex["registered"] == {
        "compressors": ["magnitude_prune"],
        "metrics": ["worst_class_recall"],
        "meters": ["walltdp"],
    }
    out = run_cli("list", "compressors", env=installed)
    assert "magnitude_prune" in out.stdout and "example plugin" in out.stdout


def test_recipe_uses_third_party_names(installed, tmp_path):
    t0 = time.perf_counter()
    out = run_cli(
        "run",
        str(EXAMPLE / "recipe.yaml"),
        "-o",
        str(tmp_path / "o"),
        "--json",
        "-q",
        "--set",
        "data.synthetic.n=600",
        "--epochs",
        "1",
        env=installed,
    )
    elapsed = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    # the recipe's meter item {name: walltdp, watts: 10} reached the third-party meter
    assert data["recipe"]["energy"]["meters"] == [{"name": "walltdp", "watts": 10.0}]
    total = 0.0
    for v in data["variants"]:
        assert v["energy_method"] == "estimated:wall-tdp"
        assert v["energy"], v["variant"]
        for reading in v["energy"].values():
            assert reading["meter"] == "walltdp"
            assert reading["methods"] == {"system:wall-tdp": "estimated:wall-tdp"}
            assert reading["total_joules"] == pytest.approx(10 * reading["seconds"], rel=1e-9)
        # the phases lie inside the variant's own time, which `run` measures apart from meters
        assert 0 < v["energy_joules"] <= 10 * v["wall_seconds"]
        total += v["energy_joules"]
    assert total <= 10 * elapsed  # and inside the subprocess, timed here
    variant = data["variants"][1]
    assert variant["variant"] == "magnitude_prune+uniform-8"
    assert "worst_class_recall" in variant["metrics"]
    head = next(lc for lc in variant["cost"]["layers"] if lc["name"] == "head")
    conv = next(lc for lc in variant["cost"]["layers"] if lc["name"] == "features.0")
    assert head["sparsity"] < 0.1  # head ignored by the pruner's targets
    assert conv["sparsity"] == int(0.6 * conv["params"]) / conv["params"]  # exactly ⌊0.6·n⌋ zeros


def test_disabled_by_env(installed):
    out = run_cli("list", "compressors", env={**installed, "FQ_PLUGINS_DISABLE": "example"})
    assert "magnitude_prune" not in out.stdout
    out = run_cli("list", "compressors", env={**installed, "FQ_PLUGINS_AUTOLOAD": "0"})
    assert "magnitude_prune" not in out.stdout


def test_example_contract_tests_pass(installed):
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, **installed},
        cwd=str(EXAMPLE),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert " passed" in out.stdout


def test_validate_round_trips_meter_options(installed, tmp_path):
    out = run_cli("validate", str(EXAMPLE / "recipe.yaml"), env=installed)
    assert out.returncode == 0, out.stderr
    resolved = json.loads(out.stdout)
    assert resolved["energy"]["meters"] == [{"name": "walltdp", "watts": 10.0}]
    again_path = tmp_path / "resolved.json"
    again_path.write_text(out.stdout)
    again = run_cli("validate", str(again_path), env=installed)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == resolved
    bad = tmp_path / "bad.yaml"
    bad.write_text("energy: {meters: [auto, {name: walltdp, wats: 10}]}\n")
    out = run_cli("validate", str(bad), env=installed)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "energy.meters[1].wats: unknown option 'wats' (got 10)" in out.stderr
    assert "Allowed keys here: name, watts." in out.stderr and "Did you mean 'watts'?" in out.stderr
