"""Asking a model for code, and taking the code back out of its answer.

Two ways to ask. A base model continues `base_prompt(problem)` (the problem's prompt as is); cut its
output with `truncate_completion(text, STOP_SEQUENCES[task])`. A chat model gets `chat_messages(problem)`,
which asks for the whole function in one fenced block; `completion_from_chat(answer, problem)` turns the
answer back into a completion that `Problem.program` appends to the prompt.

`extract_code` decides, in this order:

1. **Fenced blocks** (``` or ~~~, possibly indented, an unterminated last fence running to the end of the
   text, a closing fence glued to the last code line). Each non-empty block is ranked by
   (defines `entry_point` at top level, tag: the requested language > untagged > another language, looks
   like code); the best wins. Ties go to the *last* block when it defines the entry point (a later
   definition is a correction; usage examples do not redefine it), else to the *first*. For Python, earlier
   blocks that define names the winner uses but does not define (helpers shown separately) are prepended.
2. **No fence**: the text from the first line that starts code (`def`, `class`, `import`, `from … import`,
   a decorator; for other languages `#include`, `package`, a type or `fn`/`func` …) on, dedented; trailing
   prose is cut at the longest prefix that parses (Python) or after the last line ending in `}`/`;`.
3. **A bare body** (Python, `prompt` given): text that compiles as the body of the prompt's last function
   (indented or not) and holds a statement keyword is returned as given.
4. Otherwise "".

Limits: these are heuristics over text. Prose interleaved with code lines inside one block stays; for
languages other than Python "defines the entry point" is a regular expression and nothing is parsed, so
`completion_from_chat` cannot check that the program it builds compiles.
"""

from __future__ import annotations

import ast
import builtins
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from codefoundry.tasks.problem import Problem

__all__ = [
    "STOP_SEQUENCES",
    "base_prompt",
    "chat_messages",
    "completion_from_chat",
    "extract_code",
    "truncate_completion",
]

# Base-model stop sequences per task. A completion of a HumanEval-style prompt ends where the model starts
# a new top-level statement: another function or class, a main guard, a print, a comment, an assert.
STOP_SEQUENCES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "humaneval": ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert"),
        "mbpp": ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\nassert", '\n"""', "\n```"),
    }
)

# Fence tags that name each language (lower case); a language missing here matches only its own name.
_ALIASES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "python": frozenset({"python", "py", "python3", "py3"}),
        "cpp": frozenset({"cpp", "c++", "cc", "cxx", "hpp"}),
        "c": frozenset({"c", "h"}),
        "java": frozenset({"java"}),
        "javascript": frozenset({"javascript", "js", "jsx", "node", "nodejs", "mjs"}),
        "typescript": frozenset({"typescript", "ts", "tsx"}),
        "rust": frozenset({"rust", "rs"}),
        "go": frozenset({"go", "golang"}),
        "csharp": frozenset({"csharp", "cs", "c#"}),
    }
)
_LANGUAGE_NAMES = {"python": "Python", "cpp": "C++", "c": "C", "csharp": "C#", "javascript": "JavaScript",
                   "typescript": "TypeScript", "go": "Go", "rust": "Rust", "java": "Java"}  # fmt: skip


def _language(language: str) -> str:
    low = language.lower()
    for name, tags in _ALIASES.items():
        if low in tags:
            return name
    return low


# --------------------------------------------------------------------------------------
# Asking
# --------------------------------------------------------------------------------------


def base_prompt(problem: Problem) -> str:
    """What a base model continues: the problem's prompt, unchanged (a stripped prompt costs HumanEval
    points: the trailing newline and indentation tell the model where the body starts)."""
    return problem.prompt


def chat_messages(
    problem: Problem, *, system: str | None = None, instruction: str | None = None
) -> list[dict]:
    """OpenAI-style messages asking a chat model to complete the problem's function.

    The user message is `instruction` (by default: complete the function), the prompt in a fenced block
    tagged with the problem's language, and a request for the whole function in one fenced block, which is
    what `extract_code` looks for first."""
    name = _LANGUAGE_NAMES.get(_language(problem.language), problem.language)
    tag = _language(problem.language)
    what = f"`{problem.entry_point}`" if problem.entry_point else "the code below"
    if instruction is None:
        instruction = f"Complete the following {name} function {what}."
    content = (
        f"{instruction}\n\n```{tag}\n{problem.prompt.rstrip()}\n```\n\n"
        f"Reply with the complete function, including its signature and any imports it needs, "
        f"in a single ```{tag} code block."
    )
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": content})
    return messages


def truncate_completion(text: str, stop: Sequence[str] | str) -> str:
    """`text` up to the earliest occurrence of any stop sequence (a lone string is one stop sequence;
    empty ones are ignored)."""
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    cut = len(text)
    for s in stops:
        if s:
            at = text.find(s)
            if 0 <= at < cut:
                cut = at
    return text[:cut]


