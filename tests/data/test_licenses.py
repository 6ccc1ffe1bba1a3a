"""Licence audit: planted licence files, metadata fields, classifiers and SPDX headers → exact SPDX, the
allow-list's expression semantics, and the audit of the interpreter's own packages.

The licence snippets below are written for these tests: each carries the few phrases that identify its
licence, wrapped in filler, not the licence's real text."""

import subprocess

import pytest

from codefoundry.data import sources
from codefoundry.data.licenses import (
    UNKNOWN,
    LicenseConfig,
    LicenseExpressionError,
    allowed,
    declared_license,
    file_license,
    license_from_text,
    looks_like_license_file,
    normalize_expression,
    repo_license,
    repo_licenses,
)
from codefoundry.data.sources import DirectorySource, GitSource, default_sources

MIT = """Copyright (c) 2031 Planted Fixtures
Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files, to deal in it freely.
The above copyright notice and this permission notice shall be included in all copies.
THE SOFTWARE IS PROVIDED "AS IS"."""
MIT0 = """Copyright 2031 Nobody
Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files, to deal in it without restriction. PROVIDED "AS IS"."""
BSD_HEAD = """Copyright (c) 2031, Planted Fixtures. All rights reserved.
Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:
1. Redistributions of source code must retain the above copyright notice.
2. Redistributions in binary form must reproduce the above copyright notice.
"""
BSD2 = BSD_HEAD + "THIS SOFTWARE IS PROVIDED AS IS.\n"
BSD3 = (
    BSD_HEAD
    + """3. Neither the name of the copyright holder nor the names of its contributors may be used to
endorse or promote products derived from this software without specific prior written permission.
"""
)
BSD4 = (
    BSD3 + "4. All advertising materials mentioning features or use of this software must display a note.\n"
)
APACHE = """Copyright 2031 Planted
Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except
in compliance with the License."""
LLVM = APACHE + "\n---- LLVM Exceptions to the Apache 2.0 License ----\nextra permissions follow"
ISC = """Copyright 2031 Planted
Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee
is hereby granted, provided that the above copyright notice and this permission notice appear in all
copies. THE SOFTWARE IS PROVIDED "AS IS"."""
ZERO_BSD = """Copyright 2031 Planted
Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee
is hereby granted. THE SOFTWARE IS PROVIDED "AS IS"."""
HPND = """Permission to use, copy, modify, and distribute this software and its documentation for any
purpose and without fee is hereby granted, provided that the notice appears in all copies."""
PSF = '1. This LICENSE AGREEMENT is between the Python Software Foundation ("PSF") and you.'
CPYTHON = (
    PSF
    + "\nBEOPEN PYTHON OPEN SOURCE LICENSE AGREEMENT VERSION 1\n..."
    + "\nThis LICENSE AGREEMENT is between the Corporation for National Research Initiatives (CNRI)\n"
    + HPND
)
MPL = "Mozilla Public License Version 2.0\n==================\n1. Definitions"
GPL3_TEXT = """GNU GENERAL PUBLIC LICENSE
Version 3, 29 June 2007
... terms ...
How to Apply These Terms
    <one line to give the program's name and a brief idea of what it does.>
    Copyright (C) <year>  <name of author>
    This program is free software: you can redistribute it and/or modify it under the terms of the
    GNU General Public License as published by the Free Software Foundation, either version 3 of the
    License, or (at your option) any later version."""
LGPL3_TEXT = "GNU LESSER GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\nThis version incorporates GPL 3."
LGPL21_TEXT = "GNU LESSER GENERAL PUBLIC LICENSE\nVersion 2.1, February 1999\n..."
GPL2_NOTICE = """This program is free software; you can redistribute it and/or modify it under the terms of the
GNU General Public License as published by the Free Software Foundation; either version 2 of the
License, or (at your option) any later version."""
AGPL = "GNU AFFERO GENERAL PUBLIC LICENSE\nVersion 3, 19 November 2007"
UNLICENSE = "This is free and unencumbered software released into the public domain.\nAnyone may use it."
CC0 = "Creative Commons Legal Code\n\nCC0 1.0 Universal\n\n    STATEMENT OF PURPOSE"
ZLIB = """This software is provided 'as-is'. 2. Altered source versions must be plainly marked as such,
and must not be misrepresented as being the original software."""
BOOST = "Boost Software License - Version 1.0 - August 17th, 2003\nPermission is hereby granted..."
CUSTOM = "Copyright Planted Corp. You may read this code on Tuesdays. All other rights reserved."


