"""Loading a recipe's config: a YAML file with one section per variant (`laptop:`, `gpu:`) whose values fill
a typed, frozen dataclass, plus `key=value` overrides from the command line.

YAML only fills values: every key must name a field of the dataclass, and every value must have the
field's type (ints are accepted for floats, lists become tuples, a mapping fills a `dict` field as is).
A bad key or value stops with one line naming the file, the section and the key. Limits: field types are
checked one level deep (the items of a tuple and the values of a dict are not), and `Optional` fields
accept null.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["VARIANTS", "RecipeConfigError", "find_config", "load_config", "parse_overrides"]

VARIANTS = ("laptop", "gpu")
C = TypeVar("C")


class RecipeConfigError(ValueError):
    """A recipe config file or override that does not fit the recipe's dataclass (one-line message)."""


def find_config(name: str) -> Path | None:
    """`configs/recipes/NAME.yaml` under the working directory, else under the source checkout this
    package was installed from (an editable install); None when neither has it."""
    here = Path(__file__).resolve()
    for root in (Path.cwd(), *here.parents[2:4]):
        path = root / "configs" / "recipes" / f"{name}.yaml"
        if path.is_file():
            return path
    return None


def parse_overrides(items: typing.Sequence[str]) -> dict[str, Any]:
    """`["steps=4", "estimators=[grpo, rloo]"]` -> `{"steps": 4, "estimators": ["grpo", "rloo"]}`; each
    value is read as YAML, so numbers, booleans and lists come out typed."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeConfigError(f"override {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def load_config(cls: type[C], path: str | Path | None, variant: str, *, overrides: dict[str, Any] | None = None,
                **fixed: Any) -> C:  # fmt: skip
    """An instance of the dataclass `cls` from section `variant` of the YAML file at `path` (None: the
    dataclass defaults), then `overrides`, then `fixed` (values the caller sets, e.g. `out`)."""
    if variant not in VARIANTS:
        raise RecipeConfigError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    values: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        document = _read_yaml(Path(path))
        unknown = sorted(set(document) - set(VARIANTS))
        if unknown:
            raise RecipeConfigError(f"{where}: unknown section {unknown[0]!r} (known: {', '.join(VARIANTS)})")
        section = document.get(variant)
        if not isinstance(section, dict):
            raise RecipeConfigError(f"{where}: no '{variant}:' section with key: value pairs")
        values.update(_checked(cls, section, f"{where} [{variant}]"))
    values.update(_checked(cls, overrides or {}, "override"))
    values.update(fixed)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise RecipeConfigError(f"{where} [{variant}]: {e}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise RecipeConfigError(f"{path}:{line} not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(document, dict):
        raise RecipeConfigError(f"{path}: expected sections 'laptop:' and 'gpu:' at the top level")
    return document


def _checked(cls: type, section: dict[str, Any], where: str) -> dict[str, Any]:
    """`section` with each key checked against the fields of `cls` and each value against its type."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    out = {}
    for key, value in section.items():
        if key not in names:
            raise RecipeConfigError(f"{where}: unknown key {key!r} (known: {', '.join(names)})")
        out[key] = _coerce(value, hints[key], f"{where}: key {key!r}")
    return out


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` as type `hint`, or a RecipeConfigError saying what was expected."""
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else ()
    if options:
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    base = origin or hint
    if base is tuple and isinstance(value, list | tuple):
        return tuple(value)
    if base is dict and isinstance(value, dict):
        return dict(value)
    if base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base in (str, bool) and type(value) is base:
        return value
    name = getattr(base, "__name__", str(base))
    raise RecipeConfigError(f"{where}: expected {name}, got {value!r}")
