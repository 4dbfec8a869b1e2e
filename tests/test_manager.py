"""Plugin manager: built-ins, entry points, disable/autoload, broken and duplicate plugins, events."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from fq_plugins import hookimpl
from fq_plugins.errors import DuplicateNameError, PluginLoadError, UnknownPluginError
from fq_plugins.manager import DEFAULT_PLUGINS, get_plugin_manager
from fq_plugins.recipe import load_recipe
from fq_plugins.run import run

from .conftest import TINY


def make_dist(
    tmp_path: Path, dist: str, ep_name: str, module: str, source: str, version: str = "1.2.3"
) -> Path:
    """A real installed distribution: ``*.dist-info`` with ``entry_points.txt`` + the module."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[fq_plugins]\n{ep_name} = {module}\n", encoding="utf-8"
    )
    return site


@pytest.fixture
def on_path(monkeypatch):
    def add(site: Path) -> None:
        monkeypatch.syspath_prepend(str(site))

    return add


def test_builtins_register_every_family(pm):
    assert pm.compressors.names() == ["bmrs", "codeq", "fairquant", "momos", "uniform"]
    assert set(pm.metrics.names()) >= {"group_accuracy", "worst_group_accuracy", "accuracy_gap"}
    assert pm.meters.names() == ["codecarbon", "cpu_time", "nvml", "rapl"]
    assert pm.selectors.names() == ["random"]
    names = {i.name for i in pm.plugin_infos()}
    assert set(DEFAULT_PLUGINS) <= names
    for info in pm.plugin_infos():
        assert info.builtin and info.distribution == "fq-plugins"


def test_fq_register_compressors_third_party_entry_point(tmp_path, on_path):
    on_path(
        make_dist(
            tmp_path,
            "fq-plugins-tp",
            "tp",
            "fq_tp_mod",
            """
        from fq_plugins import hookimpl
        from fq_plugins.compressors.uniform import UniformCompressor
        from fq_plugins.protocols import FairnessMetric, EnergyMeter, DataSelector

        class Tp(UniformCompressor):
            name = "tp_uniform"
            description = "third-party uniform"

        class M(FairnessMetric):
            name = "tp_metric"; description = "d"

        class E(EnergyMeter):
            name = "tp_meter"; description = "d"

        class S(DataSelector):
            name = "tp_selector"; description = "d"

        @hookimpl
        def fq_register_compressors(register):
            register(Tp)

        @hookimpl
        def fq_register_fairness_metrics(register):
            register(M)

        @hookimpl
        def fq_register_energy_meters(register):
            register(E)

        @hookimpl
        def fq_register_data_selectors(register):
            register(S)
    """,
        )
    )
    pm = get_plugin_manager(disable=())
    assert "tp_uniform" in pm.compressors.names()
    assert pm.compressors.entry("tp_uniform").plugin == "tp"
    assert "tp_metric" in pm.metrics and "tp_meter" in pm.meters and "tp_selector" in pm.selectors
    info = next(i for i in pm.plugin_infos() if i.name == "tp")
    assert (info.distribution, info.version, info.builtin) == ("fq-plugins-tp", "1.2.3", False)
    assert info.registered["compressors"] == ["tp_uniform"]
    assert "fq_register_data_selectors" in info.hooks


def test_autoload_off_and_disable(tmp_path, on_path, monkeypatch):
    on_path(
        make_dist(
            tmp_path,
            "fq-plugins-tp2",
            "tp2",
            "fq_tp2_mod",
            """
        from fq_plugins import hookimpl
        from fq_plugins.compressors.uniform import UniformCompressor
        class Tp(UniformCompressor):
            name = "tp2"
        @hookimpl
        def fq_register_compressors(register):
            register(Tp)
    """,
        )
    )
    assert "tp2" in get_plugin_manager().compressors
    monkeypatch.setenv("FQ_PLUGINS_AUTOLOAD", "0")
    assert "tp2" not in get_plugin_manager().compressors
    monkeypatch.delenv("FQ_PLUGINS_AUTOLOAD")
    monkeypatch.setenv("FQ_PLUGINS_DISABLE", "tp2, fq_plugins.data.selectors")
    pm = get_plugin_manager()
    assert "tp2" not in pm.compressors and len(pm.selectors) == 0


def test_broken_plugin_is_reported_and_others_load(tmp_path, on_path):
    site = make_dist(
        tmp_path,
        "fq-plugins-broken",
        "broken",
        "fq_broken_mod",
        "raise ImportError('needs libfoo')",
    )
    on_path(site)
    pm = get_plugin_manager()
    assert "uniform" in pm.compressors
    assert len(pm.load_errors) == 1
    err = pm.load_errors[0]
    assert isinstance(err, PluginLoadError)
    assert err.distribution == "fq-plugins-broken" and "needs libfoo" in str(err)
    assert "pip uninstall fq-plugins-broken" in str(err)


