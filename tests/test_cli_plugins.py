"""Plugin failures as a user of the command line meets them: every command warns about a
broken plugin; `plugins` and `list` show a name conflict, `run` and `validate` refuse it."""

from __future__ import annotations

import json

import pytest
import yaml

from ._dists import make_dist
from .conftest import TINY, run_cli

RAISES = """
    from fq_plugins import hookimpl
    @hookimpl
    def fq_register_compressors(register):
        raise RuntimeError("boom")
"""

DUP = """
    from fq_plugins import hookimpl
    from fq_plugins.compressors.uniform import UniformCompressor
    class Again(UniformCompressor):
        description = "a second uniform"
    @hookimpl
    def fq_register_compressors(register):
        register(Again)
"""

CONFLICT = (
    "compressor name 'uniform' is registered twice: by fq_plugins.compressors.uniform and by "
    "dup. Rename one of them, or disable one plugin with FQ_PLUGINS_DISABLE=<plugin name>."
)


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    return str(p)


def _env(tmp_path, dist, ep, module, source):
    return {"PYTHONPATH": str(make_dist(tmp_path, dist, ep, module, source))}


@pytest.mark.parametrize(
    "command,status",
    [
        (["plugins"], 1),
        (["plugins", "--json"], 1),
        (["list", "compressors"], 0),
        (["validate", "RECIPE"], 0),
        (["run", "MISSING.yaml"], 2),  # the warning comes before the recipe error
    ],
)
def test_every_command_warns_about_a_registration_hook_that_raises(
    tmp_path, recipe, command, status
):
    env = _env(tmp_path, "fq-plugins-raises", "raises", "fq_raises_mod", RAISES)
    paths = {"RECIPE": recipe, "MISSING.yaml": str(tmp_path / "missing.yaml")}
    argv = [paths.get(a, a) for a in command]
    out = run_cli(*argv, env=env)
    assert out.returncode == status, out.stderr
    warning = (
        "warning: plugin 'raises' from distribution 'fq-plugins-raises' failed to load: "
        "fq_register_compressors raised RuntimeError: boom. Upgrade or uninstall it "
        "(`pip uninstall fq-plugins-raises`), or skip it with FQ_PLUGINS_DISABLE=raises."
    )
    assert warning in out.stderr.splitlines()
    assert "Traceback" not in out.stderr
    if command[0] == "validate":
        assert json.loads(out.stdout)["compress"][0]["method"] == "uniform"
    if command == ["plugins", "--json"]:
        data = json.loads(out.stdout)
        assert data["errors"] == [warning.removeprefix("warning: ")]
        assert "raises" not in {p["name"] for p in data["plugins"]}


def test_plugins_shows_a_name_conflict(tmp_path):
    env = _env(tmp_path, "fq-plugins-dup", "dup", "fq_dup_mod", DUP)
    out = run_cli("plugins", "--json", env=env)
    assert out.returncode == 1 and f"warning: {CONFLICT}" in out.stderr.splitlines()
    data = json.loads(out.stdout)
    assert data["conflicts"] == [
        {
            "family": "compressors",
            "name": "uniform",
            "plugins": ["fq_plugins.compressors.uniform", "dup"],
        }
    ]
    dup = next(p for p in data["plugins"] if p["name"] == "dup")
    assert (
        dup["registered"] == {"compressors": ["uniform"]}
        and dup["distribution"] == "fq-plugins-dup"
    )
    out = run_cli("plugins", env=env)
    assert out.returncode == 1
    assert "  compressors: uniform (conflict: also dup)" in out.stdout.splitlines()
    assert "  compressors: uniform (conflict: also fq_plugins.compressors.uniform)" in out.stdout


def test_list_shows_a_name_conflict(tmp_path):
    env = _env(tmp_path, "fq-plugins-dup", "dup", "fq_dup_mod", DUP)
    out = run_cli("list", "compressors", env=env)
    assert out.returncode == 0 and f"warning: {CONFLICT}" in out.stderr.splitlines()
    [line] = [ln for ln in out.stdout.splitlines() if ln.startswith("uniform ")]
    assert line.endswith("[conflict: fq_plugins.compressors.uniform and dup]")
    assert "[conflict" not in "".join(ln for ln in out.stdout.splitlines() if ln != line)
    rows = json.loads(run_cli("list", "compressors", "--json", env=env).stdout)
    uniform = next(r for r in rows if r["name"] == "uniform")
    assert uniform["conflict"] is True
    assert uniform["plugins"] == ["fq_plugins.compressors.uniform", "dup"]
    assert [r["name"] for r in rows if r["conflict"]] == ["uniform"]


@pytest.mark.parametrize("command", ["run", "validate"])
def test_run_and_validate_refuse_a_name_conflict(tmp_path, recipe, command):
    env = _env(tmp_path, "fq-plugins-dup", "dup", "fq_dup_mod", DUP)
    args = [command, recipe] + (["-o", str(tmp_path / "o")] if command == "run" else [])
    out = run_cli(*args, env=env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [f"fq-plugins: error: {CONFLICT}"]
    assert out.stdout == "" and not (tmp_path / "o").exists()  # refused before any work
    if command == "validate":  # the fix the message gives works
        out = run_cli("validate", recipe, env={**env, "FQ_PLUGINS_DISABLE": "dup"})
        assert out.returncode == 0 and json.loads(out.stdout)["compress"][0]["method"] == "uniform"