# --------------------------------------------------------------------------------------
# Fenced blocks
# --------------------------------------------------------------------------------------

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*?)[ \t]*$")
_GLUED_CLOSE = re.compile(r"^(?P<code>.*\S)[ \t]*`{3,}[ \t]*$")


@dataclass(frozen=True)
class _Block:
    tag: str
    code: str


def _tag(info: str) -> str:
    word = info.split()[0] if info.split() else ""
    return word.strip("{}.").lower()


def _fenced_blocks(text: str) -> list[_Block]:
    lines = text.split("\n")
    blocks: list[_Block] = []
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, width = m["fence"], len(m["indent"])
        body: list[str] = []
        i += 1
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            if stripped and set(stripped) == {fence[0]} and len(stripped) >= len(fence):
                break
            glued = _GLUED_CLOSE.match(line) if fence[0] == "`" else None
            if glued is not None:
                body.append(_unindent(glued["code"], width))
                break
            body.append(_unindent(line, width))
            i += 1
        i += 1  # past the closing fence (or the end)
        code = _tidy("\n".join(body))
        if code:
            blocks.append(_Block(_tag(m["info"]), code))
    return blocks


def _unindent(line: str, width: int) -> str:
    """Drop up to `width` leading whitespace characters (the fence's own indentation)."""
    n = 0
    while n < width and n < len(line) and line[n] in " \t":
        n += 1
    return line[n:]


def _tidy(code: str) -> str:
    """Without blank lines at either end or trailing whitespace on the last line; indentation kept."""
    lines = code.split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines).rstrip()


def _defines(code: str, name: str, language: str) -> bool:
    if language == "python":
        return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.M) is not None
    # C-like, Rust, Go, JS: the name, a parameter list, then an opening brace before any semicolon.
    return re.search(rf"\b{re.escape(name)}\s*\([^;{{]*\)[^;{{]*\{{", code) is not None


_PY_CODE_LINE = re.compile(r"^\s*(?:async\s+def|def|class|import|from|return|for|while|if|with|try|@)\b")
_OTHER_CODE_LINE = re.compile(r"[;{}]\s*$")


def _looks_like_code(code: str, language: str) -> bool:
    pattern = _PY_CODE_LINE if language == "python" else _OTHER_CODE_LINE
    return any(pattern.search(line) for line in code.split("\n"))


def _best_block(blocks: list[_Block], language: str, entry_point: str | None) -> int:
    tags = _ALIASES.get(language, frozenset({language}))

    def rank(b: _Block) -> tuple[bool, int, bool]:
        defines = entry_point is not None and _defines(b.code, entry_point, language)
        tag = 2 if b.tag in tags else 1 if b.tag == "" else 0
        return defines, tag, _looks_like_code(b.code, language)

    ranks = [rank(b) for b in blocks]
    top = max(ranks)
    candidates = [i for i, r in enumerate(ranks) if r == top]
    return candidates[-1] if top[0] else candidates[0]


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError):
        return None


def _with_helpers(blocks: list[_Block], chosen: int, language: str) -> str:
    """The chosen Python block, preceded by earlier blocks that define names it uses but lacks."""
    code = blocks[chosen].code
    tree = _parse(code)
    if language != "python" or tree is None:
        return code
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    missing = used - _top_level_names(tree) - set(dir(builtins))
    helpers = []
    for b in blocks[:chosen]:
        other = _parse(b.code)
        if missing and other is not None and _top_level_names(other) & missing:
            helpers.append(b.code)
            missing -= _top_level_names(other)
    return "\n\n\n".join([*helpers, code])


# --------------------------------------------------------------------------------------
# Unfenced answers
# --------------------------------------------------------------------------------------

_PY_START = re.compile(
    r"^[ \t]*(?:(?:async[ \t]+)?def[ \t]+\w+[ \t]*\(|class[ \t]+\w+[ \t]*[(:]|import[ \t]+[\w.]+"
    r"|from[ \t]+[\w.]+[ \t]+import\b|@[\w.]+)"
)
_OTHER_START = re.compile(
    r"^[ \t]*(?:#include|#import|import\s|package\s|using\s|public\s|private\s|class\s|struct\s|template\s*<"
    r"|fn\s|pub\s|use\s|impl\s|func\s|function\s|const\s|let\s|var\s|static\s|int\s|long\s|void\s|bool\s"
    r"|double\s|float\s|char\s|auto\s|std::|vector<|string\s)"
)
# A top-level line of prose: three or more words, none of them an operator.
_PROSE = re.compile(r"^[A-Za-z][\w'’,-]*(?:[ \t]+[\w'’,.:;!?()-]+){2,}[ \t]*$")


