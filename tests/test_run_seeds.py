"""`fq-plugins run --seeds` (mean ± std over seeds) and `--resume` (finished pairs kept)."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from fq_plugins.cli import main
from fq_plugins.errors import FQError
from fq_plugins.recipe import load_recipe
from fq_plugins.run import run

from .conftest import TINY

SPEC = {**TINY, "compare": {"u2": [{"method": "uniform", "bits": 2}]}}


def _pairs(report_dict):
    return {
        (v["variant"], v["seed"]): (
            v["accuracy"],
            v["worst_group_accuracy"],
            v["cost"]["packed_bytes"],
        )
        for v in report_dict["variants"]
    }


def _run(pm, out, seeds, **kw):
    recipe = load_recipe({**SPEC, "seeds": seeds}, plugin_manager=pm)
    return run(recipe, plugin_manager=pm, output_dir=str(out), log=lambda m: None, **kw)


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    from fq_plugins.manager import get_plugin_manager

    pm = get_plugin_manager()
    out = tmp_path_factory.mktemp("seeds") / "o"
    _run(pm, out, [0, 1])
    return json.loads((out / "report.json").read_text()), out


def test_every_variant_runs_per_seed_and_the_summary_is_mean_and_std(two_seeds):
    data, out = two_seeds
    assert data["schema_version"] == 2 and data["seeds"] == [0, 1] and data["status"] == "ok"
    assert sorted(_pairs(data)) == sorted(
        (v, s) for v in ("fp32", "uniform-4", "u2") for s in (0, 1)
    )
    # the seeds differ (split, initialisation): otherwise mean ± std would be meaningless
    accs = {
        s: v["accuracy"] for v in data["variants"] if v["variant"] == "fp32" for s in [v["seed"]]
    }
    assert accs[0] != accs[1]
    for entry in data["summary"]:
        vals = [v["accuracy"] for v in data["variants"] if v["variant"] == entry["variant"]]
        assert entry["seeds"] == [0, 1]
        assert entry["accuracy"]["mean"] == pytest.approx(statistics.mean(vals), abs=1e-12)
        assert entry["accuracy"]["std"] == pytest.approx(statistics.stdev(vals), abs=1e-12)
        assert entry["accuracy"]["n"] == 2
    # one checkpoint per (variant, seed), named with the seed
    for name in ("fp32-s0.pt", "fp32-s1.pt", "uniform-4-s0.fqz", "u2-s1.fqz"):
        assert (out / name).is_file()
    # results.csv: one row per (variant, seed), the same figures as report.json
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["variant"], int(r["seed"])): float(r["accuracy"]) for r in rows} == {
        k: v[0] for k, v in _pairs(data).items()
    }


def test_the_table_shows_mean_and_std(two_seeds):
    from fq_plugins.report import format_table

    data, _ = two_seeds
    lines = format_table(data["variants"]).splitlines()
    fp32 = next(line for line in lines if line.startswith("fp32"))
    entry = next(e for e in data["summary"] if e["variant"] == "fp32")
    assert f"{entry['accuracy']['mean']:.4f}±{entry['accuracy']['std']:.4f}" in fp32
    assert any(line.startswith("2 seeds:") for line in lines)


def test_resume_adds_seeds_and_equals_one_uninterrupted_run(pm, tmp_path, two_seeds):
    data, _ = two_seeds
    out = tmp_path / "o"
    _run(pm, out, [0])
    report, _ = _run(pm, out, [0, 1], resume=True)
    resumed = json.loads((out / "report.json").read_text())
    assert resumed["status"] == "ok" and resumed["seeds"] == [0, 1]
    assert _pairs(resumed) == _pairs(data)  # seed 0 kept, seed 1 computed: as if never stopped
    assert len(report.variants) == 3  # only seed 1's variants ran this time


def test_resume_after_an_interruption_keeps_what_finished(pm, tmp_path, monkeypatch, two_seeds):
    import fq_plugins.run as run_module

    data, _ = two_seeds
    real = run_module._run_variant
    calls = []

    def interrupted(vname, *args, **kwargs):
        calls.append((vname, kwargs["seed"]))
        if len(calls) == 3:  # seed 1's first compressed variant
            raise KeyboardInterrupt("signal SIGTERM")
        return real(vname, *args, **kwargs)

    monkeypatch.setattr(run_module, "_run_variant", interrupted)
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        _run(pm, out, [0, 1])
    partial = json.loads((out / "report.json").read_text())
    assert partial["status"] == "interrupted"
    assert sorted(_pairs(partial)) == [("fp32", 0), ("fp32", 1), ("u2", 0), ("uniform-4", 0)]
    monkeypatch.setattr(run_module, "_run_variant", real)
    _run(pm, out, [0, 1], resume=True)
    done = json.loads((out / "report.json").read_text())
    assert done["status"] == "ok" and _pairs(done) == _pairs(data)


def test_resume_refuses_a_different_recipe_and_a_folder_without_a_run(pm, tmp_path):
    out = tmp_path / "o"
    _run(pm, out, [0])
    before = (out / "report.json").read_text()
    other = load_recipe({**SPEC, "seeds": [0], "finetune": {"epochs": 2}}, plugin_manager=pm)
    with pytest.raises(FQError, match=r"different recipe \(these keys differ: finetune\)"):
        run(other, plugin_manager=pm, output_dir=str(out), log=lambda m: None, resume=True)
    assert (out / "report.json").read_text() == before  # nothing lost
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FQError, match=r"holds no report\.json"):
        _run(pm, empty, [0], resume=True)


def test_cli_resume_needs_a_folder_and_seed_flags_exclude_each_other(capsys):
    assert main(["run", "--resume"]) == 2
    assert "--resume needs the run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "--seed", "1", "--seeds", "0", "1"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