@pytest.mark.parametrize(
    ("text", "spdx"),
    [
        (MIT, "MIT"), (MIT0, "MIT-0"), (BSD2, "BSD-2-Clause"), (BSD3, "BSD-3-Clause"), (BSD4, "BSD-4-Clause"),
        (APACHE, "Apache-2.0"), (LLVM, "Apache-2.0 WITH LLVM-exception"), (ISC, "ISC"), (ZERO_BSD, "0BSD"),
        (HPND, "HPND"), (PSF, "PSF-2.0"), (CPYTHON, "Python-2.0"), (MPL, "MPL-2.0"),
        (GPL3_TEXT, "GPL-3.0-only"), (GPL2_NOTICE, "GPL-2.0-or-later"), (LGPL21_TEXT, "LGPL-2.1-only"),
        (AGPL, "AGPL-3.0-only"), (UNLICENSE, "Unlicense"), (CC0, "CC0-1.0"), (ZLIB, "Zlib"),
        (BOOST, "BSL-1.0"), (CUSTOM, UNKNOWN),
        (MIT + "\n\n---- vendored ----\n" + BSD3, "BSD-3-Clause AND MIT"),  # a bundle: every licence, AND
        (BSD2 + "\n" + BSD3, "BSD-2-Clause AND BSD-3-Clause"),  # two variants, each judged in its own window
        (GPL3_TEXT + "\nGCC RUNTIME LIBRARY EXCEPTION\n", "GPL-3.0-only WITH GCC-exception-3.1"),
    ],
)  # fmt: skip
def test_licence_text_matcher(text, spdx):
    assert license_from_text(text) == spdx


def test_repo_licence_from_files_combines_and_choice_notices():
    assert repo_license({"LICENSE": MIT}) == "MIT"
    assert repo_license({"LICENSE": BSD3, "vendor/LICENSE.zlib": ZLIB}) == "BSD-3-Clause AND Zlib"
    dual = {
        "LICENSE": "This software is made available under the terms of *either* of the licenses\n"
        "found in LICENSE.APACHE or LICENSE.MIT.",
        "LICENSE.APACHE": APACHE,
        "LICENSE.MIT": MIT,
    }
    assert repo_license(dual) == "Apache-2.0 OR MIT"
    # "dual licensed" deep inside a long bundle describes one part of it, not a choice for the whole.
    bundle = MIT + "\n" + "filler text. " * 200 + "The docs are dual licensed under the MIT and ISC.\n" + ISC
    assert repo_license({"LICENSE": bundle}) == "ISC AND MIT"
    assert repo_license({"COPYING": GPL3_TEXT, "COPYING.LESSER": LGPL3_TEXT}) == "LGPL-3.0-only"
    assert repo_license({"LICENSE": CUSTOM}) == UNKNOWN
    assert repo_license({}) == UNKNOWN


def meta(*lines):
    return "Metadata-Version: 2.4\nName: planted\n" + "".join(line + "\n" for line in lines)