def _unfenced_python(lines: list[str], prompt: str | None) -> str:
    start = next((i for i, line in enumerate(lines) if _PY_START.match(line)), None)
    if start is None:
        return _bare_body(lines, prompt)
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start:]:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break  # back to the margin of an indented (markdown) code block: prose
        body.append(line[indent:])
    top = [i for i, line in enumerate(body) if i > 0 and line.strip() and not line[0].isspace()]
    for cut in [len(body), *reversed(top)]:
        if _parse("\n".join(body[:cut])) is not None:
            return _tidy("\n".join(body[:cut]))
    prose = next((i for i in top if _PROSE.match(body[i]) and not _PY_CODE_LINE.match(body[i])), len(body))
    return _tidy("\n".join(body[:prose]))


def _bare_body(lines: list[str], prompt: str | None) -> str:
    """Lines that complete `prompt` as its last function's body (an answer that is only the body),
    indented as given or not at all; they must compile after the prompt and contain a statement keyword."""
    if not prompt:
        return ""
    body = _tidy("\n".join(lines))
    if not body or not _looks_like_code(body, "python"):
        return ""
    indented = body if body[0].isspace() else textwrap.indent(body, _body_indent(prompt))
    return body if _compiles(prompt + indented + "\n") else ""


def _unfenced_other(lines: list[str]) -> str:
    start = next((i for i, line in enumerate(lines) if _OTHER_START.match(line)), None)
    if start is None:
        return ""
    last = max((i for i in range(start, len(lines)) if lines[i].rstrip().endswith(("}", ";"))), default=None)
    if last is None:
        return ""
    return _tidy("\n".join(lines[start : last + 1]))


def extract_code(
    text: str, *, language: str = "python", entry_point: str | None = None, prompt: str | None = None
) -> str:
    """The code in a chat answer, by the precedence in the module docstring; "" when none is found.

    Line endings are normalised to "\\n"; the result has no blank lines at either end and no trailing
    newline; its first line keeps its indentation (a bare body stays indented)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lang = _language(language)
    blocks = _fenced_blocks(text)
    if blocks:
        return _with_helpers(blocks, _best_block(blocks, lang, entry_point), lang)
    lines = text.split("\n")
    return _unfenced_python(lines, prompt) if lang == "python" else _unfenced_other(lines)


# --------------------------------------------------------------------------------------
# Chat answer -> completion
# --------------------------------------------------------------------------------------


def _compiles(program: str) -> bool:
    """Whether `program` compiles (a `return` outside a function fails here, not in `ast.parse`)."""
    try:
        compile(program, "<completion>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def _compiles_defining(program: str, entry_point: str) -> bool:
    """`program` compiles and defines `entry_point` at top level."""
    if not _compiles(program):
        return False
    tree = ast.parse(program)
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry_point
        for node in tree.body
    )


def _body_indent(prompt: str) -> str:
    """The indentation of the body of the prompt's last `def` (four spaces past the `def`)."""
    defs = re.findall(r"^([ \t]*)(?:async[ \t]+)?def[ \t]+\w+", prompt, re.M)
    return (defs[-1] if defs else "") + "    "


def completion_from_chat(text: str, problem: Problem) -> str:
    """A completion for `problem.prompt` built from a chat answer, "" when the answer holds no code.

    Python candidates, in order; the first whose program (prompt + completion) compiles and defines the
    entry point at top level wins: the tail after an echoed prompt; when the code defines the entry point,
    the code after a newline (a later `def` rebinds the prompt's function), then the same with `pass`
    closing a prompt that ends in a bare signature; the code as the function's body, indented as returned,
    then re-indented; the code after a newline. When none checks out, the last is returned anyway, so that
    grading, not this function, fails it. Other languages get the tail after an echoed prompt, else
    "\n" + code, unchecked."""
    prompt = problem.prompt
    code = extract_code(text, language=problem.language, entry_point=problem.entry_point, prompt=prompt)
    if not code:
        return ""
    head = prompt.rstrip()
    echoed = code[len(head) :] + "\n" if head and code.startswith(head) else None
    after = "\n" + code + "\n"
    if _language(problem.language) != "python":
        return echoed if echoed is not None else after
    indent = _body_indent(prompt)
    candidates = [echoed]
    if _defines(code, problem.entry_point, "python"):
        candidates += [after, f"{indent}pass\n\n\n{code}\n"]
    candidates += [code + "\n" if code[:1].isspace() else None, textwrap.indent(code, indent) + "\n", after]
    for completion in candidates:
        if completion is not None and _compiles_defining(prompt + completion, problem.entry_point):
            return completion
    return after
