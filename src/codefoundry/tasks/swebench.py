"""SWE-bench instance and prediction files, read and written the way the SWE-bench harness reads them.

Scope: the files only. Building images, applying patches and running tests is the harness's business
(`python -m swebench.harness.run_evaluation --predictions_path preds.jsonl ...`); this module gets its
inputs right and round-trips datasets without loss.

Formats, as the harness handles them (`swebench.harness.utils.get_predictions_from_file`,
`load_swebench_dataset`): it picks the parser from the file name, `.jsonl` one JSON object per line, `.json`
one document (predictions: a list, or a dict keyed by instance id as SWE-agent writes). Its own inference
scripts write `json.dumps(record)` plus "\\n", and it opens files without naming an encoding (so the
locale's). We therefore write with `json.dumps`'s defaults: ASCII only (non-ASCII escaped as \\uXXXX, which
reads the same under any locale), ", " and ": " separators, "\\n" line ends, no blank lines (the harness's
JSONL reader fails on one). Predictions are written with exactly `instance_id, model_name_or_path,
model_patch`, in that order; other fields of a read prediction are dropped. A `None` or "" patch is an
"empty patch" to the harness: it is not run.

Instances keep what they were read with: unknown fields (`extras`, e.g. Verified's `difficulty`), the
order of keys, and the form of FAIL_TO_PASS / PASS_TO_PASS (JSON-encoded strings in the released datasets,
lists in some dumps; parsed to tuples here, written back as they came). A file already in the canonical
form above reads and writes back byte for byte. Bad input raises ValueError naming the file and line.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "INSTANCE_FIELDS",
    "Instance",
    "Prediction",
    "load_instances",
    "read_predictions",
    "write_instances",
    "write_predictions",
]

# The released datasets' column order (SWE-bench, Lite, Verified); new instances are written in it.
INSTANCE_FIELDS = (
    "repo",
    "instance_id",
    "base_commit",
    "patch",
    "test_patch",
    "problem_statement",
    "hints_text",
    "created_at",
    "version",
    "FAIL_TO_PASS",
    "PASS_TO_PASS",
    "environment_setup_commit",
)
_TEST_LISTS = ("FAIL_TO_PASS", "PASS_TO_PASS")
_REQUIRED = ("instance_id", "repo", "base_commit")
_TEXT = ("patch", "test_patch", "problem_statement", "hints_text", "environment_setup_commit")


@dataclass(frozen=True)
class Instance:
    instance_id: str
    repo: str
    base_commit: str
    patch: str = ""  # the gold fix
    test_patch: str = ""  # the hidden tests, applied before grading
    problem_statement: str = ""
    hints_text: str = ""
    created_at: str = ""
    version: str = ""  # kept as found (a few dumps hold numbers)
    FAIL_TO_PASS: tuple[str, ...] = ()  # tests that fail before the fix and must pass after it
    PASS_TO_PASS: tuple[str, ...] = ()  # tests that pass before and must still pass
    environment_setup_commit: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)  # unknown fields, in file order
    tests_as_json_strings: bool = True  # FAIL_TO_PASS / PASS_TO_PASS are written JSON-encoded, as released
    key_order: tuple[str, ...] = field(default=(), compare=False, repr=False)  # as read; () for new ones
    raw_tests: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)  # encoded, as read

    def to_dict(self) -> dict[str, Any]:
        """The record as written: keys in the order read (new instances: `INSTANCE_FIELDS`, then extras),
        test lists in the form read."""
        values: dict[str, Any] = {}
        for name in INSTANCE_FIELDS:
            value = getattr(self, name)
            if name in _TEST_LISTS:
                value = self._encode_tests(name, value)
            values[name] = value
        values.update(self.extras)
        order = self.key_order or (*INSTANCE_FIELDS, *self.extras)
        record = {k: values[k] for k in order if k in values}
        record.update((k, v) for k, v in self.extras.items() if k not in record)
        return record

    def _encode_tests(self, name: str, tests: tuple[str, ...]) -> str | list[str]:
        if not self.tests_as_json_strings:
            return list(tests)
        raw = self.raw_tests.get(name)
        if raw is not None and json.loads(raw) == list(tests):
            return raw  # unchanged: exactly the string read, whatever its spacing
        return json.dumps(list(tests))


@dataclass(frozen=True)
class Prediction:
    instance_id: str
    model_name_or_path: str
    model_patch: str | None  # a unified diff (a/ b/ prefixes, relative to the repo root); None/"" = empty

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "model_name_or_path": self.model_name_or_path,
            "model_patch": self.model_patch,
        }


# --------------------------------------------------------------------------------------
# Reading records with their line numbers
# --------------------------------------------------------------------------------------

_SPACE = re.compile(r"[ \t\n\r]*")


class _Lines:
    """Line numbers of offsets into `text`, for offsets that only grow."""

    def __init__(self, text: str) -> None:
        self.text, self.offset, self.line = text, 0, 1

    def at(self, offset: int) -> int:
        self.line += self.text.count("\n", self.offset, offset)
        self.offset = offset
        return self.line


def _document(text: str, path: Path) -> Iterator[tuple[str | None, Any, int]]:
    """(key, value, line) for each item of a top-level JSON list (key None) or object."""
    decoder, lines = json.JSONDecoder(), _Lines(text)

    def skip(i: int) -> int:
        return _SPACE.match(text, i).end()

    def expect(i: int, chars: str) -> str:
        if i >= len(text) or text[i] not in chars:
            found = repr(text[i]) if i < len(text) else "the end"
            raise ValueError(f"{path}:{lines.at(i)}: expected {' or '.join(map(repr, chars))}, found {found}")
        return text[i]

    try:
        i = skip(0)
        closing = "]" if expect(i, "[{") == "[" else "}"
        i = skip(i + 1)
        if i < len(text) and text[i] == closing:
            i += 1
        else:
            while True:
                key = None
                if closing == "}":
                    expect(i, '"')
                    key, i = decoder.raw_decode(text, i)
                    i = skip(i)
                    expect(i, ":")
                    i = skip(i + 1)
                start = i
                value, i = decoder.raw_decode(text, i)
                yield key, value, lines.at(start)
                i = skip(i)
                if expect(i, "," + closing) == closing:
                    i += 1
                    break
                i = skip(i + 1)
        i = skip(i)
        if i != len(text):
            raise ValueError(f"{path}:{lines.at(i)}: unexpected data after the JSON document")
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def _jsonl(text: str, path: Path) -> Iterator[tuple[None, Any, int]]:
    for lineno, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                yield None, json.loads(line), lineno
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None


def _records(path: Path) -> Iterator[tuple[str | None, Any, int]]:
    """Records of a `.json` document, else of JSONL (a file that opens with "[" is a JSON list)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        return _document(text, path)
    return _jsonl(text, path)


