"""`FIELD=VALUE` text → typed values of a config dataclass's fields, checked before any work starts.

Every value is converted to its field's annotated type, so a typo'd field or a value of the wrong
type fails while the command line is read, before a model or a data loader is built. `none`/`null`
set an optional field to None, dict fields take JSON, tuple fields take comma-separated items, and
a Literal field one of its values.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from typing import Any


def split_assignment(assignment: str) -> tuple[str, str]:
    """`"name=value"` → ("name", "value"); refuses text without a name or an `=`."""
    name, sep, text = assignment.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"expected FIELD=VALUE, got {assignment!r}")
    return name, text.strip()


def field_names(cls: type) -> list[str]:
    """A dataclass's field names, in order."""
    return [field.name for field in dataclasses.fields(cls)]


def field_types(cls: type) -> dict[str, Any]:
    """A dataclass's settable fields and their resolved annotations."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def parse_assignments(cls: type, assignments: Sequence[str], what: str | None = None) -> dict[str, Any]:
    """`["backbone_out_index=-2", "visual_init=none"]` → typed values of `cls`'s fields."""
    what = what or cls.__name__
    types_ = field_types(cls)
    values: dict[str, Any] = {}
    for assignment in assignments:
        name, text = split_assignment(assignment)
        if name not in types_:
            raise ValueError(f"unknown {what} field {name!r}; known fields: {sorted(types_)}")
        values[name] = convert(text, types_[name], name)
    return values


def convert(text: str, annotation: Any, name: str) -> Any:
    """`text` as a value of type `annotation` (the field `name`'s, for the error)."""
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    options = typing.get_args(annotation) if union else (annotation,)
    if type(None) in options and text.lower() in ("none", "null"):
        return None
    target = next(option for option in options if option is not type(None))
    origin = typing.get_origin(target) or target
    if dataclasses.is_dataclass(origin):
        raise ValueError(f"{name} is a section of its own: set its fields one by one")
    try:
        if origin is typing.Literal:
            allowed = typing.get_args(target)
            if text not in allowed:
                raise ValueError(text)
            return text
        if origin is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if origin is dict:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError(text)
            return value
        if origin in (tuple, list):
            return origin(item.strip() for item in text.split(",") if item.strip())
        return origin(text)
    except ValueError as error:
        if origin is typing.Literal:
            expected = " or ".join(repr(value) for value in typing.get_args(target))
        else:
            expected = getattr(target, "__name__", str(target))
        raise ValueError(f"{name}={text!r}: expected {expected}") from error
