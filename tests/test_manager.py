"""Plugin manager: built-ins, entry points, disable/autoload, broken and duplicate plugins, events."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fq_plugins import default_plugins, hookimpl
from fq_plugins.errors import DuplicateNameError, FQError, PluginLoadError, UnknownPluginError
from fq_plugins.manager import DEFAULT_PLUGINS, get_plugin_manager
from fq_plugins.recipe import load_recipe
from fq_plugins.registry import LazyPlugin
from fq_plugins.run import run

from ._dists import make_dist
from .conftest import TINY

BUILTIN_COMPRESSORS = ["bmrs", "codeq", "fairquant", "momos", "uniform"]


@pytest.fixture
def on_path(monkeypatch):
    def add(site: Path) -> None:
        monkeypatch.syspath_prepend(str(site))

    return add


def test_builtins_register_every_family(pm):
    assert pm.compressors.names() == BUILTIN_COMPRESSORS
    assert set(pm.metrics.names()) >= {"group_accuracy", "worst_group_accuracy", "accuracy_gap"}
    assert pm.meters.names() == ["codecarbon", "cpu_time", "nvml", "rapl"]
    assert pm.selectors.names() == ["el2n", "kcenter", "random"]
    names = {i.name for i in pm.plugin_infos()}
    assert set(DEFAULT_PLUGINS) <= names
    for info in pm.plugin_infos():
        assert info.builtin and info.distribution == "fq-plugins"
    assert pm.conflicts() == [] and pm.load_errors == []


def test_builtins_are_the_lazy_plugin_objects_not_the_method_modules(pm):
    """The method modules still hold old hookimpls: registering them too would duplicate names."""
    for name in DEFAULT_PLUGINS:
        plugin = pm.pm.get_plugin(name)
        assert plugin is default_plugins.PLUGINS[name], name
        assert not isinstance(plugin, type(sys))  # not a module
    registered = [p for _, p in pm.pm.list_name_plugin() if isinstance(p, type(sys))]
    assert registered == []
    # every built-in name is registered once, by the plugin named after the class's module
    for reg in pm.registries.values():
        for e in reg:
            assert e.plugins == [e.plugin] and e.lazy
            assert e.target.module == e.plugin


TP_SOURCE = """
    import torch
    from fq_plugins import hookimpl
    from fq_plugins.compressors.uniform import UniformCompressor
    from fq_plugins.protocols import FairnessMetric, EnergyMeter, DataSelector

    class Tp(UniformCompressor):
        name = "tp_uniform"
        description = "third-party uniform"

    class M(FairnessMetric):
        name = "tp_metric"; description = "a third-party metric"

    class E(EnergyMeter):
        name = "tp_meter"; description = "a third-party meter"

    class S(DataSelector):
        name = "tp_selector"; description = "the first round(fraction * n) examples"

        def select(self, labels, fraction, *, model=None, groups=None, seed=0, inputs=None):
            return torch.arange(round(fraction * len(labels)), dtype=torch.int64)

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
"""


@pytest.fixture
def tp_pm(tmp_path, on_path):
    """A manager with the installed distribution fq-plugins-tp (entry point ``tp``)."""
    on_path(make_dist(tmp_path, "fq-plugins-tp", "tp", "fq_tp_mod", TP_SOURCE))
    sys.modules.pop("fq_tp_mod", None)
    pm = get_plugin_manager(disable=())
    assert pm.load_errors == []
    return pm, sys.modules["fq_tp_mod"]


def _tp_info(pm):
    info = next(i for i in pm.plugin_infos() if i.name == "tp")
    assert (info.distribution, info.version, info.builtin) == ("fq-plugins-tp", "1.2.3", False)
    return info


def test_fq_register_compressors_third_party_entry_point(tp_pm):
    pm, mod = tp_pm
    assert pm.compressors.names() == sorted([*BUILTIN_COMPRESSORS, "tp_uniform"])
    assert pm.compressors.get("tp_uniform") is mod.Tp
    assert pm.compressors.entry("tp_uniform").plugin == "tp"
    info = _tp_info(pm)
    assert info.registered["compressors"] == ["tp_uniform"]
    assert info.hooks == [
        "fq_register_compressors",
        "fq_register_data_selectors",
        "fq_register_energy_meters",
        "fq_register_fairness_metrics",
    ]
    recipe = load_recipe(
        {**TINY, "compress": [{"method": "tp_uniform", "bits": 3}]}, plugin_manager=pm
    )
    assert recipe.compress[0].method == "tp_uniform" and recipe.compress[0].bits == 3


def test_fq_register_fairness_metrics_third_party_entry_point(tp_pm):
    pm, mod = tp_pm
    assert pm.metrics.get("tp_metric") is mod.M
    assert pm.metrics.entry("tp_metric").description == "a third-party metric"
    assert _tp_info(pm).registered["metrics"] == ["tp_metric"]
    recipe = load_recipe(
        {**TINY, "fairness": {"metrics": ["tp_metric", "eodd"]}}, plugin_manager=pm
    )
    assert recipe.fairness.metrics == ["tp_metric", "eodd"]


def test_fq_register_energy_meters_third_party_entry_point(tp_pm):
    pm, mod = tp_pm
    assert pm.meters.get("tp_meter") is mod.E
    assert _tp_info(pm).registered["meters"] == ["tp_meter"]
    recipe = load_recipe({**TINY, "energy": {"meters": ["tp_meter"]}}, plugin_manager=pm)
    assert recipe.energy.meters == ["tp_meter"]


def test_fq_register_data_selectors_third_party_entry_point(tp_pm):
    pm, mod = tp_pm
    assert pm.selectors.names() == ["el2n", "kcenter", "random", "tp_selector"]
    assert pm.selectors.get("tp_selector") is mod.S
    assert _tp_info(pm).registered["selectors"] == ["tp_selector"]
    kept = pm.selectors.create("tp_selector").select(torch.zeros(10, dtype=torch.int64), 0.3)
    assert kept.tolist() == [0, 1, 2]


def test_fq_register_energy_meters_lazy_reference_imports_on_first_use(tmp_path, on_path):
    """A third-party plugin may register a LazyPlugin: its module is imported on first use."""
    on_path(
        make_dist(
            tmp_path,
            "fq-plugins-lazy",
            "lazy",
            "fq_lazy_plugin",
            """
        from fq_plugins import hookimpl
        from fq_plugins.registry import LazyPlugin

        @hookimpl
        def fq_register_energy_meters(register):
            register(LazyPlugin("fq_lazy_impl:WallMeter", name="wall", description="Wall socket."))
            register(LazyPlugin("fq_lazy_impl:WallMeter", name="wall"), name="wall_alias")
        """,
            extra_modules={
                "fq_lazy_impl": """
        from fq_plugins.protocols import EnergyMeter

        class WallMeter(EnergyMeter):
            name = "wall"
            description = "Wall socket."
        """
            },
        )
    )
    sys.modules.pop("fq_lazy_impl", None)
    pm = get_plugin_manager()
    assert pm.load_errors == [] and pm.meters.names() == [
        "codecarbon",
        "cpu_time",
        "nvml",
        "rapl",
        "wall",
        "wall_alias",
    ]
    e = pm.meters.entry("wall")
    assert e.lazy and e.plugin == "lazy" and e.description == "Wall socket."
    assert "fq_lazy_impl" not in sys.modules  # building, listing and describing import nothing
    cls = pm.meters.get("wall")
    assert cls is sys.modules["fq_lazy_impl"].WallMeter
    assert pm.meters.get("wall_alias") is cls


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
    assert pm.compressors.names() == BUILTIN_COMPRESSORS
    assert (
        "boom" in str(pm.load_errors[0]) and pm.load_errors[0].distribution == "fq-plugins-raises"
    )


def test_registration_hook_that_raises_registers_nothing(tmp_path, on_path):
    """Names registered before the raise, and by the plugin's other hooks, are all dropped."""
    on_path(
        make_dist(
            tmp_path,
            "fq-plugins-half",
            "half",
            "fq_half_mod",
            """
        from fq_plugins import hookimpl
        from fq_plugins.compressors.uniform import UniformCompressor
        from fq_plugins.protocols import EnergyMeter

        class Half(UniformCompressor):
            name = "half_uniform"

        class HalfMeter(EnergyMeter):
            name = "half_meter"

        @hookimpl
        def fq_register_compressors(register):
            register(Half)

        @hookimpl
        def fq_register_energy_meters(register):
            register(HalfMeter)
            raise OSError("no sensor")

        @hookimpl
        def fq_on_step(step, phase, losses):
            raise AssertionError("a plugin that failed to load must not observe steps")
    """,
        )
    )
    pm = get_plugin_manager()
    assert pm.compressors.names() == BUILTIN_COMPRESSORS
    assert "half_meter" not in pm.meters
    assert [e.entry_point for e in pm.load_errors] == ["half"]
    msg = str(pm.load_errors[0])
    assert "fq_register_energy_meters raised OSError: no sensor" in msg
    assert "FQ_PLUGINS_DISABLE=half" in msg and "pip uninstall fq-plugins-half" in msg
    assert pm.pm.get_plugin("half") is None and "half" not in {i.name for i in pm.plugin_infos()}
    pm.on_step(0, "train", {"total": 1.0})  # its event hook is gone with it


