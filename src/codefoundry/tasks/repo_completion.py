"""Repository-level, cross-file line completion (CrossCodeEval and RepoBench style JSONL).

A problem is the in-file code left of the cursor, the line to predict, and code retrieved from other files
of the repository. `load` reads either benchmark's records (detected per record) into one shape:

| `RepoCompletionProblem` | CrossCodeEval | RepoBench (v1.1; v1 in brackets) |
|---|---|---|
| `task_id` | `metadata.task_id` | none: `<file name>:<line>` of the record |
| `left_context` | `prompt` | `cropped_code` [`code`] |
| `groundtruth` | `groundtruth` | `next_line` |
| `right_context` | `right_context` | "" |
| `import_statement` | "" | `import_statement` |
| `crossfile` | `crossfile_context.list[]`: `retrieved_chunk`, `filename`, `score` | `context[]`: `snippet`, `path`, `identifier` |
| `crossfile_text` | `crossfile_context.text` (pre-rendered) | `context` when it is a string [v1] |
| `repository`, `file_path` | `metadata.repository`, `metadata.file` | `repo_name`, `file_path` |
| `metadata` | `metadata` | every other field (`gold_snippet_index`, `level`, …) |

`build_prompt` lays cross-file snippets out as comments headed by their path, then the in-file context, and
truncates from the end far from the cursor. `score` compares the first non-empty line of a prediction with
the first non-empty line of the ground truth, both stripped of surrounding whitespace, as both benchmarks
do: exact match, and edit similarity as 1 - Levenshtein / longer length (`metrics.edit_similarity`, in
[0, 1]; the benchmarks' scripts report fuzzywuzzy's `fuzz.ratio` x 100, an indel ratio, so numbers differ
slightly). Nothing here runs code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codefoundry.jsonl import iter_records
from codefoundry.tasks.metrics import edit_similarity, exact_match

__all__ = ["RepoCompletionProblem", "Snippet", "build_prompt", "first_line", "load", "score"]


@dataclass(frozen=True)
class Snippet:
    path: str  # the file, relative to the repository root
    text: str
    score: float | None = None  # retrieval score, higher is better (CrossCodeEval)
    identifier: str = ""  # the name the snippet defines (RepoBench)


@dataclass(frozen=True)
class RepoCompletionProblem:
    task_id: str
    left_context: str  # in-file code before the cursor
    groundtruth: str  # what follows the cursor up to the end of its line
    right_context: str = ""
    import_statement: str = ""
    crossfile: tuple[Snippet, ...] = ()
    crossfile_text: str = ""  # pre-rendered cross-file context, used when `crossfile` is empty
    repository: str = ""
    file_path: str = ""
    source: str = ""  # "crosscodeeval" or "repobench"
    metadata: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


class _RecordError(ValueError):
    """A problem with one record; `load` adds the file and line."""


def _string(record: Mapping[str, Any], key: str, default: str | None = None) -> str:
    if key not in record or record[key] is None:
        if default is None:
            raise _RecordError(f"lacks {key!r}")
        return default
    value = record[key]
    if not isinstance(value, str):
        raise _RecordError(f"{key!r} must be a string, got {type(value).__name__}")
    return value


def _crosscodeeval(record: Mapping[str, Any], fallback_id: str) -> RepoCompletionProblem:
    meta = record.get("metadata")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise _RecordError("'metadata' must be an object")
    context = record.get("crossfile_context")
    context = {} if context is None else context
    if not isinstance(context, dict):
        raise _RecordError("'crossfile_context' must be an object with 'text' and/or 'list'")
    chunks = context.get("list")
    chunks = [] if chunks is None else chunks
    if not isinstance(chunks, list):
        raise _RecordError("'crossfile_context.list' must be a list")
    snippets = []
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, dict) or not isinstance(chunk.get("retrieved_chunk"), str):
            raise _RecordError(f"crossfile_context.list[{i}] lacks a string 'retrieved_chunk'")
        score = chunk.get("score")
        snippets.append(Snippet(str(chunk.get("filename") or ""), chunk["retrieved_chunk"],
                                float(score) if isinstance(score, int | float) else None))  # fmt: skip
    return RepoCompletionProblem(
        task_id=str(meta.get("task_id") or fallback_id),
        left_context=_string(record, "prompt"),
        groundtruth=_string(record, "groundtruth"),
        right_context=_string(record, "right_context", ""),
        crossfile=tuple(snippets),
        crossfile_text=_string(context, "text", ""),
        repository=str(meta.get("repository") or ""),
        file_path=str(meta.get("file") or ""),
        source="crosscodeeval",
        metadata=meta,
    )


_REPOBENCH_MAPPED = {
    "repo_name",
    "file_path",
    "context",
    "import_statement",
    "cropped_code",
    "code",
    "next_line",
}


def _repobench(record: Mapping[str, Any], fallback_id: str) -> RepoCompletionProblem:
    context = record.get("context")
    context = [] if context is None else context
    snippets, text = [], ""
    if isinstance(context, str):
        text = context
    elif isinstance(context, list):
        for i, item in enumerate(context):
            if not isinstance(item, dict) or not isinstance(item.get("snippet"), str):
                raise _RecordError(f"context[{i}] lacks a string 'snippet'")
            snippets.append(Snippet(str(item.get("path") or ""), item["snippet"],
                                    identifier=str(item.get("identifier") or "")))  # fmt: skip
    else:
        raise _RecordError("'context' must be a list of snippets or a string")
    code_key = "cropped_code" if "cropped_code" in record else "code"
    return RepoCompletionProblem(
        task_id=fallback_id,
        left_context=_string(record, code_key),
        groundtruth=_string(record, "next_line"),
        import_statement=_string(record, "import_statement", ""),
        crossfile=tuple(snippets),
        crossfile_text=text,
        repository=_string(record, "repo_name", ""),
        file_path=_string(record, "file_path", ""),
        source="repobench",
        metadata={k: v for k, v in record.items() if k not in _REPOBENCH_MAPPED},
    )


def load(path: str | Path) -> list[RepoCompletionProblem]:
    """Problems from a CrossCodeEval or RepoBench JSONL file (optionally gzipped), in file order.

    A record with `groundtruth` is read as CrossCodeEval, one with `next_line` as RepoBench. Bad input
    raises ValueError naming the file and line; task ids must be unique within the file."""
    path = Path(path)
    problems: list[RepoCompletionProblem] = []
    seen: dict[str, int] = {}
    for lineno, record in iter_records(path):
        where = f"{path}:{lineno}"
        fallback_id = f"{path.name}:{lineno}"
        try:
            if "groundtruth" in record:
                problem = _crosscodeeval(record, fallback_id)
            elif "next_line" in record:
                problem = _repobench(record, fallback_id)
            else:
                raise _RecordError("has neither 'groundtruth' (CrossCodeEval) nor 'next_line' (RepoBench)")
        except _RecordError as e:
            raise ValueError(f"{where}: {e}") from None
        if problem.task_id in seen:
            raise ValueError(f"{where}: task_id {problem.task_id!r} repeats line {seen[problem.task_id]}")
        seen[problem.task_id] = lineno
        problems.append(problem)
    return problems


# --------------------------------------------------------------------------------------
# Prompting
# --------------------------------------------------------------------------------------

_HASH_COMMENT = {".py", ".pyi", ".rb", ".sh", ".r", ".pl", ".jl", ".yaml", ".yml", ".toml", ""}


def _comment_token(file_path: str) -> str:
    return "#" if Path(file_path).suffix.lower() in _HASH_COMMENT else "//"


def _render(snippet: Snippet, token: str) -> tuple[str, str]:
    """(header, body): `<token> Path: <path>` and the snippet's lines, commented out."""
    header = f"{token} Path: {snippet.path}\n" if snippet.path else ""
    body = "".join(f"{token} {line}".rstrip() + "\n" for line in snippet.text.splitlines())
    return header, body


