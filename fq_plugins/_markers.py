"""The one name shared by pluggy's markers, the plugin manager and the entry-point group."""

from __future__ import annotations

import pluggy

NAME = "fq_plugins"
"""Pluggy project name and the entry-point group third-party plugins declare."""

hookspec = pluggy.HookspecMarker(NAME)
hookimpl = pluggy.HookimplMarker(NAME)

__all__ = ["NAME", "hookimpl", "hookspec"]
