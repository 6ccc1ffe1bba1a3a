"""A corpus with planted facts for the `data build` tests: what each stage must find, by construction."""

from __future__ import annotations

import random
import string
from pathlib import Path

MIT = """MIT License

Copyright (c) 2024 Planted Example

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction, including
without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the
following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial
portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED.
"""

GPL3 = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007

 Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>
 Everyone is permitted to copy and distribute verbatim copies
 of this license document, but changing it is not allowed.

 This program is free software: you can redistribute it and/or modify it under the terms of the GNU
 General Public License as published by the Free Software Foundation, either version 3 of the License,
 or (at your option) any later version.
"""


def _module(rng: random.Random, name: str, n_funcs: int = 12) -> str:
    """A plausible, unique Python module: functions over random identifiers and constants."""
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 9))) for _ in range(40)]
    lines = [f'"""Module {name}: helpers for {words[0]} and {words[1]}."""', "", "import math", ""]
    for i in range(n_funcs):
        a, b, c = rng.sample(words, 3)
        k = rng.randint(2, 97)
        lines += [
            f"def {a}_{i}({b}, {c}={k}):",
            f'    """Combine {b} with {c} ({rng.choice(words)} step {i})."""',
            f"    total = {b} * {k} + {c}",
            f"    for {a} in range({rng.randint(3, 20)}):",
            f"        total += math.floor({a} / {rng.randint(2, 9)}) - {c}",
            "    return total",
            "",
        ]
    return "\n".join(lines) + "\n"


def _near_copy(text: str, rng: random.Random, edits: int) -> str:
    """The text with `edits` lines changed (a near-duplicate: most shingles survive)."""
    lines = text.split("\n")
    body = [i for i, line in enumerate(lines) if line.startswith("    total = ")]
    for i in rng.sample(body, edits):
        lines[i] = lines[i] + " + 1"
    return "\n".join(lines)


def build_corpus(root: Path) -> dict[str, object]:
    """Three repositories under `root`; returns what the pipeline must find."""
    from codefoundry.tasks import humaneval

    rng = random.Random(7)
    mit, gpl, unknown = root / "mitrepo", root / "gplrepo", root / "nolicense"
    for d in (mit / "pkg", gpl, unknown):
        d.mkdir(parents=True)
    (mit / "LICENSE").write_text(MIT)
    (gpl / "COPYING").write_text(GPL3)
    originals = {f"pkg/mod_{i}.py": _module(rng, f"mod_{i}") for i in range(8)}
    for rel, text in originals.items():
        (mit / rel).write_text(text)
    (mit / "pkg/z_exact_copy.py").write_text(originals["pkg/mod_0.py"])
    (mit / "pkg/near_copy.py").write_text(_near_copy(originals["pkg/mod_1.py"], rng, 1))
    aws_key = "AKIA" + "".join(rng.choices(string.ascii_uppercase + "234567", k=16))
    secret_text = (
        _module(rng, "settings") + f'AWS_ACCESS_KEY_ID = "{aws_key}"\nADMIN = "ops.lead@planted-corp.io"\n'
    )
    (mit / "pkg/settings.py").write_text(secret_text)
    he = humaneval.load()[0]
    (mit / "pkg/solutions.py").write_text(
        _module(rng, "solutions", 3) + "\n" + he.prompt + he.canonical_solution
    )
    (mit / "pkg/blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (mit / "pkg/latin1.py").write_bytes("# caf\xe9 cr\xe8me\nx = 1\n".encode("latin-1") * 20)
    (mit / "pkg/huge.py").write_text("x = 1\n" * 40_000)  # 240 kB > the test's max_file_bytes
    (mit / "web/app.min.js").parent.mkdir()
    (mit / "web/app.min.js").write_text("var a=1;" * 400 + "\n")
    (gpl / "gpl_mod.py").write_text(_module(rng, "gpl"))
    (unknown / "mystery.py").write_text(_module(rng, "mystery"))
    return {
        "aws_key": aws_key,
        "kept": sorted([*(f"mitrepo:{p}" for p in originals), "mitrepo:pkg/settings.py"]),
        "humaneval_task": he.task_id,
        "sources": [str(mit), str(gpl), str(unknown)],
    }
