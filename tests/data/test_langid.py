"""Language identification: binary sniffing, the language table (extensions, names, shebangs, `.h`
C vs C++), generated-file markers, and the per-file verdict the pipeline records."""

from __future__ import annotations

import pytest

from codefoundry.data import langid
from codefoundry.data.langid import (
    LANGUAGES,
    LangConfig,
    decode_text,
    detect_language,
    identify,
    is_binary,
    is_generated,
)

PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def test_public_api():
    assert set(langid.__all__) == {
        "LANGUAGES", "LangConfig", "decode_text", "detect_language", "identify", "is_binary", "is_generated"
    }  # fmt: skip
    assert list(LANGUAGES) == sorted(LANGUAGES)
    assert all(name == name.lower() for name in LANGUAGES)
    required = {"python", "c", "cpp", "java", "javascript", "typescript", "go", "rust", "shell", "markdown"}
    assert required | {"json", "yaml"} <= set(LANGUAGES)


# --- binary ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, path",
    [
        (PNG_HEADER + b"IHDR but written as text after the signature", ""),
        (b"plain text\x00with one NUL", ""),
        ("UTF-16 text".encode("utf-16"), ""),  # BOM + NUL bytes
        ("UTF-16 text".encode("utf-16-le"), ""),  # no BOM, NUL bytes
        (b"\x7fELF\x02\x01\x01", ""),
        (b"print('looks like text')\n", "module.cpython-311-x86_64-linux-gnu.so"),  # binary extension
        (b"\x01\x02" * 11 + b"a" * 197, ""),  # 22 control bytes in 219: just over 10%
    ],
    ids=["png", "nul", "utf16-bom", "utf16-le", "elf", "extension", "controls"],
)
def test_binary(data: bytes, path: str):
    assert is_binary(data, path=path)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"def f():\n\treturn 1\r\n",
        "\ufeffprint('UTF-8 with BOM, caf\u00e9')\n".encode(),
        "caf\u00e9 in Latin-1\n".encode("latin-1"),  # not UTF-8, still text: decoding decides
        b"\x1b[31mred\x1b[0m ANSI colours are text\n",
        b"\x01\x02" * 10 + b"a" * 180,  # 20 control bytes in 200: exactly 10%
    ],
    ids=["empty", "code", "utf8-bom", "latin1", "ansi", "controls"],
)
def test_not_binary(data: bytes):
    assert not is_binary(data)


def test_only_the_first_8_kib_is_sniffed():
    assert not is_binary(b"a" * 8192 + b"\x00")
    assert is_binary(b"a" * 8191 + b"\x00")


def test_decode_text():
    assert decode_text("\ufeffx = 1\n".encode()) == "x = 1\n"
    assert decode_text("caf\u00e9".encode("latin-1")) is None


# --- language table --------------------------------------------------------------------------------------

CPP_HEADERS = [
    "class Widget {\npublic:\n  int size() const;\n};\n",
    "template <typename T>\nT max_of(T a, T b);\n",
    "namespace geometry {\nstruct Point { double x, y; };\n}\n",
    "#include <stdio.h>\nvoid print(const std::string& s);\n",
    "#include <vector>\nint count(int);\n",
    "struct Derived : public Base {\n  int x;\n};\n",
]
C_HEADERS = [
    "#ifndef POINT_H\n#define POINT_H\nstruct point { double x, y; };\nint area(struct point *p);\n#endif\n",
    # the guard that lets C++ include a C header is not C++
    '#ifdef __cplusplus\nextern "C" {\n#endif\nint add(int a, int b);\n#ifdef __cplusplus\n}\n#endif\n',
    "/* a class of errors; see the template in docs */\nint error_class(void);\n",
]


@pytest.mark.parametrize("text", CPP_HEADERS)
def test_h_with_cpp_content_is_cpp(text: str):
    assert detect_language("include/widget.h", text) == "cpp"


@pytest.mark.parametrize("text", C_HEADERS)
def test_h_with_c_content_is_c(text: str):
    assert detect_language("include/point.h", text) == "c"


