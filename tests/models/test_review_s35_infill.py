"""Review of the held-out function checks (`infill_eval`): which files give examples, where a single-line
middle is cut, and what the parse check does with source `ast.parse` refuses without a syntax error."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tokenizers")

from codefoundry.models import completion  # noqa: E402
from codefoundry.models.completion import complete  # noqa: E402
from codefoundry.models.infill_eval import (  # noqa: E402
    InfillExample,
    _header,
    _parse_error,
    fim_matches,
    heldout_functions,
    heldout_lines,
)

BODY = 'def f(x):\n    s = "a\x0cb\u2028c"\n    t = x + 1\n    return s, t\n'


def test_single_line_middles_are_whole_lines_when_a_string_holds_a_form_feed():
    """str.splitlines also ends a line at a form feed or U+2028 inside a string literal: the middle was
    then half a line (`    s = "a\\x0c`) and the rest of that line went to the suffix."""
    functions = heldout_functions([BODY], limit=1, seed=0)
    body_lines = ['    s = "a\x0cb\u2028c"\n', "    t = x + 1\n", "    return s, t\n"]
    middles = {e.middle for seed in range(20) for e in heldout_lines(functions, seed=seed)}
    assert middles == set(body_lines)
    for e in heldout_lines(functions, seed=3):
        assert e.prefix + e.middle + e.suffix == BODY


def test_a_hand_made_examples_header_is_found_past_a_form_feed_in_a_string():
    header = 'def h():\n    """Doc.\x0cdef is a word here."""\n'
    e = InfillExample(prefix="import os\n" + header, middle="    pass\n", suffix="", name="hand")
    assert _header(e) == header


def test_a_file_with_a_byte_order_mark_gives_examples():
    """read_source keeps a UTF-8 BOM (it is in the file); ast.parse of such text raised SyntaxError, and
    every function of a BOM file was dropped from the held-out checks without a word."""
    text = "\ufeffimport os\n\n\ndef f(x):\n    return x + 1\n"
    [e] = heldout_functions([text], limit=5, seed=0)
    assert (e.name, e.middle) == ("0:f:4", "    return x + 1\n")
    assert e.prefix + e.middle + e.suffix == text
    first = "\ufeffdef g(y):\n    return y * 2\n"  # the header keeps the mark: it parses all the same
    [e] = heldout_functions([first], limit=5, seed=0)
    assert e.header == "\ufeffdef g(y):\n" and _parse_error(e.header, e.middle) is None


def test_an_invalid_escape_is_no_reason_to_drop_a_file_or_fail_a_body():
    """`"\\d"` is a (Syntax|Deprecation)Warning; under `-W error` ast.parse raised it as a SyntaxError: the
    file gave no examples and a body using it counted as invalid Python."""
    text = 'import re\n\n\ndef digits(s):\n    return re.findall("\\d+", s)\n'
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [e] = heldout_functions([text], limit=5, seed=0)
        assert _parse_error(e.header, e.middle) is None
    assert e.middle == '    return re.findall("\\d+", s)\n'


def test_source_nested_too_deep_to_parse_is_skipped_not_raised():
    """ast.parse raises RecursionError or MemoryError (not SyntaxError) for an expression a few thousand
    deep: a held-out file like that ended `codefoundry pretrain`'s final checks with a traceback, and so
    did a sampled body such as `return ------...1`."""
    deep = "x = " + "-" * 20_000 + "1\n"
    good = "def f(x):\n    return x + 1\n"
    assert [e.name for e in heldout_functions([deep, good], limit=5, seed=0)] == ["1:f:1"]
    error = _parse_error("def f():\n", "    return " + "-" * 20_000 + "1\n")
    assert isinstance(error, str) and error
    assert _parse_error("def f():\n", "    return " + "-" * 50 + "1\n") is None


def test_prefix_and_suffix_budgets_cut_at_carriage_return_line_ends():
    """The budgets cut at "\\n" only: in a file with "\\r" line ends (Python reads them as line ends) the
    prefix past its budget became "" (the `def` line lost) and so did the suffix."""
    lines = [f"X{i} = {i}\r" for i in range(300)]
    text = "".join(lines[:150]) + "def f(x):\r    return x + 1\r" + "".join(lines[150:])
    [e] = heldout_functions([text], limit=5, seed=0, prefix_chars=200, suffix_chars=100)
    assert e.middle == "    return x + 1\r"
    assert e.prefix.endswith("X149 = 149\rdef f(x):\r") and 100 < len(e.prefix) <= 200
    assert e.suffix.startswith("X150 = 150\r") and 50 < len(e.suffix) <= 100
    assert e.prefix + e.middle + e.suffix in text


def test_a_decorated_first_statement_is_hidden_with_its_decorators():
    """A decorated def's lineno is its `def` line: for the common decorator factory below, the hidden body
    started at `def wrapper` and `@functools.wraps(fn)`, a line of the body, was shown in the prompt."""
    text = (
        "import functools\n\n\n"
        "def logged(fn):\n"
        "    @functools.wraps(fn)\n"
        "    def wrapper(*args):\n"
        "        return fn(*args)\n"
        "\n"
        "    return wrapper\n"
    )
    examples = {e.name: e for e in heldout_functions([text], limit=5, seed=0)}
    outer = examples["0:logged:4"]
    assert outer.header == "def logged(fn):\n"
    assert outer.prefix.endswith("\n\ndef logged(fn):\n")
    assert outer.middle.startswith("    @functools.wraps(fn)\n    def wrapper(*args):\n")
    assert outer.prefix + outer.middle + outer.suffix == text
    assert _parse_error(outer.header, outer.middle) is None
    assert examples["0:logged.wrapper:6"].middle == "        return fn(*args)\n"


# ------------------------------------------------------------------ completion: prompts past the context
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from codefoundry.models import tokenizer as cft
    from codefoundry.models.config import ModelConfig
    from codefoundry.models.transformer import Transformer

    texts = ["def foo(bar):\n    return bar\n", "x = foo(1) + 2\n", "print('hello world')\n"]
    tok = cft.train_texts(texts * 10, vocab_size=300, out=tmp_path_factory.mktemp("tok"))
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tok.get_vocab_size(), dim=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=48
    )
    return Transformer(cfg).eval(), tok


def test_a_prompt_cut_to_fit_the_context_is_reported_once(small, capsys, monkeypatch):
    """A prompt longer than the context leaves was cut at its head without a word (the max_new_tokens
    cut beside it was reported): a completion that never saw the imports or the signature looked like a
    bad model."""
    monkeypatch.setattr(completion, "_WARNED_TRIMMED", set())
    model, tok = small
    long = "x = foo(1) + 2\n" * 30
    complete(model, tok, ["def foo(bar):\n"], max_new_tokens=8)
    assert capsys.readouterr().err == ""  # it fits: nothing said
    n = len(tok.encode(long, add_special_tokens=False).ids)
    complete(model, tok, [long], max_new_tokens=8)
    assert capsys.readouterr().err == (
        f"codefoundry.models: warning: a prompt of {n} tokens cut to 40: the model's max_seq_len is 48 tokens,"
        " new ones included (a prompt loses its head; a FIM prompt the far ends of its prefix and suffix)\n"
    )
    complete(model, tok, [long], suffixes=["y = 1\n"], max_new_tokens=8)  # once per context length
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(completion, "_WARNED_TRIMMED", set())
    complete(model, tok, [long], max_new_tokens=8, warn_trimmed=False)  # budgets past the context on purpose
    fim_matches(model, tok, [InfillExample(long, "    pass\n", long, "x")], max_new_tokens=8)
    assert capsys.readouterr().err == ""
