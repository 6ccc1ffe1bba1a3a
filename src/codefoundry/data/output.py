"""What `codefoundry data build` writes: Parquet shards of documents with their metadata, the per-stage
table, and `manifest.json`.

Parquet files are written with fixed settings (zstd, fixed row-group size, no timestamps), so the same
documents give byte-identical files with the same pyarrow version."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from codefoundry.data.document import Document, StageCounts

COLUMNS = ("id", "repo", "path", "source", "language", "license", "text", "meta")
ROW_GROUP = 1024


def _schema():
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in COLUMNS])


def _row(doc: Document) -> dict[str, str]:
    return {"id": doc.id, "repo": doc.repo, "path": doc.path, "source": doc.source, "language": doc.language,
            "license": doc.license, "text": doc.text, "meta": json.dumps(doc.meta, sort_keys=True)}  # fmt: skip


def write_documents(path: Path, docs: Iterable[Document]) -> int:
    """Write `docs` to one Parquet file (tmp name, then renamed: a killed run leaves no half file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with pq.ParquetWriter(tmp, _schema(), compression="zstd", write_statistics=False) as writer:
        batch: list[dict[str, str]] = []
        for doc in docs:
            batch.append(_row(doc))
            n += 1
            if len(batch) == ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=_schema()))
                batch = []
        if batch or not n:
            writer.write_table(pa.Table.from_pylist(batch, schema=_schema()))
    os.replace(tmp, path)
    return n


def read_documents(path: str | Path) -> Iterator[Document]:
    """The documents of one Parquet file written by `write_documents`, in order, a row group at a time."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP):
        for row in batch.to_pylist():
            meta = json.loads(row.pop("meta") or "{}")
            yield Document(meta=meta, **row)


class ShardWriter:
    """Rolling Parquet shards `part-00000.parquet`, ... of at most `rows` documents each."""

    def __init__(self, out_dir: Path, *, rows: int) -> None:
        if rows < 1:
            raise ValueError(f"shard rows must be >= 1, got {rows}")
        self.out_dir, self.rows = out_dir, rows
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []
        self._pending: list[Document] = []

    def add(self, doc: Document) -> None:
        self._pending.append(doc)
        if len(self._pending) == self.rows:
            self._flush()

    def _flush(self) -> None:
        path = self.out_dir / f"part-{len(self.paths):05d}.parquet"
        write_documents(path, self._pending)
        self.paths.append(path)
        self._pending = []

    def close(self) -> list[Path]:
        if self._pending:
            self._flush()
        return self.paths


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stage_table(stages: Sequence[StageCounts]) -> str:
    """The per-stage table: documents in, out, dropped, changed, and the top reasons."""
    rows = [("stage", "docs in", "docs out", "dropped", "changed", "MB out", "why")]
    for s in stages:
        why = ", ".join(f"{k} {v}" for k, v in s.dropped.most_common(4))
        if len(s.dropped) > 4:
            why += f", +{len(s.dropped) - 4} more"
        if s.changed:
            edits = ", ".join(f"{k} {v}" for k, v in s.changed.most_common(4))
            why = f"{why}; edits: {edits}" if why else f"edits: {edits}"
        dropped = sum(s.dropped.values())
        rows.append((s.name, f"{s.docs_in:,}", f"{s.docs_out:,}", f"{dropped:,}",
                     f"{sum(s.changed.values()):,}", f"{s.bytes_out / 1e6:.1f}", why))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        cells = [
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))
        ]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return "\n".join(lines)


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