@pytest.mark.parametrize(
    "path, expected",
    [
        ("pkg/mod.py", "python"), ("pkg/mod.pyi", "python"), ("src/main.c", "c"), ("src/main.cpp", "cpp"),
        ("src/main.cc", "cpp"), ("src/vec.hpp", "cpp"), ("src/Main.C", "cpp"), ("kernels/add.cu", "cpp"),
        ("App.java", "java"), ("app.js", "javascript"), ("app.mjs", "javascript"), ("view.jsx", "javascript"),
        ("app.ts", "typescript"), ("view.tsx", "typescript"), ("main.go", "go"), ("lib.rs", "rust"),
        ("run.sh", "shell"), ("run.bash", "shell"), ("README.md", "markdown"), ("index.rst", "rst"),
        ("data.json", "json"), ("ci.yml", "yaml"), ("ci.yaml", "yaml"), ("pyproject.toml", "toml"),
        ("setup.cfg", "ini"), ("index.html", "html"), ("site.css", "css"), ("q.sql", "sql"),
        ("app.rb", "ruby"), ("index.php", "php"), ("notes.txt", "text"), ("fast.pyx", "cython"),
        ("Makefile", "makefile"), ("GNUmakefile", "makefile"), ("rules.mk", "makefile"),
        ("Dockerfile", "dockerfile"), ("docker/Dockerfile.dev", "dockerfile"), ("CMakeLists.txt", "cmake"),
        ("Gemfile", "ruby"), ("README", "text"), ("LICENSE", "text"), ("win\\build.bat", "batch"),
    ],
)  # fmt: skip
def test_language_by_name(path: str, expected: str):
    assert detect_language(path, "") == expected
    assert expected in LANGUAGES


@pytest.mark.parametrize(
    "first_line, expected",
    [
        ("#!/usr/bin/env python3", "python"),
        ("#!/usr/bin/python3.11 -u", "python"),
        ("#!/bin/bash", "shell"),
        ("#! /bin/sh -e", "shell"),
        ("#!/usr/bin/env node", "javascript"),
        ("#!/usr/bin/env -S ruby -w", "ruby"),
        ("#!/usr/bin/perl", "perl"),
        ("#!/usr/bin/env zsh", "shell"),
        ("#!/usr/bin/env frobnicate", None),
    ],
)
def test_shebang_names_extensionless_scripts(first_line: str, expected: str | None):
    assert detect_language("bin/tool", first_line + "\nbody\n") == expected


def test_extension_outranks_shebang():
    assert detect_language("tool.py", "#!/bin/bash\nprint(1)\n") == "python"


@pytest.mark.parametrize(
    "path, text, expected",
    [
        ("bin/tool", "# -*- mode: python; coding: utf-8 -*-\nprint(1)\n", "python"),
        ("bin/tool", "# -*- python -*-\nprint(1)\n", "python"),
        ("bin/tool", "# vim: set ft=sh:\necho hi\n", "shell"),
        ("cgi/page", "<?php echo 1; ?>\n", "php"),
        ("site/page", "<!DOCTYPE html>\n<html></html>\n", "html"),
        ("icons/logo.svg", '<?xml version="1.0"?>\n<svg/>\n', "xml"),
        ("bin/tool", "# -*- coding: utf-8 -*-\nprint(1)\n", None),  # a coding line names no language
        ("matlab/f.m", "function y = f(x)\n", None),  # .m: Objective-C or MATLAB, left unknown
        ("data/table.csv", "a,b\n1,2\n", None),
        ("notebook.ipynb", '{"cells": []}', None),
    ],
)
def test_content_heuristics(path: str, text: str, expected: str | None):
    assert detect_language(path, text) == expected


# --- generated, vendored, minified ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, text",
    [
        ("torch/ops.h", "// @generated by torchgen/gen.py from NativeFunctions.h\n#pragma once\n"),
        ("api/api.pb.go", "package api\n"),
        ("svc/types.go", "// Code generated by stringer -type=Kind; DO NOT EDIT.\n\npackage svc\n"),
        ("svc/kind.go", "// Copyright 2024 The Authors.\n\n// Code generated by mockgen. DO NOT EDIT.\n"),
        ("pkg/keyword.py", "# This file is automatically generated; please don't edit it.\nkwlist = []\n"),
        ("pkg/table.py", "#!/usr/bin/env python\n# Auto-generated by tools/gen_table.py\nTABLE = {}\n"),
        ("ext/fast.c", "/* Generated by Cython 3.0.10 */\n#include <Python.h>\n"),
        ("docs/page.html", "<!-- Generated by Sphinx -->\n<html></html>\n"),
        ("app/migrations/0001_initial.py", "# Generated by Django 4.2 on 2024-01-01\nimport os\n"),
        ("pkg/ids.py", '"""Autogenerated by scripts/ids.py."""\nIDS = []\n'),
        ("pkg/x.py", "# THE FILE WAS GENERATED FROM schema.json\nX = 1\n"),
    ],
)  # fmt: skip
def test_generated_markers(path: str, text: str):
    assert is_generated(path, text) in {"marker", "protobuf"}