def test_builtin_plugin_that_fails_to_register_raises(monkeypatch):
    """A bug in fq-plugins' own plugins must not turn into a warning."""

    def broken(register):
        raise RuntimeError("built-in bug")

    monkeypatch.setattr(
        default_plugins.PLUGINS["fq_plugins.data.selectors"], "_register_all", broken
    )
    with pytest.raises(RuntimeError, match="built-in bug"):
        get_plugin_manager(autoload=False)
    pm = get_plugin_manager(autoload=False, disable=["fq_plugins.data.selectors"])
    assert len(pm.selectors) == 0 and pm.compressors.names() == BUILTIN_COMPRESSORS


DUP_SOURCE = """
    from fq_plugins import hookimpl
    from fq_plugins.compressors.uniform import UniformCompressor
    class Again(UniformCompressor):
        description = "a second uniform"
    @hookimpl
    def fq_register_compressors(register):
        register(Again)
"""


def test_duplicate_name_names_both_plugins(tmp_path, on_path):
    on_path(make_dist(tmp_path, "fq-plugins-dup", "dup", "fq_dup_mod", DUP_SOURCE))
    pm = get_plugin_manager()  # building does not raise: the conflict is recorded
    assert pm.load_errors == []
    [conflict] = pm.conflicts()
    msg = str(conflict)
    assert msg == (
        "compressor name 'uniform' is registered twice: by fq_plugins.compressors.uniform and "
        "by dup. Rename one of them, or disable one plugin with "
        "FQ_PLUGINS_DISABLE=<plugin name>."
    )
    with pytest.raises(DuplicateNameError) as ei:
        pm.check_conflicts()
    assert str(ei.value) == msg
    assert (ei.value.first, ei.value.second) == ("fq_plugins.compressors.uniform", "dup")


