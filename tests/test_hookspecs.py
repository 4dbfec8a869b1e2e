"""Meta-tests: every hook is typed, documented with its exact signature, and tested."""

from __future__ import annotations

import ast
import inspect
import re
import typing

import pytest

from fq_plugins import hookspecs

from .conftest import ROOT

HOOKS = list(hookspecs.__all__)
DOCS = (ROOT / "docs" / "plugin-hooks.md").read_text(encoding="utf-8")
TEST_FILES = sorted(p for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_hookspecs.py")
TEST_SOURCES = "\n".join(p.read_text(encoding="utf-8") for p in TEST_FILES)


def collected_test_names(source: str) -> set[str]:
    """Names of the test functions and methods (``test*``) that pytest collects in ``source``."""
    return {
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    }


TEST_FUNCTIONS = set().union(*(collected_test_names(p.read_text("utf-8")) for p in TEST_FILES))


def _signature(name: str) -> str:
    fn = getattr(hookspecs, name)
    return f"{name}{inspect.signature(fn)}".replace("'", "")


def test_every_hookspec_is_exported():
    defined = {n for n in dir(hookspecs) if n.startswith("fq_")}
    assert defined == set(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_typed_and_has_docstring(name):
    fn = getattr(hookspecs, name)
    sig = inspect.signature(fn)
    assert fn.__doc__ and "called" in fn.__doc__.lower(), "state the calling convention"
    for pname, p in sig.parameters.items():
        assert p.annotation is not inspect.Parameter.empty, f"{name}: {pname} is untyped"
        assert f":param {pname}:" in fn.__doc__, f"{name}: document {pname}"
    assert sig.return_annotation is not inspect.Signature.empty


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_docs_section_with_exact_signature(name):
    assert re.search(rf"^## `?{name}`?\s*$", DOCS, re.M), (
        f"docs/plugin-hooks.md lacks a '## {name}' section"
    )
    assert _signature(name) in DOCS, (
        f"docs/plugin-hooks.md must show the exact signature {_signature(name)}"
    )


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_test(name):
    assert name in TEST_SOURCES, f"no test mentions {name}"
    named = sorted(t for t in TEST_FUNCTIONS if name in t)
    assert named, f"no test function under tests/ has {name!r} in its name (e.g. test_{name}_...)"


def test_collected_test_names_sees_only_test_functions():
    source = (
        "def test_fq_on_step_a(): pass\n"
        "class TestX:\n    def test_fq_on_run_end_b(self): pass\n    def helper_fq_x(self): pass\n"
        "async def test_c(): pass\n"
        "def fq_on_evaluation_helper(): pass\n"
        "# def test_fq_after_attach_in_a_comment(): pass\n"
        "S = 'def test_fq_on_energy_reading_in_a_string(): pass'\n"
    )
    assert collected_test_names(source) == {"test_fq_on_step_a", "test_fq_on_run_end_b", "test_c"}


def test_register_fn_is_a_documented_typed_protocol():
    assert typing.Protocol in hookspecs.RegisterFn.__mro__
    call = hookspecs.RegisterFn.__call__
    sig = inspect.signature(call)
    assert list(sig.parameters) == ["self", "cls", "name"]
    assert sig.parameters["name"].default is None
    assert sig.parameters["cls"].annotation == "type[Any] | LazyPlugin"
    assert sig.parameters["name"].annotation == "str | None" and sig.return_annotation == "None"
    for pname in ("cls", "name"):
        assert f":param {pname}:" in (call.__doc__ or "")
    for name in HOOKS:
        if name.startswith("fq_register_"):
            assert inspect.signature(getattr(hookspecs, name)).parameters[
                "register"
            ].annotation == ("RegisterFn")