def _tail(text: str, budget: int, *, whole_lines: bool) -> str:
    """The end of `text` within `budget` characters, starting at a line start; when no whole line fits,
    the last `budget` characters if `whole_lines` is false, else ""."""
    if len(text) <= budget:
        return text
    if budget <= 0:
        return ""
    cut = len(text) - budget
    start = cut if text[cut - 1] == "\n" else text.find("\n", cut) + 1
    if start == 0 or start >= len(text):  # no line starts inside the budget
        return "" if whole_lines else text[cut:]
    return text[start:]


def _crossfile_block(problem: RepoCompletionProblem, budget: int) -> str:
    """Rendered snippets within `budget`, the best (highest score, else last given) nearest the cursor;
    the furthest are dropped first, whole; the last one that partly fits keeps its path header and its last
    whole lines."""
    token = _comment_token(problem.file_path)
    snippets = list(problem.crossfile)
    if snippets and all(s.score is not None for s in snippets):
        snippets.sort(key=lambda s: s.score)  # stable: ties keep their order
    blocks = [_render(s, token) for s in snippets]
    if not blocks and problem.crossfile_text:
        text = problem.crossfile_text
        blocks = [("", text if text.endswith("\n") else text + "\n")]
    kept: list[str] = []
    used = 0
    for header, body in reversed(blocks):
        if used + len(header) + len(body) <= budget:
            kept.append(header + body)
            used += len(header) + len(body)
            continue
        part = _tail(body, budget - used - len(header), whole_lines=True)
        if part:
            kept.append(header + part)
        break
    return "".join(reversed(kept))