def test_duplicate_name_is_refused_on_use_and_listed(tmp_path, on_path):
    on_path(make_dist(tmp_path, "fq-plugins-dup2", "dup2", "fq_dup2_mod", DUP_SOURCE))
    pm = get_plugin_manager()
    for use in (
        lambda: pm.compressors.get("uniform"),
        lambda: pm.compressors.entry("uniform"),
        lambda: next(e for e in pm.compressors if e.name == "uniform").cls,
        lambda: load_recipe(TINY, plugin_manager=pm),  # TINY compresses with uniform
    ):
        with pytest.raises(DuplicateNameError, match=r"'uniform' is registered twice.*dup2"):
            use()
    assert pm.compressors.get("codeq").name == "codeq"  # the other names still work
    e = next(e for e in pm.compressors if e.name == "uniform")
    assert e.conflict and e.plugins == ["fq_plugins.compressors.uniform", "dup2"]
    assert pm.compressors.names() == BUILTIN_COMPRESSORS
    infos = {i.name: i for i in pm.plugin_infos()}
    assert infos["dup2"].registered == {"compressors": ["uniform"]}
    assert infos["fq_plugins.compressors.uniform"].registered == {"compressors": ["uniform"]}
    # the fix the message gives: disable one of the two plugins
    kept = get_plugin_manager(disable=["fq_plugins.compressors.uniform"])
    assert kept.conflicts() == []
    assert kept.compressors.get("uniform") is sys.modules["fq_dup2_mod"].Again


def test_plugin_added_after_build_registers_and_unregisters_its_names(pm):
    from fq_plugins.energy.estimate import CpuTimeMeter

    class Late(CpuTimeMeter):
        name = "late"

    class LatePlugin:
        @hookimpl
        def fq_register_energy_meters(self, register):
            register(Late)

    via_api, direct = LatePlugin(), LatePlugin()
    assert pm.register(via_api, name="late-api") == "late-api"
    assert pm.meters.get("late") is Late and pm.meters.entry("late").plugin == "late-api"
    pm.pm.register(direct, name="late-direct")  # plain pluggy: seen on the next access
    assert [e.plugin for e in pm.meters.claims("late")] == ["late-api", "late-direct"]
    with pytest.raises(DuplicateNameError):
        pm.meters.get("late")
    pm.pm.unregister(via_api)
    assert pm.meters.entry("late").plugins == ["late-direct"] and pm.conflicts() == []
    pm.pm.unregister(direct)
    assert "late" not in pm.meters


