"""Quality filters: each threshold is probed just under (kept) and just over (dropped) with a document
built for it, then per-language overrides, ordering, and real code that must survive."""

from __future__ import annotations

import base64
import inspect
import json

import pytest

from codefoundry.data import filters
from codefoundry.data.filters import DEFAULT_PER_LANGUAGE, FILTER_NAMES, FilterConfig, check, check_all

DEFAULT = FilterConfig()

PROGRAM = '''"""Inventory helpers."""

from dataclasses import dataclass


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 0

    def total(self) -> float:
        # price times quantity, rounded to cents
        return round(self.price * self.quantity, 2)


def restock(items: list[Item], amount: int) -> None:
    for item in items:
        item.quantity += amount
'''


def fails(text: str, name: str, language: str = "python", config: FilterConfig = DEFAULT) -> bool:
    return name in check_all(text, language, config)


def test_public_api():
    assert set(filters.__all__) == {
        "DEFAULT_PER_LANGUAGE",
        "FILTER_NAMES",
        "FilterConfig",
        "check",
        "check_all",
    }
    assert FILTER_NAMES == (
        "too_large", "too_short", "max_line_length", "mean_line_length", "alnum_fraction", "alpha_fraction",
        "non_ascii_fraction", "encoded_data", "comment_fraction", "data_like", "python_syntax",
    )  # fmt: skip


def test_ordinary_code_passes_every_filter():
    assert check_all(PROGRAM, "python", DEFAULT) == []
    assert check(PROGRAM, "python", DEFAULT) is None


def test_real_stdlib_modules_pass():
    # real code, not written for this test: the filters must not fire on a well-kept module
    for module in (json.decoder, inspect):
        assert check_all(inspect.getsource(module), "python", DEFAULT) == [], module.__name__


# --- one filter at a time, just under and just over its threshold -------------------------------------


def test_too_large():
    line = "value = 1\n"  # 10 characters
    at_limit = line * 100_000  # 1_000_000 characters
    assert not fails(at_limit, "too_large")
    assert fails(at_limit + "x", "too_large")


def test_too_short_counts_characters_and_non_blank_lines():
    three_lines = "alpha = 1\n\n   \nbeta = 2\ngamma = 3\n"  # blank and whitespace lines do not count
    assert not fails(three_lines, "too_short")
    assert fails("alpha = 1\n\n   \nbeta = 2\n", "too_short")  # two non-blank lines
    assert not fails("a = 1\nb = 2\nc = 3456\n", "too_short")  # 20 characters once stripped
    assert fails("a = 1\nb = 2\nc = 345\n", "too_short")  # 19
    assert fails("", "too_short")


def test_max_line_length():
    def with_line(length: int) -> str:
        return PROGRAM + "s = '" + "a" * (length - 6) + "'\n"  # a line of exactly `length` characters

    assert not fails(with_line(1000), "max_line_length")
    assert fails(with_line(1001), "max_line_length")


def test_mean_line_length():
    # a final newline ends the last line; it does not add an empty one that lowers the mean
    assert not fails(("a" * 100 + "\n") * 5, "mean_line_length", language="")
    assert fails(("a" * 101 + "\n") * 5, "mean_line_length", language="")
    assert fails("a" * 101 + "\n" + "a" * 101, "mean_line_length", language="")


def test_alnum_fraction():
    assert not fails("ab(((((\n" * 10, "alnum_fraction")  # 2 of 8 characters: exactly 0.25
    assert fails("ab((((((\n" * 10, "alnum_fraction")  # 2 of 9


def test_alpha_fraction():
    assert not fails("ab0123456\n" * 10, "alpha_fraction")  # 2 letters in 10 characters: exactly 0.2
    assert fails("ab01234567\n" * 10, "alpha_fraction")  # 2 in 11


def test_unicode_letters_count_as_letters():
    greek = "\u03b1\u03b2\u03b3 = \u03b4\u03b5\u03b6(\u03b7\u03b8)\n" * 5
    assert not fails(greek, "alpha_fraction")
    assert not fails(greek, "alnum_fraction")


def test_non_ascii_fraction():
    assert not fails(("\u00e9" * 10 + "a" * 9 + "\n") * 5, "non_ascii_fraction")  # 10 of 20: exactly 0.5
    assert fails(("\u00e9" * 11 + "a" * 8 + "\n") * 5, "non_ascii_fraction")


def _blob_module(piece_lengths: list[int]) -> str:
    """A Python module holding one base64 blob split into string pieces of the given lengths."""
    alphabet = base64.b64encode(bytes(range(256)) * 8).decode()
    pieces, start = [], 0
    for n in piece_lengths:
        pieces.append(alphabet[start : start + n])
        start += n
    body = "\n".join(f'        "{piece}"' for piece in pieces)
    return f"def icon():\n    return (\n{body}\n    )\n"


def test_encoded_data_joins_a_blob_split_over_lines():
    assert not fails(_blob_module([64] * 16), "encoded_data")  # 1024 base64 characters
    assert fails(_blob_module([64] * 15 + [65]), "encoded_data")  # 1025


def test_encoded_data_leaves_separate_hashes_apart():
    digests = "\n".join(f"    check(name{i}, expected='{format(i, '064x')}')" for i in range(40))
    assert not fails(f"def test_digests():\n{digests}\n", "encoded_data")


def test_data_like_numeric_tokens():
    row = "alpha beta gamma 1 2 3 4 5 6 7\n"  # 3 words, 7 numbers
    at_limit = row * 10  # 70 of 100 tokens numeric: exactly 0.7
    assert not fails(at_limit, "data_like")
    assert fails(at_limit + "8\n", "data_like")  # 71 of 101
    assert not fails("1 2 3 4 5 6 7 8 9 10\n" * 3 + "x\n", "data_like")  # 31 tokens: too few to judge


