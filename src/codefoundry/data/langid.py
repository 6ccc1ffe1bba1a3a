"""Language identification: which language a file is in, and whether it belongs in a corpus at all.

`identify(path, data, text, config)` is what the pipeline calls per file; it answers `(language, None)`
for a file to keep and `(language_or_None, reason)` for a file to drop, with one of these reasons:

- `binary`: `is_binary` says so (a NUL byte or many control bytes in the first 8 KiB, a known binary
  file signature, or a binary extension). UTF-16/UTF-32 text counts as binary: its ASCII characters
  carry NUL bytes, and the corpus is UTF-8; such files are rare in source trees (Windows resource files).
- `not_utf8`: not binary, but the caller could not decode it as UTF-8 (`text is None`).
- `unknown_language`: `detect_language` found nothing (or the caller's language hint is a name we do
  not know).
- `language_not_selected`: a known language outside `LangConfig.languages`.
- `generated:<why>`: `is_generated` found a lockfile, protobuf output, a minified or compiled bundle,
  vendored code or a "generated, do not edit" marker.

How a language is found, first hit wins: the file name (`Makefile`, `Dockerfile`, `CMakeLists.txt`,
`README`, ...); the extension (`.h` is C unless its text shows C++: `class X {`, `template <`,
`namespace`, `std::`, access specifiers, extension-less standard headers); for files with no known
extension, a shebang (`#!/usr/bin/env python3`, `#!/bin/bash`, node, ruby, ...), an Emacs/Vim mode line,
or an opening `<?php`, `<?xml` or `<!DOCTYPE html>`.

Known languages, lower case (`LANGUAGES`): python, cython, c, cpp, csharp, java, kotlin, scala, go,
rust, swift, dart, javascript, typescript, ruby, php, perl, lua, r, julia, haskell, shell, powershell,
batch, sql, html, css, scss, xml, markdown, rst, tex, text, json, yaml, toml, ini, makefile, cmake,
dockerfile.

Limits: extensions shared by unrelated languages are either pinned to the common one (`.pl` is Perl,
`.r` is R, `.ts` is TypeScript; an MPEG transport stream is caught as binary first) or left unknown
(`.m`: Objective-C or MATLAB; `.inc`, `.in` templates). Notebooks (`.ipynb`) and CSV are not code here
and come out `unknown_language`; an SVG that opens with `<?xml` is xml (and the data filters judge it).
An include-only `.h` shows nothing of C++ and stays C. Content heuristics read the first 8 KiB only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "LANGUAGES",
    "LangConfig",
    "decode_text",
    "detect_language",
    "identify",
    "is_binary",
    "is_generated",
]

# Extension (lower case, with the dot) → language. Case-sensitive exceptions are in _CASED_EXTENSIONS.
_EXTENSIONS: dict[str, str] = {
    **dict.fromkeys([".py", ".pyi", ".pyw"], "python"),
    **dict.fromkeys([".pyx", ".pxd", ".pxi"], "cython"),
    ".c": "c",
    ".h": "c",  # revisited by content: see _looks_like_cpp
    **dict.fromkeys([".cc", ".cpp", ".cxx", ".c++", ".hh", ".hpp", ".hxx", ".h++", ".ipp", ".tpp"], "cpp"),
    **dict.fromkeys([".cu", ".cuh"], "cpp"),  # CUDA is C++ with extensions
    ".cs": "csharp",
    ".java": "java",
    **dict.fromkeys([".kt", ".kts"], "kotlin"),
    **dict.fromkeys([".scala", ".sc"], "scala"),
    ".go": "go",
    ".rs": "rust",
    ".swift": "swift",
    ".dart": "dart",
    **dict.fromkeys([".js", ".mjs", ".cjs", ".jsx"], "javascript"),
    **dict.fromkeys([".ts", ".tsx", ".mts", ".cts"], "typescript"),
    **dict.fromkeys([".rb", ".rake", ".gemspec"], "ruby"),
    ".php": "php",
    **dict.fromkeys([".pl", ".pm", ".t"], "perl"),
    ".lua": "lua",
    ".r": "r",
    ".jl": "julia",
    **dict.fromkeys([".hs", ".lhs"], "haskell"),
    **dict.fromkeys([".sh", ".bash", ".zsh", ".ksh", ".fish"], "shell"),
    **dict.fromkeys([".ps1", ".psm1", ".psd1"], "powershell"),
    **dict.fromkeys([".bat", ".cmd"], "batch"),
    ".sql": "sql",
    **dict.fromkeys([".html", ".htm", ".xhtml"], "html"),
    ".css": "css",
    **dict.fromkeys([".scss", ".sass", ".less"], "scss"),
    **dict.fromkeys([".xml", ".xsd", ".xsl", ".xslt", ".plist"], "xml"),
    **dict.fromkeys([".md", ".markdown"], "markdown"),
    ".rst": "rst",
    **dict.fromkeys([".tex", ".sty", ".cls"], "tex"),
    ".txt": "text",
    ".json": "json",
    **dict.fromkeys([".yaml", ".yml"], "yaml"),
    ".toml": "toml",
    **dict.fromkeys([".ini", ".cfg", ".conf"], "ini"),
    **dict.fromkeys([".mk", ".mak"], "makefile"),
    ".cmake": "cmake",
    ".dockerfile": "dockerfile",
}
# Upper-case `.C` / `.H` are C++ by a convention older than `.cpp`.
_CASED_EXTENSIONS: dict[str, str] = {".C": "cpp", ".H": "cpp"}

_FILENAMES: dict[str, str] = {
    **dict.fromkeys(["makefile", "gnumakefile", "bsdmakefile"], "makefile"),
    **dict.fromkeys(["dockerfile", "containerfile"], "dockerfile"),
    "cmakelists.txt": "cmake",
    **dict.fromkeys(["rakefile", "gemfile", "guardfile", "vagrantfile", "podfile"], "ruby"),
    **dict.fromkeys(
        [".bashrc", ".bash_profile", ".profile", ".zshrc", "pkgbuild", "configure", "gradlew"], "shell"
    ),
    **dict.fromkeys(["sconstruct", "sconscript", "snakefile"], "python"),
    **dict.fromkeys(["readme", "license", "licence", "copying", "authors", "changes", "news"], "text"),
    **dict.fromkeys(["notice", "install", "contributors", "changelog", "todo"], "text"),
    **dict.fromkeys([".editorconfig", ".gitconfig", ".flake8", ".pylintrc"], "ini"),
    **dict.fromkeys(["pipfile"], "toml"),
}

# Shebang interpreter (basename, version digits stripped) → language.
_INTERPRETERS: dict[str, str] = {
    **dict.fromkeys(["python", "pypy", "jython", "ipython"], "python"),
    **dict.fromkeys(["sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish"], "shell"),
    **dict.fromkeys(["node", "nodejs", "deno", "bun", "qjs"], "javascript"),
    **dict.fromkeys(["ts-node", "tsx"], "typescript"),
    **dict.fromkeys(["ruby", "jruby"], "ruby"),
    "perl": "perl",
    "php": "php",
    **dict.fromkeys(["lua", "luajit"], "lua"),
    **dict.fromkeys(["rscript"], "r"),
    "julia": "julia",
    **dict.fromkeys(["runghc", "runhaskell"], "haskell"),
    "pwsh": "powershell",
    "make": "makefile",
}
# Names used in Emacs (`-*- mode: x -*-`) and Vim (`vim: ft=x`) mode lines that differ from ours.
_MODE_NAMES: dict[str, str] = {
    "python": "python", "sh": "shell", "bash": "shell", "shell-script": "shell", "c": "c", "c++": "cpp",
    "cpp": "cpp", "js": "javascript", "javascript": "javascript", "typescript": "typescript",
    "ruby": "ruby", "perl": "perl", "make": "makefile", "makefile": "makefile", "yaml": "yaml",
    "lua": "lua", "rst": "rst", "markdown": "markdown",
}  # fmt: skip

LANGUAGES: tuple[str, ...] = tuple(
    sorted(
        {*_EXTENSIONS.values(), *_CASED_EXTENSIONS.values(), *_FILENAMES.values(), *_INTERPRETERS.values()}
    )
)

# Kept as one string each so the tables read as lists rather than as a column of quotes.
_BINARY_EXTENSION_LIST = (
    ".pyc .pyo .pyd .so .dll .dylib .exe .o .obj .a .lib .class .jar .war .wasm .bin .pkl .pickle"
    " .npy .npz .pt .pth .ckpt .safetensors .onnx .h5 .hdf5 .parquet .arrow .feather .db .sqlite"
    " .png .jpg .jpeg .gif .bmp .ico .icns .tif .tiff .webp .psd .mp3 .mp4 .wav .ogg .flac .avi .mov"
    " .mkv .au .ttf .otf .woff .woff2 .eot .pdf .zip .gz .tgz .bz2 .xz .zst .7z .rar .tar .whl .egg"
    " .mo .msi .deb .rpm .dmg .iso"
)
_BINARY_EXTENSIONS = frozenset(_BINARY_EXTENSION_LIST.split())
# Signatures of binary files that may have no NUL byte in their first 8 KiB (the UTF-16 byte-order marks
# included). Plain-ASCII signatures are left out, except PDF's, so that no text file can match by chance.
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"%PDF-", b"PK\x03\x04", b"\x1f\x8b", b"\x7fELF", b"\xfd7zXZ",
          b"\xca\xfe\xba\xbe", b"\xcf\xfa\xed\xfe", b"\xff\xfe", b"\xfe\xff")  # fmt: skip
# Bytes that do not occur in text: C0 controls except \t \n \v \f \r and ESC (ANSI colour codes), and DEL.
_CONTROL_BYTES = bytes([*range(0, 9), *range(14, 27), *range(28, 32), 127])
_SNIFF = 8192
_MAX_CONTROL_FRACTION = 0.1


def _extension(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:] if dot > 0 else ""


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def is_binary(data: bytes, *, path: str = "") -> bool:
    """True for bytes that are not text: a binary extension in `path`, a known binary signature, a NUL
    byte, or more than 10% control bytes in the first 8 KiB. UTF-16/32 (with or without BOM) is binary
    here. Non-UTF-8 8-bit text (Latin-1) is *not* binary; decoding decides about it."""
    if path and _extension(_basename(path)).lower() in _BINARY_EXTENSIONS:
        return True
    head = data[:_SNIFF]
    if not head:
        return False
    if head.startswith(_MAGIC) or b"\x00" in head:
        return True
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return controls > _MAX_CONTROL_FRACTION * len(head)


def decode_text(data: bytes) -> str | None:
    """Strict UTF-8 decoding with a leading BOM dropped; None when the bytes are not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


