"""Two cheap checks of a code model on held-out source files, neither of which runs model output:

- fill-in-the-middle exact match: hide the body of a short function, give the model the text before
  and after it (FIM, PSM), and compare what it writes with the real body; and the same with one line
  of such a body hidden (`heldout_lines`), a middle short enough to be right before whole bodies are;
- syntax validity: give the model the text up to the end of a function's header (and docstring), let
  it write the body left to right until a line comes back to the `def`'s indentation, and count the
  functions `ast.parse` accepts.

Examples come from `heldout_functions`: function definitions whose body is 1..15 lines, chosen at random
(with a seed) across the given texts. Prefix and suffix are trimmed to a character budget at line
boundaries so that prompts fit a small model's context. Exact match is strict: a correct body written
differently counts as a miss.
"""

from __future__ import annotations

import ast
import io
import random
import warnings
from dataclasses import dataclass

from codefoundry.models.completion import complete, special_id
from codefoundry.models.generate import (
    PLAIN_BANNED,
    PLAIN_STOPS,
    decode_after,
    generate,
    heal_prompts,
    ids_of,
    padding_ids,
    token_bytes,
)
from codefoundry.models.sampling import child_seed
from codefoundry.models.tokenizer import plain_encoder
from codefoundry.models.vocab_bytes import piece

__all__ = ["InfillExample", "final_checks", "fim_exact_match", "fim_matches", "heldout_functions", "heldout_lines",
           "syntax_valid_fraction"]  # fmt: skip


@dataclass(frozen=True)
class InfillExample:
    prefix: str  # the file before the body, ending with the def line(s) and docstring and a newline
    middle: str  # the body's lines, each ending with a newline
    suffix: str  # the rest of the file
    name: str  # "TEXT_INDEX:QUALNAME:LINE"
    header: str = ""  # the def line(s) and docstring alone (what the syntax check parses with the body)


def heldout_functions(
    texts: list[str],
    *,
    limit: int,
    seed: int,
    max_body_lines: int = 15,
    prefix_chars: int = 2000,
    suffix_chars: int = 1000,
) -> list[InfillExample]:
    """Up to `limit` short functions drawn at random (reproducibly, by `seed`) from `texts`; texts that do
    not parse are skipped."""
    candidates = []
    for index, text in enumerate(texts):
        lines = _lines(text)
        tree = _parse(text)
        if tree is None:
            continue
        for qualname, node in _functions(tree):
            span = _body_span(node, lines)
            if span is not None and span[1] - span[0] <= max_body_lines:
                candidates.append((index, qualname, node.lineno, span))
    random.Random(seed).shuffle(candidates)
    examples = []
    for index, qualname, def_line, (start, end) in candidates[:limit]:
        lines = _lines(texts[index])
        examples.append(
            InfillExample(
                prefix=_tail("".join(lines[:start]), prefix_chars),
                middle=_ensure_newline("".join(lines[start:end])),
                suffix=_head("".join(lines[end:]), suffix_chars),
                name=f"{index}:{qualname}:{def_line}",
                header="".join(lines[def_line - 1 : start]),
            )
        )
    return examples


def heldout_lines(functions: list[InfillExample], *, seed: int) -> list[InfillExample]:
    """Single-line infilling: for each of `functions` (from `heldout_functions`), one non-blank line of its
    body chosen at random (by `seed`) is the middle, with the lines around it joined to prefix and suffix."""
    rng, examples = random.Random(seed), []
    for e in functions:
        lines = _lines(e.middle)  # not str.splitlines: a form feed inside a string literal is no line end
        filled = [i for i, line in enumerate(lines) if line.strip()]
        if not filled:
            continue
        i = rng.choice(filled)
        examples.append(InfillExample(prefix=e.prefix + "".join(lines[:i]), middle=lines[i],
                                      suffix="".join(lines[i + 1 :]) + e.suffix, name=f"{e.name}+{i}",
                                      header=e.header))  # fmt: skip
    return examples


