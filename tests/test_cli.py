"""The command line as a user meets it: exit codes, one-line errors, no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from .conftest import TINY, run_cli

FAST = [
    "--set",
    "data.synthetic.n=600",
    "--set",
    "data.synthetic.n_classes=4",
    "--set",
    "model.kwargs.width=4",
    "--epochs",
    "1",
    "--finetune-epochs",
    "1",
    "--set",
    "compare={}",
    "--set",
    "compress=[{method: uniform, bits: 4}]",
]


def test_help_lists_every_command_and_option():
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("run", "plugins", "list", "validate", "show-default"):
        assert cmd in out.stdout
    out = run_cli("run", "--help")
    for opt in (
        "--output",
        "--seed",
        "--epochs",
        "--finetune-epochs",
        "--set",
        "--quiet",
        "--json",
    ):
        assert opt in out.stdout


def test_run_default_recipe_with_overrides(tmp_path):
    out = run_cli("run", *FAST, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "[train] epoch 1/1" in out.stderr  # progress on stderr, the result on stdout
    table = out.stdout
    assert "method" not in out.stderr
    for col in (
        "method",
        "acc",
        "mean-grp",
        "worst-grp",
        "gap",
        "avg bits",
        "sparsity",
        "packed",
        "time s",
    ):
        assert col in table
    assert "fp32" in table and "uniform-4" in table and "estimated:" in table
    report_line = next(ln for ln in out.stdout.splitlines() if ln.startswith("report: "))
    path = report_line.removeprefix("report: ")
    assert path.startswith("fq-runs/") and (tmp_path / path).exists()


@pytest.mark.slow
def test_run_with_no_arguments_as_documented(tmp_path):
    """`fq-plugins run` with no arguments: the README's main command."""
    out = subprocess.run(
        ["fq-plugins", "run"] if _has_script() else [sys.executable, "-m", "fq_plugins", "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(next((tmp_path / "fq-runs").glob("*-default/report.json")).read_text())
    # the tour: every method of the library, each with its line
    assert [v["variant"] for v in data["variants"]] == [
        "fp32",
        "fairquant",
        "uniform-4",
        "uniform-3",
        "uniform-2",
        "codeq",
        "bmrs+fairquant",
        "momos",
    ]
    assert data["status"] == "ok"
    by = {v["variant"]: v for v in data["variants"]}
    assert by["fairquant"]["cost"]["avg_bits_param"] <= 2.5 + 1e-6
    assert by["uniform-2"]["cost"]["avg_bits_param"] == 2
    fp32 = data["variants"][0]
    assert (
        fp32["worst_group_accuracy"] < fp32["mean_group_accuracy"] - 0.03
    )  # the minority is harder


def _has_script() -> bool:
    import shutil

    return shutil.which("fq-plugins") is not None


def test_json_output_and_quiet(tmp_path):
    out = run_cli("run", *FAST, "--json", "-q", "-o", str(tmp_path / "o"))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "ok" and out.stderr == ""


@pytest.mark.parametrize(
    "recipe,expected",
    [
        ({"compress": [{"method": "unifrom"}]}, "unknown compressor 'unifrom'"),
        ({"compress": [{"method": "uniform", "bitz": 4}]}, "compress[0].bitz: unknown key 'bitz'"),
        (
            {"compress": [{"method": "uniform", "bits": 17}]},
            "compress[0].bits: Input should be less than or equal to 16 (got 17)",
        ),
        (
            {"compress": [{"method": "uniform", "budget": {"avg_bits": 0.5}}]},
            "avg_bits 0.5 cannot be met",
        ),
        ({"fairness": {"metrics": ["worst"]}}, "unknown fairness metric 'worst'"),
        (
            {"compress": [{"method": "fairquant", "budget": {"levels": {2: 0.5, 8: 0.6}}}]},
            "compress[0].budget: fractions must be ≥ 0 and sum to 1; got [0.5, 0.6]",
        ),
        (
            {"compress": [{"method": "fairquant", "budget": {"levels": {2: 0.5, 17: 0.5}}}]},
            "compress[0].budget: bit levels must be integers in 1–16; got [17]",
        ),
        (
            {"compress": [{"method": "fairquant", "mode": "baq", "budget": {"avg_bits": 1.5}}]},
            "compress[0].budget.avg_bits: avg_bits 1.5 cannot be met",
        ),
        (
            {
                "data": {
                    "source": "npz",
                    "path": "DATA",
                    "group": {"column": "agee", "threshold": 60},
                }
            },
            "no array 'agee'",
        ),
    ],
)
def test_bad_input_gives_one_message_and_exit_2(tmp_path, recipe, expected):
    if recipe.get("data", {}).get("path") == "DATA":
        import numpy as np

        np.savez(
            tmp_path / "d.npz",
            x=np.zeros((20, 8, 8, 3), np.uint8),
            y=np.arange(20) % 2,
            age=np.arange(20.0),
        )
        recipe["data"]["path"] = str(tmp_path / "d.npz")
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({**TINY, **recipe}))
    out = run_cli("run", str(p), "-o", str(tmp_path / "o"))
    assert out.returncode == 2, out.stderr
    assert expected in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("error:") == 1


@pytest.mark.parametrize(
    "content,expected", [(None, "does not exist"), ("a: [1, 2\n", "not valid YAML")]
)
def test_bad_recipe_file(tmp_path, content, expected):
    p = tmp_path / "r.yaml"
    if content is not None:
        p.write_text(content)
    out = run_cli("run", str(p))
    assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr


def test_plugins_and_list_do_not_import_transformers_or_nncf():
    code = (
        "import sys, io, contextlib\n"
        "from fq_plugins.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    assert main(['plugins', '--json']) == 0\n"
        "    for fam in ('compressors', 'metrics', 'meters', 'selectors'):\n"
        "        assert main(['list', fam]) == 0\n"
        "bad = [m for m in ('transformers', 'nncf', 'torchao') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "FQ_PLUGINS_AUTOLOAD": "0"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_plugins_json_and_list(tmp_path):
    out = run_cli("plugins", "--json", env={"FQ_PLUGINS_AUTOLOAD": "0"})
    assert out.returncode == 0 and out.stderr == ""
    data = json.loads(out.stdout)
    assert set(data) == {"plugins", "errors", "conflicts"}
    assert data["errors"] == [] and data["conflicts"] == []
    uni = next(p for p in data["plugins"] if p["name"] == "fq_plugins.compressors.uniform")
    assert set(uni) == {"name", "distribution", "version", "hooks", "registered", "builtin"}
    assert uni["distribution"] == "fq-plugins" and uni["registered"] == {"compressors": ["uniform"]}
    assert uni["hooks"] == ["fq_register_compressors"] and uni["builtin"] is True
    out = run_cli("list", "metrics")
    assert out.returncode == 0 and "worst_group_accuracy" in out.stdout
    rows = json.loads(run_cli("list", "meters", "--json").stdout)
    rapl = next(r for r in rows if r["name"] == "rapl")
    assert rapl == {
        "name": "rapl",
        "description": "CPU package + DRAM energy from Intel/AMD RAPL counters in powercap "
        "sysfs (measured).",
        "plugin": "fq_plugins.energy.rapl",
        "plugins": ["fq_plugins.energy.rapl"],
        "conflict": False,
    }
    out = run_cli("list", "nope")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_validate_and_show_default(tmp_path):
    out = run_cli("show-default")
    assert out.returncode == 0 and yaml.safe_load(out.stdout)["name"] == "default"
    p = tmp_path / "r.yaml"
    p.write_text(out.stdout)
    out = run_cli("validate", str(p))
    resolved = json.loads(out.stdout)
    assert out.returncode == 0 and resolved["compress"][0]["budget"]["avg_bits"] == 2.5


def test_report_command_redraws_a_run_folder(tmp_path):
    """Oracle: the files `fq-plugins run` wrote itself (same report.json → same page, CSV and
    table)."""
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(TINY))
    run = run_cli("run", str(p), "-q", "-o", str(tmp_path / "o"))
    assert run.returncode == 0, run.stderr
    folder = next((tmp_path / "o").rglob("report.json")).parent
    html, csv = (folder / "report.html").read_text(), (folder / "results.csv").read_text()
    (folder / "report.html").unlink()
    (folder / "results.csv").unlink()
    out = run_cli("report", str(folder))
    assert out.returncode == 0, out.stderr
    table = run.stdout.split("report:")[0]
    assert out.stdout.startswith(table)
    assert (folder / "report.html").read_text() == html
    assert (folder / "results.csv").read_text() == csv
    # bad input: a folder without a report, a file that is not one
    out = run_cli("report", str(tmp_path))
    assert out.returncode == 2 and "no report.json in" in out.stderr
    assert "Traceback" not in out.stderr
    (tmp_path / "report.json").write_text("{not json")
    out = run_cli("report", str(tmp_path))
    assert out.returncode == 2 and "is not a readable report" in out.stderr
    (tmp_path / "report.json").write_text('{"variants": 3}')
    out = run_cli("report", str(tmp_path))
    assert out.returncode == 2 and "not an fq-plugins report" in out.stderr