@pytest.mark.parametrize(
    "path, reason",
    [
        ("web/package-lock.json", "lockfile"), ("poetry.lock", "lockfile"), ("rust/Cargo.lock", "lockfile"),
        ("web/yarn.lock", "lockfile"), ("go.sum", "lockfile"), ("pkg/msg_pb2.py", "protobuf"),
        ("pkg/msg_pb2_grpc.py", "protobuf"), ("static/jquery.min.js", "minified"),
        ("web/node_modules/left-pad/index.js", "vendored"), ("pip/_vendor/rich/text.py", "vendored"),
    ],
)  # fmt: skip
def test_generated_by_name(path: str, reason: str):
    assert is_generated(path, "x = 1\n") == reason


@pytest.mark.parametrize(
    "text",
    [
        '"""Split text into tokens.\n\nThe tokens\ngenerated by the lexer are consumed lazily.\n"""\n',
        "# names may be auto-generated when none is given\nname = None\n",
        '__version__ = "1.2.3"  # DO NOT EDIT THIS LINE MANUALLY. LET bump2version DO IT\n',
        "/* numpyconfig.h is auto-generated */\n#include <numpyconfig.h>\n",
        "x = 1\n" * 30 + "# @generated\n",  # markers count only in the first 30 lines
    ],
)
def test_not_generated(text: str):
    assert is_generated("pkg/mod.py", text) is None


def test_minified_javascript_by_mean_line_length():
    just_over = "\n".join(["x" * 300] * 4)  # 1203 chars over 4 lines: mean 300.75
    just_under = "\n".join(["x" * 299] * 4)  # mean 299.75
    assert is_generated("static/app.js", just_over) == "minified"
    assert is_generated("static/app.js", just_under) is None
    assert is_generated("pkg/long.py", just_over) is None  # only minifiable formats are judged so
    assert is_generated("static/tiny.js", "x" * 999) is None  # too small to call minified


def test_compiled_bundle_by_source_map():
    assert is_generated("dist/app.js", "var a=1;\n//# sourceMappingURL=app.js.map\n") == "compiled"


# --- identify: the per-file verdict --------------------------------------------------------------------


def test_identify_reasons_on_a_planted_tree(tmp_path):
    planted = {
        "pkg/core.py": (b"def area(r):\n    return 3.14159 * r * r\n", ("python", None)),
        "pkg/fast.h": (b"template <class T> T twice(T x);\n", ("cpp", None)),
        "pkg/logo.png": (PNG_HEADER + b"\x00\x00\x00\rIHDR", (None, "binary")),
        "pkg/utf16.txt": ("hello".encode("utf-16"), (None, "binary")),
        "pkg/latin1.py": ("s = 'caf\u00e9'\n".encode("latin-1"), (None, "not_utf8")),
        "pkg/data.csv": (b"a,b\n1,2\n", (None, "unknown_language")),
        "pkg/notes.md": (b"# Notes\n", ("markdown", "language_not_selected")),
        "pkg/msg_pb2.py": (b"DESCRIPTOR = None\n", ("python", "generated:protobuf")),
        "web/package-lock.json": (b'{"lockfileVersion": 3}\n', ("json", "generated:lockfile")),
        "bin/run": (b"#!/usr/bin/env bash\necho hi\n", ("shell", None)),
    }
    for rel, (data, _) in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    config = LangConfig(languages=("python", "cpp", "json", "shell"))
    found = {}
    for file in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        data = file.read_bytes()
        rel = file.relative_to(tmp_path).as_posix()
        found[rel] = identify(rel, data, decode_text(data), config)
    assert found == {rel: verdict for rel, (_, verdict) in planted.items()}


def test_identify_text_only_records():
    config = LangConfig()
    assert identify("rec.py", None, "x = 1\n", config) == ("python", None)
    assert identify("rec.py", None, "x = 1\x00\n", config) == (None, "binary")
    assert identify("rec.png", None, "not really an image", config) == (None, "binary")


def test_identify_keeps_generated_when_asked():
    text = "# @generated\nx = 1\n"
    assert identify("m.py", text.encode(), text, LangConfig()) == ("python", "generated:marker")
    assert identify("m.py", text.encode(), text, LangConfig(drop_generated=False)) == ("python", None)


def test_lang_config_names_an_unknown_language():
    with pytest.raises(ValueError, match="'pyhton'"):
        LangConfig(languages=("python", "pyhton"))


def test_identify_takes_a_language_the_source_already_gives():
    config = LangConfig()
    assert identify("", None, "int main() {}\n", config, language="C++") == ("cpp", None)
    assert identify("", None, "echo hi\n", config, language="Bash") == ("shell", None)
    assert identify("x.py", None, "x = 1\n", config, language="go") == ("go", None)  # the hint wins
    assert identify("", None, "whatever\n", config, language="Klingon") == (None, "unknown_language")