# --------------------------------------------------------------------------------------
# Instances
# --------------------------------------------------------------------------------------


def _tests(record: Mapping[str, Any], name: str) -> tuple[tuple[str, ...], str | None]:
    """(tests, the JSON string they came in, or None when they came as a list)."""
    value = record.get(name, [])
    raw = value if isinstance(value, str) else None
    if raw is not None:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            raise ValueError(f"{name} is a string but not JSON-encoded") from None
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ValueError(f"{name} must be a list of test names or a JSON string of one")
    return tuple(value), raw


def _instance(record: Any) -> Instance:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    for name in _REQUIRED:
        if not isinstance(record.get(name), str) or not record[name]:
            raise ValueError(f"{name} missing or not a non-empty string")
    for name in _TEXT:
        if not isinstance(record.get(name, ""), str | None):
            raise ValueError(f"{name} must be a string")
    f2p, f2p_raw = _tests(record, "FAIL_TO_PASS")
    p2p, p2p_raw = _tests(record, "PASS_TO_PASS")
    present = [name for name in _TEST_LISTS if name in record]
    encoded = {
        name: raw for name, raw in zip(_TEST_LISTS, (f2p_raw, p2p_raw), strict=True) if raw is not None
    }
    if present and 0 < len(encoded) < len(present):
        raise ValueError("FAIL_TO_PASS and PASS_TO_PASS mix JSON strings and lists")
    plain = {k: record.get(k, "") for k in INSTANCE_FIELDS if k not in _TEST_LISTS}
    return Instance(
        **plain,
        FAIL_TO_PASS=f2p,
        PASS_TO_PASS=p2p,
        extras={k: v for k, v in record.items() if k not in INSTANCE_FIELDS},
        tests_as_json_strings=bool(encoded) or not present,
        key_order=tuple(record),
        raw_tests=encoded,
    )


