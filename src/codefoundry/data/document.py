"""The record every curation stage reads and writes, and the per-stage counts the manifest reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    """One file (or one JSONL/Parquet record) on its way through the pipeline.

    `id` is unique within a run and stable across runs (`repo:path`, or `file#line` for records).
    `license` holds an SPDX expression once the licence audit ran; "unknown" when nothing was found.
    `meta` is for stage annotations that end up as Parquet columns (e.g. `redactions`)."""

    id: str
    text: str
    repo: str = ""
    path: str = ""
    source: str = ""
    language: str = ""
    license: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageCounts:
    """What one stage saw and did: documents and bytes in and out, drops by reason, edits by kind."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    changed: Counter[str] = field(default_factory=Counter)

    def merge(self, other: StageCounts) -> None:
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.dropped.update(other.dropped)
        self.changed.update(other.changed)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "docs_in": self.docs_in, "docs_out": self.docs_out,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "dropped": dict(sorted(self.dropped.items())), "changed": dict(sorted(self.changed.items()))}  # fmt: skip
