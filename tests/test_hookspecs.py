"""Meta-tests: every hook is typed, documented with its exact signature, and tested."""

from __future__ import annotations

import inspect
import re

import pytest

from fq_plugins import hookspecs

from .conftest import ROOT

HOOKS = list(hookspecs.__all__)
DOCS = (ROOT / "docs" / "plugin-hooks.md").read_text(encoding="utf-8")
TEST_SOURCES = "\n".join(
    p.read_text(encoding="utf-8")
    for p in (ROOT / "tests").glob("test_*.py")
    if p.name != "test_hookspecs.py"
)


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
