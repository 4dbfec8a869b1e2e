"""A real third-party package (examples/fq-plugins-example), pip-installed, used by name."""

from __future__ import annotations

import json
import subprocess
import sys

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
    }
    out = run_cli("list", "compressors", env=installed)
    assert "magnitude_prune" in out.stdout and "example plugin" in out.stdout


def test_recipe_uses_third_party_names(installed, tmp_path):
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
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
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
