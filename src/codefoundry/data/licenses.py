"""Licence audit: the licence of each repository or package as an SPDX expression, and the allow-list.

Evidence, in the order it is trusted (`repo_license`):

1. `License-Expression` in package metadata (PEP 639): the author's own SPDX declaration.
2. The `License` metadata field: an SPDX expression, a common name that maps to exactly one licence
   ("MIT License", "Apache 2.0", "Modified BSD"), or a pasted licence text, which goes to the text matcher.
3. Licence files (LICENSE*, LICENCE*, COPYING*, NOTICE*, anything in `*.dist-info/licenses/`), matched
   against a small table of phrases that only one licence's text contains.
4. Trove classifiers, only when every licence classifier names one licence ("BSD License" does not).

A file whose first 20 lines carry `SPDX-License-Identifier:` gets that expression instead of its repo's
(`file_license`). Anything not identified is "unknown"; a generic name ("BSD", "GPL") is never widened to
a guessed version.

Combining: licences found in one file, or in several files of a repo, are joined with AND (each text
governs some part of the code), sorted. The exception is a short notice saying the user may choose
("either of the licenses found in LICENSE.APACHE or LICENSE.BSD"): then the repo's licences are joined
with OR. GNU licences: a notice in the text ("either version 2 ... or (at your option) any later
version") decides "-only" / "-or-later"; a full text without one is "-only".

Limits: a phrase table is not a licence scanner. Variants of one family (MIT / MIT-0, BSD 2/3/4-clause,
ISC / 0BSD) are told apart within a window after each grant, so a bundle of them reports each. A
project's own licence that is not in the table adds nothing: its expression then lists only the standard
licences found beside it (matplotlib's PSF-style agreement is missed; its bundled Apache/MIT/CC0 texts are
found), so an expression can under-report. Rare licences are "unknown" (dropped unless `keep_unknown`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.parser import HeaderParser
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from codefoundry.data.sources import Source

__all__ = [
    "PERMISSIVE",
    "UNKNOWN",
    "LicenseConfig",
    "LicenseExpressionError",
    "allowed",
    "declared_license",
    "file_license",
    "license_from_text",
    "looks_like_license_file",
    "normalize_expression",
    "repo_license",
    "repo_licenses",
]

UNKNOWN = "unknown"

PERMISSIVE = (
    "MIT", "MIT-0", "MIT-CMU", "X11", "BSD-2-Clause", "BSD-3-Clause", "0BSD", "Apache-2.0", "ISC",
    "PSF-2.0", "Python-2.0", "Python-2.0.1", "CNRI-Python", "HPND", "Unlicense", "CC0-1.0", "Zlib",
    "BSL-1.0", "NCSA", "UPL-1.0",
)  # fmt: skip


@dataclass(frozen=True)
class LicenseConfig:
    """Which licences a document may carry. `allow` holds SPDX ids (case-insensitive) or whole
    `A WITH exception` terms; `keep_unknown` keeps documents whose licence is "unknown"."""

    allow: tuple[str, ...] = PERMISSIVE
    keep_unknown: bool = False


class LicenseExpressionError(ValueError):
    """A string that is not an SPDX licence expression."""


# ---------------------------------------------------------------------------------------------------
# SPDX expressions: a tiny parser (WITH binds tighter than AND, AND tighter than OR), a canonical form.

# A node is an id (str), ("WITH", licence, exception), or ("AND" | "OR", children).
Node = str | tuple

_KNOWN_IDS = (
    *PERMISSIVE, "BSD-4-Clause", "Apache-1.1", "MPL-1.1", "MPL-2.0", "EPL-1.0", "EPL-2.0", "CDDL-1.0",
    "EUPL-1.2", "Artistic-2.0", "OpenSSL", "Unicode-3.0", "Unicode-DFS-2016", "WTFPL", "PostgreSQL",
    "BlueOak-1.0.0", "CC-BY-4.0", "CC-BY-SA-4.0", "OFL-1.1", "MulanPSL-2.0", "Vim", "Ruby", "bzip2-1.0.6",
    "GPL-1.0-only", "GPL-1.0-or-later", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0-only",
    "GPL-3.0-or-later", "LGPL-2.0-only", "LGPL-2.0-or-later", "LGPL-2.1-only", "LGPL-2.1-or-later",
    "LGPL-3.0-only", "LGPL-3.0-or-later", "AGPL-3.0-only", "AGPL-3.0-or-later",
    # exceptions (right of WITH)
    "LLVM-exception", "Classpath-exception-2.0", "GCC-exception-3.1", "Autoconf-exception-3.0",
)  # fmt: skip
_CANONICAL = {i.lower(): i for i in _KNOWN_IDS}
# Deprecated GNU ids mean "-only"; a trailing "+" means "-or-later".
for _family in ("GPL-1.0", "GPL-2.0", "GPL-3.0", "LGPL-2.0", "LGPL-2.1", "LGPL-3.0", "AGPL-3.0"):
    _CANONICAL[_family.lower()] = f"{_family}-only"
    _CANONICAL[_family.lower() + "+"] = f"{_family}-or-later"

_TOKEN = re.compile(r"\s*(\(|\)|[A-Za-z0-9][A-Za-z0-9.+:-]*)")
_OPERATORS = ("AND", "OR", "WITH")


def _tokens(expr: str) -> list[str]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            if expr[pos:].strip():
                raise LicenseExpressionError(f"unexpected {expr[pos:].strip()[:20]!r}")
            break
        out.append(m.group(1))
        pos = m.end()
    return out


def _canonical_id(token: str, *, strict: bool) -> str:
    if token.upper() in _OPERATORS:
        raise LicenseExpressionError(f"operator {token} where a licence was expected")
    known = _CANONICAL.get(token.lower())
    if known:
        return known
    if token.startswith(("LicenseRef-", "DocumentRef-")) or token.lower() == UNKNOWN:
        return token
    if strict:
        raise LicenseExpressionError(f"{token!r} is not a known SPDX id")
    return token


def _parse(expr: str, *, strict: bool) -> Node:
    toks = _tokens(expr)
    if not toks:
        raise LicenseExpressionError("empty expression")
    pos = 0

    def peek() -> str | None:
        return toks[pos].upper() if pos < len(toks) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(toks):
            raise LicenseExpressionError("expression ends early")
        pos += 1
        return toks[pos - 1]

    def binary(op: str, sub) -> Node:
        children = [sub()]
        while peek() == op:
            take()
            children.append(sub())
        return children[0] if len(children) == 1 else (op, tuple(children))

    def atom() -> Node:
        tok = take()
        if tok == "(":
            node = binary("OR", lambda: binary("AND", with_term))
            if take() != ")":
                raise LicenseExpressionError("unbalanced parentheses")
            return node
        if tok == ")":
            raise LicenseExpressionError("unbalanced parentheses")
        return _canonical_id(tok, strict=strict)

    def with_term() -> Node:
        node = atom()
        if peek() == "WITH":
            take()
            if not isinstance(node, str):
                raise LicenseExpressionError("WITH needs a single licence on its left")
            return ("WITH", node, _canonical_id(take(), strict=strict))
        return node

    node = binary("OR", lambda: binary("AND", with_term))
    if pos != len(toks):
        raise LicenseExpressionError(f"unexpected {toks[pos]!r}")
    return node


def _render(node: Node, parent: str = "") -> str:
    if isinstance(node, str):
        return node
    if node[0] == "WITH":
        return f"{node[1]} WITH {node[2]}"
    op, children = node
    text = f" {op} ".join(_render(c, op) for c in children)
    # Parenthesise any compound inside another: SPDX precedence makes "A OR B AND C" legal, but not clear.
    return f"({text})" if parent else text


def normalize_expression(expr: str, *, strict: bool = False) -> str:
    """Canonical spelling of an SPDX expression ("mit or apache-2.0" → "MIT OR Apache-2.0", "GPL-2.0+" →
    "GPL-2.0-or-later"). `strict` also rejects ids outside this module's table (LicenseRef-* pass).
    Raises LicenseExpressionError for anything that does not parse."""
    return _render(_parse(expr, strict=strict))


def allowed(expr: str, config: LicenseConfig = LicenseConfig()) -> bool:
    """Whether a document under `expr` may be kept: `A OR B` if either is allowed, `A AND B` only if
    both are, `A WITH E` if the whole term or `A` is allowed (an exception only adds permissions).
    "unknown", and an expression that does not parse, are allowed only with `keep_unknown`."""
    allow = {a.lower() for a in config.allow}
    try:
        node = _parse(expr, strict=False)
    except LicenseExpressionError:
        return config.keep_unknown

    def ok(n: Node) -> bool:
        if isinstance(n, str):
            return config.keep_unknown if n.lower() == UNKNOWN else n.lower() in allow
        if n[0] == "WITH":
            return f"{n[1]} WITH {n[2]}".lower() in allow or n[1].lower() in allow
        results = (ok(c) for c in n[1])
        return all(results) if n[0] == "AND" else any(results)

    return ok(node)


def _join(op: str, exprs: Iterable[str]) -> str:
    """One expression joining `exprs` with `op`, duplicates removed, sorted for a stable result."""
    nodes = sorted({_render(_parse(e, strict=False)) for e in exprs})
    if not nodes:
        return UNKNOWN
    if len(nodes) == 1:
        return nodes[0]
    return _render((op, tuple(_parse(n, strict=False) for n in nodes)))


# ---------------------------------------------------------------------------------------------------
# Licence texts: distinctive phrases, matched on text lowercased with every run of punctuation and
# whitespace turned into one space ("Version 2.0," → "version 2 0").


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


_P = {
    "mit_grant": r"permission is hereby granted free of charge to any person obtaining a copy of this software",
    "mit_notice": r"above copyright notice and this permission notice (?:including the next paragraph )?"
    r"shall be included",
    "bsd": r"redistribution and use in source and binary forms with or without modification are permitted",
    "bsd_endorse": r"endorse or promote products derived from this software",
    "bsd_advert": r"all advertising materials mentioning features or use of this software must display",
    "apache2": r"apache license (?:version )?2 0",
    "llvm": r"llvm exceptions to the apache 2 0 license",
    "apache11": r"apache software license version 1 1",
    "isc_grant": r"permission to use copy modify and (?:or )?distribute this software for any purpose "
    r"with or without fee is hereby granted",
    "isc_notice": r"provided that the above copyright notice and this permission notice appear in all copies",
    "hpnd": r"permission to use copy modify (?:and (?:or )?)?distribute (?:and sell )?this software and its "
    r"(?:associated )?documentation for any purpose",
    "psf": r"license agreement is between the python software foundation",
    "beopen": r"beopen python open source license agreement version 1",
    "cnri": r"license agreement is between the corporation for national research initiatives",
    "mpl2": r"mozilla public license (?:version |v )?2 0",
    "mpl11": r"mozilla public license (?:version |v )?1 1",
    "unlicense": r"this is free and unencumbered software released into the public domain",
    "cc0": r"cc0 1 0 universal|creativecommons org publicdomain zero 1 0",
    "zlib": r"altered source versions must be plainly marked as such and must not be misrepresented",
    "bsl": r"boost software license version 1 0",
    "epl2": r"eclipse public license (?:version |v )?2 0",
    "epl1": r"eclipse public license (?:version |v )?1 0",
    "ncsa": r"university of illinois ncsa open source license",
}
_RE = {k: re.compile(v) for k, v in _P.items()}


@dataclass(frozen=True)
class _Rule:
    """`spdx` is found where `anchor` matches and, in the text after it (up to `window` characters, or the
    anchor's next match; the whole text when window is 0), every `need` phrase and no `avoid` phrase."""

    spdx: str
    anchor: str
    need: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()
    window: int = 1500


_RULES = (
    _Rule("MIT", "mit_grant", need=("mit_notice",)),
    _Rule("MIT-0", "mit_grant", avoid=("mit_notice",)),  # the MIT grant without its attribution condition
    _Rule("BSD-4-Clause", "bsd", need=("bsd_advert",)),
    _Rule("BSD-3-Clause", "bsd", need=("bsd_endorse",), avoid=("bsd_advert",)),
    _Rule("BSD-2-Clause", "bsd", avoid=("bsd_endorse", "bsd_advert")),
    _Rule("Apache-2.0 WITH LLVM-exception", "apache2", need=("llvm",), window=0),
    _Rule("Apache-2.0", "apache2", avoid=("llvm",), window=0),
    _Rule("Apache-1.1", "apache11"),
    _Rule("ISC", "isc_grant", need=("isc_notice",), window=400),
    _Rule("0BSD", "isc_grant", avoid=("isc_notice",), window=400),  # ISC's grant without its condition
    _Rule("HPND", "hpnd"),
    # The CPython licence stack (PSF + BeOpen + CNRI + CWI) is one SPDX licence; its parts alone are not.
    _Rule("Python-2.0", "psf", need=("beopen", "cnri"), window=0),
    _Rule("PSF-2.0", "psf", avoid=("beopen",), window=0),
    _Rule("CNRI-Python", "cnri", avoid=("beopen",), window=0),
    _Rule("MPL-2.0", "mpl2"),
    _Rule("MPL-1.1", "mpl11"),
    _Rule("Unlicense", "unlicense"),
    _Rule("CC0-1.0", "cc0"),
    _Rule("Zlib", "zlib"),
    _Rule("BSL-1.0", "bsl"),
    _Rule("EPL-2.0", "epl2"),
    _Rule("EPL-1.0", "epl1"),
    _Rule("NCSA", "ncsa"),
)
# The CWI notice inside the CPython stack reads like HPND; it is part of Python-2.0 there.
_SUBSUMES = {"Python-2.0": ("HPND",)}

# GNU licences: the title line of the full text names the version exactly.
_GNU_TEXTS = (
    ("AGPL-3.0-only", "gnu affero general public license version 3 19 november 2007"),
    ("LGPL-3.0-only", "gnu lesser general public license version 3 29 june 2007"),
    ("LGPL-2.1-only", "gnu lesser general public license version 2 1 february 1999"),
    ("LGPL-2.0-only", "gnu library general public license version 2 june 1991"),
    ("GPL-3.0-only", "gnu general public license version 3 29 june 2007"),
    ("GPL-2.0-only", "gnu general public license version 2 june 1991"),
)
_GNU_NOTICE = re.compile(
    r"under the terms of the gnu (affero |lesser |library )?general public license "
    r"(?:as published by the free software foundation )?(?:either )?(?:version )?(\d)(?: (\d))?"
    r"(?: of the license)?( or at your option any later version)?"
)
_GNU_FAMILY = {"": "GPL", "lesser ": "LGPL", "library ": "LGPL", "affero ": "AGPL"}

# A short notice that lets the user choose among the repo's licence files.
_CHOICE = re.compile(
    r"either of the (?:following )?licen[cs]es|licensed under either|dual licensed under|"
    r"at your option under|your choice of"
)
_CHOICE_NOTICE_MAX = 1500


def _rule_matches(rule: _Rule, text: str) -> bool:
    starts = [m.start() for m in _RE[rule.anchor].finditer(text)]
    for i, start in enumerate(starts):
        if rule.window:
            end = min(start + rule.window, starts[i + 1] if i + 1 < len(starts) else len(text))
            segment = text[start:end]
        else:
            segment = text
        if all(_RE[p].search(segment) for p in rule.need) and not any(
            _RE[p].search(segment) for p in rule.avoid
        ):
            return True
    return False


def _gnu(text: str) -> set[str]:
    # The full texts end with a sample notice ("either version 3 of the License, or (at your option)
    # any later version") under "<name of author>": a template, not this project's choice.
    templates = [m.end() for m in re.finditer(r"name of author", text)]
    notices = {}
    for m in _GNU_NOTICE.finditer(text):
        if any(0 <= m.start() - end < 400 for end in templates):
            continue
        family, major, minor, later = m.groups()
        version = f"{_GNU_FAMILY[family or '']}-{major}.{minor or 0}"
        notices[version] = notices.get(version, False) or bool(later)
    found = {f"{v}-{'or-later' if later else 'only'}" for v, later in notices.items()}
    # A full text alone names its version exactly; whether "or later" applies only a notice can say.
    found |= {
        spdx for spdx, title in _GNU_TEXTS if title in text and spdx.removesuffix("-only") not in notices
    }
    if "gcc runtime library exception" in text:
        found = {f"{s} WITH GCC-exception-3.1" if s.startswith("GPL-3.0") else s for s in found}
    return found


def _ids_in(text: str) -> set[str]:
    """SPDX ids whose characteristic phrases occur in `text` (a licence file or a pasted text)."""
    norm = _norm(text)
    found = {rule.spdx for rule in _RULES if _rule_matches(rule, norm)} | _gnu(norm)
    for big, parts in _SUBSUMES.items():
        if big in found:
            found.difference_update(parts)
    return found


def license_from_text(text: str) -> str:
    """The licence(s) a licence text contains, joined with AND (OR for a short "either of" notice), or
    "unknown"."""
    found = _ids_in(text)
    short_choice = len(text) <= _CHOICE_NOTICE_MAX and _CHOICE.search(_norm(text))
    return _join("OR" if short_choice else "AND", found) if found else UNKNOWN


def _license_from_files(files: Mapping[str, str]) -> str | None:
    per_file = {}
    choice = False
    for path in sorted(files):
        text = files[path]
        found = _ids_in(text)
        if found:
            per_file[path] = _join("AND", found)
        # "either of the licenses found in LICENSE.APACHE or LICENSE.BSD": a pointer, not a bundle.
        choice = choice or (len(text) <= _CHOICE_NOTICE_MAX and bool(_CHOICE.search(_norm(text))))
    if not per_file:
        return None
    results = set(per_file.values())
    if any(r.startswith("LGPL-3.0") for r in results):
        results.discard("GPL-3.0-only")  # COPYING beside COPYING.LESSER: LGPL-3.0 is GPL-3.0 plus permissions
    return _join("OR" if choice else "AND", results)


# ---------------------------------------------------------------------------------------------------
# Names people write in metadata and records. Keys are normalised by `_name_key`.

_NAMES = {
    "MIT": ("mit", "mit license", "expat", "expat license", "mit expat"),
    "MIT-0": ("mit 0", "mit no attribution", "mit no attribution license"),
    "BSD-3-Clause": (
        "bsd 3 clause", "bsd 3 clause license", "3 clause bsd", "3 clause bsd license", "bsd 3",
        "new bsd", "new bsd license", "bsd new", "modified bsd", "modified bsd license", "revised bsd",
        "revised bsd license",
    ),
    "BSD-2-Clause": (
        "bsd 2 clause", "bsd 2 clause license", "2 clause bsd", "2 clause bsd license", "bsd 2",
        "simplified bsd", "simplified bsd license", "freebsd", "freebsd license",
    ),
    "0BSD": ("0bsd", "zero clause bsd", "zero clause bsd license", "bsd zero clause"),
    "Apache-2.0": (
        "apache 2", "apache 2 0", "apache license", "apache license 2", "apache license 2 0", "apache 2 license",
        "apache 2 0 license", "apache software license", "apache software license 2 0", "asl 2", "asl 2 0",
    ),
    "ISC": ("isc", "isc license", "iscl"),
    "PSF-2.0": (
        "psf", "psf 2", "psf license", "psfl", "python software foundation", "python software foundation license",
    ),
    "MPL-2.0": ("mpl 2", "mpl 2 0", "mpl2", "mozilla public license 2", "mozilla public license 2 0"),
    "Unlicense": ("unlicense",),
    "CC0-1.0": ("cc0", "cc0 1 0", "cc0 1 0 universal"),
    "Zlib": ("zlib", "zlib license", "zlib libpng", "zlib libpng license"),
    "BSL-1.0": ("boost", "boost software license", "boost software license 1 0", "bsl 1 0"),
    "HPND": ("historical permission notice and disclaimer",),
}  # fmt: skip
_NAME_TO_SPDX = {key: spdx for spdx, keys in _NAMES.items() for key in keys}
_GNU_NAME = re.compile(
    r"(?:gnu )?(a|l)?(?:gpl|(?:affero |lesser |library )?general public license) ?(\d)(?: (\d))?( or later)?"
)


def _name_key(name: str) -> str:
    name = re.sub(r"\([^)]*\)", " ", name.lower())  # "ISC License (ISCL)" → "isc license"
    name = name.replace("+", " or later ").replace("licence", "license")
    words = [w for w in re.sub(r"[^a-z0-9]+", " ", name).split() if w not in ("the", "version")]
    words = [w[1:] if re.fullmatch(r"v\d+", w) else w for w in words]  # "v2" → "2"
    key = " ".join(words)
    return re.sub(r"\b(a?gpl|lgpl)v?(\d)", r"\1 \2", key)  # "gplv3" → "gpl 3"


def _from_name(name: str) -> str | None:
    """SPDX for a short licence name that means exactly one licence, else None."""
    try:
        return normalize_expression(name, strict=True)
    except LicenseExpressionError:
        pass
    key = _name_key(name)
    if key in _NAME_TO_SPDX:
        return _NAME_TO_SPDX[key]
    m = _GNU_NAME.fullmatch(key)
    if m:
        kind, major, minor, later = m.groups()
        family = "AGPL" if kind == "a" or "affero" in key else "LGPL" if kind == "l" else "GPL"
        family = "LGPL" if "lesser" in key or "library" in key else family
        spdx = f"{family}-{major}.{minor or 0}-{'or-later' if later else 'only'}"
        return spdx if spdx.lower() in _CANONICAL else None
    return None


def _from_license_field(value: str) -> str | None:
    value = value.strip()
    if not value or value.upper() in ("UNKNOWN", "NONE"):
        return None
    if "\n" in value or len(value) > 200:  # a pasted licence text
        found = license_from_text(value)
        return None if found == UNKNOWN else found
    return _from_name(value)


def _from_classifiers(classifiers: list[str]) -> str | None:
    names = [
        c.split("::")[-1].strip() for c in classifiers if c.startswith("License ::") and c.count("::") >= 2
    ]
    names = [n for n in names if n != "OSI Approved"]
    mapped = [_from_name(n) for n in names]
    if not mapped or None in mapped:
        return None  # one vague classifier ("BSD License") would make the whole answer a guess
    # Several licence classifiers on one package list the licences it is offered under.
    return _join("OR", mapped)


def repo_license(files: Mapping[str, str], metadata: str | None = None) -> str:
    """The licence of one repository or package as an SPDX expression, or "unknown".

    `files` maps a licence-looking file's path to its text; `metadata` is a METADATA / PKG-INFO text
    (RFC 822 headers). Order of trust: License-Expression, License field, files, classifiers."""
    headers = HeaderParser().parsestr(metadata) if metadata else None
    if headers is not None:
        declared = headers.get("License-Expression")
        if declared:
            try:
                return normalize_expression(str(declared))
            except LicenseExpressionError:
                pass  # a malformed declaration is no declaration; keep looking
        field = headers.get("License")
        found = _from_license_field(str(field)) if field else None
        if found:
            return found
    found = _license_from_files(files)
    if found:
        return found
    if headers is not None:
        found = _from_classifiers([str(c) for c in headers.get_all("Classifier") or []])
        if found:
            return found
    return UNKNOWN


_SPDX_HEADER = re.compile(r"SPDX-License-Identifier:\s*(.*)")
_HEADER_LINES = 20


def file_license(text: str, repo_license: str) -> str:
    """`SPDX-License-Identifier: <expr>` in the first 20 lines of `text` overrides `repo_license`.
    A header that does not parse is ignored (the repo's licence stands)."""
    for line in text.split("\n", _HEADER_LINES)[:_HEADER_LINES]:
        m = _SPDX_HEADER.search(line)
        if not m:
            continue
        # Keep the expression's own characters; a comment closer ("*/", "-->") or quote ends it.
        expr = re.match(r"[A-Za-z0-9.+:() -]*", m.group(1)).group(0)
        expr = re.sub(r"[^A-Za-z0-9)+]+$", "", expr)  # "CC0-1.0 -->" stops at ">", then drops " --"
        try:
            return normalize_expression(expr)
        except LicenseExpressionError:
            return repo_license
    return repo_license


def declared_license(value: object) -> str:
    """A licence carried by a record (an SPDX expression, a common name, or a list of them, joined with
    AND) as SPDX, or "unknown" when it does not name a licence clearly."""
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else None
    if not values or not all(isinstance(v, str) for v in values):
        return UNKNOWN
    mapped = [_from_name(v) for v in values]
    return UNKNOWN if None in mapped else _join("AND", mapped)


_LICENSE_NAME = re.compile(r"(?:^|[-_.])(?:un)?licen[cs]e|^copying|^notice|^copyright(?:$|[-_.])", re.I)
_CODE_SUFFIXES = (
    ".py",
    ".pyc",
    ".pyi",
    ".c",
    ".h",
    ".cc",
    ".cpp",
    ".js",
    ".ts",
    ".go",
    ".rs",
    ".java",
    ".so",
)


def looks_like_license_file(name: str) -> bool:
    """LICENSE, LICENCE.md, COPYING.LESSER, NOTICE.txt, LICENSE-MIT, MIT-LICENSE ...; not license.py."""
    return bool(_LICENSE_NAME.search(name)) and not name.lower().endswith(_CODE_SUFFIXES)


def repo_licenses(sources: Iterable[Source]) -> dict[str, str]:
    """repo → SPDX expression for every repo the sources can name up front (directories, git
    repositories, installed distributions). Record files carry their licence per record instead
    (`SourceFile.license`); a repo not in this mapping is "unknown"."""
    out = {}
    for source in sources:
        for evidence in source.license_evidence():
            out[evidence.repo] = repo_license(evidence.files, evidence.metadata)
    return out