# `#!/usr/bin/env -S python3 -u`, `#!/bin/bash -e`, `#! /usr/local/bin/node`
_SHEBANG = re.compile(r"#![ \t]*(?:\S*/)?(?:env[ \t]+(?:-\S+[ \t]+)*)?([^\s/]+)")
_EMACS_MODE = re.compile(r"-\*-[ \t]*([\w+#-]+)[ \t]*-\*-|-\*-.*?\bmode:[ \t]*([\w+#-]+)", re.IGNORECASE)
_VIM_MODE = re.compile(r"\bvim?:.*?\b(?:ft|filetype|syntax)=([\w+]+)")
# Markers that only C++ has. `__cplusplus` and `extern "C"` guards are deliberately absent: they sit in
# C headers meant to be included from C++.
_CPP_MARKERS = re.compile(
    r"^[ \t]*(?:template[ \t]*<|namespace\b[ \t\w:]*\{|(?:class|struct)[ \t]+\w+[ \t]*(?:final[ \t]*)?:"
    r"[ \t]*(?:public|protected|private)\b|class[ \t]+\w+[ \t]*\{|(?:public|private|protected)[ \t]*:"
    r"|using[ \t]+namespace\b|#[ \t]*include[ \t]*<(?:iostream|string|vector|memory|map|algorithm"
    r"|utility|cstdint|cstddef|cstdlib|cstring|functional|type_traits|optional|array|tuple|mutex)>)"
    r"|\bstd::|\bnullptr\b|\bconstexpr\b|\bstatic_cast<",
    re.MULTILINE,
)


