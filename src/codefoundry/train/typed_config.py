"""A config dataclass's field types checked at construction, and a config read from a JSON file, with
errors that name the file and the field.

`check_types(config)` is for `__post_init__`: a field given a value of the wrong type (`"steps": "10"` in
a JSON file, `lr=None` from code) used to reach the range checks, which raised a bare TypeError ("'>='
not supported between instances of 'str' and 'int'") that named neither. Ints are accepted for floats, a
list for a tuple (JSON has no tuples); bools are not ints here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["check_types", "config_from_json", "required_fields"]

T = TypeVar("T")


def _matches(value: Any, kind: Any) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if kind is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, tuple | list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args, strict=True))
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, kind) if isinstance(kind, type) else True


def _describe(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if kind is type(None):
        return "None"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} {' '.join(sorted({_describe(a) for a in args}))}"
    return getattr(kind, "__name__", str(kind))


def check_types(config: Any) -> None:
    """A TypeError naming the first field of the dataclass instance `config` whose value is not of its
    annotated type: `PretrainConfig.steps: expected int, got '10' (str)`."""
    cls = type(config)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if not _matches(value, hints[f.name]):
            raise TypeError(
                f"{cls.__name__}.{f.name}: expected {_describe(hints[f.name])}, got {value!r} "
                f"({type(value).__name__})"
            )


def required_fields(cls: type) -> list[str]:
    """The fields of the dataclass `cls` that have no default, in order."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]


def config_from_json(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """`cls(**fields)` from the JSON object in `path`, `overrides` on top. Any problem is one ValueError
    that names the file: unreadable, not UTF-8, not JSON (line and column), not an object, an unknown or
    missing field, or a field's type or value (the field named by the config's own checks)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ValueError(f"{path}: cannot read the config ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 (byte {e.start}); a JSON config is UTF-8 text") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object of {cls.__name__} fields, got {type(obj).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in obj:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{path}: unknown field {name!r}{hint}; {cls.__name__} has no such field")
    obj = {**obj, **(overrides or {})}
    for name in required_fields(cls):
        if name not in obj:
            raise ValueError(f"{path}: missing field {name!r} ({cls.__name__} needs it)")
    try:
        return cls(**obj)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
