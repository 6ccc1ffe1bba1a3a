"""Quality filters for source files, after StarCoder's and OpenCoder's heuristics, set per language.

`check(text, language, config)` names the first filter a document fails (None: keep it);
`check_all` names every filter it fails, for reports. The filters, cheapest first (`FILTER_NAMES`), with
their default thresholds (fields of `FilterConfig`):

| name                 | drops a file when                                                              |
| -------------------- | ------------------------------------------------------------------------------ |
| `too_large`          | it has more than `max_chars` (1,000,000) characters                            |
| `too_short`          | it has under `min_chars` (20) characters once stripped, or under `min_lines`   |
|                      | (3) non-blank lines                                                            |
| `max_line_length`    | a line is longer than `max_line_length` (1000, as StarCoder)                   |
| `mean_line_length`   | the mean line length is over `max_mean_line_length` (100, as StarCoder)        |
| `alnum_fraction`     | letters and digits are under `min_alnum_fraction` (0.25, as StarCoder) of all  |
|                      | characters                                                                     |
| `alpha_fraction`     | letters are under `min_alpha_fraction` (0.2) of all characters (OpenCoder)     |
| `non_ascii_fraction` | non-ASCII characters are over `max_non_ascii_fraction` (0.5) of all characters |
| `encoded_data`       | a base64/hex blob is longer than `max_encoded_run` (1024) characters: runs of  |
|                      | 60+ base64 characters, pieces joined across quotes, `+`, commas and newlines    |
| `comment_fraction`   | line comments (`#`, `//`, `--` or `%`, by language) are over                   |
|                      | `max_comment_line_fraction` (0.9) of the non-blank lines                       |
| `data_like`          | numbers are over `max_numeric_fraction` (0.7) of the word tokens, or lines     |
|                      | holding only literals (numbers, strings, true/false/null) and punctuation are  |
|                      | over `max_literal_line_fraction` (0.6) of the non-blank lines: a table, not a  |
|                      | program. Each test needs `min_data_tokens` (40) tokens / lines to judge        |
| `python_syntax`      | Python only, off by default: `ast` cannot parse it                             |

`python_syntax` is off by default because the answer depends on the running interpreter's grammar (a
file using newer syntax fails on an older Python, so shards would differ between environments), because
the standard library and test suites ship deliberately unparsable files, and because parsing costs more
than every other filter together.

Per-language settings: a built-in table (`DEFAULT_PER_LANGUAGE`) follows StarCoder for JSON and YAML
(kept only at 50..5000 characters), relaxes line-length limits for prose (Markdown, reStructuredText,
text) and turns the literal-line test off for data formats, whose lines are all literals by nature.
`FilterConfig.per_language` maps a language (names from `langid.LANGUAGES`) to field overrides applied
over that table, field by field: `{"python": {"max_line_length": 200}}` leaves the JSON rules in place,
and `{"json": {"max_chars": 1_000_000}}` undoes one of them.

Cost: everything is counted with `bytes.translate`/`bytes.count`, `str.split` and regexes anchored on
newlines, never a Python loop over characters (about 20 ns per character on one core).

Limits: the comment count sees line comments only, not block comments or docstrings; the literal-line
test knows the literal syntax that C-family languages, Python and JSON share, not heredocs or raw
strings with embedded quotes; Unicode letters count as letters, but prose in non-Latin scripts fails
`non_ascii_fraction` by design (the corpus is code).
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property, lru_cache
from types import MappingProxyType

from codefoundry.data.langid import LANGUAGES

__all__ = ["DEFAULT_PER_LANGUAGE", "FILTER_NAMES", "FilterConfig", "check", "check_all"]

_PER_LANGUAGE: dict[str, dict[str, float | int | bool]] = {
    # StarCoder keeps only small JSON/YAML files: big ones are data dumps, schemas and API descriptions.
    "json": {"min_chars": 50, "max_chars": 5000, "min_lines": 1, "max_literal_line_fraction": 1.0},
    "yaml": {"min_chars": 50, "max_chars": 5000, "max_literal_line_fraction": 1.0},
    "toml": {"max_literal_line_fraction": 1.0},
    "ini": {"max_literal_line_fraction": 1.0},
    # Prose keeps a paragraph on one line in many projects.
    "markdown": {"max_line_length": 5000, "max_mean_line_length": 1000.0},
    "rst": {"max_line_length": 5000, "max_mean_line_length": 1000.0},
    "text": {"max_line_length": 5000, "max_mean_line_length": 1000.0},
}
# Read-only, inner tables included: resolved configurations are cached, so it must not change under them.
DEFAULT_PER_LANGUAGE: Mapping[str, Mapping[str, float | int | bool]] = MappingProxyType(
    {language: MappingProxyType(overrides) for language, overrides in _PER_LANGUAGE.items()}
)


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the quality filters (see the module docstring for what each one does).

    A fraction of 1.0 (or 0.0 for a minimum) turns that test off. `per_language` is left out of the hash
    so that resolved configurations can be cached; treat it as read-only once built."""

    max_chars: int = 1_000_000
    min_chars: int = 20
    min_lines: int = 3
    max_line_length: int = 1000
    max_mean_line_length: float = 100.0
    min_alnum_fraction: float = 0.25
    min_alpha_fraction: float = 0.2
    max_non_ascii_fraction: float = 0.5
    max_encoded_run: int = 1024
    max_numeric_fraction: float = 0.7
    max_literal_line_fraction: float = 0.6
    min_data_tokens: int = 40
    max_comment_line_fraction: float = 0.9
    python_syntax: bool = False
    per_language: Mapping[str, Mapping[str, float | int | bool]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        options = {f.name for f in fields(self)} - {"per_language"}
        for language, overrides in self.per_language.items():
            if language not in LANGUAGES:
                raise ValueError(
                    f"FilterConfig.per_language: unknown language {language!r}; known: {LANGUAGES}"
                )
            unknown = sorted(set(overrides) - options)
            if unknown:
                where = f"FilterConfig.per_language[{language!r}]"
                raise ValueError(f"{where}: unknown option(s) {unknown}; known: {sorted(options)}")

    def for_language(self, language: str | None) -> FilterConfig:
        """This configuration with `language`'s overrides applied, the built-in table's first and then
        `per_language`'s; the result has no per-language table of its own."""
        return _resolve(self, language or "")


@lru_cache(maxsize=256)
def _resolve(config: FilterConfig, language: str) -> FilterConfig:
    overrides = {**DEFAULT_PER_LANGUAGE.get(language, {}), **config.per_language.get(language, {})}
    return replace(config, **overrides, per_language={})


def _byte_table(classes: dict[bytes, bytes], default: bytes) -> bytes:
    """A 256-byte `bytes.translate` table sending each byte in a key to its value, all others to `default`."""
    table = bytearray(default * 256)
    for members, cls in classes.items():
        for byte in members:
            table[byte] = cls[0]
    return bytes(table)


_ASCII_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ASCII_DIGITS = b"0123456789"
# Word tokens as `\w+` sees them (letters, digits, `_`, and non-ASCII bytes taken as letters) → "a" or
# "0", everything else → " ". A token is numeric when it starts with a digit: 42, 0xFF, 1e9, 3 and 14 of
# 3.14. Counting " a" and " 0" counts tokens without building them.
_TOKEN_CLASSES = _byte_table(
    {_ASCII_LETTERS + b"_" + bytes(range(128, 256)): b"a", _ASCII_DIGITS: b"0"}, b" "
)
# Base64 alphabet (hex digits included) → "b", so that a 60-character run is one `bytes.find`.
_B64_CLASSES = _byte_table({_ASCII_LETTERS + _ASCII_DIGITS + b"+/": b"b"}, b" ")
_B64_MIN_RUN = 60
_ASCII_RUNS = re.compile(r"[\x00-\x7f]+")
_LETTER_RUNS = re.compile(r"[^\W\d_]+")  # Unicode letters
_DIGIT_RUNS = re.compile(r"\d+")
# A run of base64 (or hex) characters starting where the run starts, so a failed attempt costs nothing
# inside a long run.
_B64_RUN = re.compile(rf"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{{{_B64_MIN_RUN},}}={{0,2}}")
# What may separate the pieces of one blob split over lines or string literals: quotes, string prefixes,
# `+`, `\`, commas, parentheses and indentation.
_BLOB_GAP = re.compile(r"[\s\"',\\+()bBrRuU]{0,32}")
# A line holding only literals and punctuation, at least one literal; optional trailing comment. Lines
# are matched from their "\n" (the text gets one prepended) because a literal first character lets the
# regex engine jump from newline to newline; the possessive quantifiers keep near-misses from backtracking.
_LITERAL = (
    r"(?:[-+]?+(?:0[xXbBoO][0-9a-fA-F_]++|\d[\d_]*+(?:\.\d*+)?+(?:[eE][-+]?+\d++)?+)[uUlLfFjJ]*+"
    r"|[bBrRuUfFL]{0,2}+(?:'(?:[^'\\\n]|\\.)*+'|\"(?:[^\"\\\n]|\\.)*+\")"
    r"|(?:True|False|None|true|false|null|nil|NULL)\b)"
)
_PUNCT = r"[\[\](){},:;]"
_LITERAL_LINE = re.compile(
    rf"\n[ \t]*+(?:{_PUNCT}[ \t]*+)*+{_LITERAL}(?:[ \t]*+(?:{_PUNCT}|{_LITERAL}))*+"
    r"[ \t]*+(?:(?:#|//).*)?\\?\r?$",
    re.MULTILINE,
)
_HASH_COMMENTED = "python cython shell ruby perl r julia yaml toml makefile cmake dockerfile powershell"
_SLASH_COMMENTED = "c cpp csharp java kotlin scala go rust swift dart javascript typescript php scss"
_COMMENT_PREFIX: dict[str, str] = {
    **dict.fromkeys(_HASH_COMMENTED.split(), "#"),
    **dict.fromkeys(_SLASH_COMMENTED.split(), "//"),
    **dict.fromkeys(["sql", "lua", "haskell"], "--"),
    "tex": "%",
}
_COMMENT_LINE = {prefix: re.compile(rf"\n[ \t]*+{re.escape(prefix)}") for prefix in ("#", "//", "--", "%")}


class _View:
    """Facts about one document, each computed on first use and shared by the filters that need it."""

    def __init__(self, text: str, language: str) -> None:
        self.text = text
        self.language = language

    @cached_property
    def lines(self) -> list[str]:
        lines = self.text.split("\n")
        if len(lines) > 1 and not lines[-1]:
            lines.pop()  # a final newline ends the last line; it does not start an empty one
        return lines

    @cached_property
    def line_lengths(self) -> list[int]:
        return list(map(len, self.lines))

    @cached_property
    def nonblank_lines(self) -> int:
        return sum(1 for line in self.lines if line and not line.isspace())

    @cached_property
    def newline_text(self) -> str:
        return "\n" + self.text  # see _LITERAL_LINE

    @cached_property
    def raw(self) -> bytes:
        # surrogatepass: a source that decoded with surrogateescape must not make a filter raise
        return self.text.encode("utf-8", "surrogatepass")

    @cached_property
    def token_classes(self) -> bytes:
        return b" " + self.raw.translate(_TOKEN_CLASSES)  # bytes.translate: no per-character Python loop

    @cached_property
    def letters_digits(self) -> tuple[int, int]:
        classes, raw = self.token_classes, self.raw
        digits = classes.count(b"0")
        if self.text.isascii():
            return classes.count(b"a") - raw.count(b"_"), digits
        letters = len(raw) - len(raw.translate(None, _ASCII_LETTERS))
        rest = _ASCII_RUNS.sub("", self.text)  # the non-ASCII characters
        return letters + len(rest) - len(_LETTER_RUNS.sub("", rest)), digits + len(rest) - len(
            _DIGIT_RUNS.sub("", rest)
        )

    @cached_property
    def tokens_numeric(self) -> tuple[int, int]:
        numeric = self.token_classes.count(b" 0")
        return self.token_classes.count(b" a") + numeric, numeric


def _too_large(v: _View, c: FilterConfig) -> bool:
    return len(v.text) > c.max_chars


def _too_short(v: _View, c: FilterConfig) -> bool:
    return len(v.text.strip()) < c.min_chars or v.nonblank_lines < c.min_lines


def _max_line_length(v: _View, c: FilterConfig) -> bool:
    return len(v.text) > c.max_line_length and max(v.line_lengths) > c.max_line_length


def _mean_line_length(v: _View, c: FilterConfig) -> bool:
    lengths = v.line_lengths
    return sum(lengths) / len(lengths) > c.max_mean_line_length


def _alnum_fraction(v: _View, c: FilterConfig) -> bool:
    letters, digits = v.letters_digits
    return letters + digits < c.min_alnum_fraction * len(v.text)


def _alpha_fraction(v: _View, c: FilterConfig) -> bool:
    return v.letters_digits[0] < c.min_alpha_fraction * len(v.text)


def _non_ascii_fraction(v: _View, c: FilterConfig) -> bool:
    text = v.text
    if text.isascii():
        return False
    return len(text) - len(text.encode("ascii", "ignore")) > c.max_non_ascii_fraction * len(text)


def _longest_encoded_blob(text: str) -> int:
    """Length of the longest base64/hex blob, pieces split over string literals and lines joined."""
    longest = current = 0
    end = -1
    for m in _B64_RUN.finditer(text):  # typically no match at all in source code
        joined = end >= 0 and _BLOB_GAP.fullmatch(text, end, m.start()) is not None
        current = current + len(m.group()) if joined else len(m.group())
        longest = max(longest, current)
        end = m.end()
    return longest


def _encoded_data(v: _View, c: FilterConfig) -> bool:
    if len(v.text) <= c.max_encoded_run:
        return False
    # Gate: without one run of 60 base64 characters there is no blob; one bytes.find says so.
    if v.raw.translate(_B64_CLASSES).find(b"b" * _B64_MIN_RUN) < 0:
        return False
    return _longest_encoded_blob(v.text) > c.max_encoded_run


def _data_like(v: _View, c: FilterConfig) -> bool:
    if c.max_numeric_fraction < 1.0:
        tokens, numeric = v.tokens_numeric
        if tokens >= c.min_data_tokens and numeric > c.max_numeric_fraction * tokens:
            return True
    if c.max_literal_line_fraction < 1.0 and v.nonblank_lines >= c.min_data_tokens:
        literal_lines = len(_LITERAL_LINE.findall(v.newline_text))
        return literal_lines > c.max_literal_line_fraction * v.nonblank_lines
    return False


def _comment_fraction(v: _View, c: FilterConfig) -> bool:
    prefix = _COMMENT_PREFIX.get(v.language)
    if prefix is None or c.max_comment_line_fraction >= 1.0 or v.nonblank_lines == 0:
        return False
    comments = len(_COMMENT_LINE[prefix].findall(v.newline_text))
    return comments > c.max_comment_line_fraction * v.nonblank_lines


def _python_syntax(v: _View, c: FilterConfig) -> bool:
    if not c.python_syntax or v.language != "python":
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences warn; they are not our verdict
        try:
            ast.parse(v.text)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return True
    return False


# In order of cost, so that `check` stops at the cheapest failing filter.
_FILTERS: tuple[tuple[str, Callable[[_View, FilterConfig], bool]], ...] = (
    ("too_large", _too_large),
    ("too_short", _too_short),
    ("max_line_length", _max_line_length),
    ("mean_line_length", _mean_line_length),
    ("alnum_fraction", _alnum_fraction),
    ("alpha_fraction", _alpha_fraction),
    ("non_ascii_fraction", _non_ascii_fraction),
    ("encoded_data", _encoded_data),
    ("comment_fraction", _comment_fraction),
    ("data_like", _data_like),
    ("python_syntax", _python_syntax),
)
FILTER_NAMES: tuple[str, ...] = tuple(name for name, _ in _FILTERS)


def check(text: str, language: str | None, config: FilterConfig) -> str | None:
    """The name of the first filter (in `FILTER_NAMES` order) that `text` fails, or None to keep it.
    `language` selects the per-language overrides and the language-specific tests."""
    resolved = config.for_language(language)
    view = _View(text, language or "")
    for name, fails in _FILTERS:
        if fails(view, resolved):
            return name
    return None


def check_all(text: str, language: str | None, config: FilterConfig) -> list[str]:
    """Every filter `text` fails, in `FILTER_NAMES` order; empty to keep it. For reports: it runs all
    filters, so it costs more than `check` on documents that fail early."""
    resolved = config.for_language(language)
    view = _View(text, language or "")
    return [name for name, fails in _FILTERS if fails(view, resolved)]
