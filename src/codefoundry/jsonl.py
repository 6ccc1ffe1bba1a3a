"""Reading JSONL files of records, with errors a person can act on: `FILE:LINE: what is wrong`."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path


class RecordError(ValueError):
    """A record that cannot be used; the message is one line naming the file and the line."""


def iter_records(
    path: str | Path, *, required: Sequence[str] = (), what: str = "record"
) -> Iterator[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSONL file (gzip-compressed when it ends in
    .gz). Raises RecordError for a line that is not JSON, not an object, or lacks a `required` field."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        f = opener(path, "rb")
    except OSError as e:
        raise RecordError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        try:
            for lineno, line in text_lines(f, path, RecordError):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RecordError(
                        f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno})"
                    ) from None
                if not isinstance(record, dict):
                    raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                missing = [k for k in required if k not in record]
                if missing:
                    raise RecordError(f"{path}:{lineno}: {what} lacks {', '.join(missing)}")
                yield lineno, record
        except OSError as e:  # a torn gzip stream: it was a traceback
            raise RecordError(f"{path}: cannot read ({e.strerror or e})") from None


def text_lines(f, path: str | Path, error: type[Exception]) -> Iterator[tuple[int, str]]:
    """(line number, text) for every non-blank line of the binary file `f`, decoded line by line: decoded as a
    stream, a bad byte's error named no line, and an offset into the decoder's 8 KiB chunk, not into the
    file. A line that is not UTF-8 raises `error` naming `path` and the line."""
    for lineno, raw in enumerate(f, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{path}:{lineno}: not UTF-8 (byte {e.start + 1} of the line)") from None
        if line.strip():
            yield lineno, line
