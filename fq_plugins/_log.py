"""The progress-log convention shared by the run, the engine and the energy tracker."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["Log", "stderr_log"]

Log = Callable[[str], None]
"""Where progress lines go: a callable taking one line."""


def stderr_log(msg: str) -> None:
    """The default: one line on stderr, flushed (results go to stdout)."""
    print(msg, file=sys.stderr, flush=True)