def _looks_like_cpp(text: str) -> bool:
    return _CPP_MARKERS.search(text, 0, _SNIFF) is not None


def _from_shebang(first_line: str) -> str | None:
    m = _SHEBANG.match(first_line)
    if m is None:
        return None
    interpreter = m.group(1).lower().rstrip("0123456789.-")  # python3.11 → python, bash-5 → bash
    return _INTERPRETERS.get(interpreter)


def _from_content(text: str) -> str | None:
    """Extension-less files: shebang, mode line, or an unmistakable opening tag."""
    head = text[:_SNIFF]
    first_line = head.split("\n", 1)[0]
    if first_line.startswith("#!"):
        return _from_shebang(first_line)
    for line in head.split("\n", 3)[:3]:  # mode lines sit on the first lines (Emacs: line 1 or 2)
        m = _EMACS_MODE.search(line) if "-*-" in line else _VIM_MODE.search(line)
        mode = (m.group(m.lastindex or 1) or "").lower() if m is not None else ""
        if mode in _MODE_NAMES:
            return _MODE_NAMES[mode]
    opening = head.lstrip()[:64].lower()
    if opening.startswith("<?php"):
        return "php"
    if opening.startswith(("<!doctype html", "<html")):
        return "html"
    if opening.startswith("<?xml"):
        return "xml"
    return None