def test_data_like_literal_lines():
    literal = "    'encoding-name',  # alias\n"
    code = "register(table, codec)\n"
    assert not fails(literal * 24 + code * 16, "data_like")  # 24 of 40 lines: exactly 0.6
    assert fails(literal * 25 + code * 15, "data_like")
    assert not fails(literal * 39, "data_like")  # 39 lines: too few to judge


@pytest.mark.parametrize(
    "line",
    ['    "key": "value",', "  0x1F, 0x2E, 0x3D,", "    (0x0041, 'A'),  # LATIN A", "  {1.5e3, -2, true},",
     "    None,", "    b'\\x00\\x01',"],
)  # fmt: skip
def test_literal_line_shapes(line: str):
    assert fails((line + "\n") * 40, "data_like")


@pytest.mark.parametrize("line", ["    x = 'value',", "return 0;", "    }", "foo('a', 'b')"])
def test_code_lines_are_not_literal_lines(line: str):
    assert not fails((line + "\n") * 40, "data_like", language="")


def test_comment_fraction():
    assert not fails("# comment\n" * 9 + "x = 1\n", "comment_fraction")  # 9 of 10: exactly 0.9
    assert fails("# comment\n" * 19 + "x = 1\n", "comment_fraction")
    c_file = "// comment\n" * 19 + "int x;\n"
    assert fails(c_file, "comment_fraction", language="c")
    # a Markdown heading is not a comment; languages without line comments skip the test
    assert not fails("# Heading\n" * 20, "comment_fraction", language="markdown")


def test_python_syntax_is_opt_in():
    broken = PROGRAM + "def oops(:\n    pass\n"
    assert not fails(broken, "python_syntax")
    strict = FilterConfig(python_syntax=True)
    assert fails(broken, "python_syntax", config=strict)
    assert not fails(PROGRAM, "python_syntax", config=strict)
    assert not fails(broken, "python_syntax", language="ruby", config=strict)


def test_python_syntax_ignores_warnings():
    # "\d" warns (DeprecationWarning or SyntaxWarning by version); the test suite turns warnings into errors
    text = PROGRAM + "pattern = '\\d+'\n"
    assert not fails(text, "python_syntax", config=FilterConfig(python_syntax=True))


def test_lone_surrogates_do_not_raise():
    text = PROGRAM + "s = '\udcff'\n"
    assert check(text, "python", DEFAULT) is None


# --- ordering, per-language settings, errors ------------------------------------------------------------


def test_check_names_the_first_failing_filter_in_order():
    text = "ab" + "(" * 1200 + "\n"  # too short (one line), too long a line, too few letters
    assert check_all(text, "python", DEFAULT) == [
        "too_short", "max_line_length", "mean_line_length", "alnum_fraction", "alpha_fraction"
    ]  # fmt: skip
    assert check(text, "python", DEFAULT) == "too_short"


def _json_of(size: int) -> str:
    text = json.dumps({"name": "x" * (size - 12)})  # {"name": "..."} is 12 characters plus the value
    assert len(text) == size
    return text


def test_json_is_kept_only_between_50_and_5000_characters():
    assert check(_json_of(50), "json", DEFAULT) is None  # a single line is enough for JSON
    assert check(_json_of(49), "json", DEFAULT) == "too_short"
    pretty = json.dumps({f"key_{i}": f"value number {i}" for i in range(150)}, indent=1)
    assert len(pretty) < 5000 and check(pretty, "json", DEFAULT) is None
    pretty_big = json.dumps({f"key_{i}": f"value number {i}" for i in range(300)}, indent=1)
    assert len(pretty_big) > 5000 and check(pretty_big, "json", DEFAULT) == "too_large"


def test_prose_may_keep_a_paragraph_on_one_line():
    paragraph = "This sentence is part of a long paragraph. " * 70  # ~3000 characters
    doc = f"# Title\n\n{paragraph}\n\nMore text.\n"
    assert check(doc, "markdown", DEFAULT) is None
    assert check(doc, "python", DEFAULT) == "max_line_length"


def test_per_language_overrides_apply_over_the_built_in_table():
    config = FilterConfig(per_language={"python": {"max_line_length": 50}})
    long_line = PROGRAM + "x = '" + "a" * 60 + "'\n"
    assert check(long_line, "python", config) == "max_line_length"
    assert check(long_line, "c", config) is None  # other languages keep the global limit
    big_json = json.dumps({f"key_{i}": f"value number {i}" for i in range(300)}, indent=1)
    assert check(big_json, "json", config) == "too_large"  # the built-in JSON rules still hold
    undone = FilterConfig(per_language={"json": {"max_chars": 1_000_000}})
    assert check(big_json, "json", undone) is None  # one field undone; the literal-line test stays off
    assert undone.for_language("json").min_chars == 50
    with pytest.raises(TypeError):
        DEFAULT_PER_LANGUAGE["json"] = {}  # type: ignore[index]


def test_for_language_resolves_overrides():
    resolved = DEFAULT.for_language("json")
    assert (resolved.min_chars, resolved.max_chars, resolved.min_lines) == (50, 5000, 1)
    assert resolved.per_language == {}
    assert DEFAULT.for_language(None) == DEFAULT.for_language("python") == FilterConfig(per_language={})


def test_unknown_language_or_option_is_named():
    with pytest.raises(ValueError, match="'pyton'"):
        FilterConfig(per_language={"pyton": {"max_line_length": 50}})
    with pytest.raises(ValueError, match="'max_line_len'"):
        FilterConfig(per_language={"python": {"max_line_len": 50}})