@pytest.mark.parametrize(
    ("metadata", "files", "spdx"),
    [
        (meta("License-Expression: mit OR apache-2.0"), {"LICENSE": BSD3}, "MIT OR Apache-2.0"),  # declared wins
        (meta("License: MIT License"), {}, "MIT"),
        (meta("License: Apache 2.0"), {}, "Apache-2.0"),
        (meta("License: Apache Software License"), {}, "Apache-2.0"),
        (meta("License: Modified BSD License"), {}, "BSD-3-Clause"),
        (meta("License: 3-Clause BSD License"), {}, "BSD-3-Clause"),
        (meta("License: ISC License (ISCL)"), {}, "ISC"),
        (meta("License: GPLv3+"), {}, "GPL-3.0-or-later"),
        (meta("License: MPL-2.0 AND MIT"), {}, "MPL-2.0 AND MIT"),
        (meta("License: BSD"), {"LICENSE": BSD2}, "BSD-2-Clause"),  # generic name: the file says which
        (meta("License: BSD", "Classifier: License :: OSI Approved :: BSD License"), {}, UNKNOWN),
        (meta("License: UNKNOWN", "Classifier: License :: OSI Approved :: MIT License"), {}, "MIT"),
        (meta("Classifier: License :: OSI Approved :: MIT License",
              "Classifier: License :: OSI Approved :: Apache Software License"), {}, "Apache-2.0 OR MIT"),
        (meta("Classifier: License :: OSI Approved :: GNU Lesser General Public License v3 or later (LGPLv3+)"),
         {}, "LGPL-3.0-or-later"),
        (meta("Classifier: License :: OSI Approved :: ISC License (ISCL)"), {"LICENSE": MIT}, "MIT"),  # files first
        (meta("License: " + BSD3.replace("\n", "\n        ")), {}, "BSD-3-Clause"),  # pasted text, folded
        (meta("License: Dual License"), {}, UNKNOWN),
        (None, {"LICENSE.txt": PSF}, "PSF-2.0"),
    ],
)  # fmt: skip
def test_repo_licence_from_metadata(metadata, files, spdx):
    assert repo_license(files, metadata) == spdx


def test_planted_repositories_end_to_end(tmp_path):
    def repo(name, files):
        for rel, text in files.items():
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_text(text)
        return DirectorySource(tmp_path / name)

    srcs = [
        repo("mitproj", {"LICENSE": MIT, "src/a.py": "x = 1\n", "src/LICENSE": GPL3_TEXT}),  # only root counts
        repo("apacheproj", {"LICENCE.md": APACHE, "NOTICE": "Planted notice.\n"}),
        repo("dualproj", {"LICENSE": "Licensed under either of the licenses below, at your option.",
                          "LICENSE-APACHE": APACHE, "LICENSE-MIT": MIT}),
        repo("pyproj", {"pyproject.toml": '[project]\nname = "p"\nlicense = "BSD-2-Clause"\n'}),
        repo("tableproj", {"pyproject.toml": '[project]\nname = "t"\nlicense = {text = "MIT"}\n'}),
        repo("sdist", {"PKG-INFO": meta("License: ISC"), "setup.py": "pass\n"}),
        repo("mystery", {"LICENSE": CUSTOM, "m.py": "pass\n"}),
        repo("bare", {"b.py": "pass\n"}),
    ]  # fmt: skip
    assert repo_licenses(srcs) == {
        "mitproj": "MIT",
        "apacheproj": "Apache-2.0",
        "dualproj": "Apache-2.0 OR MIT",
        "pyproj": "BSD-2-Clause",
        "tableproj": "MIT",
        "sdist": "ISC",
        "mystery": UNKNOWN,
        "bare": UNKNOWN,
    }


def test_git_repository_licence_follows_the_revision(tmp_path):
    root = tmp_path / "relicensed"
    root.mkdir()
    cfg = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(root), *cfg, *args], check=True, capture_output=True, text=True
        )

    git("init", "-q")
    (root / "COPYING").write_text(GPL2_NOTICE)
    git("add", "-A")
    git("commit", "-q", "-m", "gpl")
    (root / "COPYING").unlink()
    (root / "LICENSE").write_text(MIT)
    git("add", "-A")
    git("commit", "-q", "-m", "relicense")
    try:
        assert repo_licenses([GitSource(root)]) == {"relicensed": "MIT"}
        assert repo_licenses([GitSource(root, revision="HEAD~1")]) == {"relicensed": "GPL-2.0-or-later"}
    finally:
        sources.close_git_readers()