def build_prompt(
    problem: RepoCompletionProblem,
    *,
    max_chars: int,
    crossfile_first: bool = True,
    crossfile_chars: int | None = None,
) -> str:
    """The completion prompt, at most `max_chars` characters, ending at the cursor.

    Layout: cross-file snippets as comments (`# Path: <file>` then the commented lines; `//` for non-hash
    languages), then the imports and the in-file left context. With `crossfile_first=False` the imports
    come first and the snippets sit between them and the code. Budget: the cross-file block gets
    `crossfile_chars` (default half of `max_chars`), or more when the in-file text is short; the in-file
    text gets the rest and is cut from its start (the far end from the cursor) at a line boundary."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    share = max_chars // 2 if crossfile_chars is None else max(0, min(crossfile_chars, max_chars))
    imports = problem.import_statement
    if imports and not imports.endswith("\n"):
        imports += "\n"
    infile_len = len(imports) + len(problem.left_context)
    cross = _crossfile_block(problem, max(share, max_chars - infile_len))
    budget = max_chars - len(cross)
    if crossfile_first:
        return cross + _tail(imports + problem.left_context, budget, whole_lines=False)
    code = _tail(problem.left_context, budget, whole_lines=False)
    return _tail(imports, budget - len(code), whole_lines=True) + cross + code


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def first_line(text: str) -> str:
    """The first line of `text` that is not blank, stripped; "" when there is none."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def score(
    predictions: Mapping[str, str] | Sequence[str], problems: Sequence[RepoCompletionProblem]
) -> dict[str, Any]:
    """Line-level exact match and edit similarity, per task and averaged.

    `predictions` maps task ids to generated text (every problem needs one; unknown ids are an error), or
    is a list aligned with `problems`. Returns `{"n", "exact_match", "edit_similarity", "per_task": {id:
    {"exact_match", "edit_similarity"}}}`, exact match as 0.0/1.0."""
    if not problems:
        raise ValueError("score: no problems")
    ids = [p.task_id for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("score: problems repeat a task_id")
    if isinstance(predictions, Mapping):
        missing = [i for i in ids if i not in predictions]
        unknown = sorted(set(predictions) - set(ids))
        if missing or unknown:
            raise ValueError(f"score: {len(missing)} problems lack a prediction (first: {missing[:3]}), "
                             f"{len(unknown)} predictions name no problem (first: {unknown[:3]})")  # fmt: skip
        texts = [predictions[i] for i in ids]
    else:
        if isinstance(predictions, str) or len(predictions) != len(problems):
            raise ValueError(f"score: {len(problems)} problems but predictions is not a list of that length")
        texts = list(predictions)
    per_task = {}
    for problem, text in zip(problems, texts, strict=True):
        guess, truth = first_line(text), first_line(problem.groundtruth)
        per_task[problem.task_id] = {
            "exact_match": float(exact_match(guess, truth)),
            "edit_similarity": edit_similarity(guess, truth),
        }
    n = len(per_task)
    return {
        "n": n,
        "exact_match": sum(t["exact_match"] for t in per_task.values()) / n,
        "edit_similarity": sum(t["edit_similarity"] for t in per_task.values()) / n,
        "per_task": per_task,
    }