def detect_language(path: str, text: str) -> str | None:
    """The language of the file at `path` with contents `text` (see the module docstring for the
    order of evidence), or None when nothing identifies it. Names are those in `LANGUAGES`."""
    name = _basename(path)
    lowered = name.lower()
    if lowered in _FILENAMES:
        return _FILENAMES[lowered]
    if lowered.startswith(("dockerfile.", "containerfile.")) or lowered.endswith(".dockerfile"):
        return "dockerfile"
    if lowered.startswith("makefile.") and lowered.endswith((".am", ".in", ".mk")):
        return "makefile"
    extension = _extension(name)
    language = _CASED_EXTENSIONS.get(extension) or _EXTENSIONS.get(extension.lower())
    if language == "c" and extension.lower() == ".h" and _looks_like_cpp(text):
        return "cpp"
    if language is not None:
        return language
    return _from_content(text)


_LOCKFILE_LIST = (
    "package-lock.json npm-shrinkwrap.json yarn.lock pnpm-lock.yaml poetry.lock pipfile.lock uv.lock"
    " pdm.lock cargo.lock gemfile.lock composer.lock go.sum flake.lock mix.lock pubspec.lock"
)
_LOCKFILES = frozenset(_LOCKFILE_LIST.split())
_PROTOBUF_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", ".pb.go", ".pb.cc", ".pb.h", "_pb.js",
                      "_pb.d.ts")  # fmt: skip
_MINIFIED_SUFFIXES = (".min.js", ".min.mjs", ".min.css", "-min.js", ".bundle.js")
_VENDOR_DIRS = frozenset({"node_modules", "bower_components", "vendor", "_vendor", "vendored"})
# Minification is judged on the formats that get minified; elsewhere long lines are the filters' call.
_MINIFIABLE = frozenset({".js", ".mjs", ".cjs", ".css", ".json", ".html", ".htm"})
_MINIFIED_MEAN_LINE = 300
_MINIFIED_MIN_CHARS = 1000
_HEAD_LINES = 30
_HEAD_CHARS = 4096

# Markers of generated files, looked for in the first 30 lines. The strong ones are statements about the
# file itself and count anywhere there ("do not edit this line" is a version-bump note, not a marker).
# The weak ones ("Generated by X", "Auto-generated from Y") count only where they open a comment line, so
# prose such as "an auto-generated name" or a docstring line "generated by the lexer" is not a hit.
_GENERATED_STRONG = re.compile(
    r"@generated\b|\bdo not (?:edit|modify)\b(?! this line)|\bdon'?t edit\b(?! this line)"
    r"|\b(?:this|the) file (?:is|was|has been) (?:auto(?:matically)?[ -]?)?generated\b"
    r"|\bauto-?generated file\b",
    re.IGNORECASE,
)
_GENERATED_WEAK = re.compile(
    r"^[ \t]*(?:#+|//+|/\*+|\*|--|;+|<!--|\"\"\"|''')[ \t]*(?:auto(?:matically)?[ \t-]?)?generated[ \t]+"
    r"(?:by|from|with|using|for)\b",
    re.IGNORECASE | re.MULTILINE,
)
_SOURCE_MAP = "sourceMappingURL="


def _is_minified(text: str) -> bool:
    if len(text) < _MINIFIED_MIN_CHARS:
        return False
    lines = text.count("\n") + 1
    return len(text) / lines > _MINIFIED_MEAN_LINE