def test_plugin_with_unknown_hook_is_reported(tmp_path, on_path):
    on_path(
        make_dist(
            tmp_path,
            "fq-plugins-typo",
            "typo",
            "fq_typo_mod",
            """
        from fq_plugins import hookimpl
        @hookimpl
        def fq_register_compresors(register):
            pass
    """,
        )
    )
    pm = get_plugin_manager()
    assert [e.distribution for e in pm.load_errors] == ["fq-plugins-typo"]
    assert "fq_register_compresors" in str(pm.load_errors[0])


def test_registration_hook_that_raises_is_reported(tmp_path, on_path):
    on_path(
        make_dist(
            tmp_path,
            "fq-plugins-raises",
            "raises",
            "fq_raises_mod",
            """
        from fq_plugins import hookimpl
        @hookimpl
        def fq_register_compressors(register):
            raise RuntimeError("boom")
    """,
        )
    )
    pm = get_plugin_manager()
    assert pm.compressors.names() == ["bmrs", "codeq", "fairquant", "momos", "uniform"]
    assert (
        "boom" in str(pm.load_errors[0]) and pm.load_errors[0].distribution == "fq-plugins-raises"
    )


def test_duplicate_name_names_both_plugins(tmp_path, on_path):
    on_path(
        make_dist(
            tmp_path,
            "fq-plugins-dup",
            "dup",
            "fq_dup_mod",
            """
        from fq_plugins import hookimpl
        from fq_plugins.compressors.uniform import UniformCompressor
        class Again(UniformCompressor):
            pass
        @hookimpl
        def fq_register_compressors(register):
            register(Again)
    """,
        )
    )
    pm = get_plugin_manager()
    with pytest.raises(DuplicateNameError) as ei:
        pm.compressors  # noqa: B018
    msg = str(ei.value)
    assert "'uniform'" in msg and "fq_plugins.compressors.uniform" in msg and "dup" in msg


def test_unknown_name_lists_valid_ones(pm):
    with pytest.raises(UnknownPluginError) as ei:
        pm.compressors.get("unifrom")
    msg = str(ei.value)
    assert "unifrom" in msg and "uniform" in msg and "Did you mean 'uniform'" in msg


def test_nothing_loaded_at_import_time():
    import subprocess

    code = (
        "import sys, fq_plugins; "
        "assert 'fq_plugins.manager' not in sys.modules; assert 'torch' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


class Recorder:
    """An observer plugin implementing every event hook."""

    def __init__(self) -> None:
        self.calls: dict[str, list] = {}

    def _rec(self, name, *args):
        self.calls.setdefault(name, []).append(args)

    @hookimpl
    def fq_after_attach(self, session, model):
        self._rec("fq_after_attach", session, model)

    @hookimpl
    def fq_on_step(self, step, phase, losses):
        self._rec("fq_on_step", step, phase, dict(losses))

    @hookimpl
    def fq_on_evaluation(self, report):
        self._rec("fq_on_evaluation", report)

    @hookimpl
    def fq_on_energy_reading(self, phase, reading):
        self._rec("fq_on_energy_reading", phase, reading)

    @hookimpl
    def fq_on_run_end(self, report, output_dir):
        self._rec("fq_on_run_end", report, output_dir)


def test_event_hooks_fire_during_a_run(pm, tmp_path):
    """fq_after_attach, fq_on_step, fq_on_evaluation, fq_on_energy_reading, fq_on_run_end."""
    rec = Recorder()
    pm.pm.register(rec, name="recorder")
    recipe = load_recipe(
        {**TINY, "fairness": {"regularizer": {"kind": "gap", "weight": 0.5}}}, plugin_manager=pm
    )
    report, out = run(
        recipe, plugin_manager=pm, output_dir=str(tmp_path / "out"), log=lambda m: None
    )
    c = rec.calls
    assert (
        len(c["fq_after_attach"]) == 1 and c["fq_after_attach"][0][0].methods[0].name == "uniform"
    )
    steps = c["fq_on_step"]
    n_batches = -(-report.dataset["n_train"] // 64)
    assert [s[0] for s in steps if s[1] == "train"] == list(range(n_batches))
    ft = [s for s in steps if s[1].startswith("finetune:")]
    assert ft and set(ft[0][2]) == {"task", "fairness", "penalty", "total"}
    assert ft[0][2]["total"] == pytest.approx(
        ft[0][2]["task"] + 0.5 * ft[0][2]["fairness"] + ft[0][2]["penalty"], rel=1e-5
    )
    assert [r[0].variant for r in c["fq_on_evaluation"]] == ["fp32", "uniform-4"]
    phases = [p for p, _ in c["fq_on_energy_reading"]]
    assert phases == ["train", "eval:fp32", "finetune:uniform-4", "eval:uniform-4"]
    assert c["fq_on_run_end"] == [(report, out)]
