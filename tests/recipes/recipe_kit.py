"""The planted corpus both recipe suites build: an MIT-licensed directory of small, unique modules."""

from __future__ import annotations

import random
import string
from pathlib import Path

MIT = (
    "MIT License\n\nCopyright (c) 2024 Planted\n\nPermission is hereby granted, free of charge, to any person "
    'obtaining a copy of this software and associated documentation files (the "Software"), to deal in the '
    "Software without restriction, including without limitation the rights to use, copy, modify, merge, "
    'publish, distribute, sublicense, and/or sell copies of the Software.\n\nTHE SOFTWARE IS PROVIDED "AS '
    'IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.\n'
)


def planted_module(rng: random.Random, index: int) -> str:
    """A unique little module of short functions (FIM needs functions with 1..15-line bodies)."""
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 8))) for _ in range(30)]
    lines = [f'"""Helpers number {index} for {words[0]}."""', ""]
    for i in range(8):
        a, b, c = rng.sample(words, 3)
        lines += [f"def {a}_{i}({b}, {c}):", f'    """Mix {b} and {c}."""',
                  f"    total = {b} * {rng.randint(2, 90)} + {c}", "    return total", ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_corpus(root: Path, *, seed: int, modules: int = 12) -> Path:
    """`root` with an MIT LICENSE and `modules` planted modules drawn from `seed`."""
    (root / "LICENSE").write_text(MIT, encoding="utf-8")
    rng = random.Random(seed)
    for i in range(modules):
        (root / f"mod_{i:02d}.py").write_text(planted_module(rng, i), encoding="utf-8")
    return root


def numbers(rows: list[dict], timing: tuple[str, ...]) -> list[dict]:
    """The rows without their timing fields: what must match between runs that differ only in how they ran."""
    return [{k: v for k, v in row.items() if k not in timing} for row in rows]
