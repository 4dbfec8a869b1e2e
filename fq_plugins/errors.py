"""A flat module of single-purpose exceptions.

Every error a user can cause derives from :class:`FQError`; the CLI prints these as one
clear message (no traceback) and exits non-zero.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ConfigError",
    "DuplicateNameError",
    "FQError",
    "MissingDependencyError",
    "PluginLoadError",
    "UnknownPluginError",
    "close_matches",
]


class FQError(Exception):
    """Base class of every error fq-plugins raises on purpose."""


class ConfigError(FQError, ValueError):
    """A recipe value, argument or input is invalid.

    ``key`` is the dotted key path (``compress[0].bits``) when the error is about a recipe key.
    """

    located: bool = False
    """True when ``message`` already names its key paths (several errors in one)."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class UnknownPluginError(ConfigError, KeyError):
    """A name matches no registered plugin of a family."""

    def __init__(
        self,
        family: str,
        name: str,
        valid: Iterable[str],
        *,
        key: str | None = None,
        list_command: str | None = None,
    ) -> None:
        valid = sorted(valid)
        self.family, self.name, self.valid = family, name, valid
        hint = close_matches(name, valid)
        msg = (
            f"unknown {family} {name!r}; valid names: {', '.join(valid) or '(none registered)'}."
            + (f" Did you mean {hint}?" if hint else "")
            + (
                f" Run `fq-plugins list {list_command}` to see them with descriptions."
                if list_command
                else ""
            )
        )
        ConfigError.__init__(self, msg, key=key)

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0] if self.args else ""


class DuplicateNameError(FQError):
    """Two plugins registered the same name in one family."""

    def __init__(self, family: str, name: str, first: str, second: str) -> None:
        self.family, self.name, self.first, self.second = family, name, first, second
        super().__init__(
            f"{family} name {name!r} is registered twice: by {first} and by {second}. "
            f"Rename one of them, or disable one plugin with FQ_PLUGINS_DISABLE=<plugin name>."
        )


class PluginLoadError(FQError):
    """A third-party plugin failed to import or register; the others still load."""

    def __init__(self, distribution: str, entry_point: str, reason: str) -> None:
        self.distribution, self.entry_point, self.reason = distribution, entry_point, reason
        super().__init__(
            f"plugin {entry_point!r} from distribution {distribution!r} failed to load: {reason}. "
            f"Upgrade or uninstall it (`pip uninstall {distribution}`), or skip it with "
            f"FQ_PLUGINS_DISABLE={entry_point}."
        )


class MissingDependencyError(FQError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        self.module, self.extra = module, extra
        super().__init__(
            f"{purpose} needs the optional dependency {module!r}, which is not installed. "
            f"Install it with: pip install 'fq-plugins[{extra}]'"
        )


def close_matches(name: str, valid: Iterable[str]) -> str:
    """Return ``'a' or 'b'`` style suggestions for a misspelt name, or ''."""
    hits = difflib.get_close_matches(str(name), list(valid), n=3, cutoff=0.6)
    return " or ".join(repr(h) for h in hits)
