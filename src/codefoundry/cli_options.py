"""Command-line options generated from a typed config dataclass (its fields are the options)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any


def add_dataclass_options(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    help_texts: dict[str, str],
    aliases: dict[str, list[str]],
    skip: tuple[str, ...] = (),
    enforce_required: bool = True,
) -> None:
    """One option per field of the dataclass `cls`: `name_x` is `--name-x`, booleans `--x/--no-x`, tuples
    comma-separated; every option defaults to None so the dataclass default applies. A field without a
    default is a required option unless `enforce_required` is False (the caller checks, e.g. when a config
    file may give it)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [flag, *aliases.get(f.name, [])]
        kind = hints[f.name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default_text = "" if required else f" (default: {_default(f)})"
        help_text = help_texts.get(f.name, f.name.replace("_", " ")) + default_text
        if kind is bool:
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        parser.add_argument(
            *names,
            dest=f.name,
            type=_parse_type(kind, flag),
            required=required and enforce_required,
            help=help_text,
        )


def _default(f: dataclasses.Field) -> Any:
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _parse_type(kind: Any, flag: str):
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args and typing.get_origin(args[0]) is tuple:  # tuple[...] | None: parsed as the tuple
        kind = args[0]
        args = list(typing.get_args(kind))
    if typing.get_origin(kind) is tuple:
        inner = args[0] if args else str

        def parse_tuple(text: str):
            try:
                return tuple(inner(x) for x in text.split(",") if x.strip())
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{flag} takes comma-separated values, got {text!r}"
                ) from None

        return parse_tuple
    if args and typing.get_origin(kind) is not None:  # X | None
        kind = args[0]
    return kind if kind in (int, float, str) else str
