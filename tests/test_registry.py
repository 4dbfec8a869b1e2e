"""Registry: classes and lazy references, staging, conflicts, and the errors that name the fix."""

from __future__ import annotations

import sys
import textwrap

import pytest

from fq_plugins.compressors.uniform import UniformCompressor
from fq_plugins.errors import DuplicateNameError, FQError, UnknownPluginError
from fq_plugins.protocols import Compressor, EnergyMeter
from fq_plugins.registry import LazyPlugin, Registry


@pytest.fixture
def impl_module(tmp_path, monkeypatch):
    """An importable module ``fq_reg_impl`` with a good compressor and three bad targets."""
    (tmp_path / "fq_reg_impl.py").write_text(
        textwrap.dedent(
            """
            from fq_plugins.compressors.uniform import UniformCompressor
            from fq_plugins.protocols import EnergyMeter

            class Good(UniformCompressor):
                name = "good"
                description = "A good one.\\nMore text."

            class Meter(EnergyMeter):
                name = "meter"

            class Renamed(UniformCompressor):
                name = "renamed"

            NOT_A_CLASS = 3
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fq_reg_impl", None)
    yield
    sys.modules.pop("fq_reg_impl", None)


def test_class_registration_uses_its_name_and_description():
    reg = Registry("compressors")
    reg.register(UniformCompressor, plugin="p")
    reg.register(UniformCompressor, name="alias", plugin="p")
    assert reg.names() == ["alias", "uniform"]
    assert reg.get("alias") is UniformCompressor is reg.get("uniform")
    e = reg.entry("uniform")
    assert (e.plugin, e.lazy, e.conflict, e.plugins) == ("p", False, False, ["p"])
    assert e.description == UniformCompressor.description


def test_lazy_reference_is_imported_on_get_and_checked(impl_module):
    reg = Registry("compressors")
    reg.register(LazyPlugin("fq_reg_impl:Good", name="good", description="A good one."), plugin="p")
    assert "fq_reg_impl" not in sys.modules
    e = reg.entry("good")
    assert e.lazy and e.description == "A good one."
    assert list(reg) == [e] and len(reg) == 1
    assert "fq_reg_impl" not in sys.modules  # entry, iteration, description: no import
    cls = reg.get("good")
    assert cls is sys.modules["fq_reg_impl"].Good and e.cls is cls


@pytest.mark.parametrize(
    "target,name,expected",
    [
        (
            "fq_reg_missing:Good",
            "good",
            "plugin p registered compressor 'good' as LazyPlugin('fq_reg_missing:Good'), but "
            "importing 'fq_reg_missing' failed (ModuleNotFoundError: No module named "
            "'fq_reg_missing'); install what it needs, fix the plugin, or disable it with "
            "FQ_PLUGINS_DISABLE=p",
        ),
        ("fq_reg_impl:Gone", "good", "but that attribute does not exist"),
        (
            "fq_reg_impl:NOT_A_CLASS",
            "good",
            "but 3 is not a subclass of fq_plugins.protocols.Compressor",
        ),
        ("fq_reg_impl:Meter", "meter", "is not a subclass of fq_plugins.protocols.Compressor"),
        (
            "fq_reg_impl:Renamed",
            "good",
            "with name 'good', but fq_reg_impl.Renamed.name is 'renamed'; make "
            "LazyPlugin(name=...) equal the class's `name`",
        ),
    ],
)
def test_bad_lazy_reference_fails_on_use_naming_target_and_fix(impl_module, target, name, expected):
    reg = Registry("compressors")
    reg.register(LazyPlugin(target, name=name), plugin="p")  # registering does not import
    assert name in reg
    with pytest.raises(FQError) as ei:
        reg.get(name)
    msg = str(ei.value)
    assert expected in msg and repr(target) in msg and "FQ_PLUGINS_DISABLE=p" in msg


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        (
            {"target": "fq_reg_impl.Good", "name": "good"},
            "'fq_reg_impl.Good' is not an import path",
        ),
        ({"target": "a b:C", "name": "good"}, "write it as 'package.module:ClassName'"),
        ({"target": "fq_reg_impl:Good", "name": ""}, "has name ''; pass the class's `name`"),
        ({"target": "fq_reg_impl:Good", "name": "g", "description": None}, "has description None"),
    ],
)
def test_lazy_plugin_validates_its_fields(kwargs, expected):
    with pytest.raises(FQError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        LazyPlugin(**kwargs)


def test_register_rejects_what_is_not_a_family_class():
    reg = Registry("compressors")
    with pytest.raises(FQError) as ei:
        reg.register("uniform", plugin="p")  # type: ignore[arg-type]
    assert "plugin p passed 'uniform' (str) to register()" in str(ei.value)
    assert "LazyPlugin('package.module:Class'" in str(ei.value)
    with pytest.raises(FQError, match=r"is not a subclass of fq_plugins\.protocols\.Compressor"):
        reg.register(EnergyMeter, plugin="p")

    class Nameless(Compressor):
        pass

    with pytest.raises(FQError, match=r"without a name.*set the class attribute `name`"):
        reg.register(Nameless, plugin="p")
    assert len(reg) == 0


def test_family_base_is_imported_only_when_a_class_is_checked():
    reg = Registry("meters")
    assert reg._base == "fq_plugins.protocols:EnergyMeter"
    reg.register(LazyPlugin("x.y:Z", name="z"), plugin="p")
    assert reg._base == "fq_plugins.protocols:EnergyMeter"  # a reference needs no base yet
    assert reg.base is EnergyMeter


def test_staging_commits_only_on_commit_and_rejects_a_name_twice():
    reg = Registry("compressors")
    stage = reg.stage("p")
    stage(UniformCompressor)
    assert "uniform" not in reg
    with pytest.raises(FQError, match="plugin p registered the compressor name 'uniform' twice"):
        stage(LazyPlugin("a.b:C", name="uniform"))
    stage.commit()
    assert reg.names() == ["uniform"] and reg.entry("uniform").plugin == "p"


def test_conflict_is_recorded_and_raised_on_use():
    reg = Registry("compressors")
    reg.register(UniformCompressor, plugin="first")
    reg.register(LazyPlugin("a.b:C", name="uniform"), plugin="second")
    reg.register(LazyPlugin("a.b:D", name="other"), plugin="second")
    assert reg.conflicts() == {"uniform": ["first", "second"]}
    assert reg.names() == ["other", "uniform"] and len(reg) == 2
    expected = "compressor name 'uniform' is registered twice: by first and by second."
    for use in (reg.check_conflicts, lambda: reg.get("uniform"), lambda: reg.entry("uniform")):
        with pytest.raises(DuplicateNameError, match=expected):
            use()
    [e] = [e for e in reg if e.name == "uniform"]
    assert e.conflict and e.plugins == ["first", "second"]
    with pytest.raises(DuplicateNameError):
        e.cls  # noqa: B018
    reg.remove_plugin("second")
    assert reg.conflicts() == {} and reg.get("uniform") is UniformCompressor
    assert reg.names() == ["uniform"]


def test_unknown_name_lists_valid_ones_and_the_list_command():
    reg = Registry("compressors")
    reg.register(UniformCompressor, plugin="p")
    with pytest.raises(UnknownPluginError) as ei:
        reg.get("unifrom", key="compress[0].method")
    assert str(ei.value) == (
        "compress[0].method: unknown compressor 'unifrom'; valid names: uniform. "
        "Did you mean 'uniform'? Run `fq-plugins list compressors` to see them with descriptions."
    )
