"""Repository-level documents: the files of one repository ordered so that a file comes after the files
it imports, joined with `<|repo_name|>` / `<|file_sep|>` as StarCoder2 and Qwen2.5-Coder lay them out:

    <|repo_name|>{repo}
    <|file_sep|>{path}
    {text}
    <|file_sep|>{path}
    ...

Imports are read with regular expressions, not parsers: Python `import`/`from` (absolute and relative),
C/C++ `#include "..."`, JavaScript/TypeScript `import ... from './x'` / `require('./x')`, Java `import a.b.C;`.
An import resolves to a repository file by its module path; a Python module `a.b` matches any file whose
path ends in `a/b.py` or `a/b/__init__.py`, so a repository whose package root is not its top directory
still resolves. Imports that name nothing in the repository (the standard library, other packages) are
ignored. Cycles are broken deterministically: when no remaining file has all its imports placed, the
file with the smallest path goes next. Among ready files the smallest path goes first, so the order is a
pure function of the files."""

from __future__ import annotations

import heapq
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass

from codefoundry.models.tokenizer import FILE_SEP, REPO_NAME

_PY_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+\(?([\w., \t]*)|import[ \t]+([\w., \t]+))", re.M
)
_C_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"\n]+)"', re.M)
_JS_IMPORT = re.compile(
    r"""(?:\bfrom[ \t]*|\brequire\([ \t]*|^[ \t]*import[ \t]*)['"](\.{1,2}/[^'"\n]+)['"]""", re.M
)
_JAVA_IMPORT = re.compile(r"^[ \t]*import[ \t]+(?:static[ \t]+)?([\w.]+)[ \t]*;", re.M)
_JS_SUFFIXES = ("", ".js", ".ts", ".jsx", ".tsx", ".mjs", ".cjs", "/index.js", "/index.ts")


@dataclass(frozen=True)
class RepoFile:
    path: str
    text: str
    language: str = ""


def _python_modules(path: str) -> list[str]:
    """Every dotted suffix a Python file can be imported as: `src/pkg/mod.py` → mod, pkg.mod, src.pkg.mod."""
    parts = path[:-3].split("/") if path.endswith(".py") else []
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return [".".join(parts[i:]) for i in range(len(parts))]


class _Resolver:
    def __init__(self, files: Sequence[RepoFile]) -> None:
        self.paths = {f.path: i for i, f in enumerate(files)}
        self.modules: dict[str, list[int]] = {}
        self.basenames: dict[str, list[int]] = {}
        for i, f in enumerate(files):
            for module in _python_modules(f.path):
                self.modules.setdefault(module, []).append(i)
            self.basenames.setdefault(posixpath.basename(f.path), []).append(i)

    def python(self, path: str, text: str) -> set[int]:
        """Files named by the imports: `import a.b` → a/b; `from a import b` → a/b when b is a module,
        else a. Parent packages' `__init__.py` are not counted (they would tie most packages in cycles)."""
        found: set[int] = set()
        package = posixpath.dirname(path).replace("/", ".")
        for m in _PY_IMPORT.finditer(text):
            if m.group(3) is not None:
                names = [n.split(" as ")[0].strip() for n in m.group(3).split(",")]
            else:
                base = self._absolute(m.group(1), package)
                names = []
                for n in m.group(2).split(","):
                    n = n.split(" as ")[0].strip()
                    full = f"{base}.{n}" if base else n
                    # `from a import b`: the module a/b when there is one, else a itself
                    names.append(full if n and full in self.modules else base)
            for name in names:
                found.update(self.modules.get(name, ()))
        return found

    @staticmethod
    def _absolute(module: str, package: str) -> str:
        dots = len(module) - len(module.lstrip("."))
        if not dots:
            return module
        base = package.split(".") if package else []
        base = base[: len(base) - (dots - 1)] if dots > 1 else base
        rest = module[dots:]
        return ".".join([*base, rest] if rest else base)

    def relative(self, path: str, target: str, suffixes: Sequence[str] = ("",)) -> set[int]:
        base = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
        for suffix in suffixes:
            if (i := self.paths.get(base + suffix)) is not None:
                return {i}
        return set()

    def imports(self, index: int, f: RepoFile) -> set[int]:
        if f.path.endswith(".py") or f.language == "python":
            found = self.python(f.path, f.text)
        elif f.path.endswith((".c", ".h", ".cc", ".cpp", ".hpp", ".cxx", ".hh")):
            found = set()
            for m in _C_INCLUDE.finditer(f.text):
                found |= self.relative(f.path, m.group(1)) or set(
                    self.basenames.get(posixpath.basename(m.group(1)), ())
                )
        elif f.path.endswith((".js", ".ts", ".jsx", ".tsx", ".mjs", ".cjs")):
            found = set()
            for m in _JS_IMPORT.finditer(f.text):
                found |= self.relative(f.path, m.group(1), _JS_SUFFIXES)
        elif f.path.endswith(".java"):
            found = set()
            for m in _JAVA_IMPORT.finditer(f.text):
                suffix = m.group(1).replace(".", "/") + ".java"
                found.update(i for p, i in self.paths.items() if p == suffix or p.endswith("/" + suffix))
        else:
            found = set()
        found.discard(index)
        return found