def test_spdx_header_overrides_repo_licence():
    assert (
        file_license("# SPDX-License-Identifier: Apache-2.0 OR MIT\nx = 1\n", "GPL-3.0-only")
        == "Apache-2.0 OR MIT"
    )
    assert file_license("/*\n * SPDX-License-Identifier: GPL-2.0+ */\nint x;\n", "MIT") == "GPL-2.0-or-later"
    assert file_license("<!-- SPDX-License-Identifier: CC0-1.0 -->\n", "MIT") == "CC0-1.0"
    late = "\n" * 25 + "# SPDX-License-Identifier: GPL-3.0-only\n"
    assert file_license(late, "MIT") == "MIT"  # only the first 20 lines are a header
    assert file_license("# SPDX-License-Identifier: ((\n", "MIT") == "MIT"


@pytest.mark.parametrize(
    ("expr", "config", "ok"),
    [
        ("MIT", LicenseConfig(), True),
        ("mit", LicenseConfig(), True),
        ("GPL-3.0-only", LicenseConfig(), False),
        ("MIT OR GPL-3.0-only", LicenseConfig(), True),
        ("MIT AND GPL-3.0-only", LicenseConfig(), False),
        ("(MIT OR GPL-2.0-only) AND BSD-3-Clause", LicenseConfig(), True),
        ("(MPL-2.0 OR GPL-2.0-only) AND BSD-3-Clause", LicenseConfig(), False),
        ("Apache-2.0 WITH LLVM-exception", LicenseConfig(), True),
        ("GPL-2.0-only WITH Classpath-exception-2.0", LicenseConfig(), False),
        ("GPL-2.0-only WITH Classpath-exception-2.0",
         LicenseConfig(allow=("GPL-2.0-only WITH Classpath-exception-2.0",)), True),
        ("MPL-2.0", LicenseConfig(allow=("MPL-2.0",)), True),
        ("MIT", LicenseConfig(allow=("MPL-2.0",)), False),
        (UNKNOWN, LicenseConfig(), False),
        (UNKNOWN, LicenseConfig(keep_unknown=True), True),
        ("MIT AND unknown", LicenseConfig(), False),
        ("not ( a licence", LicenseConfig(), False),
        ("not ( a licence", LicenseConfig(keep_unknown=True), True),
    ],
)  # fmt: skip
def test_allow_list_semantics(expr, config, ok):
    assert allowed(expr, config) is ok


def test_expression_normalisation():
    assert normalize_expression("mit or apache-2.0") == "MIT OR Apache-2.0"
    assert (
        normalize_expression("GPL-2.0+ and (BSD-3-Clause or MIT)")
        == "GPL-2.0-or-later AND (BSD-3-Clause OR MIT)"
    )
    assert normalize_expression("LGPL-2.1") == "LGPL-2.1-only"
    assert normalize_expression("LicenseRef-Planted") == "LicenseRef-Planted"
    for bad in ("MIT AND", "(MIT", "MIT OR OR BSD-2-Clause", ""):
        with pytest.raises(LicenseExpressionError):
            normalize_expression(bad)
    with pytest.raises(LicenseExpressionError, match="not a known SPDX id"):
        normalize_expression("Planted-9", strict=True)


def test_declared_record_licences():
    assert declared_license("MIT License") == "MIT"
    assert declared_license(["Apache-2.0", "mit"]) == "Apache-2.0 AND MIT"
    assert declared_license("some custom terms") == UNKNOWN
    assert declared_license(5) == UNKNOWN


def test_licence_file_names():
    for name in ("LICENSE", "LICENCE.md", "license.txt", "COPYING.LESSER", "NOTICE", "LICENSE-MIT",
                 "MIT-LICENSE", "UNLICENSE", "LICENSE.APACHE2"):  # fmt: skip
        assert looks_like_license_file(name), name
    for name in ("license.py", "README.md", "licensing_helpers.c", "notices.py", "setup.py"):
        assert not looks_like_license_file(name), name


def test_default_sources_audit_finds_real_licences():
    lics = repo_licenses(default_sources())
    assert lics["cpython-stdlib"] in ("Python-2.0", "0BSD AND Python-2.0")
    assert lics["pytest"] == "MIT"
    assert "BSD-3-Clause" in lics["numpy"].split(" AND ")
    unknown = [repo for repo, spdx in lics.items() if spdx == UNKNOWN]
    assert len(unknown) < 0.1 * len(lics), unknown