def load_instances(path: str | Path) -> list[Instance]:
    """Instances from a JSONL file or a JSON list (a `.json` file, or any file opening with "[")."""
    path = Path(path)
    out: list[Instance] = []
    seen: dict[str, int] = {}
    for _, record, line in _records(path):
        try:
            instance = _instance(record)
        except ValueError as e:
            raise ValueError(f"{path}:{line}: {e}") from None
        if instance.instance_id in seen:
            first = seen[instance.instance_id]
            raise ValueError(f"{path}:{line}: instance {instance.instance_id!r} repeats line {first}")
        seen[instance.instance_id] = line
        out.append(instance)
    return out


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in records)
    elif path.suffix == ".json":
        text = json.dumps(records) + "\n"
    else:
        raise ValueError(f"{path}: the SWE-bench harness reads only .jsonl and .json files")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def write_instances(path: str | Path, instances: Iterable[Instance]) -> None:
    """Instances as JSONL (`.jsonl`) or one JSON list (`.json`), in `json.dumps`'s default form."""
    _write(Path(path), [i.to_dict() for i in instances])


# --------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------


def _prediction(key: str | None, record: Any) -> Prediction:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    instance_id = record.get("instance_id", key)
    if not isinstance(instance_id, str) or not instance_id:
        raise ValueError("instance_id missing or not a non-empty string")
    if key is not None and instance_id != key:
        raise ValueError(f"keyed {key!r} but its instance_id is {instance_id!r}")
    model = record.get("model_name_or_path")
    if not isinstance(model, str):
        raise ValueError("model_name_or_path missing or not a string")
    if "model_patch" not in record:
        raise ValueError("model_patch missing (use null for no patch)")
    patch = record["model_patch"]
    if not isinstance(patch, str | None):
        raise ValueError(f"model_patch must be a string or null, got {type(patch).__name__}")
    return Prediction(instance_id, model, patch)


def read_predictions(path: str | Path) -> list[Prediction]:
    """Predictions from JSONL, a JSON list, or a JSON object keyed by instance id, in file order.
    An instance id predicted twice is an error (the harness would silently keep one)."""
    path = Path(path)
    out: list[Prediction] = []
    seen: dict[str, int] = {}
    for key, record, line in _records(path):
        try:
            pred = _prediction(key, record)
        except ValueError as e:
            raise ValueError(f"{path}:{line}: {e}") from None
        if pred.instance_id in seen:
            first = seen[pred.instance_id]
            raise ValueError(
                f"{path}:{line}: instance {pred.instance_id!r} predicted again (first on line {first})"
            )
        seen[pred.instance_id] = line
        out.append(pred)
    return out


def write_predictions(path: str | Path, preds: Iterable[Prediction]) -> None:
    """Predictions as JSONL (`.jsonl`, the usual form) or one JSON list (`.json`): exactly the keys
    instance_id, model_name_or_path, model_patch, in that order."""
    records = [p.to_dict() for p in preds]
    repeated = [i for i, n in Counter(r["instance_id"] for r in records).items() if n > 1]
    if repeated:
        raise ValueError(f"{path}: instance {repeated[0]!r} predicted more than once")
    _write(Path(path), records)