def import_order(files: Sequence[RepoFile]) -> list[int]:
    """Indices of `files` with every file after the files it imports (cycles broken by smallest path)."""
    resolver = _Resolver(files)
    deps = [resolver.imports(i, f) for i, f in enumerate(files)]
    waiting = [len(d) for d in deps]
    users: list[list[int]] = [[] for _ in files]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    ready = [(f.path, i) for i, f in enumerate(files) if not waiting[i]]
    heapq.heapify(ready)
    placed = [False] * len(files)
    order: list[int] = []
    remaining = sorted((f.path, i) for i, f in enumerate(files))
    while len(order) < len(files):
        if not ready:  # a cycle: the smallest unplaced path goes next
            ready = [next((p, i) for p, i in remaining if not placed[i])]
        _, i = heapq.heappop(ready)
        if placed[i]:
            continue
        placed[i] = True
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if not waiting[u] and not placed[u]:
                heapq.heappush(ready, (files[u].path, u))
    return order


def repo_text(repo: str, files: Sequence[RepoFile]) -> str:
    """The repository document as text (the markers written as their token strings)."""
    return "".join(_pieces_as_text(repo_pieces(repo, files)))


def repo_pieces(repo: str, files: Sequence[RepoFile]) -> list[tuple[str, str]]:
    """The document as (special token or "", text) pieces in order: a tokenizer encodes each text plainly
    and puts the special token's id before it, so file contents can never forge a marker."""
    pieces = [(REPO_NAME, f"{repo}\n")]
    for i in import_order(files):
        f = files[i]
        text = f.text if f.text.endswith("\n") or not f.text else f.text + "\n"
        pieces.append((FILE_SEP, f"{f.path}\n{text}"))
    return pieces


def _pieces_as_text(pieces: Sequence[tuple[str, str]]) -> list[str]:
    return [special + text for special, text in pieces]


def encode_pieces(tokenizer, pieces: Sequence[tuple[str, str]]) -> list[int]:
    """Token ids of `repo_pieces`: real special-token ids, text encoded with special strings as text.
    `tokenizer` must be a plain-text copy (`models.tokenizer.plain_text_copy`) for the text to stay text."""
    from codefoundry.models.tokenizer import special_id

    ids: list[int] = []
    encoded = tokenizer.encode_batch([text for _, text in pieces], add_special_tokens=False)
    for (special, _), enc in zip(pieces, encoded, strict=True):
        if special:
            ids.append(special_id(tokenizer, special, "repository-level documents"))
        ids.extend(enc.ids)
    return ids
