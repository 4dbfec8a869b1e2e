"""The base of every validated configuration: unknown keys refused, frozen, and no
yes/no value accepted where a number is meant (pydantic would read ``bits: true`` as 1)."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["StrictConfig", "admits_bool"]


def admits_bool(ann: Any) -> bool:
    """Whether a field annotated ``ann`` may hold ``True``/``False`` (bool, Any, a Literal
    of booleans, or a union/container of such); nested models check their own fields."""
    if ann is bool or ann is Any or ann is object:
        return True
    origin = typing.get_origin(ann)
    if origin is Literal:
        return any(isinstance(a, bool) for a in typing.get_args(ann))
    if origin is Union or origin is types.UnionType:
        return any(admits_bool(a) for a in typing.get_args(ann))
    return False


def _element(ann: Any) -> Any | None:
    """The element annotation of a list/tuple/set/dict field (the value type of a dict)."""
    for a in (ann, *typing.get_args(ann)):  # Optional[list[int]] too
        origin = typing.get_origin(a)
        if origin in (list, tuple, set, frozenset):
            args = [x for x in typing.get_args(a) if x is not Ellipsis]
            return Union[tuple(args)] if args else Any  # noqa: UP007 (runtime union of args)
        if origin is dict:
            kv = typing.get_args(a)
            return kv[1] if len(kv) == 2 else Any
    return None


class StrictConfig(BaseModel):
    """Unknown keys are errors, validated values are frozen, and a boolean given for a
    number (``bits: true``) is an error rather than 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            key = field.alias or name
            if key not in data:
                continue
            value, ann = data[key], field.annotation
            if isinstance(value, bool) and not admits_bool(ann):
                raise ValueError(
                    f"{key}: {str(value).lower()} is a yes/no value, but {key} takes "
                    f"{_describe(ann)}; write the value itself (e.g. {key}: 4)"
                )
            elem = _element(ann)
            if elem is None or admits_bool(elem):
                continue
            items = list(value.values()) if isinstance(value, dict) else value
            if isinstance(items, (list, tuple)) and any(isinstance(v, bool) for v in items):
                raise ValueError(
                    f"{key}: {value!r} holds a yes/no value where {_describe(elem)} is "
                    "expected; write the values themselves"
                )
        return data


def _describe(ann: Any) -> str:
    names = {int: "a whole number", float: "a number", str: "text"}
    if ann in names:
        return names[ann]
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if args and all(a in names for a in args):
        return " or ".join(dict.fromkeys(names[a] for a in args))
    return "a value of another kind"