def final_checks(model, tokenizer, texts: list[str], *, seed: int, seq_len: int) -> dict:
    """What `codefoundry pretrain` ends with, on 50 held-out functions of `texts`: greedy FIM exact match
    on whole bodies and on single lines, and the fraction of bodies sampled at temperature 0.8 that
    parse."""
    new = min(128, seq_len // 2)  # a body of up to 15 lines; the prompt keeps the other half
    if seq_len - new < 3:
        # A FIM prompt is at least its 3 sentinels: `complete` would refuse, and the run lose its summary.
        return {"final_eval": f"seq_len={seq_len} is too short for FIM prompts and a middle"}
    examples = heldout_functions(texts, limit=50, seed=seed)
    if not examples:
        return {"final_eval": "no held-out functions to infill"}
    model.eval()
    fim = fim_exact_match(model, tokenizer, examples, max_new_tokens=new)
    lines = fim_exact_match(model, tokenizer, heldout_lines(examples, seed=seed), max_new_tokens=min(48, new))
    # One sample per example: up to 50 sampled bodies over 50 different functions.
    syntax = syntax_valid_fraction(
        model, tokenizer, examples, n=1, temperature=0.8, seed=seed, max_new_tokens=new
    )
    return {"fim_exact_match": fim, "fim_line_match": lines, "syntax_valid": syntax}


# What `ast.parse` raises for source it cannot take: a syntax error, a NUL byte (ValueError), an expression
# nested a few thousand deep (RecursionError, or MemoryError for "too complex to parse").
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


def _parse(text: str) -> ast.Module | None:
    """`text`'s tree, or None where it does not parse. A leading byte order mark is dropped (Python reads
    such a file; `ast.parse` of its text refused it) and warnings are silenced: an invalid escape such as
    "\\d" is a SyntaxWarning (DeprecationWarning before 3.12) that `-W error` made a SyntaxError, and
    that otherwise printed one line on stderr per held-out file and sampled body."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(text.removeprefix("\ufeff"))
        except _PARSE_ERRORS:
            return None


def _lines(text: str) -> list[str]:
    # Split where Python's tokenizer does (\n, \r\n, \r), not at str.splitlines' form feeds and
    # separators, so line i here is ast's line i + 1.
    return io.StringIO(text, newline="").readlines()


def _functions(tree: ast.AST):
    """(qualified name, node) of every function definition, nested ones included, in source order.
    A stack, not recursion: deeply nested expressions would hit the recursion limit."""
    found, stack = [], [(tree, "")]
    while stack:
        node, scope = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if not isinstance(child, ast.ClassDef):
                    found.append((f"{scope}{child.name}", child))
                stack.append((child, f"{scope}{child.name}."))
            else:
                stack.append((child, scope))
    return sorted(found, key=lambda item: (item[1].lineno, item[1].col_offset))


def _body_span(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> tuple[int, int] | None:
    """0-based [start, end) lines of the body after any docstring, or None when the body does not start
    on a line of its own (a one-line def, a statement after `;`) or is only a docstring."""
    body = node.body
    if body and _is_docstring(body[0]):
        body = body[1:]
    if not body:
        return None
    first, last = body[0], body[-1]
    # A decorated statement starts at its first decorator (its lineno is the `def`/`class` line's): the
    # `@functools.wraps(fn)` of a wrapper defined first in the body was left in the prompt, not the middle.
    start = min([first.lineno, *(d.lineno for d in getattr(first, "decorator_list", ()))]) - 1
    if start <= node.lineno - 1 or lines[start][: first.col_offset].strip():
        return None
    if node.body[0] is not first and node.body[0].end_lineno - 1 >= start:
        return None  # docstring and first statement share a line
    return start, last.end_lineno


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _tail(text: str, budget: int) -> str:
    """The last whole lines of `text` that fit in `budget` characters (lines as `_lines` cuts them: a file
    with "\r" line ends had no "\n" to cut at and lost its whole prefix, the `def` line included)."""
    if len(text) <= budget:
        return text
    # The first piece of the last budget + 1 characters is a cut line or a whole one too long to fit.
    return "".join(_lines(text[len(text) - budget - 1 :])[1:])


def _head(text: str, budget: int) -> str:
    """The first whole lines of `text` that fit in `budget` characters (lines as `_lines` cuts them)."""
    if len(text) <= budget:
        return text
    return "".join(_lines(text[: budget + 1])[:-1])


def _ensure_newline(text: str) -> str:
    return text if text.endswith(("\n", "\r")) else text + "\n"  # "\r": a line end, as in `_lines`


def fim_matches(model, tokenizer, examples: list[InfillExample], *, max_new_tokens: int) -> list[dict]:
    """Greedy FIM on every example, one record each, in order: its name, the middle written, whether it
    reproduces the real one exactly (trailing whitespace aside) and whether its first line does."""
    if not examples:
        raise ValueError("fim_exact_match: no examples")
    got = complete(
        model, tokenizer, [e.prefix for e in examples], suffixes=[e.suffix for e in examples],
        max_new_tokens=max_new_tokens, warn_trimmed=False,  # the examples' budgets may outrun a context
    )  # fmt: skip
    return [{"name": e.name, "completion": g, "exact": g.rstrip() == e.middle.rstrip(),
             "first_line": _first_line(g) == _first_line(e.middle)}
            for g, e in zip(got, examples, strict=True)]  # fmt: skip


def fim_exact_match(model, tokenizer, examples: list[InfillExample], *, max_new_tokens: int) -> dict:
    """Greedy FIM on every example: the fraction whose middle is reproduced exactly (trailing whitespace
    aside), and the fraction whose first line is."""
    records = fim_matches(model, tokenizer, examples, max_new_tokens=max_new_tokens)
    n = len(records)
    exact, first = sum(r["exact"] for r in records), sum(r["first_line"] for r in records)
    return {"n": n, "exact_match": exact / n, "first_line_match": first / n}


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip()


def syntax_valid_fraction(
    model,
    tokenizer,
    examples: list[InfillExample],
    *,
    n: int,
    temperature: float,
    seed: int,
    max_new_tokens: int,
    top_p: float = 1.0,
    batch_size: int = 16,
    records: list[dict] | None = None,
    repetition_penalty: float = 1.0,
    min_p: float = 0.0,
) -> dict:
    """Sample `n` bodies per example after its header (at `temperature`, from the nucleus `top_p`, with
    `generate`'s `min_p` and `repetition_penalty`; sample j from stream `child_seed(seed, j)`, whatever the
    batch size); the fraction that make a function `ast.parse` accepts. A body ends
    where Python would end the function (`_BodyEnd`: the first line that starts a logical line indented no
    deeper than the `def`, cut there), at <|endoftext|> or <|file_sep|>, or after max_new_tokens; the FIM
    sentinels are never drawn, as in `completion.complete`.
    `records`, when given, gets one dict per sample: name, body, ended (False when the token budget ran
    out first) and error (None when it parses)."""
    if not examples:
        raise ValueError("syntax_valid_fraction: no examples")
    table = token_bytes(tokenizer)
    stop_ids = [special_id(tokenizer, t) for t in PLAIN_STOPS]
    banned = ids_of(tokenizer, PLAIN_BANNED) + padding_ids(table, model)
    cap = model.cfg.max_seq_len
    plain = plain_encoder(tokenizer)
    jobs = [(e, plain.encode(e.prefix, add_special_tokens=False).ids) for e in examples for _ in range(n)]
    valid = 0
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        budget = min(cap - 1, max(1, cap - max_new_tokens))
        # The header ends with a newline: healed, so the body starts as in training text (see heal_prompts).
        prompts, firsts, skips = heal_prompts([ids[-budget:] or stop_ids[:1] for _, ids in chunk], table)
        watchers = [
            _BodyEnd(table, _indent(_header(e)), skip) for (e, _), skip in zip(chunk, skips, strict=True)
        ]
        new = min(max_new_tokens, cap - max(map(len, prompts)))
        out = generate(
            model, prompts, max_new_tokens=new, temperature=temperature, top_p=top_p, min_p=min_p,
            seed=[child_seed(seed, start + j) for j in range(len(chunk))], stop_ids=stop_ids,
            on_token=lambda row, tok, w=watchers: w[row].push(tok), first_tokens=firsts,
            banned_ids=banned, repetition_penalty=repetition_penalty,
        )  # fmt: skip
        for (e, _), ids, watcher, skip in zip(chunk, out, watchers, skips, strict=True):
            text = decode_after(table, ids, skip)
            body = watcher.cut(text)
            error = _parse_error(_header(e), body)
            valid += error is None
            if records is not None:
                ended = len(ids) < new or len(body) < len(text)  # a dedent or a stop token, not the budget
                records.append({"name": e.name, "body": body, "ended": ended, "error": error})
    total = len(jobs)
    return {"n": total, "examples": len(examples), "valid": valid, "syntax_valid": valid / total}


def _header(e: InfillExample) -> str:
    """The example's def line(s) and docstring; for hand-made examples, from the last `def` of the prefix."""
    if e.header:
        return e.header
    lines = _lines(e.prefix)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith(("def ", "async def ")):
            return "".join(lines[i:])
    raise ValueError(f"{e.name}: no def line in the prefix to complete a body after")


def _indent(header: str) -> int:
    first = header.splitlines()[0]
    return len(first) - len(first.lstrip())


def _parse_error(header: str, body: str) -> str | None:
    """None when the function parses, else the parser's message (without its location). A method is
    moved left by its `def`'s indentation, each line by as much of it as it has: lines of its strings or
    brackets may start left of the `def`, which `textwrap.dedent` would take for no common indent."""
    indent = _indent(header)
    lines = (header + body).splitlines(keepends=True)
    source = "".join(ln[min(indent, len(ln) - len(ln.lstrip(" \t\f"))) :] for ln in lines)
    with warnings.catch_warnings():  # a warning (an invalid escape) is no syntax error; see `_parse`
        warnings.simplefilter("ignore")
        try:
            ast.parse(source.removeprefix("\ufeff"))  # a header on a file's first line keeps its BOM
        except SyntaxError as e:
            return str(e.msg)
        except (ValueError, RecursionError, MemoryError) as e:  # a NUL byte; nesting too deep to parse
            return str(e) or type(e).__name__
    return None


class _BodyEnd:
    """Watches one row's text and ends it where Python ends the function: at the first line that starts a
    logical line (not inside brackets, a string or after a backslash; not blank, not only a comment)
    indented no deeper than the `def`. A line inside an open bracket or string may start anywhere (the
    stdlib's dedented triple-quoted strings start at column 0): ending the body there used to cut bodies
    that were still valid Python."""

    def __init__(self, table: list[bytes], indent: int, skip: int = 0) -> None:
        self.table, self.indent = table, indent
        self.skip = skip  # leading bytes of the output that belong to the (healed) prompt
        self.text = b""
        self._start()

    def _start(self) -> None:
        self.pos = 0  # bytes scanned so far
        self.line_start = 0  # where the line being scanned starts
        self.logical = True  # that line starts a logical line: its indentation decides
        self.depth = 0  # open brackets
        self.quote = b""  # the open string's delimiter, or b""

    def push(self, token: int) -> bool:
        self.text += piece(self.table, token)
        if self.skip:
            dropped = min(self.skip, len(self.text))
            self.text, self.skip = self.text[dropped:], self.skip - dropped
        return self._end(self.text) is not None

    def _end(self, text: bytes) -> int | None:
        """Offset of the line that leaves the body, scanning on from `pos`; None until one is seen. The
        scan stops short of what the next bytes could change (a quote that may be a triple one, an escape)."""
        i, n = self.pos, len(text)
        while i < n:
            if self.logical and i == self.line_start:
                line_end = text.find(b"\n", i)
                line = text[i : n if line_end == -1 else line_end]
                stripped = line.lstrip(b" \t\r\f")
                if not stripped or stripped.startswith(b"#"):  # blank or comment only: not a logical line
                    if line_end == -1:
                        break
                    i = self.line_start = line_end + 1
                    continue
                if len(line) - len(stripped) <= self.indent:
                    return self.line_start
                i += len(line) - len(stripped)
                self.logical = False
            c = text[i : i + 1]
            if self.quote:
                if c == b"\\":
                    if i + 1 >= n:
                        break
                    i += 2
                elif text.startswith(self.quote, i):
                    self.quote, i = b"", i + len(self.quote)
                elif len(self.quote) == 3 and c == self.quote[:1] and i + 3 > n:
                    break  # perhaps the closing quotes, not all here yet
                elif c == b"\n":
                    if len(self.quote) == 1:
                        self.quote = b""  # an unterminated string: the parser will say so
                    i = self.line_start = i + 1
                    self.logical = len(self.quote) == 0 and self.depth == 0
                else:
                    i += 1
            elif c in (b"'", b'"'):
                if i + 3 > n and text[i:n] == c * (n - i):
                    break  # an empty string or the start of a triple-quoted one: not known yet
                self.quote = c * 3 if text.startswith(c * 3, i) else c
                i += len(self.quote)
            elif c == b"#":
                line_end = text.find(b"\n", i)
                if line_end == -1:
                    break
                i = line_end
            elif c == b"\\":
                if i + 1 >= n:
                    break
                i += 2  # a backslash and a newline: the next line continues this one
                if text[i - 1 : i] == b"\n":
                    self.line_start, self.logical = i, False
            elif c == b"\n":
                i = self.line_start = i + 1
                self.logical = self.depth == 0
            else:
                self.depth += (c in b"([{") - (c in b")]}" and self.depth > 0)
                i += 1
        self.pos = i
        return None

    def cut(self, text: str) -> str:
        """`text` (this row's decoded output) up to the line that leaves the body."""
        self._start()
        end = self._end(text.encode())
        return text if end is None else text.encode()[:end].decode("utf-8", "replace")