def is_generated(path: str, text: str) -> str | None:
    """Why the file looks machine-made or vendored (`lockfile`, `protobuf`, `minified`, `compiled`,
    `vendored`, `marker`), or None. Judged by name, directory, a source-map comment at the end, the mean
    line length of minifiable formats, and markers in the first 30 lines. A hand-written file that says
    "do not edit" near its top is dropped too: the marker is taken at its word."""
    normalized = path.replace("\\", "/")
    name = normalized.rsplit("/", 1)[-1].lower()
    if name in _LOCKFILES:
        return "lockfile"
    if name.endswith(_PROTOBUF_SUFFIXES):
        return "protobuf"
    if name.endswith(_MINIFIED_SUFFIXES):
        return "minified"
    if not _VENDOR_DIRS.isdisjoint(normalized.split("/")[:-1]):
        return "vendored"
    if _SOURCE_MAP in text[-512:]:
        return "compiled"
    if _extension(name) in _MINIFIABLE and _is_minified(text):
        return "minified"
    head = text[:_HEAD_CHARS]
    cut = -1
    for _ in range(_HEAD_LINES):  # the first 30 lines, without splitting a long file
        cut = head.find("\n", cut + 1)
        if cut < 0:
            break
    if cut >= 0:
        head = head[:cut]
    lowered = head.lower()  # substring tests are ~100x cheaper than the regexes; most files stop here
    if "generated" not in lowered and " edit" not in lowered and "not modify" not in lowered:
        return None
    if _GENERATED_STRONG.search(head) or _GENERATED_WEAK.search(head):
        return "marker"
    return None


@dataclass(frozen=True)
class LangConfig:
    """What language identification keeps.

    `languages`: keep only these (names from `LANGUAGES`); None keeps every known language.
    `drop_generated`: drop what `is_generated` flags (lockfiles, protobuf output, minified bundles,
    vendored directories, "do not edit" markers)."""

    languages: tuple[str, ...] | None = None
    drop_generated: bool = True

    def __post_init__(self) -> None:
        if self.languages is not None:
            unknown = sorted(set(self.languages) - set(LANGUAGES))
            if unknown:
                raise ValueError(f"LangConfig.languages: unknown {unknown}; known: {', '.join(LANGUAGES)}")


# Names other tools give languages (JSONL/Parquet records often carry one), lower-cased → ours.
_ALIASES: dict[str, str] = {
    "c++": "cpp", "c#": "csharp", "js": "javascript", "node": "javascript", "ts": "typescript",
    "py": "python", "python3": "python", "golang": "go", "rs": "rust", "bash": "shell", "sh": "shell",
    "zsh": "shell", "md": "markdown", "yml": "yaml", "restructuredtext": "rst", "dockerfile": "dockerfile",
    "make": "makefile", "objective-c++": "cpp",
}  # fmt: skip


def identify(
    path: str, data: bytes | None, text: str | None, config: LangConfig, *, language: str | None = None
) -> tuple[str | None, str | None]:
    """(language, drop_reason) for one file; drop_reason None means keep. The language is returned
    with a drop when it was found, so reports can say what was dropped.

    `data` is the raw bytes (None for records that only ever were text, e.g. JSONL documents; then the
    text is checked for NUL characters instead). `text` is the UTF-8 decoding of `data`, or None when
    the caller could not decode it (see `decode_text`). `language` is a name the source already gives
    (a record's `lang` field, in our names or common ones such as "C++" or "Bash"); it replaces
    detection, and a name we do not know drops the record as `unknown_language`."""
    if data is not None:
        if is_binary(data, path=path):
            return None, "binary"
    elif path and _extension(_basename(path)).lower() in _BINARY_EXTENSIONS:
        return None, "binary"
    if text is None:
        return None, "not_utf8"
    if data is None and "\x00" in text[:_SNIFF]:
        return None, "binary"
    if language is not None:
        language = _ALIASES.get(language.lower(), language.lower())
        language = language if language in LANGUAGES else None
    else:
        language = detect_language(path, text)
    if language is None:
        return None, "unknown_language"
    if config.languages is not None and language not in config.languages:
        return language, "language_not_selected"
    if config.drop_generated:
        why = is_generated(path, text)
        if why is not None:
            return language, f"generated:{why}"
    return language, None