def test_plugin_added_after_build_that_raises_is_unregistered_and_raises(pm):
    class Bad:
        @hookimpl
        def fq_register_compressors(self, register):
            register(LazyPlugin("nowhere:X", name="bad_x"))
            raise ValueError("half done")

    with pytest.raises(
        FQError, match=r"plugin 'bad'.*fq_register_compressors raised ValueError: half done"
    ):
        pm.register(Bad(), name="bad")
    assert pm.pm.get_plugin("bad") is None and "bad_x" not in pm.compressors

    class Typo:
        @hookimpl
        def fq_register_compresors(self, register):
            pass

    with pytest.raises(FQError, match="unknown hook 'fq_register_compresors'"):
        pm.register(Typo(), name="typo")
    assert pm.pm.get_plugin("typo") is None


def test_registration_hook_cannot_be_a_wrapper(pm):
    class Wrapper:
        @hookimpl(wrapper=True)
        def fq_register_compressors(self, register):
            return (yield)

    with pytest.raises(FQError, match="registration hook cannot be a wrapper"):
        pm.register(Wrapper(), name="wrapper")


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
        # parameter names now: the model is finalized (its parametrizations removed) later
        self._rec("fq_after_attach", session, model, [n for n, _ in model.named_parameters()])

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


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """One tiny run with a Recorder plugin; the fq_* event-hook tests read its calls."""
    pm = get_plugin_manager(autoload=False)
    rec = Recorder()
    pm.register(rec, name="recorder")
    recipe = load_recipe(
        {**TINY, "fairness": {"regularizer": {"kind": "gap", "weight": 0.5}}}, plugin_manager=pm
    )
    out_dir = str(tmp_path_factory.mktemp("events") / "out")
    report, out = run(recipe, plugin_manager=pm, output_dir=out_dir, log=lambda m: None)
    return rec.calls, report, out


def test_fq_after_attach_fires_once_with_the_attached_session(recorded_run):
    c, _, _ = recorded_run
    [(session, _model, param_names)] = c["fq_after_attach"]
    assert [m.name for m in session.methods] == ["uniform"]
    # uniform attaches as a weight parametrization, before any training step
    assert any(n.endswith("parametrizations.weight.original") for n in param_names)


def test_fq_on_step_counts_steps_and_reports_loss_terms(recorded_run):
    c, report, _ = recorded_run
    steps = c["fq_on_step"]
    n_batches = -(-report.dataset["n_train"] // 64)
    assert [s[0] for s in steps if s[1] == "train"] == list(range(n_batches))
    ft = [s for s in steps if s[1].startswith("finetune:")]
    assert [s[0] for s in ft] == list(range(n_batches)) and {s[1] for s in ft} == {
        "finetune:uniform-4"
    }
    assert set(ft[0][2]) == {"task", "fairness", "penalty", "total"}
    assert ft[0][2]["total"] == pytest.approx(
        ft[0][2]["task"] + 0.5 * ft[0][2]["fairness"] + ft[0][2]["penalty"], rel=1e-5
    )


def test_fq_on_evaluation_once_per_variant(recorded_run):
    c, report, _ = recorded_run
    assert [r[0].variant for r in c["fq_on_evaluation"]] == ["fp32", "uniform-4"]
    assert [r[0] for r in c["fq_on_evaluation"]] == list(report.variants)


def test_fq_on_energy_reading_per_measured_phase(recorded_run):
    c, _, _ = recorded_run
    phases = [p for p, _ in c["fq_on_energy_reading"]]
    assert phases == ["train", "eval:fp32", "finetune:uniform-4", "eval:uniform-4"]
    assert all(r.seconds > 0 for _, r in c["fq_on_energy_reading"])


def test_fq_on_run_end_once_after_the_report_is_written(recorded_run):
    c, report, out = recorded_run
    assert c["fq_on_run_end"] == [(report, out)]
    assert (Path(out) / "report.json").is_file()


def test_disable_a_builtin_family_or_one_builtin():
    pm = get_plugin_manager(
        autoload=False, disable=["fq_plugins.fairness.metrics", "fq_plugins.fairness.suite"]
    )
    assert len(pm.metrics) == 0 and pm.compressors.names() == BUILTIN_COMPRESSORS
    pm = get_plugin_manager(autoload=False, disable=["fq_plugins.energy.rapl"])
    assert pm.meters.names() == ["codecarbon", "cpu_time", "nvml"]
    assert "fq_plugins.energy.rapl" not in {i.name for i in pm.plugin_infos()}
