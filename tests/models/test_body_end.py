"""Where the syntax check ends a sampled function body (`infill_eval._BodyEnd`): where Python ends the
function, at the first logical line indented no deeper than the `def`, never inside brackets, strings
or backslash continuations, whose lines may start at any column."""

from __future__ import annotations

import ast
import sysconfig
import textwrap
from pathlib import Path

import pytest

from codefoundry.models.infill_eval import _BodyEnd, _parse_error

BYTES = [bytes([b]) for b in range(256)]  # a byte-level token table: one token per byte

CASES = [
    # (what the model wrote after the header, the body kept)
    ("    x = 1\n\n  \n    return x\ndef g():\n    pass\n", "    x = 1\n\n  \n    return x\n"),
    (
        "    pass\n# a comment at column 0 is no statement\n",
        "    pass\n# a comment at column 0 is no statement\n",
    ),
    ("    return foo(a,\nb)\nx = 1\n", "    return foo(a,\nb)\n"),
    (
        '    s = """\nline at column 0\n"""\n    return s\nclass A: pass\n',
        '    s = """\nline at column 0\n"""\n    return s\n',
    ),  # fmt: skip
    ("    x = 1 + \\\n2\n    return x\ny = 2\n", "    x = 1 + \\\n2\n    return x\n"),
    ("    s = 'not closed\n    t = 1\nz = 3\n", "    s = 'not closed\n    t = 1\n"),
    ("    s = ''\nz\n", "    s = ''\n"),
    ("    s = 'a\\'b(' \nz\n", "    s = 'a\\'b(' \n"),
    ("    x = [1,  # ( in a comment\n2]\nz\n", "    x = [1,  # ( in a comment\n2]\n"),
    ("    return ')'\nz\n", "    return ')'\n"),
    ("    return {'a': (1,\n  2)}\n  \nz = 0\n", "    return {'a': (1,\n  2)}\n  \n"),
]


@pytest.mark.parametrize("written, kept", CASES)
def test_the_body_ends_at_the_next_logical_line_back_at_the_def(written, kept):
    assert _BodyEnd(BYTES, 0).cut(written) == kept
    indented = textwrap.indent(written, "    ")  # a method: the same, four columns deeper
    assert _BodyEnd(BYTES, 4).cut(indented) == textwrap.indent(kept, "    ")


@pytest.mark.parametrize("written, kept", CASES)
def test_watching_token_by_token_ends_where_cutting_does(written, kept):
    """During generation the watcher sees one token at a time (here, a byte) and must neither end a row
    before the line that leaves the body, nor decide on bytes that the next ones could change."""
    watcher = _BodyEnd(BYTES, 0)
    data = written.encode()
    ended = next((k for k, b in enumerate(data) if watcher.push(b)), None)
    if kept == written:
        assert ended is None
    else:
        assert ended == len(kept.encode())  # the first byte of the line that leaves


def _functions_with_low_continuation_lines(limit: int = 15):
    """Functions of the standard library (with the source after their header) that have a line inside
    a string or brackets starting at or left of the `def`: what the check used to cut short."""
    found = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines(keepends=True)
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            indent = node.col_offset
            first = node.body[0].lineno - 1
            body = lines[first : node.end_lineno]
            low = [
                ln for ln in body if ln.strip() and not ln.lstrip().startswith("#")
                and len(ln) - len(ln.lstrip()) <= indent
            ]  # fmt: skip
            own_line = first > node.lineno - 1 and lines[first - 1].rstrip().endswith(":")
            if low and own_line:  # a body that starts on a line of its own, after the header
                found.append((path.name, node, indent, "".join(lines[:first]), "".join(lines[first:])))
                if len(found) == limit:
                    return found
    return found


def test_real_functions_whose_lines_start_left_of_the_def_are_kept_whole():
    """Each standard-library function with such lines, followed by the rest of its file as if the model
    had written it: the body kept holds the whole function, and parses."""
    cases = _functions_with_low_continuation_lines()
    assert len(cases) >= 10, "the standard library should hold such functions"
    for name, node, indent, before, after in cases:
        kept = _BodyEnd(BYTES, indent).cut(after)
        header = "".join(before.splitlines(keepends=True)[node.lineno - 1 :])
        body_lines = node.end_lineno - node.body[0].lineno + 1
        assert kept.count("\n") >= body_lines, f"{name}:{node.lineno} {node.name} cut short"
        assert _parse_error(header, kept) is None, f"{name}:{node.lineno} {node.name}"
